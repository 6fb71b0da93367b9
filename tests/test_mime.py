"""RFC 5322 / MIME parsing into MailItems, iCalendar objects into meetings, and how the
connectors quarantine what they cannot read (unit tests, no database)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import icalendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config import LimitSettings
from syncd.connectors.base import MailboxSpec
from syncd.connectors.ical import UnreadableCalendar, invitations_from_ical, read_calendar
from syncd.connectors.ical_events import event_problem, meeting
from syncd.connectors.ical_series import occurrences, series_uids
from syncd.connectors.ical_tasks import PRODID, SYNCD_TASK_PROP, task_to_ical
from syncd.connectors.imap.parse import mail_item, provider_id
from syncd.connectors.local.files import NotRegularFile, TooLarge, skipped_once, unreadable
from syncd.connectors.local.maildir import MaildirFolder
from syncd.connectors.local.vdir import VdirCalendar
from syncd.connectors.mime import (
    UnreadableMessage,
    bulk_signals,
    clean,
    identity,
    mail_date,
    message_ids,
    parse_message,
    read_message,
    repaired,
)
from syncd.connectors.mime_limits import check_message, read_mime
from syncd.connectors.reasons import REASON_CHARS, describe, quarantined, short
from syncd.demo import email_bytes, event_ics
from syncd.items import RAW_KEPT, Participant, Quarantined, TaskItem
from syncd.limits import OverLimit

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def parse(data: bytes):
    return parse_message(data, "p1", T0)


def test_addresses_names_and_encoded_words_are_decoded():
    raw = (
        b"From: =?utf-8?q?Carla_D=C3=ADaz?= <Carla@ACME.test>\r\n"
        b'To: ana@northwind.test, "Okafor, Ben" <BEN@northwind.test>\r\n'
        b"Cc: ops@b\xc3\xbccher.example\r\n"
        b"Subject: =?utf-8?b?UHLDqXNlbnRhdGlvbg==?=\r\n"
        b"Date: Mon, 02 Nov 2026 10:00:00 +0100\r\n"
        b"Message-ID: <ABC-1@Acme.test>\r\n\r\nbody\r\n"
    )
    item = parse(raw)
    assert [(p.address, p.name, p.role) for p in item.participants] == [
        ("carla@acme.test", "Carla Díaz", "from"),
        ("ana@northwind.test", "", "to"),
        ("ben@northwind.test", "Okafor, Ben", "to"),
        ("ops@xn--bcher-kva.example", "", "cc"),
    ]
    assert item.subject == "Présentation"
    assert item.sent_at == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert item.key == "mid:abc-1@acme.test" and item.thread_key == item.key


def test_replies_carry_their_thread_root_and_related_keys():
    item = parse(
        email_bytes(
            sender="a@x.test",
            to=["b@y.test"],
            subject="Re: x",
            when=T0,
            message_id="c@x.test",
            in_reply_to="b@x.test",
            references=["a@x.test", "b@x.test"],
        )
    )
    assert item.thread_key == "mid:a@x.test"
    assert item.related_keys == ("mid:a@x.test", "mid:b@x.test")


def test_a_message_without_date_or_message_id_gets_a_stable_key():
    raw = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: no ids\r\n\r\nhello\r\n"
    one, two = parse(raw), parse_message(raw, "other-mailbox", datetime.now(UTC))
    assert one.key == two.key and one.key.startswith("hash:")
    assert one.sent_at == T0  # the provider's time stands in for the missing Date


def test_bulk_auto_reply_and_private_headers_are_read():
    item = parse(
        email_bytes(
            sender="a@x.test",
            to=["b@y.test"],
            subject="s",
            when=T0,
            message_id="m@x",
            headers={
                "List-Id": "<list.x.test>",
                "Precedence": "Bulk",
                "Auto-Submitted": "auto-replied",
                "X-Autoreply": "yes",
                "Sensitivity": "Company-Confidential",
                "X-Gmail-Labels": "Inbox,Spam",
            },
        )
    )
    assert item.list_id == "<list.x.test>" and item.precedence == "bulk"
    assert item.auto_submitted == "auto-replied" and item.autoreply_header == "x-autoreply"
    assert item.private and item.labels == ("Inbox", "Spam")


@pytest.mark.parametrize("method", ["REQUEST", "CANCEL", "REPLY"])
def test_calendar_parts_become_invitations(method):
    ics = event_ics(
        "qbr@acme.test",
        "QBR",
        T0,
        60,
        ("carla@acme.test", "Carla"),
        [("ana@northwind.test", "Ana")],
        method,
    )
    item = parse(
        email_bytes(
            sender="carla@acme.test",
            to=["ana@northwind.test"],
            subject="Invitation",
            when=T0,
            message_id="inv@acme.test",
            calendar=ics,
        )
    )
    (invite,) = item.invitations
    assert invite.key == "ical:qbr@acme.test" and invite.method == method
    assert invite.cancelled == (method == "CANCEL")
    assert invite.organizer and invite.organizer.address == "carla@acme.test"
    assert (invite.start, invite.end.hour) == (T0, 10)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty message"),
        (b"\x00\x01\x02", "no header fields"),
        (b"Subject: only a subject\r\n\r\nbody", "no From, To, Cc or Bcc"),
    ],
)
def test_unreadable_messages_say_why(raw, reason):
    with pytest.raises(UnreadableMessage, match=reason):
        parse(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_an_item_or_a_reason_never_a_crash(data):
    try:
        item = parse(data)
    except UnreadableMessage as exc:
        assert str(exc)
    else:
        assert item.key and item.participants
        item.subject.encode("utf-8")  # always storable


# -- lenient reading: what the standard library's parser refuses (issue 9, point 11) --------


@pytest.mark.parametrize(
    "to",
    [
        "unlisted-recipients:; (no To-header on input)",  # AttributeError: 'Group' ... local_part
        "Sales: carla@acme.test, ben@acme.test; eva@globex.test",
        ":;a",
        '"',
        "b@[ ",
        "\\@[",
    ],
)
def test_an_address_list_the_policy_cannot_parse_is_read_leniently(to):
    raw = (
        f"From: Carla <carla@acme.test>\r\nTo: {to}\r\nCc: =?utf-8?q?Eva_N=C3=B6vak?= "
        "<eva@globex.test>\r\nSubject: hello\r\nMessage-ID: <g-1@acme.test>\r\n\r\nbody\r\n"
    ).encode()
    item = parse(raw)
    by_role = {(p.address, p.role): p.name for p in item.participants}
    assert by_role[("carla@acme.test", "from")] == "Carla"
    assert by_role[("eva@globex.test", "cc")] == "Eva Növak"
    if "Sales:" in to:
        assert {
            ("carla@acme.test", "to"),
            ("ben@acme.test", "to"),
            ("eva@globex.test", "to"),
        } <= set(by_role)
    assert all("@" in a and " " not in a for a, _ in by_role)  # nothing that is no address


def test_a_header_block_broken_by_a_stray_line_is_mended():
    raw = (
        b"\xef\xbb\xbfReceived: by mx.acme.test; Mon, 02 Nov 2026 10:00:00 +0100\r\n"
        b"quite Delivered-To: ana@northwind.test\r\n"
        b"From  : Carla <carla@acme.test>\r\n"
        b"To: ana@northwind.test\r\n"
        b"Subject: mended\r\n\r\nbody\r\n"
    )
    item = parse(raw)
    assert [(p.address, p.role) for p in item.participants] == [
        ("carla@acme.test", "from"),
        ("ana@northwind.test", "to"),
    ]
    assert item.subject == "mended" and item.body.strip() == "body"


# -- dates (issue 10, finding 1): never an OverflowError, always 1970 .. now + 5 years ----------

RECEIVED = b"Received: from mx.acme.test by mx.northwind.test; Mon, 02 Nov 2026 09:00:00 +0000\r\n"


@pytest.mark.parametrize(
    "date",
    [
        b"Mon, 1 Jan 2026 10:00:00 +99999999999999999999",
        b"Fri, 31 Dec 9999 23:00:00 -2359",
        b"Mon, 01 Jan 1000 00:00:00 +2359",
        b"Wed, 31 Dec 1969 23:59:59 +0000",
        b"Sat, 01 Jan 2300 00:00:00 +0000",
        b"not a date",
    ],
)
def test_a_date_that_cannot_be_true_falls_back_to_received_then_the_file(date):
    head = b"From: carla@acme.test\r\nTo: ana@northwind.test\r\nDate: " + date + b"\r\n"
    with_received = parse(RECEIVED + head + b"\r\nbody")
    assert with_received.sent_at == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    without = parse(head + b"\r\nbody")
    assert without.sent_at == T0  # the provider's time (file mtime, INTERNALDATE)
    assert without.key == parse(head + b"\r\nbody").key  # still one stable key


def test_a_provider_time_out_of_range_is_not_used_either():
    raw = b"From: carla@acme.test\r\nTo: ana@northwind.test\r\nDate: junk\r\n\r\nbody"
    item = parse_message(raw, "p1", datetime(9999, 12, 31, 23, 0, tzinfo=UTC))
    assert abs(item.sent_at - datetime.now(UTC)) < timedelta(minutes=1)


# -- what the connectors get: a quarantine entry with its reason and its bytes ---------------


def test_read_message_quarantines_with_the_bytes_to_retry():
    raw = b"Subject: only a subject\r\n\r\nbody"
    result = read_message(raw, "maildir:INBOX/1", T0)
    assert isinstance(result, Quarantined)
    assert result.reason == "no From, To, Cc or Bcc address that can be read"
    assert (result.raw, result.format) == (raw, "rfc822")


def test_only_ten_megabytes_are_kept_for_a_retry():
    assert RAW_KEPT == 10 * 1024 * 1024
    kept = quarantined("p", "too big to read", b"x" * RAW_KEPT, "rfc822")
    assert kept.raw is not None and kept.format == "rfc822"
    dropped = quarantined("p", "too big to read", b"x" * (RAW_KEPT + 1), "rfc822")
    assert (dropped.raw, dropped.format, dropped.reason) == (None, None, "too big to read")


def test_a_parser_error_message_is_one_bounded_line():
    assert len(quarantined("p", "x" * 5000 + "\n" + "y", None, "ical").reason) <= 300


# -- calendar objects: one broken event costs only itself -----------------------------------

WINDOW = (T0 - timedelta(days=30), T0 + timedelta(days=30))


def vcalendar(*events: str) -> bytes:
    body = "".join(f"BEGIN:VEVENT\r\n{e}END:VEVENT\r\n" for e in events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n{body}END:VCALENDAR\r\n".encode()


GOOD = "UID:good@acme.test\r\nDTSTART:20261102T100000Z\r\nDTEND:20261102T110000Z\r\nSUMMARY:QBR\r\n"


@pytest.mark.parametrize(
    "bad, problem",
    [
        ("UID:bad@acme.test\r\nSUMMARY:no start\r\n", "event bad@acme.test: no DTSTART"),
        ("UID:bad@acme.test\r\nDTSTART:INVALID-DATE\r\n", "event bad@acme.test: DTSTART"),
        ("DTSTART:20261103T100000Z\r\nSUMMARY:no uid\r\n", "event without UID"),
        (
            "UID:bad@acme.test\r\nDTSTART:20261103T100000Z\r\nRRULE:FREQ=NONSENSE\r\n",
            "event bad@acme.test: cannot expand",
        ),
    ],
)
def test_a_broken_event_is_named_and_the_others_are_read(bad, problem):
    read = read_calendar(vcalendar(GOOD, bad), "work.ics", WINDOW)
    assert [m.key for m in read.meetings] == ["ical:good@acme.test"]
    assert len(read.problems) == 1 and read.problems[0].startswith(problem)


def test_a_second_dtstart_is_ignored_and_a_broken_end_dropped():
    event = (
        "UID:twice@acme.test\r\nDTSTART:20261102T100000Z\r\nDTSTART:20261102T120000Z\r\n"
        "DURATION:P999999999999999999\r\nSUMMARY:twice\r\n"
    )
    read = read_calendar(vcalendar(event), "work.ics", WINDOW)
    (meeting,) = read.meetings
    assert meeting.start == meeting.end == datetime(2026, 11, 2, 10, tzinfo=UTC)
    assert read.problems == []


def test_a_file_that_is_no_icalendar_raises_unreadable_calendar():
    with pytest.raises(UnreadableCalendar, match="not valid iCalendar"):
        read_calendar(b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n", "cut.ics", WINDOW)


def test_an_invitation_in_year_9999_leaves_the_mail_an_email():
    ics = vcalendar("UID:far@acme.test\r\nDTSTART:99991231T230000Z\r\nSUMMARY:far\r\n")
    assert invitations_from_ical(ics, "p1") == []
    item = parse(
        email_bytes(
            sender="carla@acme.test",
            to=["ana@northwind.test"],
            subject="Invitation",
            when=T0,
            message_id="far@acme.test",
            calendar=ics,
        )
    )
    assert item.invitations == () and item.subject == "Invitation"


def test_the_vdir_quarantines_a_file_with_its_text_and_logs_what_it_can(tmp_path):
    (tmp_path / "mixed.ics").write_bytes(vcalendar(GOOD, "UID:bad@acme.test\r\n"))
    (tmp_path / "junk.ics").write_bytes(b"\x00\x01 not a calendar")
    (tmp_path / "folder.ics").mkdir()  # a directory named like a calendar object
    secret = tmp_path.parent / f"{tmp_path.name}-secret.key"
    secret.write_bytes(b"BEGIN:VCALENDAR\r\nkey-material\r\n")
    (tmp_path / "link.ics").symlink_to(secret)  # it could point at syncd's own key
    os.mkfifo(tmp_path / "fifo.ics")  # reading it would wait forever
    source = VdirCalendar(tmp_path, 100, past_days=3650, future_days=3650)
    (batch,) = list(source.changes(None))
    assert [m.key for m in batch.items] == ["ical:good@acme.test"]
    by_id = {q.provider_id: q for q in batch.quarantined}
    assert by_id["calendar/mixed.ics"].reason == "event bad@acme.test: no DTSTART"
    assert by_id["calendar/mixed.ics"].raw == (tmp_path / "mixed.ics").read_bytes()
    assert by_id["calendar/mixed.ics"].format == "ical"
    assert by_id["calendar/junk.ics"].reason.startswith("not valid iCalendar")
    for name, kind in (("folder", "a directory"), ("link", "a symbolic link"), ("fifo", "a FIFO")):
        entry = by_id[f"calendar/{name}.ics"]
        assert kind in entry.reason and "regular file" in entry.reason and entry.raw is None
    assert not any("key-material" in q.reason for q in batch.quarantined)
    assert list(source.changes(batch.cursor)) == []  # read once: nothing again


def test_a_maildir_entry_that_cannot_be_read_is_quarantined_not_fatal(tmp_path):
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "cur" / "1.dir:2,S").mkdir()
    (tmp_path / "cur" / "2.ok:2,S").write_bytes(
        b"From: carla@acme.test\r\nTo: ana@northwind.test\r\nDate: Fri, 31 Dec 9999 23:00:00 -2359"
        b"\r\n\r\nbody"
    )
    (batch,) = list(MaildirFolder("maildir:INBOX", tmp_path, 100).changes(None))
    assert [i.provider_id for i in batch.items] == ["maildir:INBOX/2.ok"]
    (entry,) = batch.quarantined
    assert entry.provider_id == "maildir:INBOX/1.dir"
    assert "a directory" in entry.reason and "regular file" in entry.reason


def test_an_imap_message_that_cannot_be_read_is_quarantined_with_its_bytes():
    spec = MailboxSpec.of(
        name="ana", kind="imap", user_email="ana@northwind.test", settings={"host": "127.0.0.1"}
    )
    raw = b"Subject: no address\r\nDate: Mon, 1 Jan 2026 10:00:00 +99999999999999999999\r\n\r\n"
    entry = mail_item(
        provider_id("INBOX", 42, 7), {b"BODY[]": raw, b"INTERNALDATE": T0}, spec.limits
    )
    assert isinstance(entry, Quarantined) and entry.provider_id == "INBOX/42/7"
    assert (entry.raw, entry.format) == (raw, "rfc822")
    odd = mail_item(provider_id("INBOX", 42, 8), {b"BODY[]": 12345}, spec.limits)  # wrong shape
    assert isinstance(odd, Quarantined)
    assert odd.reason == "unexpected FETCH response: TypeError: the message is a int, not bytes"


# -- the parts of the parsers, each on its own ------------------------------------------------


def test_identity_gives_a_provider_s_message_the_key_the_parsed_message_gets():
    """Graph hands over headers, not bytes: the same headers must give the same keys."""
    raw = (
        b"From: carla@acme.test\r\nTo: ana@northwind.test\r\nSubject: Re: QBR\r\n"
        b"Message-ID: <Reply-1@ACME.test>\r\nIn-Reply-To: <mid-2@acme.test>\r\n"
        b"References: <root@acme.test> <mid-2@acme.test>\r\n\r\nok\r\n"
    )
    item = parse(raw)
    (message_id,) = message_ids("<Reply-1@ACME.test>")
    key, thread, related = identity(
        message_id,
        message_ids("<mid-2@acme.test>"),
        message_ids("<root@acme.test> <mid-2@acme.test>"),
        list(item.participants),
        "",
        "Re: QBR",
    )
    assert (key, thread, related) == (item.key, item.thread_key, item.related_keys)
    assert thread == "mid:root@acme.test"
    assert message_ids("bare-id@acme.test") == message_ids("<bare-id@acme.test>") != []
    assert message_ids(None) == message_ids("   ") == []


def test_a_message_without_message_id_is_keyed_by_its_headers_alone():
    people = [
        Participant("carla@acme.test", "Carla", "from"),
        Participant("ana@northwind.test", "", "to"),
    ]
    first = identity(None, [], [], people, "Mon, 2 Nov 2026", "QBR")
    assert first == identity(None, [], [], list(reversed(people)), "Mon, 2 Nov 2026", "QBR")
    assert first[0].startswith("hash:") and first[1] == first[0] and first[2] == ()
    assert first[0] != identity(None, [], [], people, "Mon, 2 Nov 2026", "QBR 2")[0]


def test_bulk_signals_are_read_from_lower_cased_headers():
    assert bulk_signals({"list-id": "<news.acme.test>", "precedence": "BULK"}) == {
        "list_id": "<news.acme.test>",
        "list_unsubscribe": False,
        "precedence": "bulk",
        "auto_submitted": None,
        "autoreply_header": None,
    }
    assert bulk_signals({"x-autorespond": "yes"})["autoreply_header"] == "x-autorespond"
    assert bulk_signals({"list-unsubscribe": "<mailto:u@shop.test>"})["list_unsubscribe"]


def test_reply_to_is_read_for_the_harvest_and_is_never_a_participant():
    raw = (
        b"From: Carla <carla@acme.test>\r\nTo: ana@northwind.test\r\n"
        b"Reply-To: Sales Desk <Desk@Acme.test>, bob@acme.test\r\n"
        b"Subject: Hi\r\nMessage-ID: <r1@acme.test>\r\n\r\nbody\r\n"
    )
    item = parse_message(raw, "r1", datetime(2026, 1, 1, tzinfo=UTC))
    assert [(p.address, p.name) for p in item.reply_to] == [
        ("desk@acme.test", "Sales Desk"),
        ("bob@acme.test", ""),
    ]
    assert {p.address for p in item.participants} == {"carla@acme.test", "ana@northwind.test"}


def test_clean_reads_raw_bytes_as_utf8_and_drops_nuls():
    assert clean("a\x00b") == "ab"
    assert clean(b"Jos\xc3\xa9".decode("ascii", "surrogateescape")) == "José"
    assert clean(b"\xff".decode("ascii", "surrogateescape")) == "\ufffd"


def test_a_date_out_of_range_is_no_date():
    assert mail_date("Mon, 02 Nov 2026 10:00:00 +0100") == datetime(2026, 11, 2, 9, tzinfo=UTC)
    assert mail_date("Mon, 02 Nov 9999 10:00:00 +0000") is None
    assert mail_date("Mon, 02 Nov 1969 10:00:00 +0000") is None
    assert mail_date("yesterday") is None


def test_the_header_block_is_checked_before_any_parser_sees_it():
    limits = LimitSettings(header_bytes=4096, headers=50, encoded_words=10)
    fine = b"From: a@acme.test\r\nSubject: " + b"=?utf-8?q?x?= " * 10 + b"\r\n\r\n"
    check_message(fine + b"=?utf-8?q?x?= " * 1000, limits)  # the body's words do not count
    over = {
        "header_bytes": b"From: a@acme.test\r\nX-Long: " + b"x" * 5000 + b"\r\n\r\n",
        "headers": b"".join(b"X-%d: y\r\n" % i for i in range(51)) + b"\r\n",
        "encoded_words": b"From: a@acme.test\r\nSubject: " + b"=?utf-8?q?x?= " * 11 + b"\r\n\r\n",
    }
    for limit, data in over.items():
        with pytest.raises(OverLimit) as caught:
            check_message(data, limits)
        assert caught.value.limit == limit
    with pytest.raises(OverLimit, match="Subject has 11 encoded words"):
        check_message(over["encoded_words"], limits)


def test_the_bounded_parser_stops_at_the_nesting_limit():
    limits = LimitSettings(mime_depth=3)
    head = b"From: a@acme.test\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
    nested = b"".join(head % (i, i) for i in range(5)) + b"Content-Type: text/plain\r\n\r\nx\r\n"
    with pytest.raises(OverLimit) as caught:
        read_mime(nested, limits)
    assert caught.value.limit == "mime_depth"
    assert read_mime(b"".join(head % (i, i) for i in range(2)), limits)["From"] == "a@acme.test"


def test_a_header_block_is_mended_only_where_it_is_broken():
    mended = repaired(
        b"\xef\xbb\xbfFrom  : a@acme.test\r\nnot a header\r\nTo: b@acme.test\r\n\r\nx"
    )
    assert mended == b"From: a@acme.test\r\nTo: b@acme.test\r\n\r\nx"
    assert repaired(b"From: a@acme.test\r\n\r\nbody: not a header either\r\n") is None


@pytest.mark.parametrize("as_event", [False, True])
@pytest.mark.parametrize("status", ["open", "done", "cancelled"])
def test_a_task_written_is_read_back_as_its_state_never_as_a_meeting(as_event, status):
    task = TaskItem(
        uid="syncd-task-1",
        title="Call Carla back",
        description="about the QBR",
        due=T0 + timedelta(days=1),
        status=status,
        created=T0,
        categories=("follow-up",),
    )
    data = task_to_ical(task, as_event=as_event)
    assert SYNCD_TASK_PROP.encode() in data and PRODID.encode() in data
    read = read_calendar(data, "syncd-task-1.ics", WINDOW)
    assert read.meetings == [] and read.problems == []
    # as an event, a done task is titled "Done: ..." and reads back as done
    assert [(s.uid, s.status) for s in read.task_states] == [("syncd-task-1", status)]
    assert read.uids == {"syncd-task-1"}


def test_an_event_is_a_meeting_with_its_organizer_first_and_each_person_once():
    (event,) = icalendar.Calendar.from_ical(
        vcalendar(
            "UID:m1@acme.test\r\nDTSTART;TZID=Europe/Berlin:20261102T100000\r\n"
            "DURATION:PT30M\r\nSUMMARY:  QBR \r\n  review\r\nCLASS:CONFIDENTIAL\r\n"
            "RECURRENCE-ID;TZID=Europe/Berlin:20261101T100000\r\n"
            "ORGANIZER;CN=Carla:mailto:Carla@ACME.test\r\n"
            "ATTENDEE;CN=Ana:mailto:ana@northwind.test\r\n"
            "ATTENDEE:mailto:carla@acme.test\r\n"
            "ATTENDEE;CN=Ben@Northwind.test:mailto:ben@northwind.test\r\n"
        )
    ).walk("VEVENT")
    found = meeting(event, "work.ics", UTC, None)
    assert found is not None
    assert found.key == "ical:m1@acme.test#20261101T090000Z"
    assert (found.start, found.end) == (
        datetime(2026, 11, 2, 9, tzinfo=UTC),
        datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
    )
    assert found.subject == "QBR review" and found.private
    assert [(p.address, p.name, p.role) for p in found.participants] == [
        ("carla@acme.test", "Carla", "organizer"),
        ("ana@northwind.test", "Ana", "attendee"),
        ("ben@northwind.test", "", "attendee"),  # a name that is the address is no name
    ]
    alone = meeting(event, "work.ics", UTC, None, series=False)
    assert alone is not None and alone.key == "ical:m1@acme.test"


def test_an_event_problem_keeps_the_first_copy_and_drops_an_unreadable_end():
    (event,) = icalendar.Calendar.from_ical(
        vcalendar(
            "UID:e1@acme.test\r\nDTSTART:20261102T100000Z\r\nDTSTART:20261102T120000Z\r\n"
            "DTEND:not-a-date\r\n"
        )
    ).walk("VEVENT")
    assert event_problem(event) is None
    assert event.get("DTEND") is None
    assert event.get("DTSTART").dt == datetime(2026, 11, 2, 10, tzinfo=UTC)
    (no_uid,) = icalendar.Calendar.from_ical(vcalendar("DTSTART:20261102T100000Z\r\n")).walk(
        "VEVENT"
    )
    assert event_problem(no_uid) == "event without UID: it cannot be told apart from others"


def test_a_series_expands_inside_the_window_and_a_dense_one_not_at_all():
    cal = icalendar.Calendar.from_ical(
        vcalendar(
            "UID:weekly@acme.test\r\nDTSTART:20261005T100000Z\r\nRRULE:FREQ=WEEKLY\r\n",
            "UID:moved@acme.test\r\nDTSTART:20261102T100000Z\r\nRECURRENCE-ID:20261101T100000Z\r\n",
            "UID:once@acme.test\r\nDTSTART:20261102T100000Z\r\n",
            "UID:hourly@acme.test\r\nDTSTART:20261101T000000Z\r\nRRULE:FREQ=HOURLY\r\n",
        )
    )
    assert series_uids(cal) == {"weekly@acme.test", "moved@acme.test", "hourly@acme.test"}
    limits = LimitSettings(occurrences=100)
    problems: list[str] = []
    found = occurrences(cal, WINDOW, limits, problems)
    weekly = [o for o in found if o.get("UID") == "weekly@acme.test"]
    assert len(weekly) == 9  # Oct 5 .. Nov 30, of Oct 3 .. Dec 2
    assert not [o for o in found if o.get("UID") == "hourly@acme.test"]
    assert len(problems) == 1 and problems[0].startswith("over limits.occurrences: event hourly")


def test_a_reason_is_one_bounded_line():
    assert short("a\n  b\tc") == "a b c"
    assert len(short("x" * 1000)) == REASON_CHARS and short("x" * 1000).endswith("…")
    assert describe(ValueError()) == "ValueError"
    assert describe(KeyError("k")) == "KeyError: 'k'"
    kept = quarantined("p", "why", b"x" * 10, "rfc822")
    assert (kept.raw, kept.format) == (b"x" * 10, "rfc822")
    dropped = quarantined("p", "why", b"x" * (RAW_KEPT + 1), "rfc822")
    assert (dropped.raw, dropped.format) == (None, None)


def test_a_file_not_read_is_quarantined_once_with_its_reason_and_no_bytes():
    big = unreadable("maildir:INBOX/1", TooLarge(2 * 1024**2, 1024**2))
    assert "limits.message_bytes" in big.reason and big.raw is None
    link = unreadable("maildir:INBOX/2", NotRegularFile("a symbolic link"))
    assert link.reason.startswith("a symbolic link, not a regular file: not read")
    denied = unreadable("maildir:INBOX/3", PermissionError(13, "Permission denied"))
    assert denied.reason == "cannot read the file: Permission denied"
    first = skipped_once({"c": 5, "n": "x"}, "a link", "maildir:Spam")
    assert first is not None and first.items == ()
    assert [q.reason for q in first.quarantined] == ["a link"]
    state = json.loads(first.cursor.value)
    assert (state["c"], state["n"], state["skipped"]) == (5, "x", "a link")
    assert skipped_once(state, "a link", "maildir:Spam") is None
    assert skipped_once(state, "a FIFO", "maildir:Spam") is not None
