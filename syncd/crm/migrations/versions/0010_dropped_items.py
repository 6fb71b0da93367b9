"""dropped_items (the keys of items an admin deleted: never logged again) and tasks whose
activity was deleted kept, cancelled, until the calendar has the cancellation
(tasks.activity_id nullable, ON DELETE SET NULL)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dropped_items",
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("dropped_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_dropped_items")),
    )
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_constraint("fk_tasks_activity_id_activities", type_="foreignkey")
        batch_op.alter_column("activity_id", existing_type=ID, nullable=True)
        batch_op.create_foreign_key(
            "fk_tasks_activity_id_activities",
            "activities",
            ["activity_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    # tasks whose activity was deleted cannot be kept by a schema that needs one
    op.execute("DELETE FROM tasks WHERE activity_id IS NULL")
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_constraint("fk_tasks_activity_id_activities", type_="foreignkey")
        batch_op.alter_column("activity_id", existing_type=ID, nullable=False)
        batch_op.create_foreign_key(
            "fk_tasks_activity_id_activities",
            "activities",
            ["activity_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.drop_table("dropped_items")
