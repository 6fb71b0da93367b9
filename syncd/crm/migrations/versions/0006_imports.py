"""imports, import_cursors, import_people (the historical import, resumable), and
contact_knowledge; contacts.first_name/last_name; what an import created carries its id
(contacts, contact_addresses, accounts)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "imports",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imports")),
    )
    op.create_table(
        "import_cursors",
        sa.Column("import_id", sa.String(length=40), nullable=False),
        sa.Column("mailbox", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["imports.id"],
            name=op.f("fk_import_cursors_import_id_imports"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("import_id", "mailbox", "source", name=op.f("pk_import_cursors")),
    )
    op.create_table(
        "import_people",
        sa.Column("id", ID, nullable=False),
        sa.Column("import_id", sa.String(length=40), nullable=False),
        sa.Column("mailbox", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["imports.id"],
            name=op.f("fk_import_people_import_id_imports"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_people")),
        sa.UniqueConstraint("import_id", "mailbox", "key", name=op.f("uq_import_people_import_id")),
    )
    op.create_table(
        "contact_knowledge",
        sa.Column("contact_id", ID, nullable=False),
        sa.Column("mailbox", sa.String(length=200), nullable=False),
        sa.Column("first_seen", WHEN, nullable=True),
        sa.Column("last_seen", WHEN, nullable=True),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("meetings", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"],
            name=op.f("fk_contact_knowledge_contact_id_contacts"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["import_id"], ["imports.id"],
            name=op.f("fk_contact_knowledge_import_id_imports"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("contact_id", "mailbox", name=op.f("pk_contact_knowledge")),
    )
    for table in ("accounts", "contacts", "contact_addresses"):
        with op.batch_alter_table(table) as batch_op:
            if table == "contacts":
                batch_op.add_column(sa.Column("first_name", sa.String(length=100), nullable=True))
                batch_op.add_column(sa.Column("last_name", sa.String(length=100), nullable=True))
            batch_op.add_column(sa.Column("import_id", sa.String(length=40), nullable=True))
            batch_op.create_index(op.f(f"ix_{table}_import_id"), ["import_id"], unique=False)
            batch_op.create_foreign_key(
                op.f(f"fk_{table}_import_id_imports"), "imports", ["import_id"], ["id"],
                ondelete="SET NULL",
            )


def downgrade() -> None:
    for table in ("contact_addresses", "contacts", "accounts"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(op.f(f"fk_{table}_import_id_imports"), type_="foreignkey")
            batch_op.drop_index(op.f(f"ix_{table}_import_id"))
            batch_op.drop_column("import_id")
            if table == "contacts":
                batch_op.drop_column("last_name")
                batch_op.drop_column("first_name")
    op.drop_table("contact_knowledge")
    op.drop_table("import_people")
    op.drop_table("import_cursors")
    op.drop_table("imports")
