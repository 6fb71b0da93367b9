"""The CRM database under hostile or unlucky conditions (issue 10): two syncd processes
writing at once (real processes, on SQLite and PostgreSQL), a lock held past the busy
timeout, and database URLs whose secrets must never be printed."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from syncd.crm.database import (
    DatabaseError,
    check_schema,
    describe_error,
    make_engine,
    safe_url,
    session_factory,
    upgrade,
)
from syncd.crm.models import Activity, Mailbox, QuarantineEntry, Sighting, Task, User
from syncd.demo import add_local_mailbox, build_demo, generate_maildir, load_company

SYNCD = [sys.executable, "-m", "syncd"]


def cli_env(tmp_path: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SYNCD_HOME": str(tmp_path / "home"), "SYNCD_DATABASE_URL": db_url}
    env.pop("SYNCD_CONFIG", None)
    return {**env, **extra}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNCD, *args], env=env, capture_output=True, text=True, timeout=300)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SYNCD, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def count(sessions: sessionmaker[Session], model: type, *where: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def new_activities(stdout: str) -> int:
    """``ana: ok: 12 new activities, ...`` -> 12"""
    return int(stdout.split(": ok: ", 1)[1].split(" new activities", 1)[0])


def is_sqlite(db_url: str) -> bool:
    return db_url.startswith("sqlite")


def pg_dsn(db_url: str) -> str:
    return db_url.replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def held(db_url: str, table: str) -> Iterator[psycopg.Connection | None]:
    """Another writer in the middle of a transaction. SQLite: the write lock of the whole
    database, with a write in it (so a reader's snapshot goes stale when it commits).
    PostgreSQL: ``table`` locked against writes (reads go on)."""
    if is_sqlite(db_url):
        conn = sqlite3.connect(str(make_url(db_url).database), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE mailboxes SET items_logged = items_logged + 0")
        try:
            yield None
        finally:
            conn.execute("COMMIT")
            conn.close()
        return
    with psycopg.connect(pg_dsn(db_url)) as pg:
        pg.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        yield pg
        pg.commit()


def wait_until_blocked(
    pg: psycopg.Connection | None,
    procs: list[subprocess.Popen[str]],
    table: str,
    waiters: int | None = None,
) -> None:
    """Until ``waiters`` (default: every process) wait for the lock: PostgreSQL shows its
    waiters; on SQLite they wait in the busy handler, so give them time to get there."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [finish(p) for p in procs]
        if pg is None:
            time.sleep(4)
            return
        with psycopg.connect(pg.info.dsn, autocommit=True) as other:
            waiting = other.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                (table,),
            ).fetchone()
        if waiting and waiting[0] >= (len(procs) if waiters is None else waiters):
            return
        time.sleep(0.2)
    raise AssertionError(f"the processes never waited for the lock on {table}")


@pytest.fixture
def demo_env(tmp_path: Path, db_url: str, sessions: sessionmaker[Session]) -> dict[str, str]:
    """The demo company in the CRM, mailbox 'ana' on its Maildir and calendar."""
    company = build_demo(tmp_path / "demo", datetime.now(UTC).replace(microsecond=0))
    load_company(sessions, company.root / "crm")
    add_local_mailbox(
        sessions,
        "ana",
        "ana@northwind.test",
        maildir=str(company.maildirs["ana"]),
        calendar=str(company.calendar),
    )
    return cli_env(tmp_path, db_url)


# --- two writers ------------------------------------------------------------------------


