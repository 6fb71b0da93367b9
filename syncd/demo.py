"""``syncd demo``: a small sample company, written as real files (CSV, Maildir, vdir).

Also the Maildir writer the tests and benchmarks use to build mailboxes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import icalendar
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.crm import mailboxes
from syncd.crm.loader import load_csv
from syncd.crm.models import User

DOMAIN = "northwind.test"


def make_maildir(root: Path, folders: tuple[str, ...] = ("Sent",)) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for folder in folders:
            (root / f".{folder}" / sub).mkdir(parents=True, exist_ok=True)
    return root


def deliver(folder: Path, data: bytes, when: datetime, unique: str, flags: str = "S") -> Path:
    """Write one message into a Maildir folder as a mail client would have left it."""
    path = folder / "cur" / f"{unique}:2,{flags}"
    path.write_bytes(data)
    ts = when.timestamp()
    os.utime(path, (ts, ts))
    return path


def email_bytes(
    *,
    sender: str,
    to: list[str],
    subject: str,
    when: datetime,
    message_id: str | None,
    body: str = "",
    cc: list[str] | None = None,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    headers: dict[str, str] | None = None,
    calendar: bytes | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    if message_id:
        msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body or f"{subject}\n")
    if calendar is not None:
        msg.add_alternative(calendar.decode(), subtype="calendar", params={"method": "REQUEST"})
    return msg.as_bytes()


def event_ics(
    uid: str,
    summary: str,
    start: datetime,
    minutes: int,
    organizer: tuple[str, str],
    attendees: list[tuple[str, str]],
    method: str | None = None,
) -> bytes:
    cal = icalendar.Calendar()
    cal.add("PRODID", "-//syncd demo//EN")
    cal.add("VERSION", "2.0")
    if method:
        cal.add("METHOD", method)
    ev = icalendar.Event()
    ev.add("UID", uid)
    ev.add("DTSTAMP", start)
    ev.add("DTSTART", start)
    ev.add("DTEND", start + timedelta(minutes=minutes))
    ev.add("SUMMARY", summary)
    org = icalendar.vCalAddress(f"mailto:{organizer[0]}")
    org.params["CN"] = organizer[1]
    ev.add("ORGANIZER", org)
    for address, name in attendees:
        att = icalendar.vCalAddress(f"mailto:{address}")
        att.params["CN"] = name
        ev.add("ATTENDEE", att)
    cal.add_component(ev)
    return bytes(cal.to_ical())


@dataclass(frozen=True)
class DemoCompany:
    root: Path
    csv: dict[str, Path]
    maildirs: dict[str, Path]
    calendar: Path


def load_company(sessions: sessionmaker[Session], csv_dir: Path) -> None:
    """Load the four CSV files of a company (users, accounts, contacts, opportunities)."""
    for kind in ("users", "accounts", "contacts", "opportunities"):
        with sessions.begin() as session:
            load_csv(session, kind, csv_dir / f"{kind}.csv")


def add_local_mailbox(
    sessions: sessionmaker[Session], name: str, user: str, **settings: Any
) -> None:
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == user))
        assert user_id is not None, f"no CRM user {user}"
        mailboxes.add_mailbox(session, name=name, kind="local", user_id=user_id, settings=settings)


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def build_demo(root: Path, now: datetime | None = None) -> DemoCompany:
    """Northwind sells to Acme and Globex: two salespeople, three weeks of mail, meetings."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "crm"
    data.mkdir(exist_ok=True)
    csv = {
        "users": _csv(
            data / "users.csv",
            [
                "email,name,timezone,working_hours",
                f"ana@{DOMAIN},Ana Ruiz,Europe/Madrid,09:00-17:30",
                f"ben@{DOMAIN},Ben Okafor,Europe/London,08:30-17:00",
            ],
        ),
        "accounts": _csv(
            data / "accounts.csv",
            [
                "name,domains,external_id",
                "Acme Corp,acme.test;acme-corp.test,ACC-1",
                "Globex,globex.test,ACC-2",
            ],
        ),
        "contacts": _csv(
            data / "contacts.csv",
            [
                "emails,name,account,title,phone",
                "carla@acme.test;carla.diaz@acme-corp.test,Carla Díaz,acme.test,VP Operations,",
                "dan@acme.test,Dan Wu,Acme Corp,IT lead,",
                "eva@globex.test,Eva Novak,globex.test,Head of Procurement,+44 20 7946 0000",
            ],
        ),
        "opportunities": _csv(
            data / "opportunities.csv",
            [
                "external_id,name,account,owner,stage,amount,currency,close_date,status,contacts",
                f"OPP-101,Acme platform renewal,acme.test,ana@{DOMAIN},Proposal,48000,EUR,"
                f"{(now + timedelta(days=40)).date()},open,carla@acme.test=Decision maker",
                f"OPP-202,Globex pilot,globex.test,ben@{DOMAIN},Discovery,12000,GBP,"
                f"{(now + timedelta(days=70)).date()},open,eva@globex.test=Champion",
            ],
        ),
    }
    ana = make_maildir(root / "mail" / "ana")
    ben = make_maildir(root / "mail" / "ben")
    calendar = root / "calendar" / "ana"
    calendar.mkdir(parents=True, exist_ok=True)
    ana_a, ben_a = f"ana@{DOMAIN}", f"ben@{DOMAIN}"
    ana_from, ben_from = f"Ana Ruiz <{ana_a}>", f"Ben Okafor <{ben_a}>"
    carla, eva = "Carla Díaz <carla@acme.test>", "Eva Novak <eva@globex.test>"
    day = timedelta(days=1)
    seq = 0

    def put(folder: Path, when: datetime, **kw: object) -> str:
        nonlocal seq
        seq += 1
        mid = kw.pop("message_id", f"demo-{seq}@{DOMAIN}")
        data_ = email_bytes(when=when, message_id=mid, **kw)  # type: ignore[arg-type]
        deliver(folder, data_, when, f"{int(when.timestamp())}.demo{seq}.host")
        return str(mid)

    # Acme renewal: a tagged proposal, Carla's reply, then a nudge that gets no answer
    t0 = now - 18 * day
    p = put(
        ana / ".Sent",
        t0,
        sender=ana_from,
        to=[carla],
        cc=[ben_from],
        subject="Renewal proposal [OPP-101]",
        body="Hi Carla,\nattached is our proposal.",
    )
    deliver(
        ben,
        email_bytes(
            sender=ana_from,
            to=[carla],
            cc=[ben_from],
            when=t0,
            message_id=p,
            subject="Renewal proposal [OPP-101]",
            body="Hi Carla,\nattached is our proposal.",
        ),
        t0,
        f"{int(t0.timestamp())}.copy.host",
    )
    r = put(
        ana,
        t0 + day,
        sender=carla,
        to=[ana_from],
        subject="Re: Renewal proposal [OPP-101]",
        in_reply_to=p,
        references=[p],
        body="Thanks Ana, we will review it this week.",
        message_id="reply-1@acme.test",
    )
    put(
        ana / ".Sent",
        now - 8 * day,
        sender=ana_from,
        to=[carla],
        subject="Re: Renewal proposal [OPP-101]",
        in_reply_to=r,
        references=[p, r],
        body="Hi Carla, any questions on the proposal?",
    )
    # Globex pilot: Eva asks, Ana answers, nobody has replied since
    q = put(
        ana,
        now - 6 * day,
        sender=eva,
        to=[ana_from],
        subject="Pilot scope",
        body="Could the pilot include the reporting module?",
        message_id="q-7@globex.test",
    )
    put(
        ana / ".Sent",
        now - 6 * day + timedelta(hours=2),
        sender=ana_from,
        to=[eva],
        subject="Re: Pilot scope",
        in_reply_to=q,
        references=[q],
        body="Yes, reporting is included; I will send the plan.",
    )
    # not activities: a newsletter, an auto-reply, internal chatter, an unknown sender
    put(
        ana,
        now - 5 * day,
        sender="Vendor News <news@vendor.test>",
        to=[ana_a],
        subject="Our November newsletter",
        headers={"List-Id": "<news.vendor.test>"},
    )
    put(
        ana,
        now - 4 * day,
        sender="Dan Wu <dan@acme.test>",
        to=[ana_a],
        subject="Out of office",
        headers={"Auto-Submitted": "auto-replied"},
    )
    put(ana, now - 3 * day, sender=ben_from, to=[ana_a], subject="Lunch?")
    put(ana, now - 3 * day, sender="someone@unknown.test", to=[ana_a], subject="Hello")
    # a meeting invitation from Carla, by mail, that took place two days ago
    qbr = (now - 2 * day).replace(hour=10, minute=0, second=0)
    put(
        ana,
        now - 9 * day,
        sender=carla,
        to=[ana_from],
        subject="Invitation: Acme QBR",
        calendar=event_ics(
            "acme-qbr-1@acme.test",
            "Acme QBR",
            qbr,
            60,
            ("carla@acme.test", "Carla Díaz"),
            [(ana_a, "Ana Ruiz"), ("dan@acme.test", "Dan Wu")],
            "REQUEST",
        ),
    )
    # a file a mail client left broken: quarantined, not lost
    (ana / "cur" / f"{int((now - day).timestamp())}.broken.host:2,S").write_bytes(b"\x00\x01")
    # Ana's calendar: yesterday's Globex call and next week's Acme workshop
    (calendar / "globex-call.ics").write_bytes(
        event_ics(
            "globex-call-1@northwind.test",
            "Globex pilot check-in",
            (now - day).replace(hour=15, minute=0, second=0),
            30,
            (ana_a, "Ana Ruiz"),
            [("eva@globex.test", "Eva Novak"), (ben_a, "Ben Okafor")],
        )
    )
    (calendar / "acme-workshop.ics").write_bytes(
        event_ics(
            "acme-workshop-1@northwind.test",
            "Acme onboarding workshop",
            (now + 5 * day).replace(hour=9, minute=30, second=0),
            120,
            (ana_a, "Ana Ruiz"),
            [("dan@acme.test", "Dan Wu")],
        )
    )
    return DemoCompany(root, csv, {"ana": ana, "ben": ben}, calendar)


