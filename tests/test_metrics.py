"""Prometheus metrics as a scraper sees them: a real ``syncd run`` serving ``/metrics``,
scraped and parsed; the provider counters of the shared retry policy; ``metrics.address``
errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httplib2
import pytest
from googleapiclient.errors import HttpError
from imapclient import IMAPClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import ConfigError, Settings
from syncd.connectors.gmail.client import retry_hint, transient
from syncd.connectors.retry import retrying
from syncd.crm import mailboxes
from syncd.crm.models import Mailbox, Task
from syncd.demo import DemoCompany, add_local_mailbox, email_bytes
from syncd.metrics import parse_address
from syncd.sync import sync_mailbox

from .emulators.microsoft import MicrosoftEmulator
from .servers import Dovecot
from .test_microsoft import ANA, TENANT
from .test_microsoft import add_mailbox as graph_mailbox
from .test_microsoft import deliver as graph_deliver
from .test_pipeline import demo_mailboxes

SYNCD = [sys.executable, "-m", "syncd"]
S = sessionmaker[Session]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of ``name`` that have ``labels`` (and any others)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture
def daemon(
    tmp_path: Path,
    db_url: str,
    settings: Settings,
    sessions: S,
    company: DemoCompany,
    imap_server: Dovecot,
) -> Iterator[dict[str, Any]]:
    """``syncd run`` over the demo company (ana: a Maildir and a calendar; ben: a Maildir;
    carl: IMAP on Dovecot; gone: a Maildir that is not one; dora: parked), serving metrics."""
    demo_mailboxes(sessions, company)  # ana and ben
    add_local_mailbox(sessions, "gone", "ben@northwind.test", maildir=str(tmp_path / "nowhere"))
    add_local_mailbox(sessions, "dora", "ben@northwind.test", maildir=str(company.maildirs["ben"]))
    login = imap_server.login("carl")
    client = IMAPClient(imap_server.host, port=imap_server.port, ssl=False)
    client.login(login, Dovecot.PASSWORD)
    client.append(
        "INBOX",
        email_bytes(
            sender="Carla <carla@acme.test>",
            to=["ana@northwind.test"],
            subject="metrics over IMAP",
            when=datetime.now(UTC) - timedelta(hours=1),
            message_id="metrics-1@acme.test",
        ),
    )
    client.logout()
    with sessions.begin() as session:
        dora = session.scalar(select(Mailbox.id).where(Mailbox.name == "dora"))
        assert dora is not None
        mailboxes.mark_mailbox(
            session,
            dora,
            state="parked",
            now=datetime.now(UTC),
            error="the sign-in was refused; run 'syncd mailbox reauth dora'",
        )
    env = {
        **os.environ,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_DATABASE_URL": db_url,
        "COLUMNS": "200",
    }
    added = subprocess.run(
        [*SYNCD, "mailbox", "add", "carl", "--kind", "imap", "--user", "ana@northwind.test",
         "--login", login, "--host", "127.0.0.1", "--port", str(imap_server.port),
         "--tls", "none", "--password-env", "PW"],
        env={**env, "PW": Dovecot.PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    port = free_port()
    config = tmp_path / "syncd.toml"
    config.write_text(f'[sync]\npoll_interval = 5\n\n[metrics]\naddress = "127.0.0.1:{port}"\n')
    proc = subprocess.Popen(
        [*SYNCD, "run"],
        env={**env, "SYNCD_CONFIG": str(config)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield {"proc": proc, "port": port, "env": env}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scraped_once_synced(daemon: dict[str, Any]) -> tuple[Samples, dict[str, str]]:
    """Scrape until every mailbox that can be synced was (ana, ben, carl ok; gone failing),
    in the CRM and in the process's counters."""
    proc, port = daemon["proc"], daemon["port"]
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            samples, types = scrape(port)
        except OSError:
            samples, types = {}, {}
        done = [
            value(samples, "syncd_mailbox_last_success_timestamp_seconds", mailbox=m)
            for m in ("ana", "ben", "carl")
        ]
        failing = value(
            samples, "syncd_mailbox_state", mailbox="gone", kind="local", state="failing"
        )
        # a pass is counted in the process just after it is stored: wait for both
        counted_too = (
            total(samples, "syncd_passes_total", outcome="ok") >= 3
            and total(samples, "syncd_passes_total", outcome="failing") >= 1
        )
        if all(done) and failing == 1 and counted_too:
            return samples, types
        assert time.monotonic() < deadline, f"the daemon did not sync everything: {samples}"
        time.sleep(0.5)


