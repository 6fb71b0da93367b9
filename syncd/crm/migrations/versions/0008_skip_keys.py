"""skips.key: the key of an item a pass read and did not log (mid:<Message-ID>, ical:<UID>),
so that ``syncd explain MESSAGE-ID`` finds why it was not logged

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("skips") as batch_op:
        batch_op.add_column(sa.Column("key", sa.String(length=512), nullable=True))
        batch_op.create_index(batch_op.f("ix_skips_key"), ["key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("skips") as batch_op:
        batch_op.drop_index(batch_op.f("ix_skips_key"))
        batch_op.drop_column("key")
