"""The daemon's push watchers and systemd notifications: IMAP IDLE against a real Dovecot
comes back after a refused login is fixed, a dead watcher is started again, and a notify
socket nobody reads never blocks. The CRM on SQLite and on PostgreSQL. Also what
tests/test_concurrency.py shares with these: the daemon run on its threads beside a
scenario, Maildir push watchers, and reading what the CRM logged."""

from __future__ import annotations

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
from imapclient import IMAPClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.kind import typed
from syncd.connectors.local import LocalSettings
from syncd.crm import reports
from syncd.crm.models import Activity, Mailbox, Sighting
from syncd.daemon import Daemon, Notifier
from syncd.demo import add_local_mailbox, deliver, email_bytes

from .helpers import add_mailbox
from .servers import Dovecot

S = sessionmaker[Session]
NOW = datetime.now(UTC).replace(microsecond=0)


def append(server: Dovecot, login: str, *messages: bytes) -> None:
    client = IMAPClient(server.host, port=server.port, ssl=False)
    client.login(login, Dovecot.PASSWORD)
    for m in messages:
        client.append("INBOX", m, flags=(b"\\Seen",))
    client.logout()


def msg(i: int, to: str = "ana@northwind.test") -> bytes:
    return email_bytes(
        sender="Carla <carla@acme.test>",
        to=[to],
        subject=f"deal note {i}",
        when=NOW - timedelta(hours=1) + timedelta(seconds=i),
        message_id=f"daemon-{i}-{uuid.uuid4().hex[:6]}@acme.test",
    )


def subjects(sessions: S) -> set[str]:
    with sessions() as session:
        return {r["subject"] for r in reports.activity_report(session)}


def mailbox_state(sessions: S, name: str) -> str:
    with sessions() as session:
        return str(session.scalar(select(Mailbox.state).where(Mailbox.name == name)))


