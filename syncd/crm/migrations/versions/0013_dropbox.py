"""dropbox mailboxes: sightings.user_id (the salesperson on whose behalf a dropbox logged
an item: its sightings are never its own user's) and dropped_items.whole_thread (a
conversation removed by #nocrm: none of its items is logged again)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("sightings") as batch_op:
        batch_op.add_column(sa.Column("user_id", ID, nullable=True))
        batch_op.create_foreign_key(
            "fk_sightings_user_id_users", "users", ["user_id"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("dropped_items") as batch_op:
        batch_op.add_column(
            sa.Column("whole_thread", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("dropped_items") as batch_op:
        batch_op.drop_column("whole_thread")
    with op.batch_alter_table("sightings") as batch_op:
        batch_op.drop_constraint("fk_sightings_user_id_users", type_="foreignkey")
        batch_op.drop_column("user_id")
