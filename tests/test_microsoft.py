"""Microsoft 365 mailboxes against the local Graph emulator (TLS, a test CA), through msal and
O365 with only the authority and the Graph URL changed; the CRM on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import MailboxSpec
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.client import GraphClient, _Slots
from syncd.connectors.microsoft.parse import mail_item, meeting_item, quarantined
from syncd.connectors.microsoft.signin import read_certificate
from syncd.connectors.microsoft.tasks import EventTasks, TodoTasks
from syncd.crm import reports
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.crm.models import (
    Activity,
    ActivityParticipant,
    Mailbox,
    Opportunity,
    QuarantineEntry,
    Sighting,
    Task,
)
from syncd.demo import load_company
from syncd.items import MailItem, MeetingItem, TaskItem
from syncd.secrets import Secret, SecretBox
from syncd.sync import sync_mailbox

from . import helpers
from .emulators.microsoft import MicrosoftEmulator, make_client_certificate
from .helpers import keys, reread, sync
from .test_cli import run
from .test_crash import assert_same, kill_then_finish, snapshot

S = sessionmaker[Session]
NOW = datetime.now(UTC).replace(microsecond=0)
ANA, BEN = "ana@northwind.test", "ben@northwind.test"
CARLA = ("Carla Díaz", "carla@acme.test")
TENANT = "northwind.onmicrosoft.com"


@pytest.fixture
def microsoft(tmp_path) -> Iterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator()
    emulator.add_app(TENANT, "app-1", secret="secret-1")
    emulator.add_app(TENANT, "app-2", secret="secret-2")
    emulator.add_app(TENANT, "public-1", public=True)
    for user in (ANA, BEN):
        emulator.add_user(user)
    emulator.start()
    yield emulator
    emulator.stop()


def where(emulator: MicrosoftEmulator) -> dict[str, str]:
    return {
        "authority": emulator.base,
        "graph_url": emulator.base + "/",
        "ca_bundle": str(emulator.ca_pem),
    }


def add_mailbox(
    sessions: S,
    settings: Settings,
    emulator: MicrosoftEmulator,
    name: str = "ana",
    user: str = ANA,
    secret: str = "secret-1",
    **extra: Any,
) -> None:
    values = {
        "mode": "app",
        "tenant": TENANT,
        "client_id": "app-1",
        "backoff": 0.02,  # Retry-After is still honoured as given
        **where(emulator),
        **extra,
    }
    helpers.add_mailbox(sessions, settings, name, "microsoft", user, secret, values)


def deliver(
    emulator: MicrosoftEmulator,
    i: int,
    user: str = ANA,
    folder: str = "inbox",
    sender: tuple[str, str] = CARLA,
    to: tuple[str, str] = ("Ana Ruiz", ANA),
    **kw: Any,
) -> str:
    return emulator.deliver(
        user,
        folder,
        subject=kw.pop("subject", f"graph note {i}"),
        sender=sender,
        to=[to],
        message_id=kw.pop("message_id", f"<m{i}@acme.test>"),
        sent=kw.pop("sent", NOW - timedelta(hours=i)),
        body=kw.pop("body", f"Hello, this is note {i}."),
        **kw,
    )


def test_first_sync_delta_sync_and_an_expired_delta_token(sessions, settings, company, microsoft):
    for i in range(12):
        deliver(microsoft, i)
    deliver(microsoft, 90, sent=NOW - timedelta(days=120))  # outside the 90-day window
    deliver(microsoft, 91, folder="drafts")  # never read
    deliver(microsoft, 92, is_draft=True)
    deliver(
        microsoft, 13, folder="sentitems", sender=("Ana Ruiz", ANA), to=CARLA, subject="Re: note"
    )
    add_mailbox(sessions, settings, microsoft, page_size=5)
    first = sync(sessions, settings)
    assert first.new_activities == 13
    deliver(microsoft, 14)
    second = sync(sessions, settings)
    assert (second.new_activities, second.new_sightings) == (1, 1)
    before = microsoft.requests
    quiet = sync(sessions, settings)
    assert (quiet.new_activities, quiet.new_sightings) == (0, 0)
    # a quiet poll: one delta call per folder and for the calendar, one To Do lookup
    assert microsoft.requests - before == 4
    microsoft.expire_delta_tokens()  # 410 syncStateNotFound: the folders are read again
    deliver(microsoft, 15)
    third = sync(sessions, settings)
    assert (third.new_activities, third.new_sightings) == (1, 1)
    microsoft.expire_delta_tokens(maintenance=True)  # 410 with Location: the same
    assert sync(sessions, settings).new_activities == 0
    expected = sorted(f"mid:m{i}@acme.test" for i in [*range(12), 13, 14, 15])
    assert keys(sessions) == expected
    with sessions() as session:
        direction = session.scalar(
            select(Activity.direction).where(Activity.key == "mid:m13@acme.test")
        )
    assert direction == "outbound"


def test_replays_empty_pages_and_a_moved_message_log_nothing_twice(
    sessions, settings, company, microsoft
):
    moved = deliver(microsoft, 1)
    deliver(microsoft, 2)
    add_mailbox(sessions, settings, microsoft)
    assert sync(sessions, settings).new_activities == 2
    microsoft.replays = microsoft.empty_pages = True
    microsoft.move(ANA, moved, "archive")
    microsoft.move(ANA, moved, "inbox")  # back again: same immutable id, same sighting
    deliver(microsoft, 3)
    again = sync(sessions, settings)
    assert (again.new_activities, again.new_sightings) == (1, 1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Sighting)) == 3


def test_private_items_never_and_categories_exclude_or_force(
    sessions, settings, company, microsoft
):
    deliver(microsoft, 1, sensitivity="private")
    deliver(microsoft, 2, sensitivity="confidential")
    deliver(microsoft, 3, categories=["No CRM"])
    deliver(microsoft, 4, categories=["CRM"], sender=("Ben", BEN))  # internal, forced in
    deliver(microsoft, 5, categories=["CRM"], sensitivity="private")  # private wins
    deliver(microsoft, 6, sender=("Ben", BEN))  # internal: not logged
    deliver(microsoft, 7, headers=[("List-Id", "<news.acme.test>")])  # bulk
    deliver(microsoft, 8, headers=[("List-Id", "<news.acme.test>")], categories=["crm"])
    microsoft.add_event(
        ANA,
        subject="Private lunch",
        start=NOW - timedelta(days=2),
        end=NOW - timedelta(days=2) + timedelta(hours=1),
        organizer=CARLA,
        attendees=[("Ana", ANA)],
        sensitivity="private",
    )
    microsoft.add_event(
        ANA,
        subject="Skip me",
        start=NOW + timedelta(days=2),
        end=NOW + timedelta(days=2, hours=1),
        organizer=CARLA,
        attendees=[("Ana", ANA)],
        categories=["No CRM"],
    )
    add_mailbox(sessions, settings, microsoft)
    report = sync(sessions, settings)
    assert keys(sessions) == ["mid:m4@acme.test", "mid:m8@acme.test"]
    assert report.excluded["private"] == 4 and report.excluded["excluded label"] == 2


def message(**fields: Any) -> dict[str, Any]:
    """A Graph message resource as message delta returns it."""
    return {
        "id": "AAkALmsg1",
        "internetMessageId": "<p1@acme.test>",
        "conversationId": "AAQkconv1",
        "subject": "Pricing",
        "from": {"emailAddress": {"name": CARLA[0], "address": CARLA[1]}},
        "toRecipients": [{"emailAddress": {"name": "Ana Ruiz", "address": ANA}}],
        "sentDateTime": "2026-01-05T10:00:00Z",
        "receivedDateTime": "2026-01-05T10:00:01Z",
        "bodyPreview": "Hello Ana, about [OPP-101] pricing",
        "body": {"contentType": "text", "content": "Hello Ana,\nabout [OPP-101] pricing"},
        **fields,
    }


def sensitivity(value: str, pid: str = "Integer 0x36") -> dict[str, Any]:
    return {"singleValueExtendedProperties": [{"id": pid, "value": value}]}


def header(name: str, value: str) -> dict[str, Any]:
    return {"internetMessageHeaders": [{"name": name, "value": value}]}


def test_message_sensitivity_is_pid_tag_sensitivity_or_the_sensitivity_header():
    """PidTagSensitivity 2 (private) and 3 (confidential) are private, 0 and 1 (personal) are
    not, as the RFC 2156 header is read for MIME mail (Private, Company-Confidential)."""
    assert not mail_item(message()).private
    assert mail_item(message(**sensitivity("2"))).private
    assert mail_item(message(**sensitivity("3", "Integer 0x0036"))).private
    assert not mail_item(message(**sensitivity("1"))).private
    assert not mail_item(message(**sensitivity("0"))).private
    assert not mail_item(message(**sensitivity("2", "Integer 0x0037"))).private  # another tag
    assert mail_item(message(**header("Sensitivity", "Company-Confidential"))).private
    assert mail_item(message(**header("sensitivity", " private "))).private
    assert not mail_item(message(**header("Sensitivity", "Personal"))).private
    assert not mail_item(message(**sensitivity("not a number"))).private


def test_the_body_policy_decides_which_text_reaches_the_item():
    full = mail_item(message(), "full")
    assert full.body == "Hello Ana,\nabout [OPP-101] pricing"  # the text, its lines kept
    html = mail_item(message(body={"contentType": "html", "content": "<p>Hi [OPP-7]</p>"}), "full")
    assert "<p>" not in html.body and "[OPP-7]" in html.body
    snippet = mail_item(message(), "snippet")
    assert snippet.body == "Hello Ana, about [OPP-101] pricing"
    bare = mail_item(message(), "metadata")
    assert bare.body == ""


def test_unreadable_items_are_quarantined_with_their_json_and_parse_again():
    broken = message(sentDateTime="yesterday", receivedDateTime=None)
    with pytest.raises(ValueError, match="no usable date"):
        mail_item(broken)
    held = quarantined(broken, "no usable date", "graph-message")
    assert (held.provider_id, held.format) == ("AAkALmsg1", "graph-message")
    assert held.raw is not None and json.loads(held.raw) == broken
    with pytest.raises(ValueError):
        reread(held.raw, "graph-message")
    fixed = held.raw.replace(b'"yesterday"', b'"2026-01-04T09:00:00Z"')
    again = reread(fixed, "graph-message", "full")
    assert isinstance(again, MailItem) and again.key == "mid:p1@acme.test"
    with pytest.raises(ValueError, match="not a readable Graph message"):
        mail_item({"from": "nobody", "toRecipients": 7})  # wrong shapes: ValueError only
    # a private message that cannot be read keeps its reason, never its content
    secret = quarantined({**broken, **sensitivity("3")}, "no usable date", "graph-message")
    assert secret.raw is None and secret.format is None and "private" in secret.reason
    event = {"id": "AAkALev1", "subject": "QBR", "start": {"dateTime": "soon", "timeZone": "UTC"}}
    with pytest.raises(ValueError):
        meeting_item(event)
    held_event = quarantined(event, "bad start", "graph-event")
    assert held_event.format == "graph-event" and held_event.raw is not None
    event["start"] = event["end"] = {"dateTime": "2026-01-05T10:00:00", "timeZone": "UTC"}
    meeting = reread(json.dumps(event).encode(), "graph-event")
    assert isinstance(meeting, MeetingItem) and meeting.subject == "QBR"
    with pytest.raises(ValueError):
        reread(b"{not json", "graph-message")


def activity_links(sessions: S, key: str) -> list[tuple[str, str, str]]:
    """(type, target, reason) of an activity's links; opportunities by external id."""
    with sessions() as session:
        activity = session.scalar(select(Activity).where(Activity.key == key))
        assert activity is not None, key
        opps = dict(session.execute(select(Opportunity.id, Opportunity.external_id)).all())
        return sorted(
            (lk.type, opps[lk.target_id] if lk.type == "opportunity" else "", lk.reason)
            for lk in activity.links
        )


