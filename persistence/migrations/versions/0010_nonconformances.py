"""Nonconformances (contract v1.2): the `nonconformances` table with each NC's audit-chain
head, the gap-free `counters`, and each SOP step's `check.on_fail` and `check.severity`

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08

Steps from before this revision read as `retry` and `major` (NULL).
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

GENESIS = '0' * 64


def upgrade() -> None:
    op.create_table(
        'nonconformances',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('severity', sa.String(length=16), nullable=False),
        sa.Column('session_id', sa.Uuid(), nullable=False),
        sa.Column('sop_id', sa.Uuid(), nullable=False),
        sa.Column('step_id', sa.Uuid(), nullable=True),
        sa.Column('check_id', sa.Uuid(), nullable=True),
        sa.Column('hold', sa.Boolean(), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('opened_by', sa.Uuid(), nullable=True),
        sa.Column('owner_id', sa.Uuid(), nullable=True),
        sa.Column('containment_due', sa.DateTime(timezone=True), nullable=False),
        sa.Column('close_due', sa.DateTime(timezone=True), nullable=False),
        sa.Column('containment', sa.Text(), nullable=True),
        sa.Column('contained_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('contained_by', sa.Uuid(), nullable=True),
        sa.Column('disposition', sa.String(length=16), nullable=True),
        sa.Column('corrective_action', sa.Text(), nullable=True),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('closed_by', sa.Uuid(), nullable=True),
        sa.Column('overdue', sa.Boolean(), nullable=False),
        sa.Column('overdue_deadlines', sa.JSON(), nullable=False),
        sa.Column('evidence', sa.JSON(), nullable=True),
        sa.Column('signature', sa.JSON(), nullable=True),
        sa.Column('audit_seq', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.Column('audit_hash', sa.String(length=64), server_default=sa.text(f"'{GENESIS}'"),
                  nullable=False),
        sa.ForeignKeyConstraint(['session_id'], ['work_sessions.id'],
                                name='fk_nonconformances_session_id_work_sessions'),
        sa.PrimaryKeyConstraint('id', name='pk_nonconformances'),
    )
    op.create_index('uq_nonconformances_number', 'nonconformances', ['number'], unique=True)
    op.create_index('ix_nonconformances_opened', 'nonconformances', ['opened_at'])
    op.create_index('ix_nonconformances_status_opened', 'nonconformances',
                    ['status', 'opened_at'])
    op.create_index('ix_nonconformances_session', 'nonconformances', ['session_id', 'status'])
    op.create_index('ix_nonconformances_sop_opened', 'nonconformances', ['sop_id', 'opened_at'])
    op.create_table(
        'counters',
        sa.Column('name', sa.String(length=40), nullable=False),
        sa.Column('value', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('name', name='pk_counters'),
    )
    op.execute("INSERT INTO counters (name, value) VALUES ('nonconformance', 0)")
    with op.batch_alter_table('sop_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('check_on_fail', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('check_severity', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sop_steps', schema=None) as batch_op:
        batch_op.drop_column('check_severity')
        batch_op.drop_column('check_on_fail')
    op.drop_table('counters')
    for ix in ('ix_nonconformances_sop_opened', 'ix_nonconformances_session',
               'ix_nonconformances_status_opened', 'ix_nonconformances_opened',
               'uq_nonconformances_number'):
        op.drop_index(ix, table_name='nonconformances')
    op.drop_table('nonconformances')
