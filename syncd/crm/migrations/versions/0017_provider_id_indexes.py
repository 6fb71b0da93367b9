"""indexes on (mailbox_id, provider_id) of sightings, skips and quarantine: syncd audit
looks up the provider ids it lists a chunk at a time (the sightings' index replaces the one
on mailbox_id alone, which it serves as well)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_sightings_mailbox_id", table_name="sightings")
    op.create_index("ix_sightings_mailbox_provider", "sightings", ["mailbox_id", "provider_id"])
    op.create_index("ix_skips_mailbox_provider", "skips", ["mailbox_id", "provider_id"])
    op.create_index("ix_quarantine_mailbox_provider", "quarantine", ["mailbox_id", "provider_id"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_mailbox_provider", table_name="quarantine")
    op.drop_index("ix_skips_mailbox_provider", table_name="skips")
    op.drop_index("ix_sightings_mailbox_provider", table_name="sightings")
    op.create_index("ix_sightings_mailbox_id", "sightings", ["mailbox_id"])