@pytest.mark.integration  # runs syncd as processes
def test_two_syncs_started_while_another_writer_holds_the_database_wait_and_log_once(
    db_url, sessions, demo_env
):
    """SQLite: they wait for the write lock (busy timeout) instead of failing at once with
    'database is locked'. PostgreSQL: the one that took the mailbox's lease waits for the
    table's lock; the other waits for its turn (the lease: two passes of one mailbox never
    run at once), then finds everything logged."""
    with held(db_url, "activities") as pg:
        procs = [start(demo_env, "sync", "ana") for _ in range(2)]
        wait_until_blocked(pg, procs, "activities", waiters=1)
    results = [finish(p) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        assert out.startswith("ana: ok: ") and "Traceback" not in err
    activities = count(sessions, Activity)
    assert activities > 0
    assert sum(new_activities(out) for _, out, _ in results) == activities
    assert count(sessions, Sighting) == activities  # one mailbox: one sighting each
    with sessions() as session:
        mailbox = session.scalars(select(Mailbox)).one()
        assert (mailbox.state, mailbox.last_error) == ("ok", None)
        reasons = list(session.scalars(select(QuarantineEntry.reason)))
    assert not [r for r in reasons if "cannot store" in r]  # only the demo's broken messages
    code, out, err = finish(start(demo_env, "sync", "ana"))
    assert code == 0 and new_activities(out) == 0, err


@pytest.mark.integration  # runs syncd as processes
def test_a_second_sync_beside_a_running_one_waits_its_turn_batch_by_batch(
    db_url, sessions, tmp_path
):
    """Two real `syncd sync` of one big mailbox, the second started once the first has
    committed batches: both finish, and every item is logged once."""
    now = datetime.now(UTC).replace(microsecond=0)
    company = build_demo(tmp_path / "demo", now)
    load_company(sessions, company.root / "crm")
    maildir = generate_maildir(tmp_path / "big", 1500, now)
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(maildir))
    config = tmp_path / "syncd.toml"
    config.write_text("[sync]\nbatch_size = 25\n")
    env = cli_env(tmp_path, db_url, SYNCD_CONFIG=str(config))
    first = start(env, "sync", "ana")
    deadline = time.monotonic() + 120
    while count(sessions, Sighting) < 100:  # the first has committed a few batches
        assert first.poll() is None and time.monotonic() < deadline, finish(first)
        time.sleep(0.05)
    second = start(env, "sync", "ana")
    (code1, out1, err1), (code2, out2, err2) = finish(first), finish(second)
    assert code1 == 0, err1
    assert code2 == 0, err2
    assert "Traceback" not in err1 + err2 and "locked" not in err1 + err2
    activities = count(sessions, Activity)
    assert new_activities(out1) + new_activities(out2) == activities > 1000
    assert count(sessions, Sighting) == activities
    assert count(sessions, QuarantineEntry) == 0
    with sessions() as session:
        assert session.scalars(select(Mailbox.state)).one() == "ok"


@pytest.mark.integration  # runs syncd as processes
def test_two_mailboxes_of_one_user_planning_the_same_tasks_at_once_both_stay_ok(
    request, db_url, sessions, demo_env, tmp_path
):
    """Two mailboxes of one user (here on one Maildir) decide the same follow-up tasks at
    the same moment, in two processes."""
    with sessions() as session:
        maildir = session.scalars(select(Mailbox)).one().settings["maildir"]
    add_local_mailbox(sessions, "ana2", "ana@northwind.test", maildir=maildir)
    with held(db_url, "tasks") as pg:
        procs = [start(demo_env, "sync", name) for name in ("ana", "ana2")]
        wait_until_blocked(pg, procs, "tasks")
    results = [finish(p) for p in procs]
    with sessions() as session:
        states = {
            name: (state, error)
            for name, state, error in session.execute(
                select(Mailbox.name, Mailbox.state, Mailbox.last_error)
            )
        }
    assert states == {"ana": ("ok", None), "ana2": ("ok", None)}
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert count(sessions, Task) > 0


@pytest.mark.integration  # runs syncd as processes
def test_a_lock_held_past_the_busy_timeout_is_one_clear_line_and_fails_no_mailbox(
    tmp_path,
):
    """SQLite only: PostgreSQL has no busy timeout (a writer waits for the lock)."""
    path = tmp_path / "crm.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    sessions = sessionmaker(engine)
    company = build_demo(tmp_path / "demo", datetime.now(UTC).replace(microsecond=0))
    load_company(sessions, company.root / "crm")
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    env = cli_env(tmp_path, f"sqlite:///{path}?timeout=1")
    with held(f"sqlite:///{path}", "all"):
        code, out, err = finish(start(env, "sync", "ana"))
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line == (
        f"syncd: error: the CRM database {path} is locked: another process (most likely "
        "another syncd, a 'syncd run' or 'syncd sync') has been writing to it for more than "
        "1 s; wait for it to finish and run this again, or stop the other one (systemctl "
        "stop syncd); a longer wait: ?timeout=SECONDS in the database URL; several writers "
        "at once: use PostgreSQL"
    )
    with sessions() as session:
        assert session.scalars(select(Mailbox.state)).one() == "ok"  # its mail is not at fault
    code, out, err = finish(start(env, "sync", "ana"))
    assert code == 0 and out.startswith("ana: ok: "), err


def test_a_read_left_open_never_holds_up_a_write_of_the_same_thread(db_url, sessions):
    """Reads begin deferred, writes immediate: a writer inside a reader does not wait."""
    engine = make_engine(db_url + ("?timeout=1" if is_sqlite(db_url) else ""))
    fast = session_factory(engine)
    started = time.monotonic()
    with fast() as reader:
        assert reader.scalar(select(func.count()).select_from(Mailbox)) == 0
        with fast.begin() as writer:
            writer.execute(delete(Mailbox))
        assert reader.scalar(select(func.count()).select_from(Mailbox)) == 0
    assert time.monotonic() - started < 1
    engine.dispose()


# --- secrets in URLs --------------------------------------------------------------------


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


