"""Mailboxes synced in parallel by one ``syncd run``: while a 60,000-message first import
runs, the other mailboxes' new mail (local Maildirs and IMAP on a real Dovecot) is logged
within two poll intervals; SIGTERM during the import commits the batch in hand and exits 0;
a push is served while every worker is busy with other mailboxes; a mailbox never has two
passes at once; one held by another process is left to it without counting as failing; and
the IMAP connection cap holds while IDLE connections never starve the polls.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors import throttle
from syncd.crm.models import Activity, Mailbox, Sighting
from syncd.daemon import Daemon, Notifier
from syncd.demo import add_local_mailbox, deliver, generate_maildir, make_maildir

from .helpers import add_mailbox
from .servers import Dovecot, TcpProxy
from .test_daemon import Pushes, append, note, row, run_daemon, seen_at, tuned

S = sessionmaker[Session]
SYNCD = [sys.executable, "-m", "syncd"]
IMPORT = 60_000  # messages of the long first import (far longer than the new mail takes)
STOPPED = 20_000  # messages of the import SIGTERM stops (the test then finishes it)
POLL = 5  # seconds: the poll interval of the subprocess runs (the config's minimum)


def local_box(sessions: S, root: Path, name: str, user: str, **more: Any) -> Path:
    """A local mailbox with one message in its Maildir."""
    maildir = make_maildir(root / name)
    mid = f"first-{name}@globex.test"
    deliver(maildir, note(user, mid), datetime.now(UTC), f"first.{name}")
    add_local_mailbox(sessions, name, user, maildir=str(maildir), **more)
    return maildir


def sightings(sessions: S, name: str) -> int:
    with sessions() as session:
        return int(
            session.scalar(
                select(func.count(Sighting.id))
                .join(Mailbox, Mailbox.id == Sighting.mailbox_id)
                .where(Mailbox.name == name)
            )
            or 0
        )


def wait_for(what: str, condition: Callable[[], bool], timeout: float, check: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if check is not None:
            check()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def big_maildir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The long first import: 60,000 messages written straight into a Maildir (read only:
    every test shares it)."""
    return generate_maildir(tmp_path_factory.mktemp("big") / "big", IMPORT, datetime.now(UTC))


