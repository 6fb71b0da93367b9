"""Fixtures: a real PostgreSQL per test session, a fresh CRM database per test (on SQLite and
on PostgreSQL), and a sample company loaded from CSV."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.demo import DemoCompany, build_demo, load_company

from .servers import (
    Dovecot,
    Radicale,
    ServerMissing,
    dovecot,
    new_pg_database,
    postgres,
    radicale,
)

# fixtures that start a server (PostgreSQL, Dovecot, Radicale, the Google and Microsoft
# emulators): a test that uses one, or the PostgreSQL side of a database parameter, is an
# integration test, and so is every test of a module that runs syncd as processes (the
# CLI, the daemon, the crash test) and any test marked so by hand; `scripts/test --unit`
# runs every other test (pytest -m "not integration")
SERVER_FIXTURES = {
    "pg_server",
    "imap_server",
    "dav_server",
    "corpus_servers",
    "google",
    "microsoft",
    "em",
}


PROCESS_MODULES = {
    "test_cli",
    "test_crash",
    "test_daemon",
    "test_worker",
    "test_concurrency",
    "test_import_contacts",
    "test_install",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = set(map(str, callspec.params.values())) if callspec else set()
        found = getattr(item, "module", None)
        module = found.__name__.rsplit(".", 1)[-1] if found else ""
        if names & SERVER_FIXTURES or "postgresql" in params or module in PROCESS_MODULES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def imap_server() -> Iterator[Dovecot]:
    """A real Dovecot for this test session (per xdist worker)."""
    try:
        with dovecot() as server:
            yield server
    except ServerMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def dav_server() -> Iterator[Radicale]:
    """A real Radicale (CalDAV) for this test session (per xdist worker)."""
    try:
        with radicale() as server:
            yield server
    except ServerMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A real PostgreSQL for this test session (per xdist worker); yields its base URL."""
    try:
        with postgres() as url:
            yield url
    except ServerMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crm.db'}"
    return new_pg_database(request.getfixturevalue("pg_server"))


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def company(tmp_path: Path, sessions: sessionmaker[Session], now: datetime) -> DemoCompany:
    """The demo company's CRM records loaded; its Maildirs and calendar on disk."""
    demo = build_demo(tmp_path / "demo", now)
    load_company(sessions, demo.root / "crm")
    return demo
