"""Hypothesis fuzzing of MIME and iCalendar input: header folding, charsets, encoded words,
group syntax, nesting, truncation and bad dates, through the parser functions and through
the local mailbox (on SQLite and PostgreSQL). Whatever the input, nothing raises: each
input is an item or a quarantine entry with a reason, and a second sync changes nothing.
"""

from __future__ import annotations

import base64
import csv
import itertools
import mailbox as mailboxes
import quopri
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.ical import UnreadableCalendar, invitations_from_ical, read_calendar
from syncd.connectors.mime import UnreadableMessage, parse_message, read_message
from syncd.crm.models import Activity, Mailbox, QuarantineEntry, Sighting, Task, User
from syncd.demo import add_local_mailbox, load_company
from syncd.items import EARLIEST, MailItem, MeetingItem, Quarantined, latest
from syncd.sync import sync_mailbox

from .test_corpus import read_directly

S = sessionmaker[Session]
NOW = datetime.now(UTC).replace(microsecond=0)
USER = "ana@northwind.test"
WINDOW = (NOW - timedelta(days=90), NOW + timedelta(days=30))

# -- pieces of messages -------------------------------------------------------------------

LOCAL = st.sampled_from(["carla", "Ben.Okafor", "x+tag", "eva_n", "o'neil", "ö", "a\x00b"])
DOMAIN = st.sampled_from(
    ["acme.test", "Globex.TEST", "bücher.example", "northwind.test", "gmail.com", "[10.0.0.1]"]
)
JUNK = st.sampled_from(
    [":;a", '"', "<", ">", ".:", "\\@[", " .[", "b@[ ", "@", ",,", ";", "()", "(nested (c))"]
)
CHARSET = st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "windows-1252", "koi8-r", "bogus", ""])


@st.composite
def encoded_word(draw: Any) -> str:
    text = draw(st.text(max_size=20))
    charset = draw(CHARSET)
    encoding = draw(st.sampled_from("QqBbX"))
    try:
        raw = text.encode(charset or "utf-8", "replace")
    except LookupError:
        raw = text.encode("utf-8")
    if encoding in "Bb":
        payload = base64.b64encode(raw).decode()
        if draw(st.booleans()):
            payload = payload.rstrip("=")  # bad padding
    else:
        payload = quopri.encodestring(raw, header=True).decode().replace("?", "=3F")
    return f"=?{charset}?{encoding}?{payload}?="


DISPLAY = st.one_of(
    st.text(max_size=15),
    st.text(alphabet=st.characters(codec="ascii"), max_size=15).map(lambda t: f'"{t}"'),
    encoded_word(),
)


@st.composite
def mailbox_spec(draw: Any) -> str:
    address = f"{draw(LOCAL)}@{draw(DOMAIN)}"
    form = draw(st.integers(0, 3))
    if form == 0:
        return address
    if form == 1:
        return f"{draw(DISPLAY)} <{address}>"
    if form == 2:
        return f"{address} ({draw(st.text(max_size=10))})"
    return f"<{address}>"


@st.composite
def address_list(draw: Any) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 5))
        if kind <= 2:
            parts.append(draw(mailbox_spec()))
        elif kind == 3:  # group syntax, sometimes malformed
            members = ", ".join(draw(st.lists(mailbox_spec(), max_size=3)))
            end = draw(st.sampled_from([";", "", ";;", "; (no To-header on input)"]))
            parts.append(
                f"{draw(st.sampled_from(['Team', 'undisclosed-recipients', '']))}:{members}{end}"
            )
        elif kind == 4:
            parts.append(draw(JUNK))
        else:
            parts.append(draw(st.text(max_size=12)))
    return draw(st.sampled_from([", ", ",", " ", ";"])).join(parts)


