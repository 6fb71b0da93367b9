"""skips (items a pass read and did not log, with why) and audits (the last gap audit of
each source): `syncd audit`

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "skips",
        sa.Column("id", ID, nullable=False),
        sa.Column("mailbox_id", ID, nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("provider_id", sa.String(length=512), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"],
            name=op.f("fk_skips_mailbox_id_mailboxes"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_skips")),
        sa.UniqueConstraint(
            "mailbox_id", "source", "provider_id", name=op.f("uq_skips_mailbox_id")
        ),
    )
    op.create_table(
        "audits",
        sa.Column("mailbox_id", ID, nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("audited_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("logged", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("missing", sa.Integer(), nullable=False),
        sa.Column("missing_ids", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_id"], ["mailboxes.id"],
            name=op.f("fk_audits_mailbox_id_mailboxes"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("mailbox_id", "source", name=op.f("pk_audits")),
    )


def downgrade() -> None:
    op.drop_table("audits")
    op.drop_table("skips")
