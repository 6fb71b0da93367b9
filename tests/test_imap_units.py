"""The imap kind without a server: FETCH answers read as mail, a LIST answer as the folders
to read, IDLE answers, a folder's cursor, CalDAV objects read as meetings, task states and
removals, a calendar's batches and cursor, and a command retried on a dropped connection."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from syncd.config import LimitSettings
from syncd.connectors.base import AuthError, ConnectorError, CursorExpired, MailboxSpec
from syncd.connectors.ical_tasks import task_to_ical
from syncd.connectors.imap import ImapSettings
from syncd.connectors.imap.caldav import CalDavCalendar, CalDavClient
from syncd.connectors.imap.folder import UidCursor
from syncd.connectors.imap.parse import (
    CalendarDelta,
    announces_mail,
    chosen_folders,
    fetch_attributes,
    has_calendar_part,
    mail_item,
)
from syncd.connectors.imap.session import ImapSession
from syncd.demo import email_bytes, event_ics
from syncd.items import Cursor, MailItem, Quarantined, TaskItem, TaskState
from syncd.secrets import Secret

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = (NOW - timedelta(days=90), NOW + timedelta(days=30))
LIMITS = LimitSettings()
ANA = ("ana@northwind.test", "Ana")
EVA = ("eva@globex.test", "Eva")


def message(subject: str = "pilot plan", body: str = "") -> bytes:
    return email_bytes(
        sender="Carla <carla@acme.test>",
        to=["ana@northwind.test"],
        subject=subject,
        when=T0,
        message_id="units-1@acme.test",
        body=body,
    )


def spec(**settings: Any) -> MailboxSpec:
    values = ImapSettings(host="127.0.0.1", tls="none", **settings)
    return MailboxSpec("ana", "imap", "ana@northwind.test", values, secret=Secret("pw"))


# --- FETCH answers ------------------------------------------------------------------------------


def test_every_fetch_peeks_and_each_policy_asks_only_what_it_keeps():
    for policy in ("metadata", "snippet", "full"):
        asked = fetch_attributes(policy)
        bodies = [a for a in asked if a.startswith(b"BODY") and a != b"BODYSTRUCTURE"]
        assert bodies and all(a.startswith(b"BODY.PEEK[") for a in bodies)  # never marks read
    assert b"BODY.PEEK[]" in fetch_attributes("full")
    assert b"BODY.PEEK[TEXT]<0.16384>" in fetch_attributes("snippet")
    assert not any(b"TEXT" in a or a == b"BODY.PEEK[]" for a in fetch_attributes("metadata"))


def test_a_whole_message_is_read_as_mail():
    item = mail_item("INBOX/42/7", {b"BODY[]": message(), b"INTERNALDATE": T0}, LIMITS)
    assert isinstance(item, MailItem)
    assert (item.provider_id, item.subject, item.sent_at) == ("INBOX/42/7", "pilot plan", T0)
    assert item.sender is not None and item.sender.address == "carla@acme.test"


def test_a_header_and_the_start_of_the_text_are_read_as_mail_dated_by_the_server():
    header = b"From: carla@acme.test\r\nTo: ana@northwind.test\r\nSubject: no date\r\n\r\n"
    arrived = datetime(2026, 3, 4, 5, 6, 7)  # a server that gave no zone: UTC
    data = {b"BODY[HEADER]": header, b"BODY[TEXT]<0>": b"the start", b"INTERNALDATE": arrived}
    item = mail_item("Sent/1/2", data, LIMITS)
    assert isinstance(item, MailItem) and item.subject == "no date"
    assert item.sent_at == arrived.replace(tzinfo=UTC)


def test_a_message_larger_than_its_size_said_is_quarantined_without_its_bytes():
    small = LimitSettings(message_bytes=64 * 1024)
    big = message(body="x" * 70 * 1024)
    entry = mail_item("INBOX/1/3", {b"BODY[]": big}, small)
    assert isinstance(entry, Quarantined) and entry.raw is None
    assert entry.reason.endswith("over the limit of 65536 bytes (limits.message_bytes): not read")


def test_a_fetch_answer_of_another_shape_is_quarantined_for_that_message_only():
    entry = mail_item("INBOX/1/4", {b"BODY[HEADER]": ["not", "bytes"]}, LIMITS)
    assert isinstance(entry, Quarantined) and entry.provider_id == "INBOX/1/4"
    assert entry.reason.startswith("unexpected FETCH response: TypeError")


def test_an_invitation_is_found_at_any_depth_of_the_bodystructure():
    plain = (b"text", b"plain", (b"charset", b"utf-8"), None, None, b"7bit", 10, 1)
    invite = (b"TEXT", b"CALENDAR", (b"method", b"REQUEST"), None, None, b"7bit", 99, 3)
    pdf = (b"application", b"pdf", None, None, None, b"base64", 500)
    assert has_calendar_part(([plain, ([plain, invite], b"alternative")], b"mixed"))
    assert not has_calendar_part(([plain, pdf], b"mixed"))
    assert not has_calendar_part(None)


# --- LIST and IDLE ------------------------------------------------------------------------------


def test_the_folders_read_are_inbox_the_sent_folder_and_the_extras_once():
    listed = [
        ((b"\\HasNoChildren",), b"/", "INBOX"),
        ((b"\\HasNoChildren", b"\\Sent"), b"/", "Gesendet"),
        ((), b"/", "Sent"),
        ((), b"/", "Deals"),
        ((), b"/", "Spam"),
    ]
    assert chosen_folders(listed, ["Deals", "Gesendet"], [], "ana") == [
        "INBOX",
        "Gesendet",
        "Deals",
    ]
    assert chosen_folders(listed, ["Deals"], ["deals", "inbox"], "ana") == ["INBOX", "Gesendet"]


def test_without_a_sent_flag_a_common_name_is_the_sent_folder():
    listed = [((), b".", "INBOX"), ((), b".", "Sent Items"), ((), b".", "Archive")]
    assert chosen_folders(listed, [], [], "ana") == ["INBOX", "Sent Items"]
    assert chosen_folders([((), b".", "INBOX")], [], [], "ana") == ["INBOX"]


def test_an_extra_folder_the_server_does_not_have_names_those_it_has():
    listed = [((), b"/", "INBOX"), ((), b"/", "Sent")]
    with pytest.raises(ConnectorError) as missing:
        chosen_folders(listed, ["Deals"], [], "ana")
    assert str(missing.value) == (
        "mailbox 'ana': folder 'Deals' does not exist on the server; folders there: INBOX, Sent"
    )


def test_idle_answers_announce_mail_only_for_exists_or_recent():
    assert announces_mail([(4, b"EXISTS")])
    assert announces_mail([(b"OK", b"Still here"), (1, b"RECENT")])
    assert not announces_mail([(3, b"EXPUNGE"), (b"OK", b"Still here"), b"junk"])
    assert not announces_mail([])


# --- a folder's cursor --------------------------------------------------------------------------


def stored(**value: Any) -> dict[str, Any]:
    return json.loads(json.dumps(value))


def test_a_first_pass_stores_the_folder_state_with_its_newest_uid_only():
    position = UidCursor("INBOX", {}, {b"UIDVALIDITY": 7, b"UIDNEXT": 31, b"HIGHESTMODSEQ": 90})
    position.check()
    assert not position.unchanged() and position.last == 0
    assert json.loads(position.at(12, final=False).value) == {
        "uv": 7,
        "uid": 12,
        "ms": None,
        "next": None,
    }
    assert json.loads(position.at(30, final=True).value) == {
        "uv": 7,
        "uid": 30,
        "ms": 90,
        "next": 31,
    }


def test_an_unchanged_folder_is_told_by_its_modseq_or_its_uidnext():
    before = stored(uv=7, uid=30, ms=90, next=31)
    same_modseq = {b"UIDVALIDITY": 7, b"UIDNEXT": 32, b"HIGHESTMODSEQ": 90}
    assert UidCursor("INBOX", before, same_modseq).unchanged()
    assert UidCursor("INBOX", before, {b"UIDVALIDITY": 7, b"UIDNEXT": 31}).unchanged()
    moved = UidCursor("INBOX", before, {b"UIDVALIDITY": 7, b"UIDNEXT": 35, b"HIGHESTMODSEQ": 95})
    assert not moved.unchanged() and moved.last == 30


def test_a_changed_uidvalidity_expires_the_cursor():
    position = UidCursor("INBOX", stored(uv=7, uid=30), {b"UIDVALIDITY": 8, b"UIDNEXT": 3})
    with pytest.raises(CursorExpired, match="UIDVALIDITY of 'INBOX' changed from 7 to 8"):
        position.check()


# --- CalDAV objects -----------------------------------------------------------------------------


def event(uid: str, subject: str) -> bytes:
    return event_ics(uid, subject, NOW - timedelta(days=1), 30, ANA, [EVA])


def own_task(uid: str) -> bytes:
    task = TaskItem(uid, "Call Eva", "no reply yet", NOW + timedelta(days=2), "open", NOW)
    return task_to_ical(task)


def test_objects_are_read_as_meetings_and_syncds_tasks_as_task_states():
    delta = CalendarDelta({}, WINDOW, LIMITS)
    delta.read("/cal/a.ics", event("a@globex.test", "Globex sync"))
    delta.read("/cal/t.ics", own_task("syncd-nudge-1"))
    delta.read("/cal/empty.ics", b"")
    assert [m.subject for m in delta.meetings] == ["Globex sync"]
    assert [s.uid for s in delta.task_states] == ["syncd-nudge-1"]
    assert delta.uids == {"/cal/a.ics": ["a@globex.test"], "/cal/t.ics": ["syncd-nudge-1"]}
    assert not delta.quarantined and not delta.removed and not delta.empty


def test_objects_that_cannot_be_read_are_quarantined_and_the_others_read():
    delta = CalendarDelta({}, WINDOW, LimitSettings(message_bytes=64 * 1024))
    delta.read("/cal/big.ics", b"BEGIN:VCALENDAR\r\n" + b"X" * 70 * 1024)
    delta.read("/cal/bad.ics", b"not a calendar at all")
    delta.unloadable("/cal/gone.ics", OSError("reset by peer"))
    delta.read("/cal/ok.ics", event("ok@globex.test", "Still read"))
    big, bad, gone = delta.quarantined
    assert big.provider_id == "/cal/big.ics" and big.raw is None and "not read" in big.reason
    assert (bad.provider_id, bad.raw, bad.format) == (
        "/cal/bad.ics",
        b"not a calendar at all",
        "ical",
    )
    assert gone.reason == "cannot read the object: OSError: reset by peer"
    assert [m.subject for m in delta.meetings] == ["Still read"]
    assert set(delta.uids) == {"/cal/ok.ics"}


def test_a_deleted_object_removes_its_meetings_and_cancels_syncds_tasks():
    uids = {"/cal/a.ics": ["a@globex.test"], "/cal/t.ics": ["syncd-nudge-1"], "/cal/b.ics": ["b"]}
    delta = CalendarDelta(uids, WINDOW, LIMITS)
    delta.deleted("/cal/a.ics")
    delta.deleted("/cal/t.ics")
    delta.deleted("/cal/never-seen.ics")
    assert delta.removed == ["a@globex.test"]
    assert delta.task_states == [TaskState("syncd-nudge-1", "cancelled")]
    assert delta.uids == {"/cal/b.ics": ["b"]}


def test_after_a_full_read_objects_not_sent_again_are_removed():
    uids = {"/cal/a.ics": ["a"], "/cal/t.ics": ["syncd-nudge-1"], "/cal/b.ics": ["b"]}
    delta = CalendarDelta(uids, WINDOW, LIMITS)
    delta.missing(["/cal/b.ics"])
    assert delta.removed == ["a"] and delta.task_states == []
    assert delta.uids == {"/cal/b.ics": ["b"]}


# --- a calendar's batches, against a stand-in for the caldav library's calendar -----------------


class Obj:
    def __init__(self, path: str, data: bytes | str) -> None:
        self.url = f"http://127.0.0.1:5232{path}"
        self.data = data


class Report(list[Obj]):
    def __init__(self, objects: list[Obj], token: str | None, deleted: set[str]) -> None:
        super().__init__(objects)
        self.sync_token = token
        self.deleted_urls = deleted


class Calendar:
    """What the caldav library's calendar answers to a sync-collection report."""

    url = "http://127.0.0.1:5232/ana/work/"

    def __init__(self) -> None:
        self.objects: dict[str, bytes | str] = {}
        self.deleted: set[str] = set()
        self.token = 1

    def get_objects_by_sync_token(self, sync_token: str | None, load_objects: bool) -> Report:
        assert load_objects  # the connector asks for the objects with the report
        if sync_token == str(self.token):
            return Report([], str(self.token), set())
        objects = [Obj(p, d) for p, d in self.objects.items()]
        return Report(objects, str(self.token), set() if sync_token is None else self.deleted)