HOSTILE_DATES = [
    "Mon, 1 Jan 2026 10:00:00 +99999999999999999999",
    "Fri, 31 Dec 9999 23:00:00 -2359",
    "Mon, 01 Jan 0001 00:00:00 +2359",
    "Thu, 01 Jan 1970 00:00:00 -0001",
    "Sat, 32 Feb 2026 25:61:61 +0000",
    "Fri, 21 Nov 1997 09(comment):   55  :  06 -0600",
    "yesterday",
    "",
]


@st.composite
def mail_date(draw: Any) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(HOSTILE_DATES))
    when = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)))
    offset = draw(st.integers(-9999, 9999))
    sign = "-" if offset < 0 else "+"
    return f"{when:%a, %d %b %Y %H:%M:%S} {sign}{abs(offset):04d}"


def fold(value: str, cuts: list[int], sep: str) -> str:
    """Fold a header value: a line break before some of its blanks (RFC 5322 2.2.3)."""
    out = list(value)
    for cut in cuts:
        if 0 < cut < len(out) and out[cut] == " ":
            out[cut] = f"{sep} "
    return "".join(out)


@st.composite
def header_block(draw: Any) -> list[tuple[str, str]]:
    headers = [("From", draw(address_list()))] if draw(st.integers(0, 9)) else []
    for name in ("To", "Cc", "Bcc"):
        if draw(st.booleans()):
            headers.append((name, draw(address_list())))
    if draw(st.integers(0, 3)):
        headers.append(("Subject", draw(st.one_of(st.text(max_size=40), encoded_word()))))
    if draw(st.integers(0, 3)):
        headers.append(("Date", draw(mail_date())))
    if draw(st.booleans()):
        received = draw(mail_date())
        headers.append(("Received", f"from mx.acme.test by mx.northwind.test; {received}"))
    if draw(st.booleans()):
        mid = draw(st.text(alphabet="abc@.<> -", max_size=20))
        headers.append(("Message-ID", mid))
    if draw(st.booleans()):
        headers.append(("In-Reply-To", draw(st.text(max_size=20))))
    if draw(st.integers(0, 4)) == 0:
        headers.append(
            draw(
                st.sampled_from(
                    [
                        ("Precedence", "bulk"),
                        ("Auto-Submitted", "auto-replied"),
                        ("List-Id", "<l.x>"),
                        ("Sensitivity", "Private"),
                        ("X-Gmail-Labels", "Inbox,CRM"),
                    ]
                )
            )
        )
    draw(st.randoms()).shuffle(headers)
    return headers


ICS_EVENT = (
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:{uid}\r\n"
    "DTSTART:{start}\r\nDTEND:{end}\r\n{rrule}SUMMARY:Review\r\n"
    "ORGANIZER;CN=Carla:mailto:carla@acme.test\r\nATTENDEE:mailto:ana@northwind.test\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


@st.composite
def mime_part(draw: Any, depth: int = 0) -> bytes:
    kind = draw(st.integers(0, 5 if depth < 3 else 2))
    cte = draw(st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-bogus", ""]))
    charset = draw(CHARSET)
    if kind <= 1:
        ctype = draw(st.sampled_from(["text/plain", "text/html", "application/octet-stream"]))
        text = draw(st.text(max_size=60))
    elif kind == 2:
        ctype = "text/calendar"
        start = NOW + timedelta(days=draw(st.integers(-5, 5)))
        text = ICS_EVENT.format(
            uid=draw(st.sampled_from(["qbr@acme.test", "", "x\x00y"])),
            start=draw(st.sampled_from([f"{start:%Y%m%dT%H%M%SZ}", "99991231T230000Z", "bad"])),
            end=f"{start + timedelta(hours=1):%Y%m%dT%H%M%SZ}",
            rrule=draw(st.sampled_from(["", "RRULE:FREQ=DAILY;COUNT=3\r\n", "RRULE:FREQ=X\r\n"])),
        )
    else:
        boundary = draw(st.sampled_from(["b1", "=_x", "", "a b", "b1"]))
        children = draw(st.lists(mime_part(depth + 1), min_size=0, max_size=3))
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report"]))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + c + b"\r\n" for c in children)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\r\n"
        head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'
        return head.encode() + body
    try:
        raw = text.encode(charset or "utf-8", "replace")
    except LookupError:
        raw = text.encode("utf-8", "surrogateescape")
    if cte == "base64":
        raw = base64.encodebytes(raw)
    elif cte == "quoted-printable":
        raw = quopri.encodestring(raw)
    head = f"Content-Type: {ctype}; charset={charset}\r\n"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\r\n"
    return head.encode() + b"\r\n" + raw


@st.composite
def messages(draw: Any) -> bytes:
    newline = draw(st.sampled_from(["\r\n", "\n"]))
    lines = []
    for name, value in draw(header_block()):
        cuts = draw(st.lists(st.integers(0, 80), max_size=3))
        lines.append(f"{name}: {fold(value, cuts, newline)}")
    head = newline.join(lines).encode("utf-8", "surrogateescape")
    if draw(st.booleans()):  # 8-bit bytes where only ASCII belongs
        head = head.replace(b"o", draw(st.sampled_from([b"\xf6", b"\xc3\xb6", b"\x00"])), 1)
    body = draw(mime_part())
    data = head + newline.encode() + body
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))  # truncated in transit
    return data if cut is None else data[:cut]