@pytest.fixture(scope="module")
def stopped_maildir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The import SIGTERM stops: 20,000 messages, long enough to be under way when it is
    stopped, and short enough to finish afterwards."""
    return generate_maildir(tmp_path_factory.mktemp("stopped") / "big", STOPPED, datetime.now(UTC))


def start_run(
    db_url: str, settings: Settings, tmp_path: Path, config: str
) -> subprocess.Popen[str]:
    path = tmp_path / "syncd.toml"
    path.write_text(config)
    env = {
        **os.environ,
        "SYNCD_DATABASE_URL": db_url,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_CONFIG": str(path),
    }
    env.pop("NOTIFY_SOCKET", None)
    log = (tmp_path / "syncd.log").open("w")  # a file: a full pipe would stall the daemon
    return subprocess.Popen([*SYNCD, "run"], env=env, stdout=log, stderr=log, text=True)


def stop_run(proc: subprocess.Popen[str], tmp_path: Path) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, (tmp_path / "syncd.log").read_text()


def alive(proc: subprocess.Popen[str], tmp_path: Path) -> Callable[[], None]:
    def check() -> None:
        if proc.poll() is not None:
            pytest.fail(
                f"syncd run exited ({proc.returncode}): {(tmp_path / 'syncd.log').read_text()}"
            )

    return check


@pytest.mark.integration  # runs syncd, as a process or on its threads
def test_new_mail_is_logged_within_two_poll_intervals_during_a_long_first_import(
    sessions, settings, company, imap_server, db_url, tmp_path, big_maildir
):
    # 19 mailboxes of Ben's besides Ana's long import: 6 on Dovecot, 13 local Maildirs
    imap_logins: dict[str, str] = {}
    maildirs: dict[str, Path] = {}
    for i in range(6):
        name = f"imap-{i:02}"
        login = imap_logins[name] = imap_server.login(name)
        append(imap_server, login, note("ben@northwind.test", f"first-{name}@globex.test"))
        values = {"host": imap_server.host, "port": imap_server.port, "tls": "none", "login": login}
        add_mailbox(
            sessions, settings, name, "imap", "ben@northwind.test", Dovecot.PASSWORD, values
        )
    for i in range(13):
        name = f"local-{i:02}"
        maildirs[name] = local_box(sessions, tmp_path / "mail", name, "ben@northwind.test")
    add_local_mailbox(sessions, "zz-import", "ana@northwind.test", maildir=str(big_maildir))
    others = [*imap_logins, *maildirs]
    config = f"[sync]\npoll_interval = {POLL}\npass_budget = 5\nbatch_size = 100\nworkers = 4\n"
    proc = start_run(db_url, settings, tmp_path, config)
    check = alive(proc, tmp_path)
    try:
        wait_for(
            "every mailbox's first pass and the import under way",
            lambda: (
                all(row(sessions, n).last_success for n in others)
                and sightings(sessions, "zz-import") > 0
            ),
            120,
            check,
        )
        delivered: dict[str, tuple[str, datetime]] = {}
        for name in others:
            mid = f"new-{name}-{uuid.uuid4().hex[:6]}@globex.test"
            delivered[name] = (mid, datetime.now(UTC))
            if name in imap_logins:
                append(imap_server, imap_logins[name], note("ben@northwind.test", mid))
            else:
                deliver(maildirs[name], note("ben@northwind.test", mid), datetime.now(UTC), mid)
        wait_for(
            "the new mail of every mailbox",
            lambda: all(seen_at(sessions, n, mid) for n, (mid, _) in delivered.items()),
            120,
            check,
        )
        import_row = row(sessions, "zz-import")
    finally:
        code, log = stop_run(proc, tmp_path)
    assert code == 0, log
    assert "Traceback" not in log
    # the import was still going when the last new message had been logged ...
    last_seen = max(filter(None, (seen_at(sessions, n, mid) for n, (mid, _) in delivered.items())))
    ended = import_row.caught_up_at
    assert ended is None or ended > last_seen, f"the import ended first ({ended}): nothing shown"
    assert import_row.last_error is None and import_row.state == "ok"
    # ... and each mailbox logged its new message within two poll intervals
    late = {
        name: round((seen - at).total_seconds(), 1)
        for name, (mid, at) in delivered.items()
        if (seen := seen_at(sessions, name, mid)) and seen - at > timedelta(seconds=2 * POLL)
    }
    assert not late, f"logged later than two poll intervals ({2 * POLL} s): {late}"


@pytest.mark.integration  # runs syncd, as a process or on its threads
def test_sigterm_during_the_import_commits_and_exits_0(
    sessions, settings, company, db_url, tmp_path, stopped_maildir
):
    add_local_mailbox(sessions, "import", "ana@northwind.test", maildir=str(stopped_maildir))
    proc = start_run(db_url, settings, tmp_path, "[sync]\nbatch_size = 200\n")
    try:
        wait_for(
            "the import under way",
            lambda: sightings(sessions, "import") >= 400,
            120,
            alive(proc, tmp_path),
        )
    finally:
        code, log = stop_run(proc, tmp_path)
    assert code == 0, log
    assert "Traceback" not in log
    stopped = row(sessions, "import")
    kept = sightings(sessions, "import")
    assert 400 <= kept < STOPPED * 0.9  # what was committed is kept: a batch, not the lot
    assert stopped.lease_owner is None  # given back: a restart need not wait for it
    assert stopped.caught_up_at is None and stopped.state == "ok"
    # the next run goes on from the cursor: it reads no message twice
    env = {**os.environ, "SYNCD_DATABASE_URL": db_url, "SYNCD_HOME": str(settings.home)}
    env["SYNCD_CONFIG"] = str(tmp_path / "syncd.toml")
    done = subprocess.run(
        [*SYNCD, "sync", "import"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with sessions() as session:
        total = session.scalar(select(func.count(Activity.id)))
    assert sightings(sessions, "import") == total
    assert f"{total - kept} new activities" in done.stdout


@pytest.mark.integration  # runs syncd, as a process or on its threads
def test_a_push_is_served_while_every_worker_is_busy_with_other_mailboxes(
    sessions, settings, company, tmp_path
):
    now = datetime.now(UTC)
    for name, user, seed in (("b-import", "ana", 1), ("c-import", "ben", 2)):
        maildir = generate_maildir(tmp_path / name, 3000, now, seed=seed)
        add_local_mailbox(sessions, name, f"{user}@northwind.test", maildir=str(maildir))
    inbox = local_box(sessions, tmp_path / "mail", "a-pushed", "ben@northwind.test", idle=True)
    # two workers, both taken by imports that never yield on their own (an hour's budget)
    slow = tuned(settings, workers=2, poll_interval=3600, pass_budget=3600, batch_size=50)
    watchers = Pushes()
    daemon = Daemon(sessions, slow, watcher_factory=watchers, notifier=Notifier(""))
    mid = "pushed-1@globex.test"
    seen: dict[str, Any] = {}

    def scenario() -> None:
        wait_for(
            "a-pushed's first pass, its watcher, and both imports under way",
            lambda: (
                watchers.ready.is_set()
                and row(sessions, "a-pushed").last_success is not None
                and all(sightings(sessions, n) > 0 for n in ("b-import", "c-import"))
            ),
            60,
        )
        deliver(inbox, note("ben@northwind.test", mid), datetime.now(UTC), "pushed.1")
        wait_for("the pushed message", lambda: seen_at(sessions, "a-pushed", mid) is not None, 60)
        seen["imports"] = [row(sessions, n).caught_up_at for n in ("b-import", "c-import")]
        wait_for(
            "both imports to end",
            lambda: all(row(sessions, n).caught_up_at for n in ("b-import", "c-import")),
            300,
        )

    run_daemon(daemon, scenario)
    assert seen["imports"] == [None, None], "the push waited for an import to end"
    for name in ("b-import", "c-import"):  # the one that made room went on at its next turn
        done = row(sessions, name)
        assert done.state == "ok" and done.last_error is None and done.lease_owner is None


@pytest.mark.integration  # runs syncd, as a process or on its threads
def test_a_mailbox_never_has_two_passes_at_once(sessions, settings, company, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="syncd")
    maildir = generate_maildir(tmp_path / "storm", 3000, datetime.now(UTC))
    add_local_mailbox(sessions, "storm", "ana@northwind.test", maildir=str(maildir), idle=True)
    local_box(sessions, tmp_path / "mail", "quiet", "ben@northwind.test")
    # pushes every 10 ms while it imports, and it is due again every 5 s (its budget)
    busy = tuned(settings, workers=4, poll_interval=5, pass_budget=5, batch_size=50)
    daemon = Daemon(sessions, busy, watcher_factory=Pushes(every=0.01), notifier=Notifier(""))
    run_daemon(
        daemon,
        lambda: wait_for(
            "the import", lambda: row(sessions, "storm").caught_up_at is not None, 300
        ),
    )
    refused = [r.getMessage() for r in caplog.records if "being synced by" in r.getMessage()]
    assert not refused, f"a second pass of a mailbox was started while one ran: {refused}"
    done = row(sessions, "storm")
    assert done.state == "ok" and done.last_error is None
    assert row(sessions, "quiet").last_success is not None


@pytest.mark.integration  # runs syncd, as a process or on its threads
def test_a_mailbox_held_by_another_process_is_left_to_it_without_failing(
    sessions, settings, company, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="syncd")
    inbox = local_box(sessions, tmp_path / "mail", "held", "ben@northwind.test", idle=True)
    with sessions.begin() as session:
        session.execute(
            update(Mailbox)
            .where(Mailbox.name == "held")
            .values(
                lease_owner="elsewhere:4242:feedbeef",
                lease_until=datetime.now(UTC) + timedelta(hours=1),
            )
        )
    watchers = Pushes()
    daemon = Daemon(
        sessions, tuned(settings, workers=2), watcher_factory=watchers, notifier=Notifier("")
    )
    mid = "after-release@globex.test"
    seen: dict[str, Any] = {}

    def scenario() -> None:
        wait_for(
            "the held mailbox to be left to its holder",
            lambda: any("elsewhere:4242" in r.getMessage() for r in caplog.records),
            60,
        )
        seen["while held"] = row(sessions, "held")
        with sessions.begin() as session:  # the other process ends its pass
            session.execute(update(Mailbox).values(lease_owner=None, lease_until=None))
        wait_for("the watcher", watchers.ready.is_set, 30)
        deliver(inbox, note("ben@northwind.test", mid), datetime.now(UTC), "after.1")
        wait_for("the new message", lambda: seen_at(sessions, "held", mid) is not None, 60)

    run_daemon(daemon, scenario)
    held = seen["while held"]
    assert held.state == "ok" and held.failures == 0 and held.last_error is None
    assert seen_at(sessions, "held", "first-held@globex.test") is not None


class SessionCounter(TcpProxy):
    """A proxy to Dovecot that counts the IMAP sessions open at once: from the client's
    LOGIN to its LOGOUT, as the client sends them (so a session is over before the client
    gives its slot back, and a new one starts after it took one), or to the close of a
    connection the client dropped without a LOGOUT (a kept connection no task took), as the
    proxy sees it: that one may end here just after the client gave its slot back."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self._connection = threading.local()  # each client's pipe runs in a thread of its own
        super().__init__(port)

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        if from_server:
            super()._pipe(src, dst, from_server)
            return
        self._connection.logged_in = False
        try:
            super()._pipe(src, dst, from_server)
        finally:
            with self.lock:
                if self._connection.logged_in:  # closed without a LOGOUT
                    self.open -= 1

    def _count(self, data: bytes) -> None:
        super()._count(data)
        for line in data.split(b"\r\n"):
            parts = line.split(b" ", 2)
            if len(parts) < 2 or not parts[0][:1].isalpha():
                continue
            with self.lock:
                if parts[1].upper() in (b"LOGIN", b"AUTHENTICATE"):
                    if not self._connection.logged_in:  # a connection is one session
                        self.open += 1
                        self.peak = max(self.peak, self.open)
                    self._connection.logged_in = True
                elif parts[1].upper() == b"LOGOUT" and self._connection.logged_in:
                    self.open -= 1
                    self._connection.logged_in = False