def calendar_source(cal: Calendar, batch_size: int) -> CalDavCalendar:
    client = CalDavClient(spec(caldav_url="http://127.0.0.1:5232/"))
    return CalDavCalendar(client, cal, 90, 30, batch_size)


def test_a_calendar_in_several_batches_carries_its_new_cursor_on_the_last_only():
    cal = Calendar()
    cal.objects = {f"/ana/work/{i}.ics": event(f"e{i}@globex.test", f"meeting {i}") for i in "abc"}
    cal.objects["/ana/work/t.ics"] = own_task("syncd-nudge-1").decode()  # a str, as loaded
    source = calendar_source(cal, batch_size=2)
    first, last = list(source.changes(None))
    assert [len(first.items), len(last.items)] == [2, 1]
    assert json.loads(first.cursor.value) == {"token": None, "uids": {}, "day": ""}
    after = json.loads(last.cursor.value)
    assert after["token"] == "1" and after["day"] == NOW.date().isoformat()
    assert len(after["uids"]) == 4 and first.task_states == ()
    assert [s.uid for s in last.task_states] == ["syncd-nudge-1"]
    assert list(source.changes(last.cursor)) == []  # unchanged: nothing, not even a cursor


def test_a_calendar_change_removes_deleted_meetings_and_a_new_day_reads_everything_again():
    cal = Calendar()
    cal.objects = {f"/ana/work/{i}.ics": event(f"e{i}@globex.test", f"meeting {i}") for i in "ab"}
    source = calendar_source(cal, batch_size=10)
    (first,) = source.changes(None)
    del cal.objects["/ana/work/a.ics"]
    cal.deleted, cal.token = {"http://127.0.0.1:5232/ana/work/a.ics"}, 2
    (second,) = source.changes(first.cursor)
    assert second.removed == ("ea@globex.test",)
    del cal.objects["/ana/work/b.ics"]  # deleted while no report tells it: a day passes
    yesterday = {**json.loads(second.cursor.value), "day": "2000-01-01"}
    (third,) = source.changes(Cursor(json.dumps(yesterday)))
    assert third.removed == ("eb@globex.test",) and third.items == ()
    assert json.loads(third.cursor.value)["uids"] == {}


