"""``syncd audit`` and :func:`syncd.audit.run_due`: no gap after a full sync; a message that
syncd has no record of below its cursor (its sighting lost, or a cursor moved past it) is
found and named; skipped and quarantined items count as seen. Against a real Dovecot, a
Maildir on disk, and the Google and Microsoft emulators through the real client libraries,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import mailbox as stdlib_mailbox
import time
from datetime import timedelta
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from syncd.audit import run_due
from syncd.cli import app
from syncd.config import AuditSettings, LimitSettings, Settings
from syncd.crm.models import AuditResult, Mailbox, Sighting, SkippedItem, SourceCursor
from syncd.demo import add_local_mailbox, email_bytes

from . import test_gmail as gmail_test
from . import test_microsoft as ms_test
from .emulators.google import GoogleEmulator
from .emulators.microsoft import MicrosoftEmulator
from .helpers import sync
from .servers import Dovecot
from .test_imap import NOW, add_imap_mailbox, append, imap, new_login

S = sessionmaker[Session]


def mail(i: int, **kw: Any) -> bytes:
    return email_bytes(
        sender="Carla <carla@acme.test>",
        to=["ana@northwind.test"],
        subject=f"audit {i}",
        when=NOW - timedelta(hours=i),
        message_id=f"audit-{i}@acme.test",
        **kw,
    )


def audit(settings: Settings, db_url: str, *args: str) -> tuple[Result, list[dict[str, Any]]]:
    env = {"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "250"}
    result = CliRunner().invoke(app, ["audit", "--json", *args], env=env)
    return result, json.loads(result.stdout) if result.stdout.startswith("[") else []


def folders(report: list[dict[str, Any]], mailbox: str) -> dict[str, dict[str, Any]]:
    (found,) = [r for r in report if r["mailbox"] == mailbox]
    return {f["folder"]: f for f in found["folders"]}


def gauge(mailbox: str, folder: str) -> float | None:
    return REGISTRY.get_sample_value(
        "syncd_audit_missing_items", {"mailbox": mailbox, "folder": folder}
    )


def forget_sighting(sessions: S, provider_id: str) -> None:
    with sessions.begin() as session:
        gone = session.execute(delete(Sighting).where(Sighting.provider_id == provider_id))
        assert gone.rowcount == 1  # type: ignore[attr-defined]


def inbox_ids(server: Dovecot, login: str) -> list[str]:
    client = imap(server, login)
    uv = client.select_folder("INBOX")[b"UIDVALIDITY"]
    uids = sorted(client.search(["ALL"]))
    client.logout()
    return [f"INBOX/{uv}/{u}" for u in uids]


def test_imap_no_gap_after_a_full_sync_then_the_missing_are_named(
    sessions, settings, company, imap_server, db_url
):
    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", *(mail(i) for i in range(4)))
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    sync(sessions, settings, "ana")

    result, report = audit(settings, db_url, "ana")

    assert result.exit_code == 0, result.output
    inbox = folders(report, "ana")["imap:INBOX"]
    assert (inbox["held"], inbox["logged"], inbox["missing"]) == (4, 4, 0)
    assert gauge("ana", "imap:INBOX") == 0

    # a sighting lost from the CRM, and a message delivered that a faulty pass stepped over
    first = inbox_ids(imap_server, login)[0]
    forget_sighting(sessions, first)
    append(imap_server, login, "INBOX", mail(9))
    late = inbox_ids(imap_server, login)[-1]
    with sessions.begin() as session:
        row = session.scalars(select(SourceCursor).where(SourceCursor.source == "imap:INBOX")).one()
        row.value = json.dumps({**json.loads(row.value), "uid": int(late.rsplit("/", 1)[1])})

    result, report = audit(settings, db_url, "ana")

    assert result.exit_code == 1
    inbox = folders(report, "ana")["imap:INBOX"]
    assert (inbox["held"], inbox["logged"], inbox["missing"]) == (5, 3, 2)
    assert inbox["missing_ids"] == [first, late]
    assert gauge("ana", "imap:INBOX") == 2
    with sessions() as session:
        kept = session.scalars(select(AuditResult).where(AuditResult.source == "imap:INBOX")).one()
        assert (kept.missing, kept.missing_ids) == (2, [first, late])

    table = CliRunner().invoke(
        app,
        ["audit"],
        env={"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "250"},
    )
    assert table.exit_code == 1
    assert f"ana imap:INBOX: missing: {first}, {late}" in table.stdout


def test_skipped_and_quarantined_count_as_seen(sessions, company, imap_server, db_url, tmp_path):
    settings = Settings(home=tmp_path / "home", limits=LimitSettings(message_bytes=65536))
    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", mail(1), mail(2, body="x" * 100_000))
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    sync(sessions, settings, "ana")
    small, large = inbox_ids(imap_server, login)
    forget_sighting(sessions, small)
    with sessions.begin() as session:  # as the pass records an item an exclusion rule skips
        mailbox_id = session.scalar(select(Mailbox.id).where(Mailbox.name == "ana"))
        session.add(
            SkippedItem(
                mailbox_id=mailbox_id,
                source="imap:INBOX",
                provider_id=small,
                reason="bulk mail",
                seen_at=NOW,
            )
        )

    result, report = audit(settings, db_url)

    assert result.exit_code == 0, result.output
    inbox = folders(report, "ana")["imap:INBOX"]
    assert (inbox["held"], inbox["logged"], inbox["skipped"], inbox["quarantined"]) == (2, 0, 1, 1)
    assert inbox["missing"] == 0 and large not in inbox["missing_ids"]


def test_maildir_gap_named(sessions, settings, company, db_url, tmp_path):
    box = stdlib_mailbox.Maildir(tmp_path / "Maildir", create=True)
    keys = [box.add(mail(i)) for i in range(3)]
    time.sleep(1.1)  # a pass's cursor stops short of files changed in its last second
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(tmp_path / "Maildir"))
    sync(sessions, settings, "ana")

    result, report = audit(settings, db_url, "ana")
    assert result.exit_code == 0, result.output
    assert folders(report, "ana")["maildir:INBOX"]["logged"] == 3

    forget_sighting(sessions, f"maildir:INBOX/{keys[1]}")
    result, report = audit(settings, db_url, "ana")
    assert result.exit_code == 1
    assert folders(report, "ana")["maildir:INBOX"]["missing_ids"] == [f"maildir:INBOX/{keys[1]}"]


def test_run_due_audits_each_mailbox_once_an_interval(
    sessions, settings, company, imap_server, db_url
):
    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", mail(1))
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    assert run_due(sessions, settings, NOW) == []  # never synced: nothing to compare yet
    sync(sessions, settings, "ana")
    now = NOW + timedelta(days=1)

    first = run_due(sessions, settings, now)
    assert [(r.mailbox, r.missing) for r in first] == [("ana", 0)]
    assert run_due(sessions, settings, now + timedelta(hours=23)) == []
    assert [r.mailbox for r in run_due(sessions, settings, now + timedelta(hours=24))] == ["ana"]
    off = settings.model_copy(update={"audit": AuditSettings(interval_hours=0)})
    assert run_due(sessions, off, now + timedelta(days=9)) == []


# --- Gmail and Microsoft Graph: holdings by time, up to the last complete pass ------------------


def test_gmail_no_gap_after_a_full_sync_then_the_missing_are_named(
    sessions, settings, company, db_url
):
    """Drafts, chats, Spam and mail older than the first sync's window are never read and
    never missing; a sighting lost and a message the history never reported (delivered before
    the last complete pass) are named; mail after that pass is the next poll's."""
    emulator = GoogleEmulator()
    emulator.add_client("client-1", "secret-1")
    emulator.add_user(gmail_test.ANA)
    base = emulator.start()
    try:
        google = (emulator, base)
        read = [gmail_test.deliver(emulator, gmail_test.ANA, i) for i in range(1, 4)]
        sent = gmail_test.deliver(emulator, gmail_test.ANA, 4, labels=("SENT",))
        for i, labels in ((5, ("DRAFT",)), (6, ("CHAT",)), (7, ("SPAM",))):
            gmail_test.deliver(emulator, gmail_test.ANA, i, labels=labels)
        gmail_test.deliver(emulator, gmail_test.ANA, 24 * 100)  # before the 90-day window
        gmail_test.oauth_mailbox(sessions, settings, google)
        sync(sessions, settings, "ana")

        result, report = audit(settings, db_url, "ana")
        assert result.exit_code == 0, result.output
        found = folders(report, "ana")["gmail:mail"]
        assert (found["held"], found["logged"], found["missing"]) == (4, 4, 0)

        # a sighting lost; a message the history lost, then a pass that completed after it
        forget_sighting(sessions, read[0])
        unreported = gmail_test.deliver(emulator, gmail_test.ANA, 8)
        with emulator.lock:
            emulator.mailboxes[gmail_test.ANA].history.pop()
        sync(sessions, settings, "ana")
        later = emulator.deliver(gmail_test.ANA, mail(1))  # after the pass: the next poll's

        result, report = audit(settings, db_url, "ana")
    finally:
        emulator.stop()

    assert result.exit_code == 1
    found = folders(report, "ana")["gmail:mail"]
    assert (found["held"], found["logged"], found["missing"]) == (5, 3, 2)
    assert sorted(found["missing_ids"]) == sorted([read[0], unreported])
    assert sent not in found["missing_ids"] and later not in found["missing_ids"]
    assert gauge("ana", "gmail:mail") == 2