def private_texts(sessions: S) -> list[str]:
    """Every text of the CRM where a private message could have left a trace."""
    with sessions() as session:
        rows = [
            *session.execute(select(Activity.subject, Activity.snippet, Activity.body)).all(),
            *session.execute(select(QuarantineEntry.reason, QuarantineEntry.provider_id)).all(),
            *session.execute(select(ActivityParticipant.name, ActivityParticipant.address)).all(),
        ]
    return [str(v) for row in rows for v in row if v]


def test_private_and_confidential_mail_is_never_logged(
    sessions, settings, company, microsoft, caplog
):
    """Sensitivity read through PidTagSensitivity ($expand on the delta itself; $select of
    ``sensitivity`` is refused on messages) or the Sensitivity header: never in the CRM."""
    caplog.set_level("DEBUG")
    deliver(microsoft, 1, subject="Secret one", sensitivity="private", body="secret words")
    deliver(microsoft, 2, subject="Secret two", sensitivity="confidential", body="secret words")
    deliver(
        microsoft,
        3,
        subject="Secret three",
        body="secret words",
        headers=[("Sensitivity", "Company-Confidential")],
    )
    deliver(microsoft, 4, subject="Secret four", headers=[("Sensitivity", "Private")])
    deliver(microsoft, 5, subject="Personal note", sensitivity="personal")  # not private
    deliver(microsoft, 6, subject="Plain note")
    add_mailbox(sessions, settings, microsoft, body="full")
    report = sync(sessions, settings)
    assert keys(sessions) == ["mid:m5@acme.test", "mid:m6@acme.test"]
    assert report.excluded["private"] == 4 and report.quarantined == 0
    texts = private_texts(sessions)
    assert not [t for t in texts if "Secret" in t or "secret words" in t]
    assert "Secret" not in caplog.text and "secret words" not in caplog.text
    assert sync(sessions, settings).new_activities == 0  # and not on the next pass either


