"""Crash safety: a real ``syncd run`` on a 20,000-message Maildir, killed with SIGKILL at
random moments and restarted, ends with exactly the activities, links, sightings and tasks
of an uninterrupted run, with no duplicate. On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from syncd.config import Settings
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.crm.models import (
    Account,
    Activity,
    ActivityParticipant,
    Contact,
    Link,
    Mailbox,
    Opportunity,
    Sighting,
    Task,
)
from syncd.demo import add_local_mailbox, build_demo, event_ics, generate_maildir, load_company
from syncd.sync import sync_mailbox

from .servers import new_pg_database

MESSAGES = int(os.environ.get("SYNCD_CRASH_MESSAGES", "20000"))
SYNCD = [sys.executable, "-m", "syncd"]


def setup_crm(url: str, root: Path, maildir: Path, calendar: Path) -> None:
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, root / "crm")
    add_local_mailbox(
        sessions, "ana", "ana@northwind.test", maildir=str(maildir), calendar=str(calendar)
    )
    engine.dispose()


def snapshot(url: str) -> dict[str, Any]:
    """Everything the CRM holds, by natural keys (ids differ between databases)."""
    engine = make_engine(url)
    with session_factory(engine)() as s:
        names = {
            "contact": dict(s.execute(select(Contact.id, Contact.name)).all()),
            "account": dict(s.execute(select(Account.id, Account.name)).all()),
            "opportunity": dict(s.execute(select(Opportunity.id, Opportunity.external_id)).all()),
        }
        keys = dict(s.execute(select(Activity.id, Activity.key)).all())
        mailboxes = dict(s.execute(select(Mailbox.id, Mailbox.name)).all())
        snap = {
            "activities": Counter(
                (
                    a.key,
                    a.kind,
                    a.subject,
                    a.occurred_at.isoformat(),
                    a.direction,
                    a.status,
                    a.thread_key,
                )
                for a in s.scalars(select(Activity))
            ),
            "links": Counter(
                (keys[lk.activity_id], lk.type, names[lk.type][lk.target_id], lk.reason)
                for lk in s.scalars(select(Link))
            ),
            "participants": Counter(
                (keys[p.activity_id], p.address, p.role)
                for p in s.scalars(select(ActivityParticipant))
            ),
            "sightings": Counter(
                (keys[x.activity_id], mailboxes[x.mailbox_id], x.provider_id)
                for x in s.scalars(select(Sighting))
            ),
            "tasks": Counter(
                (
                    t.uid,
                    t.rule,
                    t.title,
                    t.due.isoformat(),
                    t.status,
                    t.written_version >= t.version,
                )
                for t in s.scalars(select(Task))
            ),
        }
    engine.dispose()
    return snap


def mailbox_done(url: str) -> bool:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return s.scalar(select(Mailbox.last_success)) is not None
    finally:
        engine.dispose()


def activities(url: str) -> int:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return len(s.scalars(select(Activity.id)).all())
    finally:
        engine.dispose()


def kill_then_finish(
    env: dict[str, str], url: str, moments: list[float], from_progress: bool = False
) -> None:
    """``syncd run`` killed with SIGKILL after each of ``moments`` seconds (it must not have
    finished a pass by then), then run until the mailbox has finished and stopped with
    SIGTERM (exit 0). With ``from_progress``, each moment counts from when that run has
    stored its first new activity (start-up times vary more than imports take)."""
    for moment in moments:
        before = activities(url) if from_progress else 0
        proc = subprocess.Popen(
            [*SYNCD, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while from_progress and activities(url) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kills landed mid-import: the mailbox has never finished a pass yet
    assert not mailbox_done(url), f"syncd finished before it was killed ({moments} s)"
    proc = subprocess.Popen(
        [*SYNCD, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while not mailbox_done(url):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "syncd run did not finish the mailbox"
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def assert_same(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    for table, rows in got.items():
        assert all(n == 1 for n in rows.values()), f"duplicate {table} {where}"
        assert rows == want[table], f"{table} differ from the reference {where}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("crash")
    now = datetime.now(UTC).replace(microsecond=0)
    build_demo(root, now)
    maildir = generate_maildir(root / "big", MESSAGES, now)
    calendar = root / "calendar" / "ana"
    for i in range(6):  # meetings with contacts over the last days: follow-up tasks
        start = (now - timedelta(days=i + 1)).replace(hour=10, minute=0, second=0)
        (calendar / f"meet{i}.ics").write_bytes(
            event_ics(
                f"meet{i}@northwind.test",
                f"Meeting {i}",
                start,
                45,
                ("ana@northwind.test", "Ana Ruiz"),
                [("dan@acme.test", "Dan Wu")],
            )
        )
    # the uninterrupted reference run, on its own SQLite database
    ref_url = f"sqlite:///{root / 'reference.db'}"
    ref_calendar = root / "ref-calendar"
    ref_calendar.mkdir()
    for p in calendar.iterdir():
        (ref_calendar / p.name).write_bytes(p.read_bytes())
    setup_crm(ref_url, root, maildir, ref_calendar)
    engine = make_engine(ref_url)
    started = time.monotonic()
    report = sync_mailbox(session_factory(engine), Settings(home=root / "home"), "ana")
    seconds = time.monotonic() - started
    engine.dispose()
    assert report.ok, report.error
    return {
        "root": root,
        "maildir": maildir,
        "calendar": calendar,
        "reference": snapshot(ref_url),
        "ref_calendar": ref_calendar,
        "seconds": seconds,
    }


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    world: dict[str, Any], backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'crash.db'}"
    else:
        url = new_pg_database(request.getfixturevalue("pg_server"))
    calendar = tmp_path / "calendar"
    calendar.mkdir()
    for p in world["calendar"].iterdir():
        (calendar / p.name).write_bytes(p.read_bytes())
    setup_crm(url, world["root"], world["maildir"], calendar)
    config = tmp_path / "syncd.toml"
    config.write_text("[sync]\nbatch_size = 200\npoll_interval = 5\n")
    env = {
        **os.environ,
        "SYNCD_DATABASE_URL": url,
        "SYNCD_HOME": str(tmp_path / "home"),
        "SYNCD_CONFIG": str(config),
    }
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # after start-up (~1 s), a random point within the first fifth of an import: the four
    # kills together never let it finish
    kills = [round(1.0 + rng.uniform(0.02, 0.2) * world["seconds"], 2) for _ in range(4)]
    kill_then_finish(env, url, kills)
    got = snapshot(url)
    assert_same(got, world["reference"], f"(seed {seed}, kills after {kills} s)")
    assert len(got["activities"]) > MESSAGES * 0.9
    assert len(got["tasks"]) > 0
    # the calendar holds each task once, as in the reference run
    assert sorted(p.name for p in calendar.glob("syncd-*.ics")) == sorted(
        p.name for p in world["ref_calendar"].glob("syncd-*.ics")
    )