def test_microsoft_no_gap_after_a_full_sync_then_the_missing_are_named(
    sessions, settings, company, db_url
):
    """Inbox and Sent Items by immutable id: drafts and mail older than the window are never
    missing; a sighting lost and a message the delta never reported are named."""
    emulator = MicrosoftEmulator()
    emulator.add_app(ms_test.TENANT, "app-1", secret="secret-1")
    emulator.add_user(ms_test.ANA)
    emulator.start()
    try:
        inbox = [ms_test.deliver(emulator, i) for i in range(1, 4)]
        sent = ms_test.deliver(emulator, 4, folder="sentitems")
        ms_test.deliver(emulator, 5, is_draft=True)
        ms_test.deliver(emulator, 24 * 100)  # before the 90-day window
        ms_test.add_mailbox(sessions, settings, emulator)
        sync(sessions, settings, "ana")

        result, report = audit(settings, db_url, "ana")
        assert result.exit_code == 0, result.output
        found = folders(report, "ana")
        assert (found["graph:inbox"]["held"], found["graph:inbox"]["missing"]) == (3, 0)
        assert (found["graph:sentitems"]["held"], found["graph:sentitems"]["logged"]) == (1, 1)

        forget_sighting(sessions, inbox[0])
        unreported = ms_test.deliver(emulator, 6)
        with emulator.lock:  # a change the delta never reports
            emulator.users[ms_test.ANA].collection("inbox")[unreported].seq = 0
        sync(sessions, settings, "ana")

        result, report = audit(settings, db_url, "ana")
    finally:
        emulator.stop()

    assert result.exit_code == 1
    found = folders(report, "ana")
    assert (found["graph:inbox"]["held"], found["graph:inbox"]["missing"]) == (4, 2)
    assert sorted(found["graph:inbox"]["missing_ids"]) == sorted([inbox[0], unreported])
    assert found["graph:sentitems"]["missing"] == 0
    assert sent not in found["graph:sentitems"]["missing_ids"]
    assert gauge("ana", "graph:inbox") == 2