# -- pieces of calendars --------------------------------------------------------------------


@st.composite
def ics_datetime(draw: Any) -> str:
    day = NOW + timedelta(days=draw(st.integers(-100, 40)), hours=draw(st.integers(0, 23)))
    return draw(
        st.sampled_from(
            [
                f":{day:%Y%m%dT%H%M%SZ}",
                f";VALUE=DATE:{day:%Y%m%d}",
                f";TZID=Europe/Madrid:{day:%Y%m%dT%H%M%S}",
                f";TZID=Mars/Olympus:{day:%Y%m%dT%H%M%S}",
                f":{day:%Y%m%dT%H%M%S}",
                ":99991231T235959Z",
                ":00010101T000000",
                ":INVALID-DATE",
                ":",
            ]
        )
    )


@st.composite
def vevent(draw: Any) -> str:
    props = []
    if draw(st.integers(0, 5)):
        props.append(f"UID:{draw(st.sampled_from(['m1@acme.test', 'm2@acme.test', 'a,b;c', '']))}")
    for _ in range(draw(st.integers(0, 2))):  # none, one, or a second DTSTART
        props.append(f"DTSTART{draw(ics_datetime())}")
    end = draw(st.integers(0, 3))
    if end == 1:
        props.append(f"DTEND{draw(ics_datetime())}")
    elif end == 2:
        duration = draw(st.sampled_from(["PT1H", "P1D", "-PT1H", "P999999999999999999", "xx"]))
        props.append(f"DURATION:{duration}")
    if draw(st.booleans()):
        props.append(
            "RRULE:"
            + draw(
                st.sampled_from(
                    [
                        "FREQ=DAILY;COUNT=5",
                        "FREQ=WEEKLY;BYDAY=MO,TU",
                        f"FREQ=WEEKLY;UNTIL={NOW + timedelta(days=60):%Y%m%dT%H%M%SZ}",
                        "FREQ=MONTHLY;BYMONTHDAY=31",
                        "FREQ=INVALID",
                        "FREQ=YEARLY;BYMONTH=13",
                        "COUNT=3",
                    ]
                )
            )
        )
    if draw(st.booleans()):
        props.append(f"EXDATE{draw(ics_datetime())}")
    if draw(st.booleans()):
        props.append(f"RECURRENCE-ID{draw(ics_datetime())}")
    props.append(f"SUMMARY:{draw(st.text(max_size=30))}")
    organizer = draw(st.sampled_from(["carla@acme.test", "", "not an address", "ö@bücher.example"]))
    props.append(f'ORGANIZER;CN="{draw(st.text(max_size=8))}":mailto:{organizer}')
    for attendee in draw(st.lists(st.sampled_from(["ana@northwind.test", "eva@globex.test"]))):
        props.append(f"ATTENDEE;PARTSTAT=ACCEPTED:mailto:{attendee}")
    props.append(draw(st.sampled_from(["", "STATUS:CANCELLED", "CLASS:PRIVATE", "X-SYNCD-TASK:t"])))
    draw(st.randoms()).shuffle(props)
    return "BEGIN:VEVENT\r\n" + "\r\n".join(p for p in props if p) + "\r\nEND:VEVENT\r\n"


