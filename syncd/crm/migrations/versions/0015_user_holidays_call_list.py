"""users.holidays (the public holidays a user's working days skip: "DE-BY") and
users.call_list (today's call list on or off for them; null: the config's)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("holidays", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("call_list", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("call_list")
        batch_op.drop_column("holidays")
