"""A dropbox mailbox (issue 15), read from a real Dovecot, on SQLite and PostgreSQL: a
message a salesperson BCC'd to it is logged as their own; one from anyone else is refused;
a forwarded original, inline or attached, is logged with its own participants, date and
Message-ID on behalf of the forwarding user, and ``[OPP-n]`` in the forward's first line
links the deal by hand; ``#nocrm`` removes the forwarded conversation from the CRM, and it
is never logged again; the dropbox's own sightings never count as its user's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from sqlalchemy import select

from syncd.config import Settings
from syncd.crm.explain import explain
from syncd.crm.models import Sighting, User
from syncd.demo import DemoCompany, deliver, email_bytes

from .helpers import add_mailbox
from .servers import Dovecot
from .test_daemon import append
from .test_pipeline import S, by_subject, demo_mailboxes, links, sync, timeline

ANA = "Ana Ruiz <ana@northwind.test>"
DROPBOX = "crm@northwind.test"


def dropbox(sessions: S, settings: Settings, imap_server: Dovecot, name: str = "crm") -> str:
    """A dropbox mailbox on Dovecot, its credentials held by Ben (an admin)."""
    login = imap_server.login(name)
    values = {
        "host": imap_server.host,
        "port": imap_server.port,
        "tls": "none",
        "login": login,
        "dropbox": True,
    }
    add_mailbox(sessions, settings, name, "imap", "ben@northwind.test", Dovecot.PASSWORD, values)
    return login


def with_dropbox_address(settings: Settings) -> Settings:
    box = settings.dropbox.model_copy(update={"addresses": [DROPBOX]})
    return settings.model_copy(update={"dropbox": box})


def inline_forward(original: dict[str, Any], note: str, subject: str, when: datetime) -> bytes:
    """Ana forwards a message the way Gmail writes a forward inline."""
    sent = original["when"].strftime("%a, %b %-d, %Y at %-I:%M %p")
    text = (
        f"{note}\n\n---------- Forwarded message ---------\n"
        f"From: {original['sender']}\nDate: {sent}\nSubject: {original['subject']}\n"
        f"To: {original['to']}\n\n{original['body']}\n"
    )
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ANA, DROPBOX, subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<fwd-{abs(hash(text))}@northwind.test>"
    msg.set_content(text)
    return msg.as_bytes()


def attached_forward(original: bytes, note: str, subject: str, when: datetime) -> bytes:
    """Ana forwards a message as an attachment (message/rfc822), as Outlook can."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ANA, DROPBOX, subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<fwd-{abs(hash(original))}@northwind.test>"
    msg.set_content(note + "\n")
    inner = EmailMessage()
    inner.set_content("x")
    msg.add_attachment(original, maintype="message", subtype="rfc822")
    return msg.as_bytes()


def pilot_scope(now: datetime, *also: str) -> bytes:
    """The demo's "Pilot scope" from Eva to Ana (and ``also``): its Message-ID is the one
    Ana's mailbox stores."""
    return email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=[ANA, *also],
        subject="Pilot scope",
        when=now - timedelta(days=6),
        message_id="q-7@globex.test",
        body="Could the pilot include the reporting module?",
    )


def sighted_for(sessions: S, key: str) -> dict[str, str | None]:
    """mailbox name -> the users a dropbox logged it for (joined by ', '; None for a user's
    own mailbox)."""
    from syncd.crm.models import Activity, LoggedFor, Mailbox

    with sessions() as session:
        activity_id = session.scalar(select(Activity.id).where(Activity.key == key))
        boxes = session.execute(
            select(Mailbox.name, Mailbox.settings)
            .join(Sighting, Sighting.mailbox_id == Mailbox.id)
            .where(Sighting.activity_id == activity_id)
        ).all()
        users = sorted(
            session.scalars(
                select(User.email)
                .join(LoggedFor, LoggedFor.user_id == User.id)
                .where(LoggedFor.activity_id == activity_id)
            )
        )
    return {name: ", ".join(users) if (box or {}).get("dropbox") else None for name, box in boxes}


