"""The Microsoft kind's pure parsing (``syncd.connectors.microsoft.parse``): Graph message and
event resources as message delta and calendarView delta return them -> items, the quarantine's
JSON and its re-parsers. No server, no network, no database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from syncd.config import LimitSettings
from syncd.connectors.base import RereadContext, UnknownFormat
from syncd.connectors.microsoft.parse import (
    EXPAND,
    MAX_RAW,
    check_resource,
    delta_query,
    error_text,
    graph_time,
    is_private,
    json_size,
    mail_item,
    meeting_item,
    quarantined,
    reread_event,
    reread_message,
)
from syncd.items import MailItem, MeetingItem, Participant
from syncd.limits import OverLimit

from .helpers import reread

ANA = "ana@northwind.test"


def message(**fields: Any) -> dict[str, Any]:
    """A Graph message resource as message delta returns it."""
    return {
        "id": "AAkALmsg1",
        "internetMessageId": "<p1@acme.test>",
        "conversationId": "AAQkconv1",
        "subject": "Pricing",
        "from": {"emailAddress": {"name": "Carla Díaz", "address": "carla@acme.test"}},
        "toRecipients": [{"emailAddress": {"name": "Ana Ruiz", "address": ANA}}],
        "sentDateTime": "2026-01-05T10:00:00Z",
        "receivedDateTime": "2026-01-05T10:00:01Z",
        "bodyPreview": "Hello Ana, about [OPP-101] pricing",
        "body": {"contentType": "text", "content": "Hello Ana,\nabout [OPP-101] pricing"},
        **fields,
    }


def event(**fields: Any) -> dict[str, Any]:
    """A Graph event resource as calendarView delta returns it (times in UTC, as asked)."""
    return {
        "id": "AAkALev1",
        "iCalUId": "040000008200E00074C5B7101A82E008@acme.test",
        "subject": "Acme  QBR",
        "type": "singleInstance",
        "start": {"dateTime": "2026-03-02T15:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-03-02T16:00:00.0000000", "timeZone": "UTC"},
        "organizer": {"emailAddress": {"name": "Carla Díaz", "address": "Carla@Acme.test"}},
        "attendees": [
            {"type": "required", "emailAddress": {"name": "Ana Ruiz", "address": ANA}},
            {"type": "required", "emailAddress": {"name": "Carla", "address": "carla@acme.test"}},
            {"type": "optional", "emailAddress": {"name": "", "address": "not an address"}},
        ],
        "sensitivity": "normal",
        "bodyPreview": "Agenda: renewal",
        "location": {"displayName": "Room 4"},
        "categories": ["CRM"],
        **fields,
    }


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- messages ---------------------------------------------------------------------------------


def test_a_message_becomes_a_mail_item_with_its_participants_and_thread():
    item = mail_item(
        message(
            subject="  Re:\tPricing\n  update ",
            toRecipients=[
                {"emailAddress": {"name": "Ana Ruiz", "address": "ANA@Northwind.test"}},
                {"emailAddress": {"name": "Ana again", "address": ANA}},  # the same, once
                {"emailAddress": {"name": "", "address": "nobody"}},  # no address: dropped
            ],
            ccRecipients=[{"emailAddress": {"name": ANA, "address": ANA}}],  # name = address
            bccRecipients=[{"emailAddress": {"address": "ben@northwind.test"}}],
            categories=["CRM", "Acme"],
            sentDateTime="2026-01-05T12:00:00+02:00",
            internetMessageHeaders=[
                {"name": "In-Reply-To", "value": "<p0@acme.test>"},
                {"name": "References", "value": "<root@acme.test> <p0@acme.test>"},
                {"name": "List-Id", "value": "<news.acme.test>"},
            ],
        )
    )
    assert isinstance(item, MailItem)
    assert item.participants == (
        Participant("carla@acme.test", "Carla Díaz", "from"),
        Participant(ANA, "Ana Ruiz", "to"),
        Participant(ANA, "", "cc"),
        Participant("ben@northwind.test", "", "bcc"),
    )
    assert item.key == "mid:p1@acme.test" and item.message_id == "p1@acme.test"
    assert item.thread_key == "mid:root@acme.test"
    assert set(item.related_keys) == {"mid:root@acme.test", "mid:p0@acme.test"}
    assert item.provider_id == "AAkALmsg1" and item.provider_thread_id == "AAQkconv1"
    assert item.subject == "Re: Pricing update"
    assert item.sent_at == at("2026-01-05T10:00:00") and item.sent_at.tzinfo is not None
    assert item.labels == ("CRM", "Acme")
    assert item.list_id == "<news.acme.test>" and not item.private


def test_a_message_without_a_sent_date_is_dated_by_its_receipt_and_keyed_without_an_id():
    item = mail_item(message(sentDateTime=None, internetMessageId=None))
    assert item.sent_at == at("2026-01-05T10:00:01")
    assert item.message_id is None
    assert item.key.startswith("hash:")  # a stable hash of its addresses, date and subject
    assert item.thread_key == item.key
    # the same message read twice gets the same key
    assert mail_item(message(sentDateTime=None, internetMessageId=None)).key == item.key


def test_private_sensitivity_by_pid_tag_or_header_and_never_raising():
    def pid(value: str, tag: str = "Integer 0x36") -> dict[str, Any]:
        return {"singleValueExtendedProperties": [{"id": tag, "value": value}]}

    def header(value: str) -> dict[str, Any]:
        return {"internetMessageHeaders": [{"name": "Sensitivity", "value": value}]}

    assert mail_item(message(**pid("2"))).private
    assert mail_item(message(**pid("3", "integer 0x0036"))).private
    assert not mail_item(message(**pid("1"))).private
    assert not mail_item(message(**pid("3", "Integer 0x0037"))).private
    assert mail_item(message(**header("Company-Confidential"))).private
    assert mail_item(message(**header("  PRIVATE "))).private
    assert not mail_item(message(**header("Personal"))).private
    # is_private decides what of an unreadable message may be kept: it never raises
    assert is_private({"singleValueExtendedProperties": [{"id": "Integer 0x36", "value": "2"}]})
    assert not is_private({"singleValueExtendedProperties": 7})
    assert not is_private({"internetMessageHeaders": ["Sensitivity: private"]})


def test_each_body_policy_reads_its_own_text():
    assert mail_item(message(), "full").body == "Hello Ana,\nabout [OPP-101] pricing"
    assert mail_item(message(), "snippet").body == "Hello Ana, about [OPP-101] pricing"
    assert mail_item(message(), "metadata").body == ""
    html = {"contentType": "HTML", "content": "<p>Hi <b>Ana</b>, [OPP-7]</p><<<"}
    text = mail_item(message(body=html), "full").body
    assert "<p>" not in text and "<b>" not in text and "[OPP-7]" in text and "Ana" in text
    assert mail_item(message(body=None), "full").body == ""
    assert mail_item(message(bodyPreview="a\x00b"), "snippet").body == "ab"  # no NUL kept


def test_the_delta_query_asks_for_what_the_policy_reads():
    def fields(policy: str) -> set[str]:
        return set(delta_query(policy)["$select"].split(","))

    assert "bodyPreview" in fields("snippet") and "body" not in fields("snippet")
    assert "body" in fields("full") and "bodyPreview" not in fields("full")
    assert not {"body", "bodyPreview"} & fields("metadata")
    assert fields("unknown") == fields("snippet")
    assert {"internetMessageHeaders", "categories", "isDraft"} <= fields("metadata")
    assert delta_query("full")["$expand"] == EXPAND and "0x0036" in EXPAND


def test_messages_that_cannot_be_read_raise_value_error_only():
    with pytest.raises(ValueError, match="no From, To or Cc"):
        mail_item(message(**{"from": None, "toRecipients": []}))
    with pytest.raises(ValueError, match="no usable date"):
        mail_item(message(sentDateTime="yesterday", receivedDateTime=None))
    with pytest.raises(ValueError, match="not a readable Graph message"):
        mail_item(message(toRecipients=[7]))
    with pytest.raises(ValueError, match="not a readable Graph message"):
        mail_item({k: v for k, v in message().items() if k != "id"})
    big = message(body={"contentType": "text", "content": "x" * 100_000})
    with pytest.raises(OverLimit, match="message_bytes"):
        mail_item(big, "full", limits=LimitSettings(message_bytes=65536))


# --- events -----------------------------------------------------------------------------------


def test_a_single_event_becomes_a_meeting_keyed_by_its_uid():
    item = meeting_item(event())
    assert isinstance(item, MeetingItem)
    assert item.key == "ical:040000008200E00074C5B7101A82E008@acme.test"
    assert item.recurrence_id is None
    assert item.start == at("2026-03-02T15:00:00") and item.end == at("2026-03-02T16:00:00")
    assert item.participants == (
        Participant("carla@acme.test", "Carla Díaz", "organizer"),
        Participant(ANA, "Ana Ruiz", "attendee"),
    )
    assert item.subject == "Acme QBR" and item.description == "Agenda: renewal"
    assert item.labels == ("CRM",)
    assert not item.cancelled and not item.private
    assert meeting_item(event(isCancelled=True)).cancelled
    assert meeting_item(event(iCalUId=None)).uid == "AAkALev1"  # no UID: the Graph id


def test_an_occurrence_and_a_moved_exception_are_keyed_by_the_original_start():
    occurrence = meeting_item(
        event(type="occurrence", id="AAkALocc", originalStart="2026-03-09T15:00:00Z")
    )
    assert occurrence.recurrence_id == "20260309T150000Z"
    assert occurrence.key == "ical:040000008200E00074C5B7101A82E008@acme.test#20260309T150000Z"
    # moved from Monday 15:00 to Tuesday 9:00: still the Monday occurrence of the series
    moved = meeting_item(
        event(
            type="exception",
            originalStart="2026-03-16T15:00:00.0000000Z",
            start={"dateTime": "2026-03-17T09:00:00.0000000", "timeZone": "UTC"},
            end={"dateTime": "2026-03-17T10:00:00.0000000", "timeZone": "UTC"},
        )
    )
    assert moved.recurrence_id == "20260316T150000Z"
    assert moved.start == at("2026-03-17T09:00:00")
    # without originalStart (an older server), the start stands for it
    assert meeting_item(event(type="occurrence")).recurrence_id == "20260302T150000Z"
    # an offset is read as such
    shifted = meeting_item(event(type="exception", originalStart="2026-03-16T16:00:00+01:00"))
    assert shifted.recurrence_id == "20260316T150000Z"
    # a single instance or the series master has none, whatever it carries
    assert meeting_item(event(originalStart="2026-03-09T15:00:00Z")).recurrence_id is None
    assert meeting_item(event(type="seriesMaster")).recurrence_id is None
    with pytest.raises(ValueError, match="originalStart"):
        meeting_item(event(type="exception", originalStart="last Monday"))


def test_times_in_windows_and_iana_zones_and_all_day_events():
    # 15:00 in Redmond in March 2026 (PDT from March 8): 22:00 UTC
    pacific = {"dateTime": "2026-03-10T15:00:00.0000000", "timeZone": "Pacific Standard Time"}
    assert graph_time(pacific) == at("2026-03-10T22:00:00")
    winter = {"dateTime": "2026-01-10T15:00:00", "timeZone": "W. Europe Standard Time"}
    assert graph_time(winter) == at("2026-01-10T14:00:00")
    assert graph_time({"dateTime": "2026-01-10T15:00:00", "timeZone": "Asia/Tokyo"}) == at(
        "2026-01-10T06:00:00"
    )
    assert graph_time({"dateTime": "2026-01-10T15:00:00.1234567"}) == at(
        "2026-01-10T15:00:00.123456"
    )  # no zone: UTC, seven digits of fraction cut to six
    with pytest.raises(ValueError, match="unknown time zone"):
        graph_time({"dateTime": "2026-01-10T15:00:00", "timeZone": "Mars Standard Time"})
    # an all-day event: midnight to midnight in the zone it is given in
    all_day = meeting_item(
        event(
            isAllDay=True,
            start={"dateTime": "2026-03-02T00:00:00.0000000", "timeZone": "UTC"},
            end={"dateTime": "2026-03-03T00:00:00.0000000", "timeZone": "UTC"},
        )
    )
    assert (all_day.start, all_day.end - all_day.start) == (at("2026-03-02T00:00:00"), timedelta(1))
    berlin = meeting_item(
        event(
            isAllDay=True,
            start={"dateTime": "2026-03-02T00:00:00", "timeZone": "W. Europe Standard Time"},
            end={"dateTime": "2026-03-03T00:00:00", "timeZone": "W. Europe Standard Time"},
        )
    )
    assert berlin.start == at("2026-03-01T23:00:00") and berlin.end == at("2026-03-02T23:00:00")


def test_private_events_and_their_quarantine_keep_nothing_of_them():
    assert meeting_item(event(sensitivity="private")).private
    assert meeting_item(event(sensitivity="Confidential")).private
    assert not meeting_item(event(sensitivity="personal")).private
    held = quarantined(event(sensitivity="private", start="soon"), "bad start", "graph-event")
    assert held.raw is None and held.format is None and "marked private" in held.reason


def test_events_that_cannot_be_read_raise_value_error():
    for broken in (
        event(start={"dateTime": "soon", "timeZone": "UTC"}),
        event(start="2026-03-02T15:00:00Z"),  # not a dateTimeTimeZone
        event(end=None),
        event(organizer="Acme front desk"),
        event(attendees=[["ana@northwind.test"]]),
        {k: v for k, v in event().items() if k != "id"},
    ):
        with pytest.raises(ValueError):
            meeting_item(broken)
    with pytest.raises(ValueError, match="not a readable Graph event"):
        meeting_item(event(organizer="Acme front desk"))
    with pytest.raises(OverLimit, match="the event is over"):
        meeting_item(event(bodyPreview="x" * 100_000), limits=LimitSettings(message_bytes=65536))


# --- limits, the quarantine and the re-parsers ------------------------------------------------


def test_resources_are_measured_without_a_copy_and_held_to_the_limits():
    value = {"a": "xyz", "b": [1, 2, {"c": None}]}
    assert json_size(value, 1 << 20) == pytest.approx(len(json.dumps(value)), rel=0.5)
    assert json_size({"a": "x" * 10_000, "b": "y" * 10_000}, 100) < 20_000  # stops past the cap
    check_resource(message(), LimitSettings(), "message")
    headers = [{"name": f"X-{i}", "value": "v"} for i in range(60)]
    with pytest.raises(OverLimit, match="has 60 header fields"):
        check_resource(
            message(internetMessageHeaders=headers), LimitSettings(headers=50), "message"
        )


def test_the_quarantine_keeps_the_json_and_a_retry_reads_it_again():
    broken = message(sentDateTime="yesterday", receivedDateTime=None)
    held = quarantined(broken, "no usable date", "graph-message")
    assert (held.provider_id, held.format, held.reason) == (
        "AAkALmsg1",
        "graph-message",
        "no usable date",
    )
    assert held.raw is not None and json.loads(held.raw) == broken
    with pytest.raises(ValueError, match="no usable date"):
        reread(held.raw, "graph-message")
    fixed = reread(
        held.raw.replace(b'"yesterday"', b'"2026-01-04T09:00:00Z"'), "graph-message", "full"
    )
    assert isinstance(fixed, MailItem) and fixed.body.startswith("Hello Ana,\n")
    meeting = reread(json.dumps(event()).encode(), "graph-event")
    assert isinstance(meeting, MeetingItem) and meeting.subject == "Acme QBR"
    with pytest.raises(ValueError, match="not JSON"):
        reread(b"{not json", "graph-message")
    with pytest.raises(ValueError, match="not a Graph event object"):
        reread(b"[1, 2]", "graph-event")
    with pytest.raises(UnknownFormat, match="no parser reads format 'graph-thing'"):
        reread(json.dumps(message()).encode(), "graph-thing")
    # not even an object: kept wrapped; too large: kept with its reason only
    odd = quarantined(["x"], "not a Graph message", "graph-message")
    assert (
        odd.provider_id == "?" and odd.raw is not None and json.loads(odd.raw) == {"value": ["x"]}
    )
    huge = quarantined(message(bodyPreview="x" * (MAX_RAW + 1)), "too big", "graph-message")
    assert huge.raw is None and "too large to keep" in huge.reason


def test_the_re_parsers_read_as_the_connector_does():
    ctx = RereadContext(
        provider_id="AAkALmsg1",
        body_policy="metadata",
        received=at("2026-01-05T10:00:01"),
        window=(at("2026-01-01T00:00:00"), at("2026-12-31T00:00:00")),
    )
    (mail,) = reread_message(json.dumps(message()).encode(), ctx).items
    assert isinstance(mail, MailItem) and mail.body == ""  # the mailbox's policy
    assert reread_message(json.dumps(message(isDraft=True)).encode(), ctx).items == ()
    assert reread_message(json.dumps({"id": "x", "@removed": {}}).encode(), ctx).items == ()
    (meeting,) = reread_event(json.dumps(event()).encode(), ctx).items
    assert isinstance(meeting, MeetingItem)
    task = event(transactionId="syncd-no-reply-1")
    assert reread_event(json.dumps(task).encode(), ctx).items == ()
    with pytest.raises(ValueError, match="not a Graph event object"):
        reread_event(b"[]", ctx)


def test_error_bodies_give_their_code_and_message():
    graph = {"error": {"code": "ErrorInvalidUser", "message": "no such mailbox"}}
    assert error_text(graph) == ("ErrorInvalidUser", "no such mailbox")
    sign_in = {"error": "invalid_client", "error_description": "AADSTS7000215: bad\r\nTrace"}
    assert error_text(sign_in) == ("invalid_client", "AADSTS7000215: bad")
    assert error_text("not json") == ("", "")
