"""indexes on the foreign keys that look-ups and edits follow from the parent: an account's
domains (every batch of a sync asks for the domains of the accounts its contacts belong to;
without it each asked a scan of the table: bench/matching_scale.py), a contact's addresses,
and a task's activity, contact and deal (an edit, a merge or a deletion updates them); and
without the index on activities.thread_key, which nothing looks up since conversations are
found by their keys in thread_keys (0003): every activity stored paid for it

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

INDEXES = (
    ("account_domains", "account_id"),
    ("contact_addresses", "contact_id"),
    ("tasks", "activity_id"),
    ("tasks", "contact_id"),
    ("tasks", "opportunity_id"),
)


def upgrade() -> None:
    for table, column in INDEXES:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column])
    op.drop_index("ix_activities_thread_key", table_name="activities")


def downgrade() -> None:
    op.create_index("ix_activities_thread_key", "activities", ["thread_key"])
    for table, column in reversed(INDEXES):
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
