"""opportunities.last_tagged_at (the time of each deal's latest tagged activity, kept by
every batch that stores a tag), a case-blind index on external_id and an index on
opportunity_contacts.contact_id: the matcher looks the CRM up per batch instead of loading
it whole

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("opportunities") as batch_op:
        batch_op.add_column(sa.Column("last_tagged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_opportunities_last_tagged_at"), ["last_tagged_at"], unique=False
        )
    op.create_index(
        "ix_opportunities_external_id_lower",
        "opportunities",
        [sa.text("lower(external_id)")],
        unique=False,
    )
    op.create_index(
        op.f("ix_opportunity_contacts_contact_id"), "opportunity_contacts", ["contact_id"]
    )
    op.execute(
        "UPDATE opportunities SET last_tagged_at = ("
        " SELECT max(activities.occurred_at) FROM links"
        " JOIN activities ON activities.id = links.activity_id"
        " WHERE links.type = 'opportunity' AND links.reason = 'tag'"
        " AND links.target_id = opportunities.id)"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_opportunity_contacts_contact_id"), table_name="opportunity_contacts")
    op.drop_index("ix_opportunities_external_id_lower", table_name="opportunities")
    with op.batch_alter_table("opportunities") as batch_op:
        batch_op.drop_index(batch_op.f("ix_opportunities_last_tagged_at"))
        batch_op.drop_column("last_tagged_at")