def test_secrets_of_the_url_never_reach_the_engine_or_a_message():
    url = "postgresql+psycopg://syncd:s3cret-pw@127.0.0.1:1/crm?password=s3cret-q&sslmode=disable"
    engine = make_engine(url)
    for shown in (repr(engine), str(engine.url), safe_url(url), safe_url(engine.url)):
        assert "s3cret" not in shown, shown
    assert "s3cret-q" not in engine.url.render_as_string(hide_password=False)
    with pytest.raises(DatabaseError) as info:
        check_schema(engine)
    assert "cannot open the CRM database postgresql+psycopg://syncd:***@127.0.0.1:1/crm" in str(
        info.value
    )
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql+psycopg//syncd:s3cret-pw@h/crm", "the database URL cannot be parsed"),
        ("mysql+nodriver://syncd:s3cret-pw@h/crm", "cannot use the database URL mysql+nodriver"),
        ("sqlite:////tmp/crm.db?password=s3cret-pw", "SQLite takes no password"),
        ("sqlite:////tmp/crm.db?timeout=soon", "timeout='soon' is not a number of seconds"),
    ],
)
def test_an_unusable_url_is_one_error_that_never_shows_its_secret(url, expected):
    with pytest.raises(DatabaseError) as info:
        make_engine(url)
    assert expected in str(info.value) and "s3cret" not in str(info.value)


def test_a_password_in_the_url_query_is_never_printed(db_url, tmp_path, sessions):
    url = with_query(db_url, "password=s3cret-pw")
    env = cli_env(tmp_path, url)
    proc = run(env, "db", "upgrade")
    printed = proc.stdout + proc.stderr
    assert "s3cret-pw" not in printed and "Traceback" not in printed
    if is_sqlite(db_url):
        assert proc.returncode == 1 and "SQLite takes no password" in proc.stderr
        return
    # PostgreSQL takes it (the test server trusts anyone, so any password works)
    assert proc.returncode == 0 and "password=***" in proc.stdout, proc.stderr
    for args in (("status",), ("status", "--json"), ("mailbox", "list")):
        proc = run(env, *args)
        assert proc.returncode == 0 and "s3cret-pw" not in proc.stdout + proc.stderr
    away = with_query(
        db_url.replace("postgres@", "postgres:s3cret-pw2@").replace("127.0.0.1", "127.0.0.2"),
        "password=s3cret-pw&connect_timeout=5",
    )
    for args in (("status",), ("db", "upgrade")):
        proc = run(cli_env(tmp_path, away), *args)
        assert proc.returncode == 1 and "s3cret" not in proc.stdout + proc.stderr
        assert proc.stderr.startswith("syncd: error: cannot open the CRM database ")
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_url_given_as_the_name_of_a_variable_is_refused_without_echoing_it(db_url, tmp_path):
    url = with_query(db_url.replace("postgres@", "postgres:s3cret-pw@"), "sslmode=disable")
    config = tmp_path / "syncd.toml"
    config.write_text(f'[database]\nurl_env = "{url}"\n')
    env = cli_env(tmp_path, "", SYNCD_CONFIG=str(config))
    env.pop("SYNCD_DATABASE_URL")
    proc = run(env, "db", "upgrade")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "key 'database.url_env'" in proc.stderr and "looks like a database URL" in proc.stderr
    assert "s3cret" not in proc.stderr and url not in proc.stderr


def test_a_driver_message_holding_the_password_is_shown_without_it():
    url = "postgresql+psycopg://syncd:s3cret%40pw@db/crm?sslpassword=k3y-secret"
    leak = Exception('FATAL: password "s3cret@pw" (s3cret%40pw) refused; key k3y-secret')
    shown = describe_error(leak, url)
    assert shown.startswith("Exception: FATAL: password") and "***" in shown
    assert "s3cret" not in shown and "k3y-secret" not in shown
    short = "postgresql+psycopg://syncd:pw@db/crm"  # too short to find: the message goes
    assert "pw" not in describe_error(Exception("bad pw for syncd"), short).split(": ", 1)[1]


def test_a_database_from_a_newer_syncd_is_refused_with_the_fix(db_url, sessions):
    engine = make_engine(db_url)
    with sessions.begin() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(DatabaseError, match=r"cannot migrate the CRM database .*9999.*backup"):
        upgrade(engine)
    with pytest.raises(DatabaseError, match="is at revision 9999, syncd needs"):
        check_schema(engine)
    engine.dispose()


def test_a_new_sqlite_database_and_its_folder_are_private_whatever_the_umask(tmp_path):
    """The embedded default's state: a new folder 0700, the database file 0600 (and SQLite's
    -wal and -shm files, which take the database's mode), under a permissive umask."""
    state = tmp_path / "state" / "syncd"
    old = os.umask(0o002)
    try:
        engine = make_engine(f"sqlite:///{state / 'syncd.db'}")
        upgrade(engine)
        with session_factory(engine).begin() as session:
            session.add(User(email="ana@northwind.test", name="Ana"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert modes["syncd.db"] == 0o600
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_syncd_says_its_version():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from syncd.cli import app

    shown = CliRunner().invoke(app, ["--version"])
    assert shown.exit_code == 0 and shown.stdout == f"syncd {version('syncd')}\n"
