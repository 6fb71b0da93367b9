"""An admin's corrections (issue 15), on SQLite and PostgreSQL: a deal linked by hand is
kept, replaces the weaker deal links, and its conversation follows it, later messages too;
a link removed by hand is never made again, by a copy from another mailbox either, until
it is linked by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncd.config import Settings
from syncd.crm import corrections, lookups
from syncd.crm.explain import explain
from syncd.demo import DemoCompany, deliver, email_bytes
from syncd.settle import settle_activities

from .test_pipeline import S, by_subject, demo_mailboxes, links, sync, tasks, timeline

ACME_DEAL = "OPP-101 Acme platform renewal"
GLOBEX_DEAL = "OPP-202 Globex pilot"


def correct(sessions: S, settings: Settings, fix: str, activity: int, **target: str) -> str:
    with sessions.begin() as session:
        chosen = corrections.target_of(session, **target)
        made = getattr(corrections, fix)
        done: str = made(session, settings, activity, chosen, datetime.now(UTC))
    return done


def test_a_deal_linked_by_hand_is_kept_and_its_conversation_follows_it(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    scope = by_subject(timeline(sessions))["Pilot scope"]
    assert ("opportunity", GLOBEX_DEAL, "contact-role") in links(scope)
    done = correct(sessions, settings, "link", scope["id"], opportunity="OPP-101")
    assert done == f"activity {scope['id']} linked to opportunity {ACME_DEAL} (manual)"
    rows = by_subject(timeline(sessions))
    deals = {(n, r) for t, n, r in links(rows["Pilot scope"]) if t == "opportunity"}
    assert deals == {(ACME_DEAL, "manual")}  # the weaker link gave way
    assert ("opportunity", ACME_DEAL, "thread") in links(rows["Re: Pilot scope"])

    # a later message of the conversation follows the deal linked by hand
    later = email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=["ana@northwind.test"],
        subject="Re: Pilot scope",
        when=now - timedelta(hours=1),
        message_id="q-8@globex.test",
        in_reply_to="q-7@globex.test",
        references=["q-7@globex.test"],
    )
    deliver(company.maildirs["ana"], later, now - timedelta(hours=1), "later.host")
    sync(sessions, settings, "ana", now)
    replies = [r for r in timeline(sessions) if r["key"] == "mid:q-8@globex.test"]
    assert ("opportunity", ACME_DEAL, "thread") in links(replies[0])
    scope = by_subject(timeline(sessions))["Pilot scope"]
    assert ("opportunity", ACME_DEAL, "manual") in links(scope)


def test_a_link_removed_by_hand_is_not_made_again_until_linked_by_hand(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)  # Ben, on Cc, has a copy: synced after
    proposal = by_subject(timeline(sessions))["Renewal proposal [OPP-101]"]
    correct(sessions, settings, "unlink", proposal["id"], contact="CARLA@acme.test")
    done = correct(sessions, settings, "unlink", proposal["id"], opportunity="OPP-101")
    assert done.startswith(f"activity {proposal['id']} unlinked from opportunity {ACME_DEAL}")
    sync(sessions, settings, "ben", now)  # a copy that names the deal and Carla again
    after = by_subject(timeline(sessions))["Renewal proposal [OPP-101]"]
    assert after["mailboxes"] == ["ana", "ben"]
    assert links(after) == {("account", "Acme Corp", "contact")}
    again = correct(sessions, settings, "unlink", proposal["id"], contact="carla@acme.test")
    assert "was not linked to contact Carla Díaz" in again

    correct(sessions, settings, "link", proposal["id"], contact="carla@acme.test")
    relinked = by_subject(timeline(sessions))["Renewal proposal [OPP-101]"]
    assert ("contact", "Carla Díaz", "manual") in links(relinked)


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ({"opportunity": "OPP-999"}, "no opportunity 'OPP-999'"),
        ({"contact": "nobody@acme.test"}, "no contact has the address 'nobody@acme.test'"),
        ({"account": "nowhere.test"}, "no account 'nowhere.test'"),
        ({}, "name one of --opportunity, --contact or --account"),
        ({"opportunity": "OPP-101", "account": "acme.test"}, "name one of"),
    ],
)
def test_a_correction_naming_nothing_stored_is_refused(sessions, company, target, named):
    with sessions() as session, pytest.raises(corrections.CorrectionError, match=named):
        corrections.target_of(session, **target)


def test_a_correction_of_an_unknown_activity_is_refused(sessions, settings, company):
    with sessions.begin() as session:
        deal = corrections.target_of(session, opportunity="OPP-101")
        with pytest.raises(corrections.CorrectionError, match="no activity 424242"):
            corrections.link(session, settings, 424242, deal, datetime.now(UTC))


def test_a_deleted_activity_is_gone_its_task_cancelled_in_the_calendar_and_never_logged_again(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    reply = by_subject(timeline(sessions))["Re: Pilot scope"]
    (task,) = [t for t in tasks(sessions) if t["activity_id"] == reply["id"]]
    (written,) = [p for p in company.calendar.glob("syncd-*.ics") if task["uid"] in p.read_text()]
    assert "STATUS:NEEDS-ACTION" in written.read_text()
    with sessions.begin() as session:
        done = corrections.delete_activity(session, settings, reply["id"], datetime.now(UTC))
    assert (done.subject, done.tasks_cancelled, done.sightings) == ("Re: Pilot scope", 1, 1)
    assert "Re: Pilot scope" not in by_subject(timeline(sessions))
    (after,) = [t for t in tasks(sessions) if t["uid"] == task["uid"]]
    assert (after["status"], after["resolution"], after["activity_id"]) == (
        "cancelled",
        "activity deleted",
        None,
    )
    sync(sessions, settings, "ana", now)  # the cancellation reaches the calendar
    assert "STATUS:CANCELLED" in written.read_text()

    # a copy of it in another mailbox is never logged again, and explain says why
    message_id = reply["key"].removeprefix("mid:")
    (original,) = [
        p for p in company.maildirs["ana"].glob("**/cur/*") if message_id in p.read_text()
    ]
    deliver(company.maildirs["ben"], original.read_bytes(), now, "copy-of-reply.host")
    report = sync(sessions, settings, "ben", now)
    assert report.excluded["deleted"] == 1
    assert "Re: Pilot scope" not in by_subject(timeline(sessions))
    with sessions() as session:
        why = explain(session, f"<{message_id}>")
    assert why.verdict == "deleted" and why.deleted is not None
    assert ("ben", "deleted") in [(s["mailbox"], s["reason"]) for s in why.skipped]


def test_a_done_task_of_a_deleted_activity_stays_done(sessions, settings, company, now):
    from sqlalchemy import update

    from syncd.crm.models import Task

    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    reply = by_subject(timeline(sessions))["Re: Pilot scope"]
    with sessions.begin() as session:
        session.execute(update(Task).where(Task.activity_id == reply["id"]).values(status="done"))
    with sessions.begin() as session:
        done = corrections.delete_activity(session, settings, reply["id"], datetime.now(UTC))
    assert done.tasks_cancelled == 0  # it was done: nothing to cancel
    (task,) = [t for t in tasks(sessions) if t["title"].endswith("Re: Pilot scope")]
    assert (task["status"], task["resolution"], task["activity_id"]) == ("done", None, None)


def test_a_deal_removed_by_hand_from_a_reply_stays_removed_when_its_conversation_moves(
    sessions, settings, company, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    reply = by_subject(timeline(sessions))["Re: Pilot scope"]
    assert ("opportunity", GLOBEX_DEAL, "thread") in links(reply)
    correct(sessions, settings, "unlink", reply["id"], opportunity="OPP-202")
    with sessions.begin() as session:  # settled again: nothing to change, nothing churns
        index = lookups.base_index(session, settings)
        assert settle_activities(session, index, [reply["id"]]) == 0
    later = email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=["ana@northwind.test"],
        subject="Re: Pilot scope [OPP-202]",
        when=now - timedelta(hours=1),
        message_id="q-8@globex.test",
        in_reply_to="q-7@globex.test",
        references=["q-7@globex.test"],
    )
    deliver(company.maildirs["ana"], later, now - timedelta(hours=1), "later.host")
    sync(sessions, settings, "ana", now)  # a tagged message settles the conversation again
    rows = by_subject(timeline(sessions))
    assert not [lk for lk in links(rows["Re: Pilot scope"]) if lk[0] == "opportunity"]
    assert ("opportunity", GLOBEX_DEAL, "tag") in links(rows["Re: Pilot scope [OPP-202]"])
    assert ("opportunity", GLOBEX_DEAL, "thread") in links(rows["Pilot scope"])  # follows the tag
