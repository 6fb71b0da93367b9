"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from syncd.crm.database import check_schema, make_engine, upgrade
from syncd.crm.models import Base


# SQLite cannot reflect an expression index (lower(external_id)); PostgreSQL compares it
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_upgrade_matches_the_models(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    check_schema(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    upgrade(engine)  # running it again is a no-op
    engine.dispose()
