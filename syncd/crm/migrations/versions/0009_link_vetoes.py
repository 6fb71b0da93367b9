"""link_vetoes: the links an admin removed (`syncd unlink`), never made again; links of
reason "manual" (`syncd link`) need no schema change

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "link_vetoes",
        sa.Column("id", ID, nullable=False),
        sa.Column("activity_id", ID, nullable=False),
        sa.Column("type", sa.String(length=12), nullable=False),
        sa.Column("target_id", ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["activity_id"], ["activities.id"],
            name=op.f("fk_link_vetoes_activity_id_activities"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_vetoes")),
        sa.UniqueConstraint(
            "activity_id", "type", "target_id", name=op.f("uq_link_vetoes_activity_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("link_vetoes")
