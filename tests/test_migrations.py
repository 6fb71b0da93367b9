"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from syncd.crm.database import check_schema, make_engine, upgrade
from syncd.crm.models import Base


def test_upgrade_matches_the_models(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    check_schema(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    upgrade(engine)  # running it again is a no-op
    engine.dispose()