def test_excluded_mail_and_copies_in_two_folders_leave_no_gap(
    sessions, settings, company, imap_server, db_url
):
    """Needs the recorder's skip rows: a mailing-list mail (excluded as bulk) and the same
    message in INBOX and an extra folder (one sighting for the mailbox) are seen, not gaps."""
    login = new_login(imap_server, "ana")
    client = imap(imap_server, login)
    client.create_folder("Projects")
    client.logout()
    append(imap_server, login, "INBOX", mail(1), mail(2, headers={"List-Id": "<news.acme.test>"}))
    append(imap_server, login, "Projects", mail(1))
    add_imap_mailbox(
        sessions, settings, "ana", "ana@northwind.test", imap_server, login, folders=["Projects"]
    )
    sync(sessions, settings, "ana")

    result, report = audit(settings, db_url, "ana")

    assert result.exit_code == 0, result.output
    found = folders(report, "ana")
    assert (found["imap:INBOX"]["logged"], found["imap:INBOX"]["skipped"]) == (1, 1)
    assert (found["imap:Projects"]["held"], found["imap:Projects"]["skipped"]) == (1, 1)
    with sessions() as session:
        reasons = sorted(session.scalars(select(SkippedItem.reason)))
    assert reasons == ["a copy of an item this mailbox logged", "bulk"]