def test_a_running_daemon_serves_what_the_crm_and_its_passes_say(daemon, sessions):
    samples, types = scraped_once_synced(daemon)
    assert value(samples, "syncd_database_up") == 1
    state = "syncd_mailbox_state"
    for name, kind, now in [
        ("ana", "local", "ok"),
        ("ben", "local", "ok"),
        ("carl", "imap", "ok"),
        ("gone", "local", "failing"),
        ("dora", "local", "parked"),
    ]:
        for s in ("ok", "failing", "parked"):
            assert value(samples, state, mailbox=name, kind=kind, state=s) == (s == now), (name, s)
    with sessions() as session:
        boxes = {m.name: m for m in session.scalars(select(Mailbox))}
        unwritten = session.scalar(
            select(func.count(Task.id)).where(Task.written_version < Task.version)
        )
    assert types["syncd_mailbox_items_logged"] == "counter"
    for name in ("ana", "ben", "carl", "gone", "dora"):
        logged = value(samples, "syncd_mailbox_items_logged_total", mailbox=name)
        assert logged == boxes[name].items_logged
    assert value(samples, "syncd_mailbox_items_logged_total", mailbox="ana") == 8
    assert value(samples, "syncd_mailbox_items_logged_total", mailbox="carl") == 1
    assert value(samples, "syncd_mailbox_items_quarantined", mailbox="ana") == 1
    assert value(samples, "syncd_mailbox_items_quarantined", mailbox="ben") == 0
    success = value(samples, "syncd_mailbox_last_success_timestamp_seconds", mailbox="ana")
    assert success == boxes["ana"].last_success.timestamp()
    assert value(samples, "syncd_mailbox_last_success_timestamp_seconds", mailbox="gone") is None
    # lag: since the last pass that read everything; a mailbox never tried has none
    for name in ("ana", "ben", "carl", "gone"):
        lag = value(samples, "syncd_mailbox_lag_seconds", mailbox=name)
        assert lag is not None and lag >= 0, name
    assert value(samples, "syncd_mailbox_lag_seconds", mailbox="dora") is not None  # tried once
    assert value(samples, "syncd_mailbox_writeback_failing", mailbox="ana") == 0
    assert (
        total(samples, "syncd_tasks_unwritten", state="pending")
        + total(samples, "syncd_tasks_unwritten", state="failing")
        == unwritten
    )
    # counted in the process: batches, skipped items by reason, IMAP requests
    assert types["syncd_batch_duration_seconds"] == "histogram"
    assert total(samples, "syncd_batch_duration_seconds_count") >= 3  # ana, ben, carl
    assert types["syncd_pass_duration_seconds"] == "histogram"
    assert total(samples, "syncd_pass_duration_seconds_count") >= 4  # and gone's
    assert total(samples, "syncd_passes_total", outcome="ok") >= 3
    assert total(samples, "syncd_passes_total", outcome="failing") >= 1
    skipped = {
        dict(ls)["reason"]: v
        for (n, ls), v in samples.items()
        if n == "syncd_mailbox_items_skipped_total" and dict(ls)["mailbox"] == "ana"
    }
    assert skipped and all(v > 0 for v in skipped.values())
    assert total(samples, "syncd_provider_requests_total", provider="imap") > 0
    assert types["syncd_provider_throttles"] == "counter"
    assert types["syncd_provider_retries"] == "counter"