VTIMEZONE = (
    "BEGIN:VTIMEZONE\r\nTZID:Europe/Madrid\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n"
    "TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
)


@st.composite
def calendars(draw: Any) -> bytes:
    body = "".join(draw(st.lists(vevent(), max_size=4)))
    if draw(st.booleans()):
        body = VTIMEZONE + body
    text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//fuzz//EN\r\n" + body + "END:VCALENDAR\r\n"
    if draw(st.booleans()):  # fold long lines at 75 octets, as RFC 5545 3.1 asks
        text = "\r\n".join(
            "\r\n ".join(line[i : i + 74] for i in range(0, max(len(line), 1), 74))
            for line in text.split("\r\n")
        )
    if draw(st.booleans()):
        text = text.replace("\r\n", "\n")
    data = text.encode("utf-8", "surrogateescape")
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


# -- the parser functions ---------------------------------------------------------------------


def storable(text: str) -> None:
    text.encode("utf-8")  # no lone surrogates
    assert "\x00" not in text


def check_meeting(item: MeetingItem) -> None:
    assert item.key and item.uid
    assert item.start.tzinfo is not None and item.end.tzinfo is not None
    assert EARLIEST <= item.start <= item.end <= max(latest(), item.start)
    for text in (item.subject, item.description, item.uid):
        storable(text)


def check_mail(item: MailItem) -> None:
    assert item.key and item.participants
    assert item.sent_at.utcoffset() == timedelta(0)
    assert EARLIEST <= item.sent_at <= latest()
    storable(item.subject)
    storable(item.body)
    for p in item.participants:
        storable(p.name)
        storable(p.address)
    for invite in item.invitations:
        check_meeting(invite)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
@example(
    b"From: a@acme.test\r\nTo: :;a\r\nDate: Mon, 1 Jan 2026 10:00:00 +99999999999999999999\r\n\r\n"
)
@example(b"To: unlisted-recipients:; (no To-header on input)\r\nCc: <b@acme.test>\r\n\r\nx")
@example(b"From: b@acme.test\r\nDate: Fri, 31 Dec 9999 23:00:00 -2359\r\n\r\nbody")
def test_any_message_is_an_item_or_a_reason(data: bytes):
    try:
        item = parse_message(data, "fz/1", NOW)
    except UnreadableMessage as exc:  # the only exception it may raise
        assert str(exc).strip()
    else:
        check_mail(item)
    result = read_message(data, "fz/1", NOW)  # the connectors' way: never raises
    if isinstance(result, Quarantined):
        assert result.reason.strip() and result.raw == data and result.format == "rfc822"
    else:
        check_mail(result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calendars())
def test_any_calendar_is_meetings_problems_or_a_reason(data: bytes):
    try:
        read = read_calendar(data, "fz.ics", WINDOW)
    except UnreadableCalendar as exc:  # the only exception it may raise
        assert str(exc).strip()
    else:
        assert all(p.strip() for p in read.problems)
        for meeting in read.meetings:
            check_meeting(meeting)
            assert WINDOW[0] - timedelta(days=2) <= meeting.end
            assert meeting.start <= WINDOW[1]
    for invite in invitations_from_ical(data, "fz/1"):  # never raises
        check_meeting(invite)