def test_the_daemon_runs_the_due_audits_and_logs_a_gap(
    sessions, settings, company, db_url, tmp_path
):
    """`syncd run` looks for due audits as it starts (then every AUDIT_CHECK): a mailbox
    that read everything is audited, its result kept, and a gap is logged naming it."""
    import os
    import signal
    import subprocess
    import sys

    box = stdlib_mailbox.Maildir(tmp_path / "Maildir", create=True)
    keys = [box.add(mail(i)) for i in range(2)]
    time.sleep(1.1)
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(tmp_path / "Maildir"))
    sync(sessions, settings, "ana")
    forget_sighting(sessions, f"maildir:INBOX/{keys[0]}")
    config = tmp_path / "syncd.toml"
    config.write_text("[sync]\npoll_interval = 3600\n")
    env = {
        **os.environ,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_DATABASE_URL": db_url,
        "SYNCD_CONFIG": str(config),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sessions() as session:
                found = session.scalar(select(AuditResult.missing))
            if found is not None:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert found == 1
    assert "mailbox 'ana' folder 'maildir:INBOX': 1 item(s) the provider holds were never" in err


# --- folders larger than a chunk: the same result, a chunk at a time -----------------------------


def test_a_folder_larger_than_a_chunk_gives_the_same_result(
    sessions, settings, company, imap_server, db_url, tmp_path, monkeypatch
):
    """IMAP listed in UID windows and a Maildir listed in chunks, syncd's records looked up
    a few ids at a time: the counts and the first missing ids (UIDs ascending, numerically;
    a Maildir's smallest names, whatever order the chunks came in) are those of one
    chunk."""
    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", *(mail(i) for i in range(12)))
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    box = stdlib_mailbox.Maildir(tmp_path / "Maildir", create=True)
    keys = [box.add(mail(20 + i)) for i in range(7)]
    time.sleep(1.1)  # a pass's cursor stops short of files changed in its last second
    add_local_mailbox(sessions, "bob", "ana@northwind.test", maildir=str(tmp_path / "Maildir"))
    sync(sessions, settings, "ana")
    sync(sessions, settings, "bob")
    uids = inbox_ids(imap_server, login)
    for gone in [uids[1], *uids[8:]]:  # UIDs 2, 9, 10, 11, 12
        forget_sighting(sessions, gone)
    with sessions.begin() as session:  # the last one skipped: seen
        mailbox_id = session.scalar(select(Mailbox.id).where(Mailbox.name == "ana"))
        session.add(
            SkippedItem(
                mailbox_id=mailbox_id,
                source="imap:INBOX",
                provider_id=uids[-1],
                reason="bulk mail",
                seen_at=NOW,
            )
        )
    files = sorted(f"maildir:INBOX/{k}" for k in keys)
    for gone in files[1:4] + files[5:6]:
        forget_sighting(sessions, gone)

    whole, whole_report = audit(settings, db_url, "--limit", "3")
    monkeypatch.setattr("syncd.audit.CHUNK", 2)
    monkeypatch.setattr("syncd.connectors.imap.probe.UID_WINDOW", 5)
    monkeypatch.setattr("syncd.connectors.local.probe.CHUNK", 2)
    chunked, chunked_report = audit(settings, db_url, "--limit", "3")

    assert whole.exit_code == chunked.exit_code == 1, chunked.output
    assert chunked_report == whole_report
    inbox = folders(chunked_report, "ana")["imap:INBOX"]
    assert (inbox["held"], inbox["logged"], inbox["skipped"], inbox["missing"]) == (12, 7, 1, 4)
    assert inbox["missing_ids"] == [uids[1], uids[8], uids[9]]
    maildir = folders(chunked_report, "bob")["maildir:INBOX"]
    assert (maildir["held"], maildir["logged"], maildir["missing"]) == (7, 3, 4)
    assert maildir["missing_ids"] == files[1:4]
    with sessions() as session:
        kept = session.scalars(select(AuditResult).where(AuditResult.source == "imap:INBOX")).one()
        assert (kept.held, kept.missing, kept.missing_ids) == (12, 4, inbox["missing_ids"])
