"""indexes on activity_participants.user_id and opportunities.owner_id: the call list reads
a user's meetings and deals at every pass

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_activity_participants_user_id"), "activity_participants", ["user_id"]
    )
    op.create_index(op.f("ix_opportunities_owner_id"), "opportunities", ["owner_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_opportunities_owner_id"), table_name="opportunities")
    op.drop_index(op.f("ix_activity_participants_user_id"), table_name="activity_participants")
