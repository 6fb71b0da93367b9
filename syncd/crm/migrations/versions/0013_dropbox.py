"""dropbox mailboxes: logged_for (the salespeople on whose behalf a dropbox logged an
activity: its sightings are never its own user's) and dropped_items.whole_thread (a
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
    op.create_table(
        "logged_for",
        sa.Column("id", ID, nullable=False),
        sa.Column("activity_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["activity_id"], ["activities.id"],
            name=op.f("fk_logged_for_activity_id_activities"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_logged_for_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_logged_for")),
        sa.UniqueConstraint("activity_id", "user_id", name=op.f("uq_logged_for_activity_id")),
    )
    op.create_index(op.f("ix_logged_for_user_id"), "logged_for", ["user_id"])
    with op.batch_alter_table("dropped_items") as batch_op:
        batch_op.add_column(
            sa.Column("whole_thread", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("dropped_items") as batch_op:
        batch_op.drop_column("whole_thread")
    op.drop_index(op.f("ix_logged_for_user_id"), table_name="logged_for")
    op.drop_table("logged_for")