def test_a_bad_metrics_address_is_one_line_naming_the_key(tmp_path, db_url, settings, sessions):
    env = {**os.environ, "SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url}
    config = tmp_path / "syncd.toml"
    for address, said in [
        ("localhost", "is not HOST:PORT"),
        ("127.0.0.1:99999", "is not HOST:PORT"),
        ("192.0.2.1:9108", "cannot serve the metrics at '192.0.2.1:9108'"),
    ]:
        config.write_text(f'[metrics]\naddress = "{address}"\n')
        proc = subprocess.run(
            [*SYNCD, "run"],
            env={**env, "SYNCD_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("syncd: error: ") and "key 'metrics.address'" in line
        assert said in line


def test_parse_address():
    assert parse_address("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_address("[::1]:9108") == ("::1", 9108)
    for bad in ("", ":9108", "host:", "host:0", "host:port"):
        with pytest.raises(ConfigError, match=re.escape("'127.0.0.1:9108'")):
            parse_address(bad)


# --- the provider counters of the shared retry policy -----------------------------------------


def counted(provider: str) -> dict[str, float]:
    return {
        what: REGISTRY.get_sample_value(f"syncd_provider_{what}_total", {"provider": provider})
        or 0.0
        for what in ("requests", "throttles", "retries")
    }


def gmail_refusal(status: int, reason: str = "", retry_after: str | None = None) -> HttpError:
    headers = {"status": str(status)}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    body = f'{{"error": {{"errors": [{{"reason": "{reason}"}}]}}}}'.encode()
    return HttpError(httplib2.Response(headers), body)


def test_gmail_throttles_and_retries_are_counted_per_provider():
    before = counted("gmail")
    answers = [
        gmail_refusal(403, "rateLimitExceeded"),
        gmail_refusal(429, retry_after="0.01"),
        gmail_refusal(500),
        "done",
    ]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    for attempt in retrying(
        transient=transient, attempts=5, first=0.001, wait_hint=retry_hint, provider="gmail"
    ):
        with attempt:
            result = call()
    assert result == "done"
    after = counted("gmail")
    assert after["requests"] - before["requests"] == 4
    assert after["throttles"] - before["throttles"] == 2  # the 403 rate limit and the 429
    assert after["retries"] - before["retries"] == 3


def test_an_inner_policy_s_tries_are_the_requests_not_the_outer_ones():
    """Gmail's batch: the outer policy asks again for the parts still pending; each of its
    tries runs the inner policy's call, which is the request."""
    before = counted("test-nested")
    pending = [2, 1, 0]

    class Pending(Exception):
        pass

    def inner() -> int:
        return pending.pop(0)

    outer = retrying(
        transient=lambda exc: isinstance(exc, Pending),
        attempts=5,
        first=0.001,
        provider="test-nested",
    )
    for attempt in outer:
        with attempt:
            left = retrying(transient=lambda exc: False, attempts=3, provider="test-nested")(inner)
            if left:
                raise Pending
    after = counted("test-nested")
    assert after["requests"] - before["requests"] == 3
    assert after["retries"] - before["retries"] == 2
    assert after["throttles"] == before["throttles"]


def test_a_scrape_says_when_the_database_is_away():
    from sqlalchemy import create_engine

    from syncd.crm.database import session_factory
    from syncd.metrics import CrmCollector

    engine = create_engine("sqlite:////nonexistent/dir/crm.db")
    families = {f.name: f for f in CrmCollector(session_factory(engine)).collect()}
    assert set(families) == {"syncd_database_up"}
    assert families["syncd_database_up"].samples[0].value == 0


def test_a_mailbox_never_caught_up_lags_since_its_first_item(sessions, settings, company):
    """A first import that yields between passes has no caught_up_at yet: its lag counts
    from its first item seen, not from its last attempt."""
    from syncd.crm.reports import lags, status_report

    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    assert sync_mailbox(sessions, settings, "ana").ok
    later = datetime.now(UTC) + timedelta(hours=2)
    with sessions.begin() as session:
        ana = session.scalars(select(Mailbox)).one()
        first_seen = ana.caught_up_at
        assert first_seen is not None
        ana.caught_up_at, ana.last_attempt = None, later
    with sessions() as session:
        ana = session.scalars(select(Mailbox)).one()
        (lag,) = lags(session, [ana], later).values()
        (row,) = status_report(session, later)
    assert lag >= 2 * 3600 and lag == row["lag_seconds"]
    assert row["caught_up_at"] is None


@pytest.fixture
def microsoft() -> Iterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator()
    emulator.add_app(TENANT, "app-1", secret="secret-1")
    emulator.add_user(ANA)
    emulator.start()
    yield emulator
    emulator.stop()


def test_graph_requests_throttles_and_retries_are_counted(sessions, settings, company, microsoft):
    """Every Graph request the emulator answers is counted once; a 429 with Retry-After and
    a 503 are throttles, a 500 is not; each refusal is tried again."""
    for i in range(3):
        graph_deliver(microsoft, i)
    graph_mailbox(sessions, settings, microsoft)
    microsoft.inject(status=429, retry_after=1, path="messages/delta")
    microsoft.inject(status=503, path="messages/delta")
    microsoft.inject(status=500, path="messages/delta")
    before, answered = counted("microsoft"), microsoft.requests
    report = sync_mailbox(sessions, settings, "ana")
    assert report.ok and report.new_activities == 3, report.error
    after = counted("microsoft")
    assert after["requests"] - before["requests"] == microsoft.requests - answered
    assert after["throttles"] - before["throttles"] == 2
    assert after["retries"] - before["retries"] == 3