def test_snippet_policy_stores_the_preview_and_a_tag_in_it_links_the_deal(
    sessions, settings, company, microsoft
):
    # from Carla, who has a role on OPP-101: without the body the link would be contact-role
    deliver(microsoft, 1, subject="Pricing", body="Hi Ana, on [OPP-101]: the pricing we discussed")
    deliver(microsoft, 2, subject="Lunch", body="Hi Ana, lunch next week?")
    add_mailbox(sessions, settings, microsoft)  # the default policy: snippet
    assert sync(sessions, settings).new_activities == 2
    with sessions() as session:
        stored = dict(session.execute(select(Activity.key, Activity.snippet)).all())
        bodies = set(session.scalars(select(Activity.body)))
    assert stored["mid:m1@acme.test"] == "Hi Ana, on [OPP-101]: the pricing we discussed"
    assert stored["mid:m2@acme.test"] == "Hi Ana, lunch next week?"
    assert bodies == {None}  # a snippet is all the policy keeps
    assert ("opportunity", "OPP-101", "tag") in activity_links(sessions, "mid:m1@acme.test")
    assert ("opportunity", "OPP-101", "contact-role") in activity_links(
        sessions, "mid:m2@acme.test"
    )


def test_full_policy_reads_the_text_body_and_a_tag_deep_in_it_links_the_deal(
    sessions, settings, company, microsoft
):
    long_text = "Hi Ana, " + "we went through the rollout plan in detail. " * 10
    deliver(microsoft, 1, subject="Rollout", body=long_text + "This is for [OPP-202].")
    add_mailbox(sessions, settings, microsoft, body="full")
    assert sync(sessions, settings).new_activities == 1
    with sessions() as session:
        snippet, body = session.execute(select(Activity.snippet, Activity.body)).one()
    assert body is not None and "[OPP-202]" in body and "<" not in body  # text, not HTML
    assert snippet and snippet.startswith("Hi Ana, we went through")
    # beyond bodyPreview's 255 characters: found only because the body itself was read
    assert ("opportunity", "OPP-202", "tag") in activity_links(sessions, "mid:m1@acme.test")


