"""``syncd quarantine list|show|retry``: what was not read and why, and a retry after an
upgrade that logs what the new code reads. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
import stat
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from syncd.cli import app
from syncd.config import Settings
from syncd.connectors import base, mime, registry
from syncd.crm import recorder, reports
from syncd.crm.loader import load_csv
from syncd.crm.models import Activity, Mailbox, QuarantineEntry, Sighting, SourceCursor
from syncd.demo import add_local_mailbox, deliver, email_bytes, event_ics, make_maildir
from syncd.items import Quarantined
from syncd.sync import SyncReport, sync_mailbox

S = sessionmaker[Session]

# an address written the way some people write it to fool harvesters: syncd cannot read it
OBFUSCATED = (
    b"From: Carla Diaz <carla[at]acme.test>\r\n"
    b"To: ana[at]northwind.test\r\n"
    b"Subject: Pricing question [OPP-101]\r\n"
    b"Message-ID: <obfuscated-1@acme.test>\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"Can we talk about the renewal price?\r\n"
)


def crashing(data: bytes, ctx: base.RereadContext) -> base.Reread:
    """A re-parser that fails as no parser should (the registry names it by module)."""
    raise KeyError("header \x00 with a NUL")


def fixed_rfc822(data: bytes, ctx: base.RereadContext) -> base.Reread:
    """The parser of a later syncd that reads '[at]' addresses."""
    head, sep, body = data.partition(b"\r\n\r\n")
    repaired = head.replace(b"[at]", b"@") + sep + body
    return base.Reread((mime.parse_message(repaired, ctx.provider_id, ctx.received),))


@pytest.fixture
def cli(settings: Settings, db_url: str) -> Any:
    runner = CliRunner()
    env = {"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "200"}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


def sync(sessions: S, settings: Settings, name: str) -> SyncReport:
    report = sync_mailbox(sessions, settings, name)
    assert report.ok, report.error
    return report


def entries(sessions: S) -> dict[str, QuarantineEntry]:
    with sessions() as session:
        return {e.provider_id: e for e in session.scalars(select(QuarantineEntry))}


def subjects(sessions: S, **filters: str) -> dict[str, Any]:
    with sessions() as session:
        return {a["subject"]: a for a in reports.activity_report(session, **filters)}


def mailbox_id(sessions: S, name: str) -> int:
    with sessions() as session:
        found = session.scalar(select(Mailbox.id).where(Mailbox.name == name))
    assert found is not None
    return found


def quarantine(
    sessions: S,
    mailbox: str,
    source: str,
    provider_id: str,
    reason: str,
    raw: bytes | None,
    fmt: str,
) -> int:
    """An entry as a connector leaves it, through the recorder."""
    with sessions.begin() as session:
        recorder.record_batch(
            session,
            mailbox_id=mailbox_id(sessions, mailbox),
            source=source,
            decisions=[],
            quarantined=[Quarantined(provider_id, reason, raw, fmt)],
            cursor=None,
            body_policy="snippet",
            now=datetime.now().astimezone(),
        )
    return max(e.id for e in entries(sessions).values())


def test_a_broken_message_is_listed_shown_and_logged_by_a_retry_after_an_upgrade(
    sessions, settings, company, cli, monkeypatch, tmp_path
):
    inbox = company.maildirs["ana"]
    deliver(inbox, OBFUSCATED, datetime.now().astimezone(), "obfuscated.1.host")
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(inbox))
    time.sleep(1.1)  # a Maildir scan reads again what arrived in its last second
    sync(sessions, settings, "ana")
    found = entries(sessions)
    assert set(found) == {
        "maildir:INBOX/obfuscated.1.host",
        next(p for p in found if p.endswith(".broken.host")),  # the demo's broken file
    }
    broken = next(e for p, e in found.items() if p.endswith(".broken.host"))
    fixable = found["maildir:INBOX/obfuscated.1.host"]
    assert "Pricing question [OPP-101]" not in subjects(sessions)

    listed = cli("quarantine", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows[fixable.id]["reason"] == "no From, To, Cc or Bcc address that can be read"
    assert rows[fixable.id]["mailbox"] == "ana" and rows[fixable.id]["source"] == "maildir:INBOX"
    assert rows[fixable.id]["format"] == "rfc822" and rows[fixable.id]["retryable"] is True
    assert rows[fixable.id]["size"] == len(OBFUSCATED) and rows[fixable.id]["attempts"] == 1
    table = cli("quarantine", "list", "--mailbox", "ana")
    # the table wraps its cells to the terminal's width: compare its words, not its lines
    words = set(re.findall(r"[\w.:]+", table.stdout))
    assert table.exit_code == 0 and {"From", "Cc", "Bcc", "address"} <= words, table.stdout
    assert str(fixable.id) in words

    shown = cli("quarantine", "show", str(fixable.id))
    assert shown.exit_code == 0, shown.output
    for text in (
        "no From, To, Cc or Bcc address that can be read",
        "maildir:INBOX/obfuscated.1.host",
        "mailbox:      ana",
        "format:       rfc822",
        f"size:         {len(OBFUSCATED)} bytes",
        "attempts:     1",
        f"syncd quarantine retry {fixable.id}",
    ):
        assert text in shown.stdout
    assert "Pricing question" not in shown.stdout  # never the bytes themselves
    with sessions() as session:
        cursor_before = session.get(SourceCursor, (mailbox_id(sessions, "ana"), "maildir:INBOX"))
        assert cursor_before is not None
        cursor_value = cursor_before.value

    # the upgrade: this syncd reads '[at]' addresses
    monkeypatch.setitem(registry.SHARED_FORMATS, "rfc822", "tests.test_quarantine:fixed_rfc822")
    retried = cli("quarantine", "retry", "--all")
    assert retried.exit_code == 1  # the demo's broken file is still unreadable
    assert f"{fixable.id} (ana, maildir:INBOX/obfuscated.1.host): logged" in retried.stdout
    assert f"{broken.id} (ana, " in retried.stderr and "still unreadable" in retried.stderr
    assert "1 logged" in retried.stdout and "1 still quarantined" in retried.stdout

    pricing = subjects(sessions)["Pricing question [OPP-101]"]
    assert {(lk["type"], lk["name"], lk["reason"]) for lk in pricing["links"]} >= {
        ("contact", "Carla Díaz", "address"),
        ("opportunity", "OPP-101 Acme platform renewal", "tag"),
    }
    assert pricing["mailboxes"] == ["ana"]
    with sessions() as session:
        sighting = session.scalars(
            select(Sighting).join(Activity).where(Activity.key == "mid:obfuscated-1@acme.test")
        ).one()
        assert sighting.provider_id == "maildir:INBOX/obfuscated.1.host"
        assert sighting.source == "maildir:INBOX"
        cursor_after = session.get(SourceCursor, (mailbox_id(sessions, "ana"), "maildir:INBOX"))
        assert cursor_after is not None and cursor_after.value == cursor_value  # no cursor moved
    left = entries(sessions)
    assert set(left) == {broken.provider_id}
    assert left[broken.provider_id].attempts == 2
    assert left[broken.provider_id].reason == "no header fields: not an RFC 5322 message"
    assert left[broken.provider_id].updated_at is not None

    # the next pass logs nothing twice, and the still-broken entry stays as it is
    again = sync(sessions, settings, "ana")
    assert again.new_activities == 0 and again.new_sightings == 0
    assert entries(sessions)[broken.provider_id].attempts == 2
    status = json.loads(cli("status", "--json").stdout)
    assert {r["mailbox"]: r["quarantined"] for r in status} == {"ana": 1}


def test_retry_reads_every_format_again_through_the_same_rules(sessions, settings, company, cli):
    """Entries whose reason came from a limit a later version lifted: each format is read
    again by its connector's parser and logged, or dropped when the rules exclude it."""
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    now = datetime.now().astimezone().replace(microsecond=0)
    mail = email_bytes(
        sender="Carla Díaz <carla@acme.test>",
        to=["ana@northwind.test"],
        subject="Big attachment [OPP-101]",
        when=now - timedelta(hours=2),
        message_id="big-1@acme.test",
    )
    bulk = email_bytes(
        sender="news@acme.test",
        to=["ana@northwind.test"],
        subject="Acme newsletter",
        when=now - timedelta(hours=3),
        message_id="news-1@acme.test",
        headers={"List-Id": "<news.acme.test>", "Precedence": "bulk"},
    )
    meeting = event_ics(
        "qbr-big@acme.test",
        "Acme QBR (big invite)",
        now + timedelta(days=2),
        60,
        ("ana@northwind.test", "Ana"),
        [("carla@acme.test", "Carla Díaz")],
    )
    graph_message = {
        "id": "AAMk-big-1",
        "internetMessageId": "<graph-big-1@globex.test>",
        "conversationId": "conv-1",
        "subject": "Pilot numbers",
        "from": {"emailAddress": {"address": "eva@globex.test", "name": "Eva Novak"}},
        "toRecipients": [{"emailAddress": {"address": "ana@northwind.test", "name": "Ana"}}],
        "sentDateTime": (now - timedelta(hours=1)).isoformat(),
        "receivedDateTime": (now - timedelta(hours=1)).isoformat(),
        "bodyPreview": "the numbers",
        "categories": [],
        "isDraft": False,
    }
    graph_event = {
        "id": "AAMk-event-1",
        "iCalUId": "graph-event-1@globex.test",
        "subject": "Globex review",
        "start": {
            "dateTime": (now + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S"),
            "timeZone": "UTC",
        },
        "end": {
            "dateTime": (now + timedelta(days=3, hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
            "timeZone": "UTC",
        },
        "organizer": {"emailAddress": {"address": "eva@globex.test", "name": "Eva Novak"}},
        "attendees": [{"emailAddress": {"address": "ana@northwind.test", "name": "Ana"}}],
        "type": "singleInstance",
        "sensitivity": "normal",
    }
    lifted = "message larger than the 1 MB limit of syncd 0.1"
    ids = {
        "rfc822": quarantine(sessions, "ana", "maildir:INBOX", "m/big", lifted, mail, "rfc822"),
        "bulk": quarantine(sessions, "ana", "maildir:INBOX", "m/news", lifted, bulk, "rfc822"),
        "ical": quarantine(
            sessions, "ana", "calendar", "calendar/big.ics", lifted, meeting, "ical"
        ),
        "graph-message": quarantine(
            sessions,
            "ana",
            "graph:inbox",
            "AAMk-big-1",
            lifted,
            json.dumps(graph_message).encode(),
            "graph-message",
        ),
        "graph-event": quarantine(
            sessions,
            "ana",
            "graph:calendar",
            "AAMk-event-1",
            lifted,
            json.dumps(graph_event).encode(),
            "graph-event",
        ),
    }
    result = cli("quarantine", "retry", *map(str, ids.values()))
    assert result.exit_code == 0, result.output
    assert f"{ids['bulk']} (ana, m/news): not logged: read, and not logged by the rules: bulk" in (
        result.stdout
    )
    assert "4 logged, 1 read and not logged by the rules, 0 still quarantined" in result.stdout
    logged = subjects(sessions)
    assert "Acme newsletter" not in logged
    assert ("opportunity", "OPP-101 Acme platform renewal", "tag") in {
        (lk["type"], lk["name"], lk["reason"]) for lk in logged["Big attachment [OPP-101]"]["links"]
    }
    assert logged["Acme QBR (big invite)"]["kind"] == "meeting"
    assert logged["Pilot numbers"]["kind"] == "email"
    assert ("contact", "Eva Novak", "address") in {
        (lk["type"], lk["name"], lk["reason"]) for lk in logged["Pilot numbers"]["links"]
    }
    assert logged["Globex review"]["kind"] == "meeting"
    assert entries(sessions) == {}
    # the follow-up rules look at the mailbox again at its next pass
    with sessions() as session:
        box = session.scalars(select(Mailbox).where(Mailbox.name == "ana")).one()
        assert box.followups_at is None


def test_an_entry_without_a_copy_or_a_parser_says_why_it_cannot_be_read(
    sessions, settings, company, cli
):
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    no_copy = quarantine(
        sessions, "ana", "maildir:INBOX", "m/huge", "message larger than 10 MB", None, "rfc822"
    )
    odd = quarantine(sessions, "ana", "x", "x/1", "an old reason", b"{}", "vcard")
    shown = cli("quarantine", "show", str(no_copy))
    assert shown.exit_code == 0
    assert "retry:        not possible: syncd kept no copy of it" in shown.stdout
    assert "'m/huge'" in shown.stdout and "size:         not kept" in shown.stdout
    raw = cli("quarantine", "show", str(no_copy), "--raw", "out.eml")
    assert raw.exit_code == 1 and "has no bytes to write" in raw.stderr
    result = cli("quarantine", "retry", str(no_copy), str(odd))
    assert result.exit_code == 1
    assert f"{no_copy} (ana, m/huge): not retryable: syncd kept no copy of it" in result.stderr
    assert f"{odd} (ana, x/1): still unreadable: no parser reads format 'vcard'" in result.stderr
    assert "rfc822" in result.stderr  # the formats it knows
    left = entries(sessions)
    assert left["m/huge"].attempts == 1  # nothing was attempted
    assert left["x/1"].attempts == 2 and "no parser reads format 'vcard'" in left["x/1"].reason


def test_show_writes_the_bytes_only_to_a_new_private_file(
    sessions, settings, company, cli, tmp_path
):
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    hostile = b"From: x\x1b]2;owned\x07@evil.test\r\n\r\n\x1b[2Jbody"
    entry = quarantine(sessions, "ana", "maildir:INBOX", "m/1", "no address", hostile, "rfc822")
    with sessions.begin() as session:  # as a row written by an older syncd may hold them
        row = session.get(QuarantineEntry, entry)
        assert row is not None
        row.provider_id, row.reason = "m/\x1b[31mred", "bad \x1b[2J\nline"
    shown = cli("quarantine", "show", str(entry))
    assert shown.exit_code == 0
    assert "\x1b" not in shown.stdout and "m/\\x1b[31mred" in shown.stdout
    assert "bad \\x1b[2J\\nline" in shown.stdout
    assert "\x1b" not in cli("quarantine", "list").stdout
    target = tmp_path / "item.eml"
    written = cli("quarantine", "show", str(entry), "--raw", str(target))
    assert written.exit_code == 0 and "\x1b" not in written.stdout
    assert target.read_bytes() == hostile
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    again = cli("quarantine", "show", str(entry), "--raw", str(target))
    assert again.exit_code == 2 and "exists already" in again.stderr
    assert target.read_bytes() == hostile


def test_bad_arguments_name_the_value_and_the_fix(sessions, settings, company, cli):
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    entry = quarantine(sessions, "ana", "maildir:INBOX", "m/1", "why", b"x", "rfc822")
    for args, text in (
        (("show", "4242"), "no quarantine entry 4242; see 'syncd quarantine list'"),
        (("retry", "4242", str(entry)), "no quarantine entry 4242; see 'syncd quarantine list'"),
        (("retry",), "say which entries to retry"),
        (("retry", str(entry), "--all"), "not both"),
        (("list", "--mailbox", "nobody"), "--mailbox 'nobody': no mailbox has that name"),
        (("retry", "--mailbox", "nobody"), "--mailbox 'nobody': no mailbox has that name"),
    ):
        result = cli("quarantine", *args)
        assert result.exit_code == 2, (args, result.output)
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
    assert entries(sessions)["m/1"].attempts == 1  # nothing was retried
    empty = cli("quarantine", "list", "--mailbox", "ana", "--json")
    assert json.loads(empty.stdout)[0]["id"] == entry


def test_retry_of_one_mailbox_leaves_the_others(sessions, settings, company, cli):
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    add_local_mailbox(sessions, "ben", "ben@northwind.test", maildir=str(company.maildirs["ben"]))
    ok = email_bytes(
        sender="carla@acme.test",
        to=["ben@northwind.test"],
        subject="For ben",
        when=datetime.now().astimezone(),
        message_id="ben-1@acme.test",
    )
    quarantine(sessions, "ana", "maildir:INBOX", "a/1", "old", b"\x00", "rfc822")
    quarantine(sessions, "ben", "maildir:INBOX", "b/1", "old", ok, "rfc822")
    result = cli("quarantine", "retry", "--mailbox", "ben")
    assert result.exit_code == 0, result.output
    assert set(entries(sessions)) == {"a/1"} and entries(sessions)["a/1"].attempts == 1
    assert subjects(sessions)["For ben"]["mailboxes"] == ["ben"]


def test_a_retried_message_settles_its_conversation_as_a_sync_would(
    sessions, settings, company, cli, tmp_path
):
    """A reply stored while the message it answers was quarantined follows the deal that
    message is tagged with, once a retry reads it."""
    extra = tmp_path / "opportunities.csv"
    extra.write_text(
        "external_id,name,account,owner,status\n"
        "OPP-303,Acme expansion,acme.test,ana@northwind.test,open\n",
        encoding="utf-8",
    )
    with sessions.begin() as session:
        load_csv(session, "opportunities", extra)
    inbox = make_maildir(tmp_path / "mail")
    now = datetime.now().astimezone().replace(microsecond=0)
    first = email_bytes(
        sender="Ana Ruiz <ana@northwind.test>",
        to=["dan@acme.test"],
        subject="Expansion [OPP-303]",
        when=now - timedelta(hours=3),
        message_id="exp-1@northwind.test",
    )
    reply = email_bytes(
        sender="Dan Wu <dan@acme.test>",
        to=["ana@northwind.test"],
        subject="Re: Expansion",
        when=now - timedelta(hours=1),
        message_id="exp-2@acme.test",
        in_reply_to="exp-1@northwind.test",
        references=["exp-1@northwind.test"],
    )
    deliver(inbox, reply, now - timedelta(hours=1), "reply.1.host")
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(inbox))
    sync(sessions, settings, "ana")
    before = subjects(sessions)["Re: Expansion"]
    assert ("opportunity", "OPP-303 Acme expansion", "thread") not in {
        (lk["type"], lk["name"], lk["reason"]) for lk in before["links"]
    }
    entry = quarantine(
        sessions, "ana", "maildir:.Sent", "sent/1", "larger than an old limit", first, "rfc822"
    )
    result = cli("quarantine", "retry", str(entry))
    assert result.exit_code == 0, result.output
    rows = subjects(sessions)
    assert ("opportunity", "OPP-303 Acme expansion", "tag") in {
        (lk["type"], lk["name"], lk["reason"]) for lk in rows["Expansion [OPP-303]"]["links"]
    }
    assert ("opportunity", "OPP-303 Acme expansion", "thread") in {
        (lk["type"], lk["name"], lk["reason"]) for lk in rows["Re: Expansion"]["links"]
    }


def test_a_parser_that_fails_anyhow_keeps_the_entry_with_a_storable_reason(
    sessions, settings, company, cli, monkeypatch
):
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    entry = quarantine(sessions, "ana", "maildir:INBOX", "m/1", "old", b"x", "rfc822")

    monkeypatch.setitem(registry.SHARED_FORMATS, "rfc822", "tests.test_quarantine:crashing")
    result = cli("quarantine", "retry", str(entry))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{entry} (ana, m/1): still unreadable: KeyError:" in result.stderr
    (left,) = entries(sessions).values()
    assert left.attempts == 2 and left.reason.startswith("KeyError:")
    assert "\x00" not in left.reason