def test_a_message_bccd_to_the_dropbox_is_logged_as_the_senders_own_and_a_strangers_refused(
    sessions, settings, company: DemoCompany, imap_server, now
):
    settings = with_dropbox_address(settings)
    login = dropbox(sessions, settings, imap_server)
    bcc = email_bytes(
        sender=ANA,
        to=["Carla Díaz <carla@acme.test>"],
        cc=[DROPBOX],  # a visible copy: the dropbox itself is no participant
        subject="Renewal timeline",
        when=now - timedelta(hours=3),
        message_id="bcc-1@northwind.test",
        body="Hi Carla, here is the timeline.",
    )
    stranger = email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=[DROPBOX],
        subject="Please log this",
        when=now - timedelta(hours=2),
        message_id="stranger-1@globex.test",
    )
    append(imap_server, login, bcc, stranger)
    report = sync(sessions, settings, "crm", now)
    assert report.excluded["refused"] == 1
    rows = by_subject(timeline(sessions))
    logged = rows["Renewal timeline"]
    assert logged["direction"] == "outbound"
    assert DROPBOX not in {p["address"] for p in logged["participants"]}
    assert ("contact", "Carla Díaz", "address") in links(logged)
    assert "Please log this" not in rows
    assert sighted_for(sessions, "mid:bcc-1@northwind.test") == {"crm": "ana@northwind.test"}
    # it counts as Ana's, never as the dropbox's own user's (Ben)
    assert "Renewal timeline" in by_subject(timeline(sessions, user="ana@northwind.test"))
    assert "Renewal timeline" not in by_subject(timeline(sessions, user="ben@northwind.test"))
    with sessions() as session:
        refused = explain(session, "<stranger-1@globex.test>")
    assert refused.verdict == "skipped"
    assert refused.skipped[0]["reason"] == "refused"


def test_a_forwarded_original_is_logged_with_its_own_people_and_date_and_the_deal_its_note_names(
    sessions, settings, company: DemoCompany, imap_server, now
):
    demo_mailboxes(sessions, company)
    login = dropbox(sessions, settings, imap_server)
    sent = (now - timedelta(days=10)).replace(second=0)
    inline = inline_forward(
        {
            "sender": "Dan Wu <dan@acme.test>",
            "to": ANA,
            "subject": "Server sizing",
            "when": sent,
            "body": "We run 40 servers in two sites.",
        },
        "[OPP-101] for the renewal\nDan's numbers.",
        "Fwd: Server sizing",
        now - timedelta(hours=1),
    )
    original = email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=[ANA],
        subject="Pilot budget",
        when=now - timedelta(days=3),
        message_id="budget-7@globex.test",
        body="The pilot budget is approved.",
    )
    attached = attached_forward(original, "FYI", "Fwd: Pilot budget", now - timedelta(minutes=30))
    append(imap_server, login, inline, attached)
    deliver(company.maildirs["ana"], original, now - timedelta(days=3), "budget.host")
    sync(sessions, settings, "crm", now)
    sync(sessions, settings, "ana", now)  # Ana's own copy of the attached original

    rows = by_subject(timeline(sessions))
    assert "Fwd: Server sizing" not in rows and "Fwd: Pilot budget" not in rows
    sizing = rows["Server sizing"]
    assert sizing["direction"] == "inbound"
    assert datetime.fromisoformat(sizing["occurred_at"]) == sent.astimezone(UTC)
    assert {p["address"] for p in sizing["participants"]} == {
        "dan@acme.test",
        "ana@northwind.test",
    }
    assert ("opportunity", "OPP-101 Acme platform renewal", "manual") in links(sizing)
    assert ("contact", "Dan Wu", "address") in links(sizing)
    budget = rows["Pilot budget"]  # one activity: the forward and Ana's copy
    assert budget["key"] == "mid:budget-7@globex.test"
    assert sighted_for(sessions, budget["key"]) == {"crm": "ana@northwind.test", "ana": None}
    assert ("opportunity", "OPP-202 Globex pilot", "contact-role") in links(budget)


def test_nocrm_removes_the_forwarded_conversation_and_none_of_it_is_logged_again(
    sessions, settings, company: DemoCompany, imap_server, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    assert {"Pilot scope", "Re: Pilot scope"} <= set(by_subject(timeline(sessions)))
    login = dropbox(sessions, settings, imap_server)
    scope = pilot_scope(now)
    append(imap_server, login, attached_forward(scope, "private, #NoCRM please", "Fwd", now))
    sync(sessions, settings, "crm", now)
    rows = by_subject(timeline(sessions))
    assert "Pilot scope" not in rows and "Re: Pilot scope" not in rows
    assert "Renewal proposal [OPP-101]" in rows  # the rest stays

    later = email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=[ANA],
        subject="Re: Pilot scope",
        when=now - timedelta(hours=1),
        message_id="q-9@globex.test",
        in_reply_to="q-7@globex.test",
        references=["q-7@globex.test"],
    )
    deliver(company.maildirs["ana"], later, now - timedelta(hours=1), "later.host")
    report = sync(sessions, settings, "ana", now)
    assert report.excluded["nocrm"] >= 1
    assert "Re: Pilot scope" not in by_subject(timeline(sessions))
    with sessions() as session:
        assert explain(session, "<q-9@globex.test>").skipped[0]["reason"] == "nocrm"
        removed = explain(session, "<q-7@globex.test>")
    assert removed.verdict == "deleted"
    assert removed.deleted is not None and removed.deleted["by"] == "a salesperson (#nocrm)"


