"""thread_keys (threads across batches, passes and restarts); quarantine raw/format/attempts
for `syncd quarantine retry`; the task writer's own state on mailboxes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "thread_keys",
        sa.Column("id", ID, nullable=False),
        sa.Column("activity_id", ID, nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["activity_id"], ["activities.id"],
            name=op.f("fk_thread_keys_activity_id_activities"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thread_keys")),
        sa.UniqueConstraint("activity_id", "key", name=op.f("uq_thread_keys_activity_id")),
    )
    op.create_index(op.f("ix_thread_keys_key"), "thread_keys", ["key"], unique=False)
    # what was stored before: each activity's own key and its thread's root
    op.execute(
        "INSERT INTO thread_keys (activity_id, key) SELECT id, key FROM activities"
    )
    op.execute(
        "INSERT INTO thread_keys (activity_id, key) SELECT id, thread_key FROM activities"
        " WHERE thread_key <> key"
    )
    with op.batch_alter_table("quarantine") as batch_op:
        batch_op.add_column(sa.Column("raw", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("format", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("mailboxes") as batch_op:
        batch_op.add_column(
            sa.Column("writer_state", sa.String(length=10), nullable=False, server_default="ok")
        )
        batch_op.add_column(sa.Column("writer_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("writer_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch_op:
        batch_op.drop_column("writer_at")
        batch_op.drop_column("writer_error")
        batch_op.drop_column("writer_state")
    with op.batch_alter_table("quarantine") as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("format")
        batch_op.drop_column("raw")
    op.drop_index(op.f("ix_thread_keys_key"), table_name="thread_keys")
    op.drop_table("thread_keys")