# -- through the local mailbox ----------------------------------------------------------------

_examples = itertools.count()


def ensure_crm(sessions: S, root: Path) -> None:
    with sessions() as session:
        if session.scalar(select(User.id).where(User.email == USER)) is not None:
            return
    crm = root / "crm"
    crm.mkdir(parents=True)
    rows = {
        "users": [["email", "name"], [USER, "Ana Ruiz"]],
        "accounts": [["name", "domains"], ["Acme", "acme.test"], ["Globex", "globex.test"]],
        "contacts": [["emails", "name", "account"], ["carla@acme.test", "Carla", "acme.test"]],
        "opportunities": [["external_id", "name", "account", "owner"]],
    }
    for kind, table in rows.items():
        with (crm / f"{kind}.csv").open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(table)
    load_company(sessions, crm)


def state(sessions: S) -> tuple[object, ...]:
    """Everything a sync writes: activities as stored, sightings, quarantine, tasks."""
    with sessions() as session:
        return (
            sorted(
                session.execute(
                    select(
                        Activity.key,
                        Activity.occurred_at,
                        Activity.ends_at,
                        Activity.status,
                        Activity.subject,
                    )
                ).all()
            ),
            session.scalar(select(func.count()).select_from(Sighting)),
            sorted(session.execute(select(QuarantineEntry.provider_id, QuarantineEntry.reason))),
            sorted(session.execute(select(Task.uid, Task.status, Task.version)).all()),
        )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # each example has its own mailbox and folders
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(mails=st.lists(messages(), min_size=1, max_size=6), cals=st.lists(calendars(), max_size=3))
def test_fuzzed_mail_and_calendars_never_stop_a_mailbox(
    sessions: S, settings: Settings, tmp_path: Path, mails: list[bytes], cals: list[bytes]
):
    n = next(_examples)
    root = tmp_path / f"example-{n}"
    calendar = root / "calendar"
    calendar.mkdir(parents=True)
    # the messages go into an mbox (a Maildir re-reads what arrived in the last second:
    # tests/test_corpus.py covers the Maildir, and waits for it)
    archive = mailboxes.mbox(root / "fuzz.mbox")
    for data in mails:
        archive.add(data)
    archive.close()
    for i, data in enumerate(cals):
        (calendar / f"{n}-{i}.ics").write_bytes(data)
    values: dict[str, object] = {"mbox": [str(root / "fuzz.mbox")], "calendar": str(calendar)}
    units, quarantined = read_directly(values)
    ensure_crm(sessions, tmp_path)
    add_local_mailbox(sessions, f"fuzz{n}", USER, **values)

    report = sync_mailbox(sessions, settings, f"fuzz{n}")

    assert report.ok, report.error
    with sessions() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == f"fuzz{n}"))
        assert mailbox is not None and mailbox.state == "ok"
        logged = set(session.scalars(select(Activity.key)))
        entries = dict(
            session.execute(
                select(QuarantineEntry.provider_id, QuarantineEntry.reason).where(
                    QuarantineEntry.mailbox_id == mailbox.id
                )
            ).all()
        )
    assert all(reason.strip() for reason in entries.values())
    assert {q.provider_id for q in quarantined} <= set(entries)
    unexplained = [u for u in units if not u.logged(logged) and u.provider_id not in entries]
    assert len(unexplained) <= sum(report.excluded.values()), unexplained
    event(f"units logged: {min(3, sum(u.logged(logged) for u in units))}+")
    event(f"quarantined: {min(3, len(quarantined))}+")

    before = state(sessions)
    again = sync_mailbox(sessions, settings, f"fuzz{n}")
    assert again.ok, again.error
    # (``updated`` counts the follow-up tasks the first pass wrote, read back unchanged)
    changes = (again.new_activities, again.new_sightings, again.quarantined, again.tasks_changed)
    assert changes == (0, 0, 0, 0)
    assert state(sessions) == before
