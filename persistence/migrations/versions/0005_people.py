"""people: the directory of the people whose tokens the service accepted (contract v1.2)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

Empty at first: a person appears with their first request after this revision.
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'people',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=True),
        # the name as searched: case-folded, up to three characters for one
        sa.Column('name_key', sa.String(length=600), nullable=True),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_people'),
    )
    op.create_index('ix_people_name_key', 'people', ['name_key', 'id'])


def downgrade() -> None:
    op.drop_index('ix_people_name_key', table_name='people')
    op.drop_table('people')
