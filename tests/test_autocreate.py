"""Contacts created from the mail (matching.create_contacts, issue 15), on SQLite and
PostgreSQL: ``sent`` makes a contact of an unknown person at a known account whom a user
wrote to, ``two-way`` only once they wrote back, whatever order the mail arrives in; their
stored mail is linked to them; role, free-mail and colleagues' addresses never become
contacts; ``never`` makes none; the name is the one their mail carries most often."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from syncd.config import Settings
from syncd.crm.models import Contact, ContactAddress
from syncd.demo import DemoCompany, deliver, email_bytes

from .test_pipeline import S, by_subject, demo_mailboxes, links, sync, timeline

ANA = "Ana Ruiz <ana@northwind.test>"


def policy(settings: Settings, value: str) -> Settings:
    matching = settings.matching.model_copy(update={"create_contacts": value})
    return settings.model_copy(update={"matching": matching})


def put(company: DemoCompany, when: datetime, n: int, sender: str, to: str, **kw: Any) -> None:
    folder = company.maildirs["ana"] / ".Sent" if sender == ANA else company.maildirs["ana"]
    mid = f"auto-{n}@mail.test"
    data = email_bytes(sender=sender, to=[to], when=when, message_id=mid, **kw)
    deliver(folder, data, when, f"auto{n}.host")


def auto_contacts(sessions: S) -> dict[str, tuple[str, bool]]:
    with sessions() as session:
        rows = session.execute(
            select(ContactAddress.address, Contact.name, Contact.auto_created).join(Contact)
        ).all()
    return {address: (name, auto) for address, name, auto in rows if auto}


def test_sent_makes_a_contact_of_whom_a_user_wrote_to_and_links_their_stored_mail(
    sessions, settings, company: DemoCompany, now
):
    settings = policy(settings, "sent")
    demo_mailboxes(sessions, company)
    put(company, now - timedelta(days=2), 1, "Frank Li <frank@acme.test>", ANA, subject="Intro")
    put(company, now - timedelta(days=1), 2, ANA, "Frank <frank@acme.test>", subject="Re: Intro")
    put(company, now - timedelta(hours=5), 3, ANA, "Frank Li <frank@acme.test>", subject="Specs")
    put(company, now - timedelta(hours=4), 4, ANA, "noreply@acme.test", subject="Unsubscribe")
    put(company, now - timedelta(hours=3), 5, ANA, "Gus <gus@gmail.com>", subject="Lunch")
    sync(sessions, settings, "ana", now)
    assert auto_contacts(sessions) == {"frank@acme.test": ("Frank Li", True)}
    rows = by_subject(timeline(sessions))
    for subject in ("Intro", "Re: Intro", "Specs"):  # the mail before it was made too
        assert ("contact", "Frank Li", "address") in links(rows[subject])
    with sessions() as session:
        frank = session.scalar(
            select(Contact).join(ContactAddress).where(ContactAddress.address == "frank@acme.test")
        )
        assert frank is not None and frank.first_name == "Frank" and frank.last_name == "Li"


@pytest.mark.parametrize("first", ["theirs", "ours"])
def test_two_way_waits_for_a_reply_in_whatever_order_the_mail_comes(
    sessions, settings, company: DemoCompany, now, first
):
    settings = policy(settings, "two-way")
    demo_mailboxes(sessions, company)
    ours = (2, ANA, "Frank Li <frank@acme.test>", "Proposal")
    theirs = (1, "Frank Li <frank@acme.test>", ANA, "Re: Proposal")
    order = [theirs, ours] if first == "theirs" else [ours, theirs]
    (n, sender, to, subject) = order[0]
    put(company, now - timedelta(days=1), n, sender, to, subject=subject)
    sync(sessions, settings, "ana", now)
    assert auto_contacts(sessions) == {}  # one direction is not yet a conversation
    (n, sender, to, subject) = order[1]
    put(company, now - timedelta(hours=2), n, sender, to, subject=subject)
    sync(sessions, settings, "ana", now)
    assert auto_contacts(sessions) == {"frank@acme.test": ("Frank Li", True)}
    rows = by_subject(timeline(sessions))
    assert ("contact", "Frank Li", "address") in links(rows["Proposal"])
    assert ("contact", "Frank Li", "address") in links(rows["Re: Proposal"])


def test_never_makes_no_contact_and_an_admins_load_takes_one_over(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    put(company, now - timedelta(days=1), 1, ANA, "Frank Li <frank@acme.test>", subject="Hi")
    sync(sessions, settings, "ana", now)  # the default: never
    assert auto_contacts(sessions) == {}
    settings = policy(settings, "sent")
    put(company, now - timedelta(hours=1), 2, ANA, "F. Li <frank@acme.test>", subject="Hi again")
    sync(sessions, settings, "ana", now)
    # "Frank Li" once, "F. Li" once: a tie goes to the first name in order, not in time
    assert auto_contacts(sessions) == {"frank@acme.test": ("F. Li", True)}
    from syncd.crm.loader import load_csv

    path = company.root / "frank.csv"
    path.write_text("emails,name,account\nfrank@acme.test,Franklin Li,acme.test\n")
    with sessions.begin() as session:
        load_csv(session, "contacts", path)
    assert auto_contacts(sessions) == {}  # the admin's now, named as loaded