def fill(server: Dovecot, login: str, messages: int) -> None:
    """Messages written straight into the user's Maildir, as Dovecot's delivery would."""
    maildir = generate_maildir(server.maildir(login), messages, datetime.now(UTC))
    for dirpath, _dirs, files in os.walk(maildir.parent):
        os.chown(dirpath, 65534, 65534)
        for f in files:
            os.chown(os.path.join(dirpath, f), 65534, 65534)


@pytest.mark.integration  # runs syncd, as a process or on its threads
def test_imap_sync_connections_stay_under_the_cap_and_idle_never_starves_the_polls(
    sessions, settings, company, imap_server, tmp_path
):
    proxy = SessionCounter(imap_server.port)
    names = [f"imap-{i}" for i in range(4)]
    for name in [*names, "idle"]:
        login = imap_server.login(name)
        fill(imap_server, login, 300)
        values = {
            "host": imap_server.host,
            "port": proxy.port,
            "tls": "none",
            "login": login,
            "idle": name == "idle",
        }
        add_mailbox(
            sessions, settings, name, "imap", "ben@northwind.test", Dovecot.PASSWORD, values
        )
        if name == "idle":
            idle_login = login
    # one sync connection to the server at a time, four workers, and an IDLE that stays up
    capped = tuned(settings, workers=4, imap_connections=1, poll_interval=3600, batch_size=50)
    daemon = Daemon(sessions, capped, notifier=Notifier(""))
    mid = "idle-push@globex.test"

    def scenario() -> None:
        wait_for(
            "every mailbox's first import",
            lambda: all(row(sessions, n).caught_up_at for n in [*names, "idle"]),
            180,
        )
        # IDLE is listening once its session is up; new mail then comes by push
        wait_for("the IDLE session", lambda: proxy.commands.count("IDLE") > 0, 30)
        append(imap_server, idle_login, note("ben@northwind.test", mid))
        wait_for("the pushed message", lambda: seen_at(sessions, "idle", mid) is not None, 60)

    try:
        run_daemon(daemon, scenario)
    finally:
        proxy.close()
    # at most one sync session, plus the IDLE one, ever open at once
    assert proxy.peak <= 2, f"{proxy.peak} IMAP sessions were open at once"
    assert all(row(sessions, n).state == "ok" for n in [*names, "idle"])


def test_the_throttle_never_lets_more_than_its_cap_through_at_once():
    key = f"test {uuid.uuid4().hex}"
    lock = threading.Lock()
    inside, peak, done = [0], [0], []

    def work(i: int) -> None:
        with throttle.slot(key, 2):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1
        done.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(done) == list(range(6))
    assert peak[0] == 2
    assert throttle.in_use(key) == 0
