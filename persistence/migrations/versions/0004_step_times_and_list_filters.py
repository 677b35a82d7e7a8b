"""session_steps (time on each step, contract v1.1 `step_times`) and an index for the
session list's SOP filters

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Sessions recorded before this revision have no step times: their `step_times` is empty and
they count in no step's statistics (their checks and session times still count).
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'session_steps',
        sa.Column('session_id', sa.Uuid(), nullable=False),
        sa.Column('step_id', sa.Uuid(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('passed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('failed_checks', sa.Integer(), nullable=False),
        sa.Column('first_passed', sa.Boolean(), nullable=True),
        sa.Column('active_seconds', sa.Float(), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('paused_mark', sa.Float(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['session_id'], ['work_sessions.id'], ondelete='CASCADE',
                                name='fk_session_steps_session_id_work_sessions'),
        sa.PrimaryKeyConstraint('session_id', 'step_id', name='pk_session_steps'),
    )
    op.create_index('ix_work_sessions_sop_started', 'work_sessions', ['sop_id', 'started_at'])


def downgrade() -> None:
    op.drop_index('ix_work_sessions_sop_started', table_name='work_sessions')
    op.drop_table('session_steps')
