"""Electronic signatures (contract v1.2): the `signatures` table, each session's wait for
second-person verification (`work_sessions.awaiting_verification`, with the list filter's
index) and each SOP step's `check.verify` (`sop_steps.check_verify`)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Sessions from before this revision have no signatures and await nothing (NULL); steps from
before it need no verification (NULL, read as false).
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

AWAITING = sa.text('awaiting_verification IS NOT NULL')


def upgrade() -> None:
    op.create_table(
        'signatures',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('session_id', sa.Uuid(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('meaning', sa.String(length=16), nullable=False),
        sa.Column('step_id', sa.Uuid(), nullable=True),
        sa.Column('signer_id', sa.Uuid(), nullable=False),
        sa.Column('signer_name', sa.String(length=200), nullable=False),
        sa.Column('signer_role', sa.String(length=16), nullable=False),
        sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('statement', sa.String(length=500), nullable=True),
        sa.Column('record_hash', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['session_id'], ['work_sessions.id'],
                                name='fk_signatures_session_id_work_sessions'),
        sa.PrimaryKeyConstraint('id', name='pk_signatures'),
    )
    op.create_index('uq_signatures_session_seq', 'signatures', ['session_id', 'seq'],
                    unique=True)
    with op.batch_alter_table('work_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('awaiting_verification', sa.JSON(), nullable=True))
        batch_op.create_index('ix_work_sessions_awaiting_started', ['started_at'],
                              sqlite_where=AWAITING, postgresql_where=AWAITING)
    with op.batch_alter_table('sop_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('check_verify', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sop_steps', schema=None) as batch_op:
        batch_op.drop_column('check_verify')
    with op.batch_alter_table('work_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_work_sessions_awaiting_started')
        batch_op.drop_column('awaiting_verification')
    op.drop_index('uq_signatures_session_seq', table_name='signatures')
    op.drop_table('signatures')
