"""Today's call list (syncd.calllist) end to end on the demo company: one calendar entry a
salesperson and working day, in their time zone, updated in place, removed when empty.
Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import icalendar
import pytest
from sqlalchemy import select

from syncd.config import Settings
from syncd.crm.loader import load_csv
from syncd.crm.models import Task, User
from syncd.demo import (
    DemoCompany,
    add_local_mailbox,
    deliver,
    email_bytes,
    event_ics,
    make_maildir,
)
from syncd.followups import task_uid

from .test_pipeline import S, demo_mailboxes, sync

ANA = "ana@northwind.test"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The call list turned on for everyone (it is off by default)."""
    return Settings(home=tmp_path / "home", call_list={"enabled": True})


@pytest.fixture
def now() -> datetime:
    """A Thursday, 09:15 in Madrid (Ana's zone): the demo company is built around it."""
    return datetime(2026, 12, 3, 8, 15, tzinfo=UTC)


@dataclass(frozen=True)
class Entry:
    """A call list as the calendar holds it."""

    uid: str
    summary: str
    description: str
    status: str
    sequence: int
    due: datetime


def entries(folder: Path) -> dict[str, Entry]:
    """The call lists in a vdir calendar folder, by uid (one file each)."""
    found = {}
    for path in folder.glob("syncd-call-list-*.ics"):
        todo: Any = icalendar.Calendar.from_ical(path.read_bytes()).walk("VTODO")[0]
        uid = str(todo["UID"])
        assert path.name == f"{uid}.ics"
        found[uid] = Entry(
            uid,
            str(todo["SUMMARY"]),
            str(todo["DESCRIPTION"]),
            str(todo["STATUS"]),
            int(todo["SEQUENCE"]),
            todo["DUE"].dt,
        )
    return found


def lists(sessions: S) -> list[dict[str, Any]]:
    """The call-list rows of the tasks table, oldest first."""
    with sessions() as session:
        rows = session.execute(
            select(Task, User.email)
            .join(User, User.id == Task.user_id)
            .where(Task.rule == "call-list")
        ).all()
        return [
            {
                "uid": t.uid,
                "user": email,
                "status": t.status,
                "resolution": t.resolution,
                "version": t.version,
                "title": t.title,
                "activity_id": t.activity_id,
                "in_calendar": t.written_version == t.version,
            }
            for t, email in sorted(rows, key=lambda r: r[0].id)
        ]


def uid_of(email: str, day: str) -> str:
    return task_uid("call-list", f"{email}:{day}")


def load(sessions: S, tmp_path: Path, kind: str, *rows: str) -> None:
    path = tmp_path / f"more-{kind}.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with sessions.begin() as session:
        load_csv(session, kind, path)


def meeting_today(company: DemoCompany, now: datetime, hour: int = 14) -> None:
    """A 30-minute call with Eva Novak in Ana's calendar, today at ``hour`` UTC."""
    (company.calendar / "globex-pricing.ics").write_bytes(
        event_ics(
            "globex-pricing-1@northwind.test",
            "Globex pricing call",
            now.replace(hour=hour, minute=0),
            30,
            (ANA, "Ana Ruiz"),
            [("eva@globex.test", "Eva Novak")],
        )
    )


def complete(path: Path) -> None:
    """The user ticks a task off in their calendar."""
    cal = icalendar.Calendar.from_ical(path.read_bytes())
    todo = cal.walk("VTODO")[0]
    todo["STATUS"] = "COMPLETED"
    path.write_bytes(cal.to_ical())


