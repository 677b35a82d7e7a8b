"""Statistical process control (contract v1.2): `spc_charts` (each chart's state for judging
its next value), the index that reads a step's values in order of time, and
`work_sessions.attention_reason`

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

Charts are created by the first measurement check written after this revision, from the
values already recorded (persistence/spc.py); sessions from before it have no reason (NULL).
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'spc_charts',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('family_id', sa.Uuid(), nullable=False),
        sa.Column('n', sa.Integer(), nullable=False),
        sa.Column('recent', sa.JSON(), nullable=False),
        sa.Column('base_n', sa.Integer(), nullable=False),
        sa.Column('base_mean', sa.Float(), nullable=True),
        sa.Column('base_mr_bar', sa.Float(), nullable=True),
        sa.Column('base_from', sa.DateTime(timezone=True), nullable=True),
        sa.Column('base_to', sa.DateTime(timezone=True), nullable=True),
        sa.Column('base_manual', sa.Boolean(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_spc_charts'),
    )
    op.create_index('ix_session_checks_step_at', 'session_checks',
                    ['step_id', 'checked_at', 'id'])
    with op.batch_alter_table('work_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attention_reason', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('work_sessions', schema=None) as batch_op:
        batch_op.drop_column('attention_reason')
    op.drop_index('ix_session_checks_step_at', table_name='session_checks')
    op.drop_table('spc_charts')