# --- sessions -----------------------------------------------------------------------------------


def test_a_mailbox_without_a_stored_secret_names_the_reauth_fix():
    bare = MailboxSpec(
        "ana", "imap", "ana@northwind.test", ImapSettings(host="127.0.0.1", tls="none")
    )
    with pytest.raises(AuthError) as imap:
        ImapSession(bare).connect()
    assert str(imap.value) == (
        "mailbox 'ana': IMAP 127.0.0.1:143 has no password or token stored; "
        "run 'syncd mailbox reauth ana'"
    )
    with_caldav = MailboxSpec(
        "ana",
        "imap",
        "ana@northwind.test",
        ImapSettings(host="127.0.0.1", tls="none", caldav_url="http://127.0.0.1:5232/"),
    )
    with pytest.raises(AuthError, match="no CalDAV password stored; run 'syncd mailbox reauth"):
        CalDavClient(with_caldav)


class Connection:
    def shutdown(self) -> None:
        pass

    def logout(self) -> None:
        pass


def connected(session: ImapSession) -> list[Connection]:
    """Make the session open stand-in connections; the list of those it opened."""
    opened: list[Connection] = []

    def connect() -> Any:
        if session._client is None:
            session._client = Connection()
            opened.append(session._client)
        return session._client

    session.connect = connect  # type: ignore[method-assign]
    return opened


def test_a_dropped_command_runs_again_on_a_new_connection():
    session = ImapSession(spec(retries=3))
    opened = connected(session)
    ran_on: list[Connection] = []

    def command(client: Any) -> str:
        ran_on.append(client)
        if len(ran_on) < 3:
            raise OSError("connection reset by peer")
        return "done"

    assert session.call("NOOP", command) == "done"
    assert len(opened) == 3 and ran_on == opened


def test_a_connection_that_keeps_dropping_ends_the_pass_after_the_mailboxs_retries():
    session = ImapSession(spec(retries=2))
    opened = connected(session)

    def command(client: Any) -> str:
        raise EOFError("socket closed")

    with pytest.raises(ConnectorError) as failed:
        session.call("FETCH INBOX", command)
    assert len(opened) == 2
    assert str(failed.value) == (
        "mailbox 'ana': IMAP 127.0.0.1:143: the connection keeps dropping during FETCH INBOX "
        "(socket closed); the next poll resumes from the last stored batch"
    )
