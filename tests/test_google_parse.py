"""Google's JSON read by ``syncd.connectors.gmail.parse``: events, tasks, messages, history
records and labels, as plain dicts shaped like the API's (no server, no database)."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from syncd.config import LimitSettings
from syncd.connectors.gmail.parse import (
    event_id,
    google_time,
    is_tombstone,
    labels_by_id,
    meeting_item,
    never_read,
    over_size,
    read_message,
    rfc3339,
    task_event,
    task_state,
    to_read,
    unbase64,
)
from syncd.items import MailItem, MeetingItem, Participant, Quarantined, TaskItem, TaskState

ANA = "ana@northwind.test"


def event(**fields: Any) -> dict[str, Any]:
    """A timed event as events.list returns it, with ``fields`` over it."""
    base: dict[str, Any] = {
        "id": "evt1",
        "iCalUID": "uid-1@google.com",
        "status": "confirmed",
        "summary": "Globex check-in",
        "start": {"dateTime": "2026-11-20T10:00:00+01:00", "timeZone": "Europe/Paris"},
        "end": {"dateTime": "2026-11-20T10:30:00+01:00", "timeZone": "Europe/Paris"},
        "organizer": {"email": ANA, "displayName": "Ana"},
    }
    return {**base, **fields}


def meeting(**fields: Any) -> MeetingItem:
    item = meeting_item(event(**fields))
    assert item is not None
    return item


# --- events -> meetings -----------------------------------------------------------------------


def test_a_timed_event_is_a_meeting_in_utc_keyed_by_its_ical_uid():
    item = meeting(location="Room 2", description="agenda")
    assert (item.key, item.uid, item.recurrence_id) == (
        "ical:uid-1@google.com",
        "uid-1@google.com",
        None,
    )
    assert item.provider_id == "evt1"
    assert item.start == datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    assert item.end == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    assert item.description == "agenda"
    assert not item.cancelled and not item.private


def test_without_an_ical_uid_the_event_id_is_the_uid():
    item = meeting(iCalUID=None)
    assert (item.uid, item.key) == ("evt1", "ical:evt1")


def test_organizer_first_and_each_attendee_once():
    item = meeting(
        organizer={"email": "Ana@NorthWind.test", "displayName": "Ana"},
        attendees=[
            {"email": ANA, "responseStatus": "accepted", "organizer": True},  # the organizer
            {"email": "eva@globex.test", "displayName": "Eva"},
            {"email": "EVA@globex.test", "displayName": "Eva again"},  # same person
            {"displayName": "Room without an address", "resource": True},
            {"email": "not an address"},
            {"email": "bob@globex.test", "displayName": " Bob  "},
        ],
    )
    assert item.participants == (
        Participant(ANA, "Ana", "organizer"),
        Participant("eva@globex.test", "Eva", "attendee"),
        Participant("bob@globex.test", "Bob", "attendee"),
    )
    assert item.organizer == Participant(ANA, "Ana", "organizer")


def test_an_event_without_an_organizer_address_has_attendees_only():
    item = meeting(organizer={"displayName": "Someone"}, attendees=[{"email": "eva@globex.test"}])
    assert item.participants == (Participant("eva@globex.test", "", "attendee"),)
    assert item.organizer is None


def test_a_display_name_that_is_only_the_address_is_no_name():
    item = meeting(attendees=[{"email": "eva@globex.test", "displayName": "EVA@globex.test"}])
    assert item.participants[1] == Participant("eva@globex.test", "", "attendee")


def test_an_occurrence_is_keyed_by_its_original_start_in_utc():
    moved = meeting(
        id="evt1_20261120T090000Z",
        recurringEventId="evt1",
        # moved to the afternoon: the key stays that of the occurrence it was
        start={"dateTime": "2026-11-20T15:00:00+01:00"},
        end={"dateTime": "2026-11-20T15:30:00+01:00"},
        originalStartTime={"dateTime": "2026-11-20T10:00:00+01:00", "timeZone": "Europe/Paris"},
    )
    assert moved.recurrence_id == "20261120T090000Z"
    assert moved.key == "ical:uid-1@google.com#20261120T090000Z"
    assert moved.start == datetime(2026, 11, 20, 14, 0, tzinfo=UTC)
    assert moved.provider_id == "evt1_20261120T090000Z"


def test_two_calendars_holding_one_occurrence_give_one_key():
    paris = meeting(
        recurringEventId="a",
        originalStartTime={"dateTime": "2026-11-20T10:00:00+01:00"},
    )
    new_york = meeting(
        id="other",
        recurringEventId="b",
        originalStartTime={"dateTime": "2026-11-20T04:00:00-05:00"},
    )
    assert paris.key == new_york.key


def test_an_all_day_event_and_an_all_day_occurrence():
    day = meeting(start={"date": "2026-12-15"}, end={"date": "2026-12-16"})
    assert (day.start, day.end) == (
        datetime(2026, 12, 15, tzinfo=UTC),
        datetime(2026, 12, 16, tzinfo=UTC),
    )
    assert day.recurrence_id is None
    occurrence = meeting(
        start={"date": "2026-12-15"},
        end={"date": "2026-12-16"},
        recurringEventId="evt0",
        originalStartTime={"date": "2026-12-14"},
    )
    assert occurrence.recurrence_id == "20261214T000000Z"


def test_an_original_start_outside_a_series_is_no_occurrence():
    assert meeting(originalStartTime={"dateTime": "2026-11-20T10:00:00Z"}).recurrence_id is None


def test_a_cancelled_event_is_a_cancelled_meeting():
    assert meeting(status="cancelled").cancelled
    assert not meeting(status="tentative").cancelled


@pytest.mark.parametrize(
    ("visibility", "private"),
    [("private", True), ("confidential", True), ("public", False), ("default", False)],
)
def test_private_and_confidential_events_are_private(visibility, private):
    assert meeting(visibility=visibility).private is private


def test_the_subject_is_one_line():
    assert meeting(summary="  Globex\n\tcheck-in \x00 ").subject == "Globex check-in"
    no_summary = {k: v for k, v in event().items() if k != "summary"}
    assert meeting_item(no_summary) == meeting(summary="")


def test_events_without_a_start_or_an_end_are_no_meetings():
    no_start = {k: v for k, v in event().items() if k != "start"}
    no_end = {k: v for k, v in event().items() if k != "end"}
    tombstone = {"id": "evt9", "status": "cancelled"}
    assert meeting_item(no_start) is None
    assert meeting_item(no_end) is None
    assert meeting_item(tombstone) is None
    assert is_tombstone(tombstone) and not is_tombstone(event(status="cancelled"))


def test_a_start_without_a_time_or_a_date_cannot_be_read():
    with pytest.raises(KeyError):
        meeting_item(event(start={"timeZone": "Europe/Paris"}))


def test_google_time_and_rfc3339():
    assert google_time({"dateTime": "2026-11-20T10:00:00Z"}) == datetime(
        2026, 11, 20, 10, tzinfo=UTC
    )
    assert google_time({"dateTime": "2026-11-20T10:00:00-08:00"}).hour == 18
    assert google_time({"date": "2026-11-20"}) == datetime(2026, 11, 20, tzinfo=UTC)
    assert rfc3339(datetime(2026, 11, 20, 10, tzinfo=UTC)) == "2026-11-20T10:00:00Z"


# --- syncd's own task events -------------------------------------------------------------------


def task(status: str = "open") -> TaskItem:
    due = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    return TaskItem(
        uid="syncd-no-reply-abc",
        title="Follow up",
        description="d",
        due=due,
        status=status,  # type: ignore[arg-type]
        created=due,
    )


def test_the_event_id_of_a_task_is_fixed_by_its_uid():
    eid = event_id("syncd-no-reply-abc")
    # stable across versions: a task written before an upgrade is found again by its id
    assert eid == "o1mdfqqk8j2njhsijhl62jmthi93afvg9m7qavtp"
    assert event_id("syncd-no-reply-abc") == eid != event_id("syncd-no-reply-abd")
    # Calendar's rule for an id given by the client: 5 to 1024 characters of base32hex
    assert re.fullmatch(r"[a-v0-9]{5,1024}", eid) and len(eid) == 40


def test_a_task_is_a_short_transparent_event_stamped_with_its_uid():
    body = task_event(task())
    assert body["summary"] == "Follow up" and body["status"] == "confirmed"
    assert body["start"] == {"dateTime": "2026-11-21T09:00:00Z"}
    assert body["end"] == {"dateTime": "2026-11-21T09:15:00Z"}
    assert body["transparency"] == "transparent"
    assert body["extendedProperties"] == {"private": {"syncdTask": "syncd-no-reply-abc"}}
    assert task_event(task("done"))["summary"] == "Done: Follow up"
    assert task_event(task("cancelled"))["status"] == "cancelled"


def test_what_the_user_did_to_a_task_event():
    ours = task_event(task()) | {"id": event_id("syncd-no-reply-abc")}
    assert task_state(ours) is None  # untouched
    assert task_state(ours | {"status": "cancelled"}) == TaskState(
        "syncd-no-reply-abc", "cancelled"
    )
    assert task_state(ours | {"summary": " ✓ Follow up"}) == TaskState("syncd-no-reply-abc", "done")
    assert task_state(task_event(task("done"))) == TaskState("syncd-no-reply-abc", "done")
    assert task_state(event(status="cancelled")) is None  # a meeting, not a task


# --- messages, history records and labels ------------------------------------------------------


RAW = (
    b"From: Carla <carla@acme.test>\r\n"
    b"To: ana@northwind.test\r\n"
    b"Subject: Renewal\r\n"
    b"Date: Fri, 20 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <r1@acme.test>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Shall we renew?\r\n"
)


def resource(raw: bytes | None = RAW, **fields: Any) -> dict[str, Any]:
    """A messages.get format=raw resource; Gmail's raw is base64url without padding."""
    found: dict[str, Any] = {
        "id": "m1",
        "threadId": "t1",
        "labelIds": ["INBOX"],
        "internalDate": "1795168800000",
        "sizeEstimate": len(raw or b""),
    }
    if raw is not None:
        found["raw"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return {**found, **fields}


def test_a_raw_message_is_read_with_its_thread_id_and_its_raw_let_go():
    message = resource()
    item, length = read_message("m1", message, LimitSettings())
    assert isinstance(item, MailItem)
    assert (item.provider_id, item.message_id, item.subject) == ("m1", "r1@acme.test", "Renewal")
    assert item.provider_thread_id == "t1"
    assert "raw" not in message and abs(length - len(RAW)) <= 2


def test_unpadded_base64url_decodes():
    for data in (b"a", b"ab", b"abc", b"\xfb\xff"):
        assert unbase64(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data


def test_a_message_over_the_size_is_quarantined_undecoded():
    limits = LimitSettings(message_bytes=64 * 1024)
    big = RAW + b"x" * 100_000
    item, length = read_message("m1", resource(big), limits)
    assert isinstance(item, Quarantined) and item.raw is None
    assert item.reason.startswith("over limits.message_bytes")
    assert length > 100_000
    assert over_size({"sizeEstimate": 70_000}, 0, limits) is not None  # no raw: the estimate
    assert over_size({"sizeEstimate": 5_000}, 0, limits) is None
    assert over_size({"sizeEstimate": "?"}, 0, limits) is None


def test_an_unreadable_message_is_quarantined_with_its_bytes():
    broken = b"Subject: no address anywhere\r\n\r\nbody\r\n"
    item, _ = read_message("m2", resource(broken), LimitSettings())
    assert isinstance(item, Quarantined)
    assert (item.raw, item.format) == (broken, "rfc822")
    assert "no From, To, Cc or Bcc" in item.reason
    missing, length = read_message("m3", resource(None), LimitSettings())
    assert isinstance(missing, Quarantined) and missing.raw is None and length == 0
    assert "raw" in missing.reason


def test_spam_trash_chat_and_drafts_are_never_read():
    for label in ("SPAM", "TRASH", "CHAT", "DRAFT"):
        assert never_read({"labelIds": ["INBOX", label]})
    assert not never_read({"labelIds": ["INBOX", "Label_1"]})
    assert not never_read({})


def test_a_history_record_asks_for_new_restored_and_user_labelled_messages():
    record = {
        "id": "1200",
        "messagesAdded": [{"message": {"id": "new"}}],
        "labelsRemoved": [
            {"message": {"id": "not-spam"}, "labelIds": ["SPAM"]},
            {"message": {"id": "restored"}, "labelIds": ["TRASH", "UNREAD"]},
            {"message": {"id": "read"}, "labelIds": ["UNREAD"]},
        ],
        "labelsAdded": [
            {"message": {"id": "crm"}, "labelIds": ["Label_7"]},
            {"message": {"id": "starred"}, "labelIds": ["STARRED"]},
        ],
    }
    assert list(to_read(record, lambda label: label.startswith("Label_"))) == [
        "new",
        "not-spam",
        "restored",
        "crm",
    ]
    assert list(to_read({"id": "1"}, lambda label: True)) == []


def test_labels_by_id_names_user_labels():
    listing = {
        "labels": [
            {"id": "INBOX", "name": "INBOX", "type": "system"},
            {"id": "Label_3", "name": "No CRM", "type": "user"},
            {"id": "Label_4", "type": "user"},  # no name: its id stands for it
        ]
    }
    assert labels_by_id(listing) == {
        "INBOX": ("INBOX", False),
        "Label_3": ("No CRM", True),
        "Label_4": ("Label_4", True),
    }
    assert labels_by_id({}) == {}
