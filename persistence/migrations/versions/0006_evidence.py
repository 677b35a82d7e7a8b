"""Evidence files (contract v1.2): the `evidence` table of uploads, each check's files
(`session_checks.evidence`) and each SOP step's evidence rule (`sop_steps.check_evidence`)

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-06

Steps from before this revision have no rule (NULL), read as `optional`; checks from before it
have no files (NULL).
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

UNATTACHED = sa.text('check_id IS NULL')


def upgrade() -> None:
    op.create_table(
        'evidence',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('session_id', sa.Uuid(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('content_type', sa.String(length=32), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('filename', sa.String(length=255), nullable=True),
        sa.Column('uploaded_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('uploaded_by', sa.Uuid(), nullable=False),
        sa.Column('check_id', sa.Uuid(), nullable=True),
        sa.Column('attached_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('named_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['session_id'], ['work_sessions.id'],
                                name='fk_evidence_session_id_work_sessions'),
        sa.PrimaryKeyConstraint('id', name='pk_evidence'),
    )
    op.create_index('uq_evidence_session_sha256', 'evidence', ['session_id', 'sha256'],
                    unique=True)
    op.create_index('ix_evidence_sha256', 'evidence', ['sha256'])
    op.create_index('ix_evidence_unattached', 'evidence', ['uploaded_at'],
                    sqlite_where=UNATTACHED, postgresql_where=UNATTACHED)
    with op.batch_alter_table('session_checks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('evidence', sa.JSON(), nullable=True))
    with op.batch_alter_table('sop_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('check_evidence', sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sop_steps', schema=None) as batch_op:
        batch_op.drop_column('check_evidence')
    with op.batch_alter_table('session_checks', schema=None) as batch_op:
        batch_op.drop_column('evidence')
    op.drop_index('ix_evidence_unattached', table_name='evidence')
    op.drop_index('ix_evidence_sha256', table_name='evidence')
    op.drop_index('uq_evidence_session_sha256', table_name='evidence')
    op.drop_table('evidence')