def test_every_forwarder_is_credited_and_an_inline_forward_is_the_stored_message(
    sessions, settings, company: DemoCompany, imap_server, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)  # the demo's Pilot scope is stored from Ana's mail
    login = dropbox(sessions, settings, imap_server)
    scope = pilot_scope(now, "Ben Okafor <ben@northwind.test>")
    bens = attached_forward(scope, "fyi", "Fwd: Pilot scope", now).replace(
        ANA.encode(), b"Ben Okafor <ben@northwind.test>", 1
    )
    sent = (now - timedelta(days=6)).replace(second=0, microsecond=0)
    inline = inline_forward(
        {
            "sender": "Eva Novak <eva@globex.test>",
            "to": ANA,
            "subject": "Pilot scope",
            "when": sent.astimezone(UTC),
            "body": "Could the pilot include the reporting module?",
        },
        "for the file",
        "Fwd: Pilot scope",
        now,
    )
    append(imap_server, login, bens, inline)
    sync(sessions, settings, "crm", now)
    scopes = [r for r in timeline(sessions) if r["subject"] == "Pilot scope"]
    assert [r["key"] for r in scopes] == ["mid:q-7@globex.test"]  # one activity, not three
    assert sighted_for(sessions, "mid:q-7@globex.test") == {
        "ana": None,
        "crm": "ana@northwind.test, ben@northwind.test",
    }
    assert "Pilot scope" in by_subject(timeline(sessions, user="ben@northwind.test"))


def authenticated_by(server: str, data: bytes, result: str = "dmarc=pass") -> bytes:
    header = f"Authentication-Results: {server}; {result} header.from=northwind.test\r\n"
    return header.encode() + data


def test_with_authserv_ids_only_an_authenticated_from_is_taken_and_nocrm_needs_a_party(
    sessions, settings, company: DemoCompany, imap_server, now
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    box = settings.dropbox.model_copy(update={"authserv_ids": ["mx.northwind.test"]})
    settings = settings.model_copy(update={"dropbox": box})
    login = dropbox(sessions, settings, imap_server)

    def note(mid: str, subject: str) -> bytes:
        return email_bytes(
            sender=ANA,
            to=["Carla Díaz <carla@acme.test>"],
            subject=subject,
            when=now - timedelta(hours=1),
            message_id=mid,
        )

    scope = email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=["Ben Okafor <ben@northwind.test>"],
        subject="Pilot scope",
        when=now - timedelta(days=6),
        message_id="q-7@globex.test",
    )
    forged = attached_forward(scope, "#nocrm", "Fwd", now).replace(
        ANA.encode(), b"Dan Wu <ben@northwind.test>", 1
    )
    append(
        imap_server,
        login,
        note("plain@northwind.test", "No header at all"),
        authenticated_by("mx.evil.test", note("evil@northwind.test", "Another server says so")),
        authenticated_by("mx.northwind.test", note("ok@northwind.test", "Ours says so")),
        authenticated_by(
            "mx.northwind.test", note("fail@northwind.test", "Ours says no"), "dmarc=fail"
        ),
        # Ben was not on the stored Pilot scope (Ana's copy): his #nocrm leaves it
        authenticated_by("mx.northwind.test", forged),
    )
    report = sync(sessions, settings, "crm", now)
    rows = by_subject(timeline(sessions))
    assert "Ours says so" in rows
    assert not {"No header at all", "Another server says so", "Ours says no"} & set(rows)
    assert report.excluded["refused"] == 3
    assert "Pilot scope" in rows


def test_a_nocrm_that_cannot_be_carried_out_never_stops_the_dropbox(
    sessions, settings, company: DemoCompany, imap_server, now, monkeypatch
):
    from syncd import dropbox as dropbox_module

    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    login = dropbox(sessions, settings, imap_server)
    scope = pilot_scope(now)
    later = email_bytes(
        sender=ANA,
        to=["Carla Díaz <carla@acme.test>"],
        subject="Logged all the same",
        when=now - timedelta(hours=1),
        message_id="after-1@northwind.test",
    )

    def broken(*_: object) -> int:
        raise RuntimeError("the removal broke")

    monkeypatch.setattr(dropbox_module, "_mute_one", broken)
    append(imap_server, login, attached_forward(scope, "#nocrm", "Fwd", now), later)
    report = sync(sessions, settings, "crm", now)
    assert report.ok
    rows = by_subject(timeline(sessions))
    assert "Logged all the same" in rows  # the batch was stored, the mailbox goes on
    assert "Pilot scope" in rows  # what could not be removed stays, with a warning