def test_metadata_policy_reads_no_text(sessions, settings, company, microsoft):
    deliver(microsoft, 1, subject="Hello", body="Hi Ana, about [OPP-202]")
    add_mailbox(sessions, settings, microsoft, body="metadata")
    assert sync(sessions, settings).new_activities == 1
    with sessions() as session:
        assert session.execute(select(Activity.snippet, Activity.body)).one() == (None, None)
    assert ("opportunity", "OPP-101", "contact-role") in activity_links(
        sessions, "mid:m1@acme.test"
    )


def test_a_changed_body_policy_reads_the_folders_again_with_the_new_query(
    sessions, settings, company, microsoft
):
    deliver(microsoft, 1, subject="Hello", body="Hi Ana")
    add_mailbox(sessions, settings, microsoft, body="metadata")
    sync(sessions, settings)
    with sessions.begin() as session:
        box = session.scalar(select(Mailbox))
        assert box is not None
        box.settings = {**box.settings, "body": "snippet"}
    again = sync(sessions, settings)  # the old delta link carries the old $select
    assert (again.new_activities, again.new_sightings) == (0, 0)
    deliver(microsoft, 2, subject="Pricing", body="Hi Ana, on [OPP-202]")
    assert sync(sessions, settings).new_activities == 1
    with sessions() as session:
        snippet = session.scalar(select(Activity.snippet).where(Activity.key == "mid:m2@acme.test"))
    assert snippet == "Hi Ana, on [OPP-202]"
    assert ("opportunity", "OPP-202", "tag") in activity_links(sessions, "mid:m2@acme.test")


def test_calendar_delta_meetings_in_time_zones_cancellations_and_removals(
    sessions, settings, company, microsoft
):
    start = (NOW + timedelta(days=3)).replace(hour=15, minute=0, second=0)
    eid = microsoft.add_event(
        ANA,
        subject="Acme QBR",
        start=start,
        end=start + timedelta(hours=1),
        organizer=("Ana", ANA),
        attendees=[CARLA],
        zone="Pacific Standard Time",
        uid="qbr-1@northwind.test",
    )
    gone = microsoft.add_event(
        ANA,
        subject="Acme intro",
        start=start + timedelta(days=1),
        end=start + timedelta(days=1, hours=1),
        organizer=CARLA,
        attendees=[("Ana", ANA)],
    )
    add_mailbox(sessions, settings, microsoft)
    assert sync(sessions, settings).new_activities == 2
    with sessions() as session:
        when = session.scalar(
            select(Activity.occurred_at).where(Activity.key == "ical:qbr-1@northwind.test")
        )
    assert when is not None and when.replace(tzinfo=UTC) == start  # the zone was honoured
    microsoft.update_event(ANA, eid, isCancelled=True)
    microsoft.delete_event(ANA, gone)
    changed = sync(sessions, settings)
    assert changed.new_activities == 0
    with sessions() as session:
        statuses = dict(session.execute(select(Activity.subject, Activity.status)).all())
    assert statuses == {"Acme QBR": "cancelled", "Acme intro": "cancelled"}
    microsoft.expire_delta_tokens()
    assert sync(sessions, settings).new_activities == 0


def test_one_message_seen_by_two_microsoft_users_is_one_activity(
    sessions, settings, company, microsoft
):
    deliver(microsoft, 1, to=("Ana", ANA))
    deliver(microsoft, 1, user=BEN, to=("Ben", BEN))
    add_mailbox(sessions, settings, microsoft)
    add_mailbox(sessions, settings, microsoft, "ben", BEN)
    assert sync(sessions, settings, "ana").new_activities == 1
    ben = sync(sessions, settings, "ben")
    assert (ben.new_activities, ben.new_sightings) == (0, 1)
    assert keys(sessions) == ["mid:m1@acme.test"]


def crm_state(sessions: S) -> list[tuple[Any, ...]]:
    """Every activity with what it is linked to and why, and its sightings."""
    with sessions() as session:
        rows = []
        for a in session.scalars(select(Activity)):
            links = sorted((lk.type, lk.target_id, lk.reason) for lk in a.links)
            seen = session.scalar(
                select(func.count()).select_from(Sighting).where(Sighting.activity_id == a.id)
            )
            rows.append((a.key, a.subject, a.direction, a.status, a.thread_key, links, seen))
        return sorted(rows)