_RAW = (
    "From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
    "Message-ID: <{mid}>\r\n{extra}MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "{body}\r\n"
)
_CONTACTS = [
    ("carla@acme.test", "Carla Díaz"),
    ("dan@acme.test", "Dan Wu"),
    ("eva@globex.test", "Eva Novak"),
]


def generate_maildir(root: Path, messages: int, now: datetime, seed: int = 7) -> Path:
    """A realistic-looking Maildir of ``messages`` messages for the demo company's Ana: threads
    with Acme and Globex people and unknown colleagues at their domains, tagged deals, bulk
    mail and internal notes, spread over two years with the newest few in the last days.
    Deterministic for a seed; written directly as files (as a delivery agent would)."""
    import random

    rng = random.Random(seed)
    make_maildir(root)
    ana = f"Ana Ruiz <ana@{DOMAIN}>"
    span = 730 * 86400
    body = "Hello,\r\n" + "we discussed the rollout plan and the next steps. " * 12 + "\r\nAna"
    for i in range(messages):
        age = span * (1 - i / messages) ** 2 + 3600  # older first, recent ones dense
        when = now - timedelta(seconds=age)
        kind = rng.random()
        address, name = rng.choice(_CONTACTS)
        if kind < 0.05:
            address, name = f"person{rng.randrange(200)}@acme.test", "Acme person"
        thread = i - i % 3  # three messages a thread
        extra = ""
        if i % 3:
            extra = f"In-Reply-To: <m{i - 1}@gen.test>\r\nReferences: <m{thread}@gen.test>\r\n"
        subject = f"Thread {thread} about the rollout" + (" [OPP-101]" if thread % 10 == 0 else "")
        if i % 3:
            subject = "Re: " + subject
        if kind > 0.97:
            extra += "List-Id: <news.vendor.test>\r\n"
        outbound = i % 3 == 1
        sender, to = (ana, f"{name} <{address}>") if outbound else (f"{name} <{address}>", ana)
        if kind > 0.95 and kind <= 0.97:
            sender, to = ana, f"Ben Okafor <ben@{DOMAIN}>"  # internal only: not logged
        folder = root / ".Sent" if sender == ana else root
        data = _RAW.format(
            sender=sender,
            to=to,
            subject=subject,
            date=format_datetime(when),
            mid=f"m{i}@gen.test",
            extra=extra,
            body=body,
        ).encode()
        path = folder / "cur" / f"{int(when.timestamp())}.M{i}P1.gen,S={len(data)}:2,S"
        path.write_bytes(data)
        ts = when.timestamp()
        os.utime(path, (ts, ts))
    return root