def test_the_call_list_is_written_once_with_its_lines(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    meeting_today(company, now)
    sync(sessions, settings, "ana", now)
    (entry,) = entries(company.calendar).values()
    assert entry.uid == uid_of(ANA, "2026-12-03")
    assert entry.summary == "Today's calls: 4 follow-ups, 1 meeting"
    assert entry.status == "NEEDS-ACTION" and entry.sequence == 0
    assert entry.due == datetime(2026, 12, 3, 8, 0, tzinfo=UTC)  # 09:00 in Madrid
    lines = entry.description.splitlines()
    assert lines[0] == "Thursday 3 December 2026, times in Europe/Madrid."
    assert "Follow-ups due (4)" in lines and "Meetings (1)" in lines
    assert (
        "- Follow up with Eva Novak: Re: Pilot scope (due 2026-12-03 09:00 CET)" in lines
    )  # due today: not overdue
    assert (
        "- Send notes and next steps: Globex pilot check-in (due 2026-12-02 17:30 CET, overdue)"
        in lines
    )
    assert "- 2026-12-03 15:00 CET Globex pricing call" in lines
    assert (
        "  Eva Novak (Globex): last touch 2026-12-02 16:00 CET; open deals: OPP-202 Globex pilot"
        in lines
    )
    assert not any("Cooling" in line for line in lines)  # Ana's one deal was touched
    (row,) = lists(sessions)
    assert row["user"] == ANA and row["status"] == "open" and row["in_calendar"]
    assert row["activity_id"] is None
    # a later pass the same morning changes nothing and writes nothing
    again = sync(sessions, settings, "ana", now + timedelta(minutes=30))
    assert (again.tasks_changed, again.tasks_written) == (0, 0)
    assert entries(company.calendar) == {entry.uid: entry}
    # and Ben, whose day holds nothing to call about, gets no list
    sync(sessions, settings, "ben", now)
    assert [r["user"] for r in lists(sessions)] == [ANA]


def test_a_new_follow_up_or_cooling_deal_updates_the_same_entry(
    sessions, settings, company, now, tmp_path
):
    demo_mailboxes(sessions, company)
    meeting_today(company, now)
    sync(sessions, settings, "ana", now)
    (first,) = entries(company.calendar).values()
    # the meeting ends at 14:30 UTC: its notes are due today, and the list says so
    sync(sessions, settings, "ana", now.replace(hour=15))
    (second,) = entries(company.calendar).values()
    assert second.uid == first.uid and second.sequence == 1
    assert second.summary == "Today's calls: 5 follow-ups, 1 meeting"
    assert "- Send notes and next steps: Globex pricing call (due 2026-12-03 17:30 CET)" in (
        second.description.splitlines()
    )
    # a deal Ana was given today, never touched, is cooling at once
    load(
        sessions,
        tmp_path,
        "opportunities",
        "external_id,name,account,owner,stage,status",
        f"OPP-303,Acme analytics add-on,acme.test,{ANA},Qualification,open",
    )
    sync(sessions, settings, "ana", now.replace(hour=16))
    (third,) = entries(company.calendar).values()
    assert third.uid == first.uid and third.sequence == 2
    assert third.summary == "Today's calls: 5 follow-ups, 1 cooling deal, 1 meeting"
    assert (
        "- OPP-303 Acme analytics add-on (Acme Corp, Qualification): cold, never touched"
        in third.description.splitlines()
    )
    assert [(r["uid"], r["version"], r["in_calendar"]) for r in lists(sessions)] == [
        (first.uid, 3, True)
    ]


def test_cooling_deals_are_listed_hottest_first_and_at_most_call_list_deals(
    sessions, company, now, tmp_path
):
    settings = Settings(home=tmp_path / "home", call_list={"enabled": True, "deals": 2})
    load(sessions, tmp_path, "accounts", "name,domains", "Initech,initech.test")
    load(sessions, tmp_path, "contacts", "emails,name,account", "pat@initech.test,Pat Lee,Initech")
    load(
        sessions,
        tmp_path,
        "opportunities",
        "external_id,name,account,owner",
        f"OPP-301,Initech rollout,Initech,{ANA}",
        f"OPP-302,Initech support,Initech,{ANA}",
        f"OPP-303,Initech training,Initech,{ANA}",
    )
    for days, tag in ((30, "OPP-302"), (20, "OPP-301")):  # none since: all three cool
        when = now - timedelta(days=days)
        mail = email_bytes(
            sender=f"Ana Ruiz <{ANA}>",
            to=["Pat Lee <pat@initech.test>"],
            subject=f"Next steps [{tag}]",
            when=when,
            message_id=f"{tag}@northwind.test",
        )
        deliver(company.maildirs["ana"] / ".Sent", mail, when, f"{tag}.host")
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    (entry,) = entries(company.calendar).values()
    assert entry.summary == "Today's calls: 4 follow-ups, 3 cooling deals"
    lines = entry.description.splitlines()
    start = lines.index("Cooling deals, no touch for 14 days (3)")
    assert [line.split(" (")[0] for line in lines[start + 1 : start + 4]] == [
        "- OPP-301 Initech rollout",  # touched 20 days ago: the warmest
        "- OPP-302 Initech support",
        "- and 1 more",  # OPP-303, never touched, is left out
    ]
    assert "last touch 2026-11-13 09:15 CET" in lines[start + 1]


def test_an_empty_list_is_removed_and_comes_back_when_the_day_fills(
    sessions, settings, company, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    (entry,) = entries(company.calendar).values()
    assert entry.summary == "Today's calls: 4 follow-ups"
    for path in company.calendar.glob("syncd-*.ics"):
        if not path.name.startswith("syncd-call-list-"):
            complete(path)  # Ana does her follow-ups
    sync(sessions, settings, "ana", now + timedelta(hours=1))
    (gone,) = entries(company.calendar).values()
    assert (gone.uid, gone.status, gone.sequence) == (entry.uid, "CANCELLED", 1)
    (row,) = lists(sessions)
    assert (row["status"], row["resolution"], row["in_calendar"]) == ("cancelled", "empty", True)
    # a meeting booked for this afternoon: the same entry again
    meeting_today(company, now, hour=15)
    sync(sessions, settings, "ana", now + timedelta(hours=2))
    (back,) = entries(company.calendar).values()
    assert (back.uid, back.status, back.sequence) == (entry.uid, "NEEDS-ACTION", 2)
    assert back.summary == "Today's calls: 1 meeting"
    assert [(r["status"], r["resolution"]) for r in lists(sessions)] == [("open", None)]


def test_a_list_ticked_off_in_the_calendar_stays_done_for_the_day(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    meeting_today(company, now)
    sync(sessions, settings, "ana", now)
    (entry,) = entries(company.calendar).values()
    complete(company.calendar / f"{entry.uid}.ics")
    sync(sessions, settings, "ana", now + timedelta(hours=1))
    sync(sessions, settings, "ana", now.replace(hour=15))  # the meeting's notes are due now
    (done,) = entries(company.calendar).values()
    assert (done.status, done.summary) == ("COMPLETED", entry.summary)
    assert [(r["status"], r["resolution"]) for r in lists(sessions)] == [("done", "calendar")]


def zoned_users(sessions: S, tmp_path: Path, *users: tuple[str, str, str]) -> dict[str, Path]:
    """Users (name, time zone, holidays) of Northwind, each with a mailbox and a calendar of
    their own and one open deal nobody has touched (so their list is never empty); returns
    their calendar folders by name."""
    load(
        sessions,
        tmp_path,
        "users",
        "email,name,timezone,holidays",
        *(f"{name}@northwind.test,{name.title()},{tz},{days}" for name, tz, days in users),
    )
    load(
        sessions,
        tmp_path,
        "opportunities",
        "external_id,name,account,owner",
        *(
            f"OPP-9{i},{name.title()}'s deal,globex.test,{name}@northwind.test"
            for i, (name, _, _) in enumerate(users)
        ),
    )
    folders = {}
    for name, _, _ in users:
        maildir = make_maildir(tmp_path / "mail" / name)
        folders[name] = tmp_path / "calendar" / name
        folders[name].mkdir(parents=True)
        add_local_mailbox(
            sessions,
            name,
            f"{name}@northwind.test",
            maildir=str(maildir),
            calendar=str(folders[name]),
        )
    return folders


def test_each_list_is_for_its_users_local_day(sessions, settings, company, tmp_path):
    folders = zoned_users(
        sessions,
        tmp_path,
        ("kiri", "Pacific/Auckland", ""),
        ("lena", "Europe/Berlin", ""),
        ("luis", "America/Los_Angeles", ""),
    )
    # Thursday 20:30 UTC: Friday 09:30 in Auckland, Thursday 21:30 in Berlin, 12:30 in LA
    thursday = datetime(2026, 12, 3, 20, 30, tzinfo=UTC)
    for name in folders:
        sync(sessions, settings, name, thursday)
    day = {name: next(iter(entries(f).values())) for name, f in folders.items()}
    assert day["kiri"].uid == uid_of("kiri@northwind.test", "2026-12-04")
    assert day["lena"].uid == uid_of("lena@northwind.test", "2026-12-03")
    assert day["luis"].uid == uid_of("luis@northwind.test", "2026-12-03")
    assert day["kiri"].description.startswith("Friday 4 December 2026, times in Pacific/Auckland")
    assert day["luis"].description.startswith("Thursday 3 December 2026, times in America/Los")
    assert day["kiri"].due == datetime(2026, 12, 3, 20, 0, tzinfo=UTC)  # 09:00 NZDT
    assert day["lena"].due == datetime(2026, 12, 3, 8, 0, tzinfo=UTC)  # 09:00 CET
    assert day["luis"].due == datetime(2026, 12, 3, 17, 0, tzinfo=UTC)  # 09:00 PST
    # Friday 03:00 UTC: still Thursday in LA; 04:00 on Friday in Berlin, before work
    friday = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    for name in folders:
        sync(sessions, settings, name, friday)
    assert {e.uid: e.status for e in entries(folders["luis"]).values()} == {
        day["luis"].uid: "NEEDS-ACTION"
    }
    assert {e.uid: e.status for e in entries(folders["lena"]).values()} == {
        day["lena"].uid: "CANCELLED"  # its day is over; Friday's comes at 09:00
    }
    assert {e.uid: e.status for e in entries(folders["kiri"]).values()} == {
        day["kiri"].uid: "NEEDS-ACTION"
    }
    # Friday 09:00 in Berlin: one list in the calendar, Friday's
    sync(sessions, settings, "lena", datetime(2026, 12, 4, 8, 5, tzinfo=UTC))
    shown = {e.uid: e.status for e in entries(folders["lena"]).values()}
    assert shown == {
        day["lena"].uid: "CANCELLED",
        uid_of("lena@northwind.test", "2026-12-04"): "NEEDS-ACTION",
    }
    expired = [r for r in lists(sessions) if r["uid"] == day["lena"].uid]
    assert [(r["status"], r["resolution"]) for r in expired] == [("cancelled", "expired")]


def test_no_list_on_a_public_holiday_or_a_weekend(sessions, settings, company, tmp_path):
    folders = zoned_users(
        sessions,
        tmp_path,
        ("lena", "Europe/Berlin", "DE"),
        ("mia", "Europe/Berlin", ""),  # no holidays kept
    )
    christmas_eve = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)  # a Thursday, a working day
    sync(sessions, settings, "lena", christmas_eve)
    (eve,) = entries(folders["lena"]).values()
    christmas = datetime(2026, 12, 25, 9, 0, tzinfo=UTC)  # Friday, 10:00 in Berlin
    for name in folders:
        sync(sessions, settings, name, christmas)
    assert {e.uid: e.status for e in entries(folders["lena"]).values()} == {eve.uid: "CANCELLED"}
    assert [e.uid for e in entries(folders["mia"]).values()] == [
        uid_of("mia@northwind.test", "2026-12-25")
    ]
    saturday = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    for name in folders:
        sync(sessions, settings, name, saturday)
    assert not any(
        r["uid"] in (uid_of(f"{n}@northwind.test", "2026-12-05") for n in folders)
        for r in lists(sessions)
    )


def test_the_call_list_is_off_per_user_and_globally(sessions, company, now, tmp_path):
    demo_mailboxes(sessions, company)
    off = Settings(home=tmp_path / "home", call_list={"enabled": False})
    sync(sessions, off, "ana", now)
    assert entries(company.calendar) == {} and lists(sessions) == []
    # Ana wants hers all the same
    users = "email,name,timezone,working_hours,call_list"
    load(sessions, tmp_path, "users", users, f"{ANA},Ana Ruiz,Europe/Madrid,09:00-17:30,yes")
    sync(sessions, off, "ana", now + timedelta(minutes=15))
    (entry,) = entries(company.calendar).values()
    assert entry.status == "NEEDS-ACTION"
    # on for everyone, but Ana turns hers off: today's goes
    on = Settings(home=tmp_path / "home", call_list={"enabled": True})
    load(sessions, tmp_path, "users", users, f"{ANA},Ana Ruiz,Europe/Madrid,09:00-17:30,no")
    sync(sessions, on, "ana", now + timedelta(minutes=30))
    assert entries(company.calendar)[entry.uid].status == "CANCELLED"
    assert [(r["status"], r["resolution"]) for r in lists(sessions)] == [
        ("cancelled", "turned off")
    ]