def test_throttling_storms_5xx_and_drops_mid_backfill_end_like_a_clean_run(
    sessions, settings, company, microsoft, tmp_path
):
    for i in range(120):
        deliver(
            microsoft,
            i,
            subject=f"Renewal [OPP-101] {i}" if i % 7 == 0 else f"note {i}",
            headers=[("In-Reply-To", f"<m{i - 1}@acme.test>")] if i % 3 == 0 and i else [],
        )
    # the clean run, into a CRM of its own
    engine = make_engine(f"sqlite:///{tmp_path / 'clean.db'}")
    upgrade(engine)
    clean = session_factory(engine)
    load_company(clean, company.root / "crm")
    add_mailbox(clean, settings, microsoft)
    sync(clean, settings)
    clean_state = crm_state(clean)
    engine.dispose()
    microsoft.rate_limit = (6, 1.0)  # six requests a second per mailbox, then 429 + Retry-After
    microsoft.latency = 0.01
    add_mailbox(sessions, settings, microsoft, page_size=10)
    for fault in (
        {"status": 503, "retry_after": 1},
        {"status": 429, "retry_after": 1},
        {"drop": True},
        {"status": 500},
        {"status": 502},
        {"delay": 0.5},
    ):
        microsoft.inject(**fault, path="messages/delta")
    fast = settings.model_copy(update={"sync": settings.sync.model_copy(update={"batch_size": 10})})
    report = sync(sessions, fast)
    assert report.new_activities == 120
    assert crm_state(sessions) == clean_state
    assert not microsoft.faults  # every fault was met, and survived
    assert microsoft.throttled > 0
    assert max(microsoft.peak_inflight().values()) <= 4


def test_a_fault_that_never_ends_fails_the_pass_and_the_next_resumes(
    sessions, settings, company, microsoft
):
    for i in range(30):
        deliver(microsoft, i)
    add_mailbox(sessions, settings, microsoft, retries=2)
    fast = settings.model_copy(update={"sync": settings.sync.model_copy(update={"batch_size": 10})})
    microsoft.inject(status=503, path="skiptoken")
    microsoft.inject(status=503, path="skiptoken")
    failed = sync_mailbox(sessions, fast, "ana")
    assert failed.state == "failing" and "the next poll resumes" in (failed.error or "")
    assert failed.new_activities == 10  # the first page was committed with its cursor
    resumed = sync(sessions, fast)
    assert resumed.new_activities == 20
    assert len(keys(sessions)) == 30


def test_a_long_retry_after_ends_the_pass_instead_of_sleeping(
    sessions, settings, company, microsoft
):
    deliver(microsoft, 1)
    add_mailbox(sessions, settings, microsoft)
    microsoft.inject(status=429, retry_after=3600, path="inbox")
    started = time.monotonic()
    throttled = sync_mailbox(sessions, settings, "ana")
    assert time.monotonic() - started < 60
    assert throttled.state == "failing"
    assert "HTTP 429" in (throttled.error or "") and "next poll resumes" in (throttled.error or "")
    assert sync(sessions, settings).new_activities == 1


def test_revoked_consent_or_a_deleted_secret_parks_only_that_mailbox(
    sessions, settings, company, microsoft
):
    deliver(microsoft, 1)
    deliver(microsoft, 2, user=BEN, to=("Ben", BEN))
    add_mailbox(sessions, settings, microsoft)
    add_mailbox(sessions, settings, microsoft, "ben", BEN, secret="secret-2", client_id="app-2")
    microsoft.revoke_consent("app-1")
    bad = sync_mailbox(sessions, settings, "ana")
    assert bad.state == "parked"
    assert "admin consent" in (bad.error or "") and "Mail.Read" in (bad.error or "")
    sync(sessions, settings, "ben")
    microsoft.delete_secret("app-2")
    microsoft.expire_access_tokens()
    gone = sync_mailbox(sessions, settings, "ben")
    assert gone.state == "parked"
    assert "invalid_client" in (gone.error or "") and "reauth ben" in (gone.error or "")
    assert "secret-2" not in (gone.error or "")
    with sessions() as session:
        states = dict(session.execute(select(Mailbox.name, Mailbox.state)).all())
    assert states == {"ana": "parked", "ben": "parked"}
    with sessions() as session:
        stored = session.scalars(select(Mailbox.secret)).all()
    assert all("secret-" not in (s or "") for s in stored)


def test_certificate_credentials(sessions, settings, company, microsoft, tmp_path):
    pem, certificate = make_client_certificate()
    microsoft.add_app(TENANT, "app-cert", certificate=certificate)
    path = tmp_path / "app.pem"
    path.write_text(pem)
    deliver(microsoft, 1)
    add_mailbox(
        sessions, settings, microsoft, secret=read_certificate(str(path)), client_id="app-cert"
    )
    assert sync(sessions, settings).new_activities == 1
    other, _ = make_client_certificate()  # a certificate the app does not know
    with sessions.begin() as session:
        box = session.scalar(select(Mailbox))
        assert box is not None
        path.write_text(other)
        box.secret = SecretBox(settings.home).encrypt(Secret(read_certificate(str(path))))
    refused = sync_mailbox(sessions, settings, "ana")
    assert refused.state == "parked" and "AADSTS700027" in (refused.error or "")


def yesterday_meeting(emulator: MicrosoftEmulator, subject: str, hours: int = 0) -> str:
    start = (NOW - timedelta(days=1)).replace(hour=10, minute=0, second=0) + timedelta(hours=hours)
    return emulator.add_event(
        ANA,
        subject=subject,
        start=start,
        end=start + timedelta(hours=1),
        organizer=("Ana", ANA),
        attendees=[CARLA],
    )


def task_report(sessions: S) -> dict[str, reports.TaskRow]:
    with sessions() as session:
        return {t["title"]: t for t in reports.task_report(session)}


