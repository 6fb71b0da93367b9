"""Gmail mailboxes against the local Google emulator, through the real client libraries;
the CRM on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.crm import reports
from syncd.crm.models import Mailbox, QuarantineEntry, Sighting
from syncd.demo import email_bytes
from syncd.secrets import Secret
from syncd.sync import sync_mailbox

from .emulators.google import GoogleEmulator
from .helpers import add_mailbox, keys, sync
from .test_google_emulator import service_account_key

S = sessionmaker[Session]
NOW = datetime.now(UTC).replace(microsecond=0)
ANA, BEN = "ana@northwind.test", "ben@northwind.test"


@pytest.fixture
def google() -> Iterator[tuple[GoogleEmulator, str]]:
    emulator = GoogleEmulator()
    emulator.add_client("client-1", "secret-1")
    for user in (ANA, BEN):
        emulator.add_user(user)
    base = emulator.start()
    yield emulator, base
    emulator.stop()


def add_gmail(
    sessions: S, settings: Settings, name: str, user: str, secret: dict[str, Any], **extra: Any
) -> None:
    add_mailbox(sessions, settings, name, "gmail", user, json.dumps(secret), extra)


def oauth_mailbox(
    sessions: S,
    settings: Settings,
    google: tuple[GoogleEmulator, str],
    name: str = "ana",
    user: str = ANA,
) -> str:
    emulator, base = google
    refresh = emulator.grant(user)
    add_gmail(
        sessions,
        settings,
        name,
        user,
        {"refresh_token": refresh, "client_secret": "secret-1"},
        mode="oauth",
        client_id="client-1",
        token_uri=base + "token",
        api_endpoint=base,
    )
    return refresh


def deliver(
    emulator: GoogleEmulator,
    user: str,
    i: int,
    sender: str = "carla@acme.test",
    to: str = ANA,
    labels: tuple[str, ...] = ("INBOX",),
    **kw: Any,
) -> str:
    """Message ``g<i>@acme.test``, ``i`` hours old; returns its Gmail id."""
    raw = email_bytes(
        sender=sender,
        to=[to],
        subject=kw.pop("subject", f"gmail note {i}"),
        when=NOW - timedelta(hours=i),
        message_id=f"g{i}@acme.test",
        **kw,
    )
    return emulator.deliver(
        user,
        raw,
        labels=labels,
        internal_date_ms=int((NOW - timedelta(hours=i)).timestamp() * 1000),
    )


def test_first_sync_then_history_then_an_expired_history_id(sessions, settings, company, google):
    emulator, _ = google
    for i in range(5):
        deliver(emulator, ANA, i)
    deliver(emulator, ANA, 50, labels=("SPAM",))
    deliver(emulator, ANA, 51, labels=("TRASH",))
    deliver(emulator, ANA, 52, labels=("CHAT",))
    oauth_mailbox(sessions, settings, google)
    assert sync(sessions, settings, "ana").new_activities == 5
    deliver(emulator, ANA, 6)
    second = sync(sessions, settings, "ana")
    assert second.new_activities == 1
    quiet = sync(sessions, settings, "ana")
    assert (quiet.new_activities, quiet.new_sightings) == (0, 0)
    emulator.expire_history()  # a week later: the stored history id is too old
    deliver(emulator, ANA, 7)
    third = sync(sessions, settings, "ana")
    assert (third.new_activities, third.new_sightings) == (1, 1)
    assert len(keys(sessions)) == 7


def test_gmail_thread_id_links_replies_to_the_deal(sessions, settings, company, google):
    emulator, _ = google
    deliver(emulator, ANA, 1, subject="Renewal [OPP-101]")
    oauth_mailbox(sessions, settings, google)
    sync(sessions, settings, "ana")
    deliver(
        emulator,
        ANA,
        0,
        subject="Re: Renewal",
        in_reply_to="g1@acme.test",
        references=["g1@acme.test"],
    )
    sync(sessions, settings, "ana")
    with sessions() as session:
        rows = {r["subject"]: r for r in reports.activity_report(session)}
    assert {(lk["type"], lk["reason"]) for lk in rows["Re: Renewal"]["links"]} >= {
        ("opportunity", "thread")
    }


def test_a_revoked_grant_parks_only_that_mailbox(sessions, settings, company, google):
    emulator, _ = google
    deliver(emulator, ANA, 1)
    deliver(emulator, BEN, 2, to=BEN)
    refresh = oauth_mailbox(sessions, settings, google)
    oauth_mailbox(sessions, settings, google, "ben", BEN)
    emulator.revoke(refresh)
    bad = sync_mailbox(sessions, settings, "ana")
    assert bad.state == "parked" and "syncd mailbox reauth ana" in (bad.error or "")
    assert refresh not in (bad.error or "")
    sync(sessions, settings, "ben")
    with sessions() as session:
        states = dict(session.execute(select(Mailbox.name, Mailbox.state)).all())
    assert states == {"ana": "parked", "ben": "ok"}


def test_429_storms_5xx_and_drops_mid_backfill_end_like_a_clean_run(
    sessions, settings, company, google
):
    emulator, _ = google
    for i in range(250):
        deliver(emulator, ANA, i)
    oauth_mailbox(sessions, settings, google)
    for fault in (
        {"status": 503},
        {"status": 429, "retry_after": 1},
        {"drop": True},
        {"status": 500},
        {"status": 429},
    ):
        emulator.inject(**fault)
    fast = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"batch_size": 100})}
    )
    report = sync(sessions, fast, "ana")
    assert report.new_activities == 250
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Sighting)) == 250
    assert not emulator.faults  # every fault was met, and survived


def test_a_long_retry_after_ends_the_pass_instead_of_sleeping(sessions, settings, company, google):
    emulator, _ = google
    deliver(emulator, ANA, 1)
    oauth_mailbox(sessions, settings, google)
    emulator.inject(status=429, retry_after=3600, path="/messages")
    started = time.monotonic()
    throttled = sync_mailbox(sessions, settings, "ana")
    assert time.monotonic() - started < 60
    assert throttled.state == "failing" and not emulator.faults
    error = throttled.error or ""
    assert "HTTP 429" in error and "3600 s" in error and "next poll resumes" in error
    assert sync(sessions, settings, "ana").new_activities == 1


def test_a_quota_refusal_that_outlasts_the_tries_fails_the_pass_without_parking(
    sessions, settings, company, google
):
    emulator, base = google
    deliver(emulator, ANA, 1)
    add_gmail(
        sessions,
        settings,
        "ana",
        ANA,
        {"refresh_token": emulator.grant(ANA), "client_secret": "secret-1"},
        mode="oauth",
        client_id="client-1",
        token_uri=base + "token",
        api_endpoint=base,
        retries=2,
    )
    emulator.units_per_minute = 1  # messages.list costs 5: refused with 403, for a while
    refused = sync_mailbox(sessions, settings, "ana")
    assert refused.state == "failing"
    assert "HTTP 403" in (refused.error or "") and "reauth" not in (refused.error or "")
    emulator.units_per_minute = 15_000
    assert sync(sessions, settings, "ana").new_activities == 1


def test_two_gmail_users_who_email_each_other_make_one_activity(
    sessions, settings, company, google
):
    emulator, _ = google
    raw = email_bytes(
        sender=ANA,
        to=["carla@acme.test"],
        cc=[BEN],
        subject="Proposal",
        when=NOW,
        message_id="shared@northwind.test",
    )
    emulator.deliver(ANA, raw, labels=("SENT",))
    emulator.deliver(BEN, raw, labels=("INBOX",))
    oauth_mailbox(sessions, settings, google)
    oauth_mailbox(sessions, settings, google, "ben", BEN)
    sync(sessions, settings, "ana")
    sync(sessions, settings, "ben")
    with sessions() as session:
        (row,) = reports.activity_report(session)
    assert row["mailboxes"] == ["ana", "ben"]


def test_service_account_mode_reads_every_user_with_one_key(sessions, settings, company, google):
    emulator, base = google
    info, public = service_account_key(base)
    emulator.add_service_account(info["client_email"], public)
    deliver(emulator, ANA, 1)
    deliver(emulator, BEN, 2, to=BEN)
    for name, user in (("ana", ANA), ("ben", BEN)):
        add_gmail(sessions, settings, name, user, info, mode="service_account", api_endpoint=base)
        sync(sessions, settings, name)
    assert keys(sessions) == ["mid:g1@acme.test", "mid:g2@acme.test"]


def test_cli_adds_gmail_mailboxes_in_user_and_admin_mode(
    company, google, db_url, settings, tmp_path
):
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    emulator, base = google
    deliver(emulator, ANA, 1)
    deliver(emulator, BEN, 2, to=BEN)
    env = {**os.environ, "SYNCD_DATABASE_URL": db_url, "SYNCD_HOME": str(settings.home)}

    def syncd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncd", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # user mode: the consent URL is printed; a "browser" follows it and allows access
    client_file = tmp_path / "client.json"
    client_file.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": "client-1",
                    "client_secret": "secret-1",
                    "auth_uri": base + "auth",
                    "token_uri": base + "token",
                }
            }
        )
    )
    emulator.consenting = ANA
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd",
            "mailbox",
            "add",
            "ana",
            "--kind",
            "gmail",
            "--user",
            ANA,
            "--oauth-client",
            str(client_file),
            "--api-endpoint",
            base,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    url = ""
    while not url.startswith("http"):
        url = proc.stderr.readline().strip()
        assert url or proc.poll() is None, "syncd printed no consent URL"
    assert re.search(r"[?&]access_type=offline", url) and "client_id=client-1" in url
    urllib.request.urlopen(url).read()  # the browser: consent page, then the loopback
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    # admin mode: one service account key for every user of the domain
    info, public = service_account_key(base)
    emulator.add_service_account(info["client_email"], public)
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(info))
    added = syncd(
        "mailbox",
        "add",
        "ben",
        "--kind",
        "gmail",
        "--user",
        BEN,
        "--service-account",
        str(key_file),
        "--api-endpoint",
        base,
    )
    assert added.returncode == 0, added.stderr
    both = syncd("sync")
    assert both.returncode == 0, both.stderr
    status = {r["mailbox"]: r for r in json.loads(syncd("status", "--json").stdout)}
    assert status["ana"]["items"] == 1 and status["ben"]["items"] == 1
    listing = syncd("mailbox", "list", "--json").stdout
    assert "secret-1" not in listing and "PRIVATE KEY" not in listing
    bad = syncd(
        "mailbox",
        "add",
        "x",
        "--kind",
        "gmail",
        "--user",
        ANA,
        "--service-account",
        str(client_file),
    )
    assert bad.returncode == 1 and "is not a service account key" in bad.stderr


def meeting(summary: str, start: datetime, attendee: str = "eva@globex.test") -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "end": {"dateTime": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "organizer": {"email": ANA},
        "attendees": [{"email": ANA}, {"email": attendee, "displayName": "Eva"}],
    }


def test_google_calendar_meetings_tasks_and_an_expired_sync_token(
    sessions, settings, company, google
):
    emulator, _ = google
    yesterday = (NOW - timedelta(days=1)).replace(hour=10, minute=0, second=0)
    emulator.add_event(ANA, meeting("Globex check-in", yesterday))
    oauth_mailbox(sessions, settings, google)
    first = sync(sessions, settings, "ana")
    assert first.new_activities == 1 and first.tasks_written == 1
    box = emulator.mailboxes[ANA]
    tasks = [e for e in box.events.values() if "extendedProperties" in e]
    assert len(tasks) == 1 and tasks[0]["summary"] == "Send notes and next steps: Globex check-in"
    again = sync(sessions, settings, "ana")  # its own event read back: no meeting, no rewrite
    assert (again.new_activities, again.tasks_written) == (0, 0)
    emulator.expire_sync_tokens()  # 410: the calendar is read again, nothing twice
    emulator.add_event(ANA, meeting("Globex pilot review", yesterday + timedelta(hours=2)))
    third = sync(sessions, settings, "ana")
    assert third.new_activities == 1
    with sessions() as session:
        subjects = sorted(r["subject"] for r in reports.activity_report(session))
    assert subjects == ["Globex check-in", "Globex pilot review"]
    # the user deletes the first task from the calendar: it is cancelled in the CRM
    emulator.mailboxes[ANA].events[tasks[0]["id"]]["status"] = "cancelled"
    emulator.mailboxes[ANA].event_seq += 1
    emulator.mailboxes[ANA].events[tasks[0]["id"]]["sequence_no"] = box.event_seq
    sync(sessions, settings, "ana")
    with sessions() as session:
        report = {t["title"]: t for t in reports.task_report(session)}
    assert report["Send notes and next steps: Globex check-in"]["status"] == "cancelled"
    # the other one the user marks done by its title, as people do with events
    other = next(
        e for e in box.events.values() if "extendedProperties" in e and e["id"] != tasks[0]["id"]
    )
    box.event_seq += 1
    other.update(summary="✓ " + other["summary"], sequence_no=box.event_seq)
    sync(sessions, settings, "ana")
    with sessions() as session:
        report = {t["title"]: t for t in reports.task_report(session)}
    assert report["Send notes and next steps: Globex pilot review"]["status"] == "done"
    assert sum("extendedProperties" in e for e in box.events.values()) == 2  # no duplicates


def test_task_writes_are_idempotent_by_their_event_id(google, settings):
    from syncd.connectors.base import MailboxSpec
    from syncd.connectors.gmail import GmailSettings
    from syncd.connectors.gmail.calendar import GoogleTaskWriter
    from syncd.connectors.gmail.client import GmailClient
    from syncd.connectors.gmail.parse import event_id
    from syncd.items import TaskItem

    emulator, base = google
    spec = MailboxSpec(
        "ana",
        "gmail",
        ANA,
        GmailSettings(
            mode="oauth", client_id="client-1", token_uri=base + "token", api_endpoint=base
        ),
        secret=Secret(
            json.dumps({"refresh_token": emulator.grant(ANA), "client_secret": "secret-1"})
        ),
    )
    writer = GoogleTaskWriter(GmailClient(spec))
    task = TaskItem(
        uid="syncd-no-reply-abc",
        title="Follow up",
        description="d",
        due=NOW,
        status="open",
        created=NOW,
    )
    assert writer.put(task) == writer.put(task) == event_id(task.uid)
    import dataclasses

    writer.put(dataclasses.replace(task, status="done"))
    (event,) = emulator.mailboxes[ANA].events.values()
    assert event["summary"] == "Done: Follow up"


# --- labels, Spam and Trash (issue 9, points 6 and 7) -----------------------------------------


def test_user_labels_match_by_name_no_crm_excludes_and_crm_forces_in(
    sessions, settings, company, google
):
    emulator, _ = google
    no_crm = emulator.add_label(ANA, "No CRM")  # Gmail puts Label_<n> on messages, not names
    crm = emulator.add_label(ANA, "CRM")
    emulator.add_label(ANA, "Receipts")
    deliver(emulator, ANA, 1, labels=("INBOX", no_crm))  # a contact, but the user said no
    deliver(emulator, ANA, 2)  # the same kind of mail, unlabelled: logged
    # internal-only, so excluded unless forced: one with the CRM label, one without
    deliver(emulator, ANA, 3, sender=ANA, to=BEN, labels=("SENT", crm))
    deliver(emulator, ANA, 4, sender=ANA, to=BEN, labels=("SENT",))
    oauth_mailbox(sessions, settings, google)
    report = sync(sessions, settings, "ana")
    assert keys(sessions) == ["mid:g2@acme.test", "mid:g3@acme.test"]
    assert report.excluded["excluded label"] == 1 and report.excluded["internal-only"] == 1


def test_a_label_made_after_the_labels_were_read_is_resolved(sessions, settings, company, google):
    """One connector across passes (as a long-running worker keeps it): its label list was
    read before the user made "No CRM" and "CRM"; the unknown ids make it read it again."""
    from syncd.connectors.gmail.connector import GmailConnector

    emulator, _ = google
    deliver(emulator, ANA, 1, labels=("INBOX", "CATEGORY_UPDATES"))
    oauth_mailbox(sessions, settings, google)
    kept: list[GmailConnector] = []

    def same_connector(spec: Any) -> GmailConnector:
        if not kept:
            kept.append(GmailConnector(spec))
        return kept[0]

    first = sync_mailbox(sessions, settings, "ana", connector_factory=same_connector)
    assert first.ok and first.new_activities == 1  # the labels are listed now
    no_crm = emulator.add_label(ANA, "No CRM")
    crm = emulator.add_label(ANA, "CRM")
    deliver(emulator, ANA, 2, labels=("INBOX", no_crm))
    deliver(emulator, ANA, 3, sender=ANA, to=BEN, labels=("SENT", crm))
    second = sync_mailbox(sessions, settings, "ana", connector_factory=same_connector)
    assert second.ok, second.error
    assert keys(sessions) == ["mid:g1@acme.test", "mid:g3@acme.test"]


def test_a_crm_label_applied_after_arrival_forces_the_message_in(
    sessions, settings, company, google
):
    emulator, _ = google
    crm = emulator.add_label(ANA, "CRM")
    oauth_mailbox(sessions, settings, google)
    sync(sessions, settings, "ana")
    internal = deliver(emulator, ANA, 1, sender=ANA, to=BEN, labels=("SENT",))
    assert sync(sessions, settings, "ana").new_activities == 0  # internal-only
    emulator.modify(ANA, internal, add=(crm,))  # the user labels it afterwards
    assert sync(sessions, settings, "ana").new_activities == 1
    assert keys(sessions) == ["mid:g1@acme.test"]


def test_a_message_taken_out_of_spam_or_trash_is_logged_once(sessions, settings, company, google):
    emulator, _ = google
    spam = deliver(emulator, ANA, 1, labels=("SPAM",))  # there before the first sync
    trash = deliver(emulator, ANA, 2, labels=("TRASH",))
    deliver(emulator, ANA, 3)
    oauth_mailbox(sessions, settings, google)
    assert sync(sessions, settings, "ana").new_activities == 1
    later = deliver(emulator, ANA, 4, labels=("SPAM",))  # arrives after it, straight to Spam
    to_trash = deliver(emulator, ANA, 5, labels=("SPAM",))
    assert sync(sessions, settings, "ana").new_activities == 0
    emulator.modify(ANA, spam, add=("INBOX",), remove=("SPAM",))  # "Not spam"
    emulator.modify(ANA, trash, remove=("TRASH",))  # restored from Trash
    emulator.modify(ANA, later, add=("INBOX",), remove=("SPAM",))
    emulator.modify(ANA, to_trash, add=("TRASH",), remove=("SPAM",))  # still never read
    report = sync(sessions, settings, "ana")
    assert (report.new_activities, report.new_sightings) == (3, 3)
    assert keys(sessions) == [f"mid:g{i}@acme.test" for i in (1, 2, 3, 4)]
    # a logged message trashed and restored is read again, and nothing is logged twice
    emulator.modify(ANA, spam, add=("TRASH",))
    emulator.modify(ANA, spam, remove=("TRASH",))
    again = sync(sessions, settings, "ana")
    assert (again.new_activities, again.new_sightings) == (0, 0)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Sighting)) == 4


def test_an_unparseable_gmail_message_is_quarantined_with_its_bytes(
    sessions, settings, company, google
):
    emulator, _ = google
    broken = b"Subject: no address anywhere\r\n\r\nbody\r\n"
    bad = emulator.deliver(ANA, broken, internal_date_ms=int(NOW.timestamp() * 1000))
    deliver(emulator, ANA, 1)
    oauth_mailbox(sessions, settings, google)
    report = sync(sessions, settings, "ana")
    assert (report.new_activities, report.quarantined) == (1, 1)
    with sessions() as session:
        (entry,) = session.scalars(select(QuarantineEntry)).all()
    assert (entry.provider_id, entry.raw, entry.format) == (bad, broken, "rfc822")
    assert "no From, To, Cc or Bcc" in entry.reason


# --- the calendar window (issue 9, point 8) ---------------------------------------------------


def set_mailbox(sessions: S, name: str, **values: Any) -> None:
    with sessions.begin() as session:
        mailbox = session.scalars(select(Mailbox).where(Mailbox.name == name)).one()
        mailbox.settings = {**mailbox.settings, **values}


def test_google_calendar_logs_only_the_configured_window(sessions, settings, company, google):
    emulator, _ = google
    noon = NOW.replace(hour=12, minute=0, second=0)
    emulator.add_event(ANA, meeting("Globex soon", noon + timedelta(days=10)))
    far = emulator.add_event(ANA, meeting("Globex in 45 days", noon + timedelta(days=45)))
    emulator.add_event(ANA, meeting("Globex long ago", noon - timedelta(days=100)))
    oauth_mailbox(sessions, settings, google)  # the config's defaults: 90 days back, 30 ahead
    assert settings.sync.calendar_future_days == 30 and settings.sync.calendar_past_days == 90
    sync(sessions, settings, "ana")

    def subjects() -> list[str]:
        with sessions() as session:
            return sorted(r["subject"] for r in reports.activity_report(session))

    assert subjects() == ["Globex soon"]
    # changes come by sync token, at any date: the window still holds
    box = emulator.mailboxes[ANA]
    box.event_seq += 1
    box.events[far["id"]].update(location="Room 2", sequence_no=box.event_seq)
    emulator.add_event(ANA, meeting("Globex in 50 days", noon + timedelta(days=50)))
    emulator.add_event(ANA, meeting("Globex 95 days ago", noon - timedelta(days=95)))
    changed = sync(sessions, settings, "ana")
    assert changed.new_activities == 0 and subjects() == ["Globex soon"]
    # the window grows (or time passes): what it now covers is read, unchanged as it is
    set_mailbox(sessions, "ana", calendar_future_days=46, calendar_past_days=96)
    grown = sync(sessions, settings, "ana")
    assert grown.new_activities == 2
    assert subjects() == ["Globex 95 days ago", "Globex in 45 days", "Globex soon"]
    quiet = sync(sessions, settings, "ana")
    assert (quiet.new_activities, quiet.updated) == (0, 0)
