"""session_steps (time on each step, contract v1.1 `step_times`), work_sessions.duration_seconds,
and the indexes of the session list's filters and of SOP statistics

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Sessions recorded before this revision have no step times: their `step_times` is empty and
they count in no step's statistics. Their duration is filled in here, so they count in their
SOP's session statistics.
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

PASSED = sa.text('passed_at IS NOT NULL')


def upgrade() -> None:
    op.create_table(
        'session_steps',
        sa.Column('session_id', sa.Uuid(), nullable=False),
        sa.Column('step_id', sa.Uuid(), nullable=False),
        sa.Column('sop_id', sa.Uuid(), nullable=False),
        sa.Column('session_started_at', sa.DateTime(timezone=True), nullable=False),
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
    op.create_index('ix_session_steps_sop_step', 'session_steps',
                    ['sop_id', 'step_id', 'failed_checks', 'first_passed', 'passed_at',
                     'session_started_at'])
    op.create_index('ix_session_steps_sop_step_time', 'session_steps',
                    ['sop_id', 'step_id', 'active_seconds', 'session_started_at'],
                    sqlite_where=PASSED, postgresql_where=PASSED)
    with op.batch_alter_table('work_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('duration_seconds', sa.Float(), nullable=True))
        batch_op.drop_index('ix_work_sessions_sop_status')
        batch_op.create_index('ix_work_sessions_sop_status',
                              ['sop_id', 'status', 'duration_seconds', 'started_at'])
        batch_op.create_index('ix_work_sessions_sop_started', ['sop_id', 'started_at'])
        batch_op.create_index('ix_work_sessions_attention_started',
                              ['needs_attention', 'started_at'])
        batch_op.create_index('ix_work_sessions_attention_by_sop', ['sop_id', 'started_at'],
                              sqlite_where=sa.text('needs_attention = 1'),
                              postgresql_where=sa.text('needs_attention'))
        batch_op.create_index('ix_work_sessions_locked_started', ['locked', 'started_at'])
    _fill_durations()


def _fill_durations() -> None:
    """From start to close, pauses not counted, as `SessionState.duration_seconds`."""
    s = sa.table('work_sessions', sa.column('id', sa.Uuid()),
                 sa.column('started_at', sa.DateTime(timezone=True)),
                 sa.column('completed_at', sa.DateTime(timezone=True)),
                 sa.column('cancelled_at', sa.DateTime(timezone=True)),
                 sa.column('paused_seconds', sa.Float()),
                 sa.column('duration_seconds', sa.Float()))
    bind = op.get_bind()
    rows = bind.execute(sa.select(s.c.id, s.c.started_at, s.c.completed_at, s.c.cancelled_at,
                                  s.c.paused_seconds)
                        .where(sa.or_(s.c.completed_at.is_not(None),
                                      s.c.cancelled_at.is_not(None)))).all()
    if rows:
        bind.execute(s.update().where(s.c.id == sa.bindparam('sid'))
                     .values(duration_seconds=sa.bindparam('d')), [
            {'sid': r.id, 'd': ((r.completed_at or r.cancelled_at) - r.started_at)
             .total_seconds() - (r.paused_seconds or 0)} for r in rows])


def downgrade() -> None:
    with op.batch_alter_table('work_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_work_sessions_locked_started')
        batch_op.drop_index('ix_work_sessions_attention_by_sop')
        batch_op.drop_index('ix_work_sessions_attention_started')
        batch_op.drop_index('ix_work_sessions_sop_started')
        batch_op.drop_index('ix_work_sessions_sop_status')
        batch_op.create_index('ix_work_sessions_sop_status', ['sop_id', 'status'])
        batch_op.drop_column('duration_seconds')
    op.drop_table('session_steps')
