"""The pipeline end to end on a Maildir + vdir (+ mbox): what lands in the CRM and in the
calendar. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import mailbox
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import icalendar
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.crm import queries, reports
from syncd.crm.models import Activity, Mailbox, QuarantineEntry, Sighting, SourceCursor, Task
from syncd.demo import DemoCompany, add_local_mailbox, deliver, email_bytes, event_ics
from syncd.sync import SyncReport, sync_mailbox

S = sessionmaker[Session]


# the follow-ups of Ana's demo mailbox
ANA_TASKS = {
    "Follow up with Carla Díaz: Re: Renewal proposal [OPP-101]",
    "Follow up with Eva Novak: Re: Pilot scope",
    "Send notes and next steps: Acme QBR",
    "Send notes and next steps: Globex pilot check-in",
}


def demo_mailboxes(sessions: S, company: DemoCompany) -> None:
    add_local_mailbox(
        sessions,
        "ana",
        "ana@northwind.test",
        maildir=str(company.maildirs["ana"]),
        calendar=str(company.calendar),
    )
    add_local_mailbox(sessions, "ben", "ben@northwind.test", maildir=str(company.maildirs["ben"]))


def eva_replies(company: DemoCompany, now: datetime) -> None:
    """Eva's late answer to Ana's "Pilot scope", delivered to Ana's Maildir."""
    deliver(
        company.maildirs["ana"],
        email_bytes(
            sender="Eva Novak <eva@globex.test>",
            to=["ana@northwind.test"],
            subject="Re: Pilot scope",
            when=now,
            message_id="late@globex.test",
            in_reply_to="q-7@globex.test",
            references=["q-7@globex.test"],
        ),
        now,
        "late.1.host",
    )


def sync(sessions: S, settings: Settings, name: str, now: datetime) -> SyncReport:
    report = sync_mailbox(sessions, settings, name, now=lambda: now)
    assert report.ok, report.error
    return report


def timeline(sessions: S, **filters: str) -> list[reports.ActivityRow]:
    with sessions() as session:
        return reports.activity_report(session, **filters)


def tasks(sessions: S) -> list[reports.TaskRow]:
    with sessions() as session:
        return reports.task_report(session)


def by_subject(rows: list[reports.ActivityRow]) -> dict[str, reports.ActivityRow]:
    return {r["subject"]: r for r in rows}


def links(row: reports.ActivityRow) -> set[tuple[str, str, str]]:
    return {(lk["type"], lk["name"], lk["reason"]) for lk in row["links"]}