def test_todo_write_back_completion_in_todo_and_no_duplicates(
    sessions, settings, company, microsoft
):
    yesterday_meeting(microsoft, "Acme check-in")
    yesterday_meeting(microsoft, "Acme pricing", hours=3)
    add_mailbox(sessions, settings, microsoft)
    first = sync(sessions, settings)
    assert first.tasks_written == 2
    tasks = [t for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups"]
    assert sorted(t["title"] for t in tasks) == [
        "Send notes and next steps: Acme check-in",
        "Send notes and next steps: Acme pricing",
    ]
    assert all(t["linkedResources"][0]["applicationName"] == "syncd" for t in tasks)
    again = sync(sessions, settings)
    assert again.tasks_written == 0 and again.new_activities == 0
    # the user ticks one off in To Do: done in the CRM at the next sync
    done = next(t for t in tasks if t["title"].endswith("check-in"))
    microsoft.complete_task(ANA, done["id"])
    sync(sessions, settings)
    report = task_report(sessions)
    assert report["Send notes and next steps: Acme check-in"]["status"] == "done"
    assert report["Send notes and next steps: Acme pricing"]["status"] == "open"
    # a retry from scratch (a crash after the write, before it was recorded) adds nothing
    with sessions.begin() as session:
        for task in session.scalars(select(Task)):
            task.written_version = 0
    sync(sessions, settings)
    assert len([t for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups"]) == 2


def test_tasks_as_events_are_idempotent_and_never_logged_as_meetings(
    sessions, settings, company, microsoft
):
    yesterday_meeting(microsoft, "Acme check-in")
    add_mailbox(sessions, settings, microsoft, tasks="events")
    assert sync(sessions, settings).tasks_written == 1
    own = [e for e in microsoft.events(ANA) if e.get("transactionId")]
    assert len(own) == 1 and own[0]["subject"] == "Send notes and next steps: Acme check-in"
    assert own[0]["_extended"][0]["value"] == own[0]["transactionId"]
    again = sync(sessions, settings)  # its own event read back: no meeting, no rewrite
    assert (again.new_activities, again.tasks_written) == (0, 0)
    with sessions.begin() as session:
        for task in session.scalars(select(Task)):
            task.written_version = 0  # as if the write's record was lost
    sync(sessions, settings)
    assert len([e for e in microsoft.events(ANA) if e.get("transactionId")]) == 1
    microsoft.update_event(ANA, own[0]["id"], subject="Done: " + own[0]["subject"])
    sync(sessions, settings)
    assert task_report(sessions)["Send notes and next steps: Acme check-in"]["status"] == "done"
    (only,) = keys(sessions)  # the meeting; the task's own event never became an activity
    assert only.startswith("ical:")


def spec(secret: str | None = None, **values: Any) -> MailboxSpec:
    """Ana's mailbox in admin mode, as the connector is given it."""
    settings = MicrosoftSettings.model_validate({"tenant": TENANT, "client_id": "app-1", **values})
    return MailboxSpec(
        "ana", "microsoft", ANA, settings, secret=Secret(secret) if secret is not None else None
    )


def client(emulator: MicrosoftEmulator, secret: str = "secret-1", **extra: Any) -> GraphClient:
    return GraphClient(spec(secret, mode="app", **where(emulator), **extra))


def test_todo_writes_go_in_fully_parallel_batches_within_four_in_flight(microsoft):
    """Graph refuses a batch that mixes parallel calls and dependsOn chains: syncd sends
    fully parallel batches of four, so with far more than 4 (and 20) tasks all are written."""
    writer = TodoTasks(
        client(microsoft),
        spec(),
    )
    microsoft.latency = 0.02
    tasks = [
        TaskItem(f"syncd-test-{i}", f"Task {i}", "d", NOW + timedelta(days=1), "open", NOW)
        for i in range(45)
    ]
    writer.known()  # finds (here: creates) the list and reads what it holds
    before = microsoft.requests
    ids = writer.put_many(tasks)
    assert len(set(ids)) == 45 and all(ids)
    assert microsoft.requests - before == 12  # 45 calls, four to a request
    assert microsoft.peak_inflight()[ANA] <= 4
    assert _Slots.peak[f"{microsoft.base}/v1.0|{ANA}"] == 4  # a batch of four fills the slots
    assert sorted(t["title"] for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups") == (
        sorted(f"Task {i}" for i in range(45))
    )
    # updates and deletions go the same way
    done = [dataclasses.replace(t, status="done") for t in tasks[:23]]
    writer.put_many([*done, *(dataclasses.replace(t, status="cancelled") for t in tasks[23:])])
    left = [t for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups"]
    assert len(left) == 23 and all(t["status"] == "completed" for t in left)


def test_many_pending_tasks_are_all_written_by_a_sync(sessions, settings, company, microsoft):
    """25 meetings that ended: 25 follow-up tasks written back through $batch in one pass."""
    start = (NOW - timedelta(days=2)).replace(hour=8, minute=0, second=0)
    for i in range(25):
        microsoft.add_event(
            ANA,
            subject=f"Acme sync {i}",
            start=start + timedelta(minutes=20 * i),
            end=start + timedelta(minutes=20 * i + 15),
            organizer=("Ana", ANA),
            attendees=[CARLA],
        )
    add_mailbox(sessions, settings, microsoft)
    report = sync(sessions, settings)
    assert report.tasks_written == 25
    todo = [t for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups"]
    assert sorted(t["title"] for t in todo) == sorted(
        f"Send notes and next steps: Acme sync {i}" for i in range(25)
    )
    assert max(microsoft.peak_inflight().values()) <= 4
    assert sync(sessions, settings).tasks_written == 0  # all recorded as written
    with sessions() as session:
        assert session.scalar(select(Mailbox.state)) == "ok"


def test_todo_batches_shrink_while_throttled_and_lose_nothing(microsoft):
    writer = TodoTasks(
        client(microsoft, backoff=0.01),
        spec(),
    )
    writer.known()
    microsoft.rate_limit = (4, 0.5)  # eight calls a second: most of a batch of 20 is refused
    tasks = [
        TaskItem(f"syncd-test-{i}", f"Task {i}", "d", NOW + timedelta(days=1), "open", NOW)
        for i in range(30)
    ]
    ids = writer.put_many(tasks)
    assert len(set(ids)) == 30 and microsoft.throttled > 0
    assert sorted(t["title"] for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups") == (
        sorted(f"Task {i}" for i in range(30))
    )


def test_event_task_writes_are_idempotent_by_transaction_id(microsoft):
    writer = EventTasks(client(microsoft))
    task = TaskItem("syncd-no-reply-abc", "Follow up", "d", NOW, "open", NOW)
    assert writer.put(task) == writer.put(task)
    writer.put(dataclasses.replace(task, status="done"))
    (event,) = [e for e in microsoft.events(ANA) if e.get("transactionId")]
    assert event["subject"] == "Done: Follow up"
    writer.put(dataclasses.replace(task, status="cancelled"))
    assert not [e for e in microsoft.events(ANA) if e.get("transactionId")]


def test_secrets_never_reach_logs(sessions, settings, company, microsoft, caplog):
    caplog.set_level("DEBUG")
    deliver(microsoft, 1)
    add_mailbox(sessions, settings, microsoft)
    sync(sessions, settings)
    microsoft.delete_secret("app-1")
    microsoft.expire_access_tokens()
    sync_mailbox(sessions, settings, "ana")
    tokens = [*microsoft.grants, "secret-1"]
    assert not any(t in caplog.text for t in tokens)


def cli_env(tmp_path, db_url: str) -> dict[str, str]:
    return {**os.environ, "SYNCD_HOME": str(tmp_path / "home"), "SYNCD_DATABASE_URL": db_url}


def test_cli_adds_microsoft_mailboxes_in_admin_and_device_code_mode(
    db_url, sessions, company, microsoft, tmp_path
):
    env = cli_env(tmp_path, db_url)
    deliver(microsoft, 1)
    deliver(microsoft, 2, user=BEN, to=("Ben", BEN))
    secret = tmp_path / "client-secret"
    secret.write_text("secret-1\n")
    hidden = [
        "--authority",
        microsoft.base,
        "--graph-url",
        microsoft.base + "/",
        "--ca-bundle",
        str(microsoft.ca_pem),
    ]
    common = ["--kind", "microsoft", "--tenant", TENANT, *hidden]
    run(
        env,
        "mailbox",
        "add",
        "ana",
        "--user",
        ANA,
        *common,
        "--client-id",
        "app-1",
        "--client-secret-file",
        str(secret),
    )
    microsoft.auto_approve = BEN  # Ben signs in at the device page
    added = run(
        env,
        "mailbox",
        "add",
        "ben",
        "--user",
        BEN,
        *common,
        "--client-id",
        "public-1",
        "--device-code",
    )
    assert "enter the code" in added.stderr
    synced = run(env, "sync")
    assert "ana" in synced.stdout and "ben" in synced.stdout
    with sessions() as session:
        states = dict(session.execute(select(Mailbox.name, Mailbox.state)).all())
    assert states == {"ana": "ok", "ben": "ok"}
    assert len(keys(sessions)) == 2
    assert "secret-1" not in (tmp_path / "home").joinpath("secret.key").read_text()
    # access tokens expire: Ben's refresh token (rotating) is used and the new one kept
    microsoft.expire_access_tokens()
    deliver(microsoft, 3, user=BEN, to=("Ben", BEN))
    run(env, "sync", "ben")
    microsoft.expire_access_tokens()
    run(env, "sync", "ben")
    caches = list((tmp_path / "home" / "tokens").glob("*.msal"))
    assert len(caches) == 1 and b"refresh" not in caches[0].read_bytes()  # encrypted
    microsoft.revoke_refresh_tokens(BEN)
    parked = run(env, "sync", "ben", check=False)
    assert parked.returncode != 0 and "syncd mailbox reauth ben" in parked.stdout + parked.stderr
    run(env, "mailbox", "reauth", "ben")  # signs in again (device code)
    run(env, "sync", "ben")
    wrong = run(
        env, "mailbox", "add", "x", "--user", ANA, *common, "--client-id", "app-1", check=False
    )
    assert wrong.returncode != 0 and "--client-secret-file" in wrong.stderr
    confidential = run(
        env,
        "mailbox",
        "add",
        "x",
        "--user",
        ANA,
        *common,
        "--client-id",
        "app-1",
        "--device-code",
        check=False,
    )
    assert confidential.returncode != 0 and "allow public client flows" in confidential.stderr
    codes = len(microsoft.device_codes)
    stranger = run(
        env, "mailbox", "add", "zed", "--user", "zed@northwind.test", *common,
        "--client-id", "public-1", "--device-code", check=False,
    )  # fmt: skip
    assert stranger.returncode != 0 and "no CRM user" in stranger.stderr
    assert len(microsoft.device_codes) == codes  # refused before any sign-in was started


def test_sigkill_mid_backfill_loses_and_duplicates_nothing(
    db_url, sessions, settings, company, microsoft, tmp_path
):
    """A real ``syncd run`` against the emulator, killed at random moments and restarted,
    ends with exactly the CRM of an uninterrupted run, and To Do holds each task once."""
    for i in range(3000):
        deliver(microsoft, i, sent=NOW - timedelta(minutes=i), subject=f"note {i} [OPP-101]")
    for i in range(3):
        yesterday_meeting(microsoft, f"Acme meeting {i}", hours=i)
    microsoft.latency = 0.01
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    engine = make_engine(reference)
    upgrade(engine)
    clean = session_factory(engine)
    load_company(clean, company.root / "crm")
    add_mailbox(clean, settings, microsoft)
    started = time.monotonic()
    assert sync(clean, settings).tasks_written == 3
    seconds = time.monotonic() - started
    engine.dispose()

    add_mailbox(sessions, settings, microsoft)
    config = tmp_path / "syncd.toml"
    config.write_text("[sync]\nbatch_size = 100\npoll_interval = 5\n")
    env = {
        **os.environ,
        "SYNCD_DATABASE_URL": db_url,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_CONFIG": str(config),
    }
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # a random point within the first tenth of the import, once the run has begun storing
    kills = [round(rng.uniform(0.0, 0.1) * seconds, 2) for _ in range(3)]
    kill_then_finish(env, db_url, kills, from_progress=True)
    got = snapshot(db_url)
    where = f"(seed {seed}, kills after {kills} s)"
    assert_same(got, snapshot(reference), where)
    assert len(got["activities"]) == 3003
    todo = [t for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups"]
    assert len(todo) == 3, where


def test_a_todo_task_is_completed_when_its_rule_resolves(sessions, settings, company, microsoft):
    deliver(
        microsoft,
        1,
        folder="sentitems",
        sender=("Ana Ruiz", ANA),
        to=CARLA,
        subject="Proposal [OPP-101]",
        sent=NOW - timedelta(days=8),
    )
    add_mailbox(sessions, settings, microsoft)
    assert sync(sessions, settings).tasks_written == 1
    (task,) = [t for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups"]
    assert task["title"].startswith("Follow up with Carla") and task["status"] == "notStarted"
    deliver(  # Carla answers: the rule resolves, the To Do task is ticked off by syncd
        microsoft,
        2,
        subject="Re: Proposal [OPP-101]",
        sent=NOW - timedelta(hours=1),
        headers=[("In-Reply-To", "<m1@acme.test>"), ("References", "<m1@acme.test>")],
    )
    assert sync(sessions, settings).tasks_written == 1
    (task,) = [t for t in microsoft.tasks(ANA) if t["list"] == "CRM follow-ups"]
    assert task["status"] == "completed"
    assert next(iter(task_report(sessions).values()))["status"] == "done"


def test_an_unreadable_message_is_quarantined_with_its_reason(
    sessions, settings, company, microsoft
):
    bad = deliver(microsoft, 1)
    microsoft.update_message(ANA, bad, **{"from": None, "sender": None, "toRecipients": []})
    worse = deliver(microsoft, 2)
    microsoft.update_message(ANA, worse, sentDateTime="yesterday", receivedDateTime=None)
    deliver(microsoft, 3)
    add_mailbox(sessions, settings, microsoft)
    report = sync(sessions, settings)
    assert report.new_activities == 1 and report.quarantined == 2
    with sessions() as session:
        entries = session.scalars(select(QuarantineEntry)).all()
        reasons = sorted(e.reason for e in entries)
        kept = {e.provider_id: (e.format, e.raw) for e in entries}
    assert any("no From, To or Cc" in r for r in reasons)
    assert any("no usable date" in r and "yesterday" in r for r in reasons)
    # each kept as the JSON Graph gave, for ``syncd quarantine retry``
    assert set(kept) == {bad, worse}
    for provider_id, (format, raw) in kept.items():
        assert format == "graph-message" and raw is not None
        assert json.loads(raw)["id"] == provider_id
    fixed = json.loads(kept[worse][1])
    fixed["sentDateTime"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    item = reread(json.dumps(fixed).encode(), "graph-message")
    assert item.key == "mid:m2@acme.test"


def test_an_unreadable_event_is_quarantined_with_its_json(sessions, settings, company, microsoft):
    good = yesterday_meeting(microsoft, "Acme check-in")
    bad = yesterday_meeting(microsoft, "Acme broken", hours=2)
    microsoft.update_event(ANA, bad, organizer="Acme front desk")  # not Graph's shape
    add_mailbox(sessions, settings, microsoft)
    report = sync(sessions, settings)
    assert report.quarantined == 1 and len(keys(sessions)) == 1
    with sessions() as session:
        (entry,) = session.scalars(select(QuarantineEntry)).all()
    assert entry.provider_id == bad and entry.format == "graph-event"
    assert entry.raw is not None and json.loads(entry.raw)["subject"] == "Acme broken"
    assert "not a readable Graph event" in entry.reason
    assert good != bad