def wait_for(what: str, condition: Callable[[], bool], timeout: float, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the daemon exited ({proc.returncode}) while waiting for {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_idle_comes_back_after_a_refused_login_and_a_reauth_without_a_restart(
    sessions, settings, company, imap_server, db_url, tmp_path
):
    login = imap_server.login("ana")
    append(imap_server, login, msg(1))
    values = {
        "host": imap_server.host,
        "port": imap_server.port,
        "tls": "none",
        "login": login,
        "retries": 2,
        "idle": True,
    }
    add_mailbox(sessions, settings, "ana", "imap", "ana@northwind.test", "wrong", values)
    config = tmp_path / "syncd.toml"
    config.write_text("[sync]\npoll_interval = 3600\n")  # only IDLE can bring mail in time
    env = {
        **os.environ,
        "SYNCD_DATABASE_URL": db_url,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_CONFIG": str(config),
        "IMAP_PW": Dovecot.PASSWORD,
    }
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            "the refused login to park the mailbox",
            lambda: mailbox_state(sessions, "ana") == "parked",
            60,
            proc,
        )
        reauth = subprocess.run(
            [
                sys.executable,
                "-m",
                "syncd",
                "mailbox",
                "reauth",
                "ana",
                "--password-env",
                "IMAP_PW",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reauth.returncode == 0, reauth.stderr
        # the daemon notices the new password by itself and polls the mailbox once
        wait_for("the poll after the reauth", lambda: "deal note 1" in subjects(sessions), 30, proc)
        # from now on new mail comes by IDLE, long before the next poll (an hour away);
        # a message that lands while IDLE is still being set up is followed by another
        deadline = time.monotonic() + 40
        i = 2
        while "deal note 2" not in subjects(sessions):
            assert proc.poll() is None
            assert time.monotonic() < deadline, "IDLE did not come back after the reauth"
            append(imap_server, login, msg(i))
            i += 1
            wait_until = time.monotonic() + 4
            while time.monotonic() < wait_until and "deal note 2" not in subjects(sessions):
                time.sleep(0.2)
        assert mailbox_state(sessions, "ana") == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr


class MaildirWatcher(threading.Thread):
    """A push watcher for a Maildir: new/ or cur/ changed -> on_change."""

    def __init__(
        self,
        spec: MailboxSpec,
        on_change: Callable[[str], None],
        stop: threading.Event,
        ready: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.spec, self.on_change, self.stop, self.ready = spec, on_change, stop, ready

    def _stamp(self) -> tuple[int, ...]:
        root = typed(self.spec.settings, LocalSettings).maildir or Path()
        return tuple(os.stat(root / sub).st_mtime_ns for sub in ("new", "cur"))

    def run(self) -> None:
        seen = self._stamp()
        self.ready.set()
        while not self.stop.wait(0.1):
            now = self._stamp()
            if now != seen:
                seen = now
                self.on_change(self.spec.name)


class FlakyWatchers:
    """The first start fails (server away), the second watcher dies at once (a dropped
    connection it gives up on), the third one watches."""

    def __init__(self) -> None:
        self.starts = 0
        self.listening = threading.Event()

    def __call__(
        self, spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
    ) -> threading.Thread:
        self.starts += 1
        if self.starts == 1:
            raise ConnectorError("the IMAP server is away")
        if self.starts == 2:
            dead = threading.Thread(target=lambda: None, daemon=True)
            dead.start()
            return dead
        watcher = MaildirWatcher(spec, on_change, stop, self.listening)
        watcher.start()
        return watcher


def test_a_watcher_that_failed_or_died_is_started_again_with_backoff(sessions, settings, company):
    inbox = company.maildirs["ana"]
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(inbox), idle=True)
    slow = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"poll_interval": 3600})}
    )
    watchers = FlakyWatchers()
    daemon = Daemon(sessions, slow, watcher_factory=watchers, notifier=Notifier(""))
    outcome: dict[str, Any] = {}

    def admin() -> None:
        try:
            # started again after a failed start and after dying: 1 s, then 2 s of backoff
            outcome["listening"] = watchers.listening.wait(30)
            if outcome["listening"]:
                started = time.monotonic()
                now = datetime.now(UTC).replace(microsecond=0)
                data = email_bytes(
                    sender="eva@globex.test",
                    to=["ana@northwind.test"],
                    subject="Pushed while you run",
                    when=now,
                    message_id="pushed-1@globex.test",
                )
                deliver(inbox, data, now, "pushed.1.host")
                deadline = started + 15
                while time.monotonic() < deadline:
                    if "Pushed while you run" in subjects(sessions):
                        outcome["logged_after"] = time.monotonic() - started
                        break
                    time.sleep(0.1)
        finally:
            daemon.stopping.set()
            daemon.wake.set()

    helper = threading.Thread(target=admin)
    helper.start()
    assert daemon.run() == 0
    helper.join()
    assert outcome["listening"], "the watcher was never started again"
    assert outcome.get("logged_after") is not None, "the pushed message was not logged"
    assert outcome["logged_after"] < 15  # the next poll is an hour away


def test_notify_never_blocks_and_speaks_to_abstract_sockets():
    name = f"syncd-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        notifier = Notifier("@" + name)
        assert notifier.notify("READY=1")
        assert server.recv(64) == b"READY=1"
        # nobody reads any more: the socket fills, then every message is dropped at once
        started = time.monotonic()
        sent = [notifier.notify("WATCHDOG=1") for _ in range(2000)]
        assert time.monotonic() - started < 2
        assert not sent[-1] and sent.count(True) < 2000
        assert notifier.dropped == sent.count(False)
        server.settimeout(0.2)
        assert server.recv(64) == b"WATCHDOG=1"  # what fitted arrived whole
        notifier.close()
    finally:
        server.close()
    assert not Notifier("").notify("READY=1")  # not under systemd: nothing to do
    assert not Notifier("vsock:2:1234").notify("READY=1")  # not a socket syncd can use


