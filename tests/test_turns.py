"""Writers of one database in one process take turns in the order they asked
(``syncd.crm.turns``): a pass that wants to store one message is not held up until a
background job's long run of transactions ends. The lock itself is tested alone: first
come, first served; a thread inside its own turn goes on; a writer that waits too long
gives its ticket up and the others are still served."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.crm.database import DatabaseBusy, Sessions
from syncd.crm.models import RematchRequest
from syncd.crm.turns import Turns


def test_a_write_waits_for_one_transaction_of_a_long_job_not_for_all_of_them(
    sessions: sessionmaker[Session],
) -> None:
    events: list[str] = []
    started, stored = threading.Event(), threading.Event()
    turns = getattr(sessions, "_turns", None)  # SQLite's; PostgreSQL's writers never queue

    def pass_is_waiting() -> bool:
        return stored.is_set() if turns is None else turns._next >= 2  # it drew its ticket

    def long_job() -> None:
        for i in range(10):  # a re-match: one transaction after another
            with sessions.begin() as session:
                session.add(RematchRequest(kind="address", value=f"a{i}", queued_at=NOW))
                session.flush()
                events.append(f"job {i}")
                started.set()
                deadline = time.monotonic() + 10
                while i == 0 and not pass_is_waiting():
                    assert time.monotonic() < deadline
                    time.sleep(0.005)

    job = threading.Thread(target=long_job)
    job.start()
    assert started.wait(10)
    with sessions.begin() as session:  # a pass with one new message
        session.add(RematchRequest(kind="address", value="pass", queued_at=NOW))
        session.flush()
        events.append("pass")
    stored.set()
    job.join()
    assert events.index("pass") == 1, events  # right after the transaction in hand
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(RematchRequest)) == 11


NOW = datetime(2026, 12, 2, tzinfo=UTC)


def test_turns_are_served_first_come_first_served() -> None:
    turns = Turns()
    order: list[str] = []
    assert turns.acquire(1) is False
    waiting = []
    for name in ("b", "c", "d"):

        def writer(name: str = name) -> None:
            nested = turns.acquire(5)
            order.append(name)
            turns.release(nested)

        t = threading.Thread(target=writer)
        t.start()
        waiting.append(t)
        deadline = time.monotonic() + 5
        while turns._next != len(waiting) + 1:  # its ticket is drawn
            assert time.monotonic() < deadline
            time.sleep(0.001)
    order.append("a")
    turns.release(False)
    for t in waiting:
        t.join()
    assert order == ["a", "b", "c", "d"]


def test_a_thread_inside_its_turn_goes_on_and_a_late_writer_gives_its_ticket_up() -> None:
    turns = Turns()
    assert turns.acquire(1) is False
    assert turns.acquire(1) is True  # a write transaction inside another: no wait
    turns.release(True)
    late: list[BaseException] = []

    def impatient() -> None:
        try:
            turns.acquire(0.05)
        except TimeoutError as exc:
            late.append(exc)

    t = threading.Thread(target=impatient)
    t.start()
    t.join()
    assert late and "no turn to write within 0.05 s" in str(late[0])
    served: list[object] = []

    def patient() -> None:
        try:
            nested = turns.acquire(2)
        except TimeoutError as exc:
            served.append(exc)
            return
        served.append("next")
        turns.release(nested)

    t = threading.Thread(target=patient)
    t.start()
    deadline = time.monotonic() + 5
    while turns._next != 3:  # the patient one drew its ticket, after the impatient one's
        assert time.monotonic() < deadline
        time.sleep(0.001)
    turns.release(False)  # the ticket given up is skipped
    t.join(5)
    assert not t.is_alive() and served == ["next"]


def test_a_writer_kept_waiting_past_the_timeout_is_told_the_database_is_busy(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd.crm.database import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}?timeout=0.2")
    upgrade(engine)
    sessions = Sessions(engine)
    holding = threading.Event()
    done = threading.Event()

    def holder() -> None:
        with sessions.begin():
            holding.set()
            done.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    assert holding.wait(5)
    try:
        with pytest.raises(DatabaseBusy, match="is locked"), sessions.begin():
            pass
    finally:
        done.set()
        t.join()
    with sessions.begin():  # and the turns go on
        pass
    engine.dispose()