def test_demo_company_is_logged_with_links_and_reasons(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    sync(sessions, settings, "ben", now)
    rows = by_subject(timeline(sessions))
    assert set(rows) == {
        "Renewal proposal [OPP-101]",
        "Re: Renewal proposal [OPP-101]",
        "Pilot scope",
        "Re: Pilot scope",
        "Acme QBR",
        "Globex pilot check-in",
        "Acme onboarding workshop",
    }
    proposal = rows["Renewal proposal [OPP-101]"]
    assert proposal["direction"] == "outbound" and proposal["kind"] == "email"
    assert links(proposal) == {
        ("contact", "Carla Díaz", "address"),
        ("account", "Acme Corp", "contact"),
        ("opportunity", "OPP-101 Acme platform renewal", "tag"),
    }
    assert proposal["mailboxes"] == ["ana", "ben"]  # one activity, two sightings
    assert {(p["address"], p["role"]) for p in proposal["participants"]} == {
        ("ana@northwind.test", "from"),
        ("carla@acme.test", "to"),
        ("ben@northwind.test", "cc"),
    }
    assert rows["Pilot scope"]["direction"] == "inbound"
    assert ("opportunity", "OPP-202 Globex pilot", "contact-role") in links(rows["Pilot scope"])
    assert ("opportunity", "OPP-202 Globex pilot", "thread") in links(rows["Re: Pilot scope"])
    qbr = rows["Acme QBR"]  # the invitation that came by mail is a meeting
    assert qbr["kind"] == "meeting" and qbr["direction"] == "inbound"
    workshop = rows["Acme onboarding workshop"]
    assert ("opportunity", "OPP-101 Acme platform renewal", "account") in links(workshop)
    with sessions() as session:
        quarantined = session.scalars(select(QuarantineEntry.reason)).all()
    assert quarantined == ["no header fields: not an RFC 5322 message"]


def test_follow_up_tasks_are_written_to_the_calendar_once(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    rows = {t["title"]: t for t in tasks(sessions)}
    assert set(rows) == ANA_TASKS
    assert all(t["status"] == "open" and t["in_calendar"] for t in rows.values())
    assert all(t["user"] == "ana@northwind.test" for t in rows.values())
    files = sorted(p.name for p in company.calendar.glob("syncd-*.ics"))
    assert len(files) == 4
    # a second pass decides nothing new and writes nothing twice
    again = sync(sessions, settings, "ana", now)
    assert again.tasks_changed == 0 and again.tasks_written == 0
    assert sorted(p.name for p in company.calendar.glob("syncd-*.ics")) == files
    # syncd's own tasks, read back from the calendar, are never meetings
    kinds = [r["kind"] for r in timeline(sessions)]
    assert kinds.count("meeting") == 3


def test_follow_ups_planned_one_activity_at_a_time_are_the_same(
    sessions, settings, company, now, monkeypatch
):
    """The rules read the lookback a chunk at a time (memory flat in the mail of the
    lookback): chunks of one activity plan what one chunk of all does, and a reply read
    for one chunk closes its task."""
    chunks: list[int] = []
    candidates = queries.followup_candidates

    def counted(*args: Any) -> Iterator[list[queries.Candidate]]:
        for chunk in candidates(*args):
            chunks.append(len(chunk))
            yield chunk

    monkeypatch.setattr(queries, "followup_candidates", counted)
    monkeypatch.setattr(queries, "FOLLOWUP_CHUNK", 1)
    demo_mailboxes(sessions, company)
    assert sync(sessions, settings, "ana", now).tasks_changed == 4
    assert len(chunks) > 4 and set(chunks) == {1}
    chunked = {(t["title"], t["status"], t["due"]) for t in tasks(sessions)}
    assert {title for title, _, _ in chunked} == ANA_TASKS
    monkeypatch.setattr(queries, "FOLLOWUP_CHUNK", 1_000)
    with sessions.begin() as session:
        session.execute(update(Mailbox).values(followups_at=None))  # the rules run again
    assert sync(sessions, settings, "ana", now).tasks_changed == 0
    assert {(t["title"], t["status"], t["due"]) for t in tasks(sessions)} == chunked
    monkeypatch.setattr(queries, "FOLLOWUP_CHUNK", 1)
    eva_replies(company, now)
    sync(sessions, settings, "ana", now + timedelta(minutes=5))
    task = next(t for t in tasks(sessions) if "Eva" in t["title"])
    assert (task["status"], task["resolution"]) == ("done", "replied")


def test_due_times_follow_the_users_working_day(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    due = {t["title"]: datetime.fromisoformat(t["due"]) for t in tasks(sessions)}
    madrid = __import__("zoneinfo").ZoneInfo("Europe/Madrid")
    nudge = due["Follow up with Eva Novak: Re: Pilot scope"].astimezone(madrid)
    assert (nudge.hour, nudge.minute) == (9, 0) and nudge.weekday() < 5
    notes = due["Send notes and next steps: Globex pilot check-in"].astimezone(madrid)
    assert (notes.hour, notes.minute) == (17, 30) and notes.weekday() < 5


def test_a_late_reply_closes_the_follow_up_as_done(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    eva_replies(company, now)
    sync(sessions, settings, "ana", now + timedelta(minutes=5))
    task = next(t for t in tasks(sessions) if "Eva" in t["title"])
    assert (task["status"], task["resolution"], task["in_calendar"]) == ("done", "replied", True)
    ics = next(p for p in company.calendar.glob("syncd-no-reply-*.ics") if b"Eva" in p.read_bytes())
    todo = icalendar.Calendar.from_ical(ics.read_bytes()).walk("VTODO")[0]
    assert str(todo["STATUS"]) == "COMPLETED"


def test_a_task_completed_in_the_calendar_is_done_in_the_crm(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    path = next(company.calendar.glob("syncd-meeting-notes-*.ics"))
    cal = icalendar.Calendar.from_ical(path.read_bytes())
    todo = cal.walk("VTODO")[0]
    todo["STATUS"] = "COMPLETED"
    path.write_bytes(cal.to_ical())
    title = str(todo["SUMMARY"])
    sync(sessions, settings, "ana", now)
    task = next(t for t in tasks(sessions) if t["title"] == title)
    assert (task["status"], task["resolution"]) == ("done", "calendar")


def test_a_cancelled_meeting_cancels_its_task(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    path = company.calendar / "globex-call.ics"
    cal = icalendar.Calendar.from_ical(path.read_bytes())
    cal.walk("VEVENT")[0].add("STATUS", "CANCELLED")
    path.write_bytes(cal.to_ical())
    sync(sessions, settings, "ana", now)
    row = by_subject(timeline(sessions))["Globex pilot check-in"]
    assert row["status"] == "cancelled"
    task = next(t for t in tasks(sessions) if "Globex pilot check-in" in t["title"])
    assert task["status"] == "cancelled"


def test_a_meeting_removed_before_it_starts_is_cancelled(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    (company.calendar / "acme-workshop.ics").unlink()
    sync(sessions, settings, "ana", now)
    assert by_subject(timeline(sessions))["Acme onboarding workshop"]["status"] == "cancelled"


def test_reading_everything_again_logs_nothing_twice(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    sync(sessions, settings, "ben", now)
    before = timeline(sessions)
    before_tasks = tasks(sessions)
    with sessions.begin() as session:  # as after a crash before any cursor was kept
        session.query(SourceCursor).delete()
    again = sync(sessions, settings, "ana", now)
    assert again.new_activities == 0 and again.new_sightings == 0
    assert timeline(sessions) == before
    assert tasks(sessions) == before_tasks


def test_excluded_conversations_are_never_stored(sessions, settings, company, now, tmp_path):
    demo_mailboxes(sessions, company)
    inbox = company.maildirs["ana"]
    extra: dict[str, dict[str, Any]] = {
        "private": {"headers": {"Sensitivity": "Private"}, "sender": "carla@acme.test"},
        "precedence": {"headers": {"Precedence": "bulk"}, "sender": "carla@acme.test"},
        "autoreply": {"headers": {"X-Autoreply": "yes"}, "sender": "carla@acme.test"},
        "freemail": {"sender": "someone@gmail.com"},
        "blocked": {"sender": "lawyer@lawfirm.test", "cc": ["carla@acme.test"]},
    }
    for i, (subject, kw) in enumerate(extra.items()):
        deliver(
            inbox,
            email_bytes(
                to=["ana@northwind.test"], subject=subject, when=now, message_id=f"x{i}@test", **kw
            ),
            now,
            f"x{i}.host",
        )
    blocked = settings.model_copy(
        update={"exclusions": settings.exclusions.model_copy(update={"domains": ["lawfirm.test"]})}
    )
    report = sync(sessions, blocked, "ana", now)
    subjects = {r["subject"] for r in timeline(sessions)}
    assert not subjects & set(extra)
    assert report.excluded["private"] == 1
    assert report.excluded["blocklisted"] == 1
    assert report.excluded["no CRM participant"] == 2  # an unknown sender, free mail
    assert report.excluded["internal-only"] == 1


def test_a_free_mail_contact_matches_by_address_but_never_an_account(
    sessions, settings, company, now
):
    contacts = company.root / "more-contacts.csv"
    contacts.write_text("emails,name\nfrank@gmail.com,Frank Free\n")
    from syncd.crm.loader import load_csv

    with sessions.begin() as session:
        load_csv(session, "contacts", contacts)
    demo_mailboxes(sessions, company)
    deliver(
        company.maildirs["ana"],
        email_bytes(
            sender="Frank <FRANK@Gmail.com>",
            to=["ana@northwind.test"],
            subject="Hi from Frank",
            when=now,
            message_id="f1@gmail.com",
        ),
        now,
        "f1.host",
    )
    sync(sessions, settings, "ana", now)
    row = by_subject(timeline(sessions))["Hi from Frank"]
    assert links(row) == {("contact", "Frank Free", "address")}


def test_an_ambiguous_opportunity_links_the_account_only(sessions, settings, company, now):
    opps = company.root / "opps2.csv"
    opps.write_text(
        "external_id,name,account,owner\n"
        "OPP-301,Acme expansion A,acme.test,ana@northwind.test\n"
        "OPP-302,Acme expansion B,acme.test,ana@northwind.test\n"
        "OPP-101,Acme platform renewal,acme.test,ana@northwind.test\n"
    )
    from syncd.crm.loader import load_csv

    with sessions.begin() as session:
        load_csv(session, "opportunities", opps)
        # the renewal was won: only the two new, equally quiet deals are open
        from syncd.crm.models import Opportunity

        session.scalars(
            select(Opportunity).where(Opportunity.external_id == "OPP-101")
        ).one().status = "won"
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    deliver(
        company.maildirs["ana"],
        email_bytes(
            sender="it@acme.test",
            to=["ana@northwind.test"],
            subject="Question on licences",
            when=now,
            message_id="amb@acme.test",
        ),
        now,
        "amb.host",
    )
    sync(sessions, settings, "ana", now)
    row = by_subject(timeline(sessions))["Question on licences"]
    assert links(row) == {("account", "Acme Corp", "domain")}
    note = row["note"] or ""
    assert note.startswith("ambiguous opportunity, linked to the account only")
    assert "OPP-301" in note and "OPP-302" in note


def test_mbox_archive_is_read_once_and_resumed(sessions, settings, company, now, tmp_path):
    path = tmp_path / "takeout.mbox"
    box = mailbox.mbox(path)
    for i in range(5):
        box.add(
            email_bytes(
                sender="carla@acme.test",
                to=["ana@northwind.test"],
                subject=f"archived {i}",
                when=now - timedelta(days=40 + i),
                message_id=f"arch{i}@acme.test",
            )
        )
    box.add(
        email_bytes(
            sender="carla@acme.test",
            to=["ana@northwind.test"],
            subject="spam",
            when=now,
            message_id="spam@acme.test",
            headers={"X-Gmail-Labels": "Spam"},
        )
    )
    box.flush()
    add_local_mailbox(sessions, "ana", "ana@northwind.test", mbox=[str(path)])
    first = sync(sessions, settings, "ana", now)
    assert first.new_activities == 5 and first.excluded["excluded label"] == 1
    box.add(
        email_bytes(
            sender="carla@acme.test",
            to=["ana@northwind.test"],
            subject="new one",
            when=now,
            message_id="new@acme.test",
        )
    )
    box.flush()
    box.close()
    second = sync(sessions, settings, "ana", now)
    assert second.new_activities == 1
    assert sum(1 for r in timeline(sessions) if r["subject"].startswith("archived")) == 5


def test_a_rewritten_mbox_is_read_again_without_duplicates(
    sessions, settings, company, now, tmp_path
):
    path = tmp_path / "takeout.mbox"
    msgs = [
        email_bytes(
            sender="carla@acme.test",
            to=["ana@northwind.test"],
            subject=f"m{i}",
            when=now - timedelta(days=i),
            message_id=f"m{i}@acme.test",
            body="x" * 40000,
        )
        for i in range(4)
    ]
    box = mailbox.mbox(path)
    for m in msgs:
        box.add(m)
    box.close()
    add_local_mailbox(sessions, "ana", "ana@northwind.test", mbox=[str(path)])
    sync(sessions, settings, "ana", now)
    path.unlink()
    box = mailbox.mbox(path)
    for m in reversed(msgs):  # a new export: same messages, another order, one more
        box.add(m)
    box.add(
        email_bytes(
            sender="carla@acme.test",
            to=["ana@northwind.test"],
            subject="m9",
            when=now,
            message_id="m9@acme.test",
        )
    )
    box.close()
    report = sync(sessions, settings, "ana", now)
    assert report.new_activities == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 5
        assert session.scalar(select(func.count()).select_from(Sighting)) == 5


def test_a_missing_maildir_fails_only_that_mailbox(sessions, settings, company, now, tmp_path):
    demo_mailboxes(sessions, company)
    add_local_mailbox(sessions, "gone", "ben@northwind.test", maildir=str(tmp_path / "nowhere"))
    bad = sync_mailbox(sessions, settings, "gone", now=lambda: now)
    assert bad.state == "failing"
    assert "is not a Maildir" in (bad.error or "") and "--maildir" in (bad.error or "")
    sync(sessions, settings, "ana", now)
    with sessions() as session:
        rows = {r["mailbox"]: r for r in reports.status_report(session)}
    assert rows["gone"]["state"] == "failing" and rows["gone"]["last_success"] is None
    assert rows["ana"]["state"] == "ok" and rows["ana"]["items"] > 0


def test_body_policy_decides_what_is_stored(sessions, settings, company, now):
    def policy(body: str) -> Settings:
        return settings.model_copy(update={"sync": settings.sync.model_copy(update={"body": body})})

    demo_mailboxes(sessions, company)
    sync(sessions, policy("metadata"), "ben", now)  # ben first: the proposal is his to store
    sync(sessions, policy("full"), "ana", now)
    with sessions() as session:
        proposal = session.scalars(
            select(Activity).where(Activity.subject == "Renewal proposal [OPP-101]")
        ).one()
        assert proposal.body is None and proposal.snippet is None
        pilot = session.scalars(select(Activity).where(Activity.subject == "Pilot scope")).one()
        assert pilot.body and "reporting module" in pilot.body
        assert pilot.snippet == "Could the pilot include the reporting module?"


def test_mail_moved_from_new_to_cur_is_not_logged_twice(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    inbox = company.maildirs["ana"]
    data = email_bytes(
        sender="eva@globex.test",
        to=["ana@northwind.test"],
        subject="fresh",
        when=now,
        message_id="fresh@globex.test",
    )
    path = inbox / "new" / "fresh.1.host"
    path.write_bytes(data)
    sync(sessions, settings, "ana", now)
    path.rename(inbox / "cur" / "fresh.1.host:2,S")  # the mail client read it
    report = sync(sessions, settings, "ana", now)
    assert report.new_activities == 0 and report.new_sightings == 0
    assert [r["subject"] for r in timeline(sessions)].count("fresh") == 1


def test_recurring_meetings_become_one_activity_per_occurrence(sessions, settings, company, now):
    start = (now - timedelta(days=10)).replace(hour=9, minute=0, second=0)
    ics = event_ics(
        "weekly@northwind.test",
        "Acme weekly",
        start,
        30,
        ("ana@northwind.test", "Ana"),
        [("carla@acme.test", "Carla")],
    )
    ics = ics.replace(b"END:VEVENT", b"RRULE:FREQ=WEEKLY;COUNT=4\r\nEND:VEVENT")
    (company.calendar / "weekly.ics").write_bytes(ics)
    add_local_mailbox(
        sessions,
        "ana",
        "ana@northwind.test",
        maildir=str(company.maildirs["ana"]),
        calendar=str(company.calendar),
    )
    sync(sessions, settings, "ana", now)
    with sessions() as session:
        keys = session.scalars(
            select(Activity.key).where(Activity.subject == "Acme weekly").order_by(Activity.key)
        ).all()
        assert len(keys) == 4 and len(set(keys)) == 4
        assert all(k.startswith("ical:weekly@northwind.test#") for k in keys)
        titles = session.scalars(select(Task.title).where(Task.title.like("%Acme weekly%"))).all()
    assert len(titles) == 2  # the two occurrences that have ended; two are ahead


def test_mail_delivered_after_a_quiet_poll_is_still_logged(sessions, settings, company, now):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    time.sleep(1.1)  # the folders settle: the next poll trusts their directory stamps
    sync(sessions, settings, "ana", now)
    quiet = sync(sessions, settings, "ana", now)
    assert quiet.new_activities == 0 and quiet.quarantined == 0  # nothing was read again
    deliver(
        company.maildirs["ana"],
        email_bytes(
            sender="eva@globex.test",
            to=["ana@northwind.test"],
            subject="after the quiet poll",
            when=now - timedelta(days=30),
            message_id="quiet@globex.test",
        ),
        now,
        "quiet.1.host",
    )
    report = sync(sessions, settings, "ana", now)
    assert report.new_activities == 1
    assert "after the quiet poll" in {r["subject"] for r in timeline(sessions)}