def test_the_watchdog_is_fed_while_items_are_read_inside_one_long_batch(monkeypatch):
    """A batch of slow but legal items (each parse bounded, the batch not) must not get a
    working daemon killed by systemd; a daemon that reads nothing any more is left to it."""
    from syncd import limits

    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a tick of 0.5 s
    name = f"syncd-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.setblocking(False)
    daemon = Daemon(None, None, notifier=Notifier("@" + name))  # type: ignore[arg-type]
    daemon.progress = time.monotonic() - 60  # the loop's last heartbeat is long gone
    feeder = threading.Thread(target=daemon._feed_watchdog, daemon=True)

    def received() -> int:
        count = 0
        while True:
            try:
                count += server.recv(64) == b"WATCHDOG=1"
            except BlockingIOError:
                return count

    try:
        feeder.start()
        until = time.monotonic() + 2.5
        while time.monotonic() < until:  # items keep being parsed, one batch, no heartbeat
            limits.run_bounded(1.0, time.sleep, 0.05)
        fed = received()
        time.sleep(2.5)  # nothing read any more: a stuck daemon
        starved = received()
    finally:
        daemon.stopping.set()
        feeder.join(timeout=2)
        server.close()
    assert fed >= 3
    assert starved <= 2  # two ticks of grace after the last item, then nothing


# --- shared with tests/test_concurrency.py: the daemon on its threads, mail, the CRM ------


def note(to: str, mid: str, when: datetime | None = None) -> bytes:
    return email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=[to],
        subject=f"note {mid}",
        when=when or datetime.now(UTC).replace(microsecond=0),
        message_id=mid,
    )


def seen_at(sessions: S, mailbox: str, mid: str) -> datetime | None:
    """When the mailbox's pass logged the message (its sighting)."""
    with sessions() as session:
        found: datetime | None = session.scalar(
            select(Sighting.seen_at)
            .join(Activity, Activity.id == Sighting.activity_id)
            .join(Mailbox, Mailbox.id == Sighting.mailbox_id)
            .where(Activity.key == f"mid:{mid}", Mailbox.name == mailbox)
        )
        return found


def row(sessions: S, name: str) -> Mailbox:
    with sessions() as session:
        found = session.scalar(select(Mailbox).where(Mailbox.name == name))
        assert found is not None
        return found


def run_daemon(daemon: Daemon, scenario: Callable[[], None]) -> None:
    """``daemon.run()`` in this (the main) thread while ``scenario`` runs beside it; the
    daemon is stopped when the scenario ends, as SIGTERM would."""
    failed: list[BaseException] = []

    def admin() -> None:
        try:
            scenario()
        except BaseException as exc:
            failed.append(exc)
        finally:
            daemon.stopping.set()
            daemon.wake.set()

    helper = threading.Thread(target=admin)
    helper.start()
    assert daemon.run() == 0
    helper.join()
    if failed:
        raise failed[0]


def tuned(settings: Settings, **sync: Any) -> Settings:
    return settings.model_copy(update={"sync": settings.sync.model_copy(update=sync)})


class Pushes:
    """Push watchers for Maildirs (new/ or cur/ changed -> a push), as IMAP IDLE would."""

    def __init__(self, every: float | None = None) -> None:
        self.ready = threading.Event()
        self.every = every  # push this often whatever happens (a storm of pushes)

    def __call__(
        self, spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
    ) -> threading.Thread:
        if self.every is not None:
            return self._storm(spec, on_change, stop)
        watcher = MaildirWatcher(spec, on_change, stop, self.ready)
        watcher.start()
        return watcher

    def _storm(
        self, spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
    ) -> threading.Thread:
        every = self.every or 0.0

        def run() -> None:
            self.ready.set()
            while not stop.wait(every):
                on_change(spec.name)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread
