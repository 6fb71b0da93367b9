"""A Microsoft 365 dropbox mailbox, read from the local Graph emulator through msal and O365,
on SQLite and PostgreSQL: each message the delta gives is read whole as MIME (``$value``), so
a message a salesperson BCC'd is logged as their own, one from anyone else is refused, and a
forwarded original, inline or attached, is logged with its own participants, date and
Message-ID on behalf of the forwarding user (``[OPP-n]`` on the note's first line links the
deal by hand); what cannot be read is quarantined and the batch goes on. The emulator's
``$value`` itself is checked against Graph's documentation first."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import msal
import pytest
import requests
from sqlalchemy import select

from syncd.config import LimitSettings, Settings
from syncd.connectors.microsoft.client import _Http
from syncd.crm.explain import explain
from syncd.crm.models import Activity, QuarantineEntry, ThreadKey, User
from syncd.demo import DemoCompany, deliver, email_bytes

from .emulators.microsoft import MIME_TYPE, MicrosoftEmulator
from .test_dropbox import ANA, DROPBOX, attached_forward, inline_forward, sighted_for
from .test_dropbox import with_dropbox_address as dropbox_address
from .test_microsoft import TENANT, add_mailbox
from .test_pipeline import S, by_subject, demo_mailboxes, links, sync, timeline

ANA_ADDRESS = "ana@northwind.test"
CARLA = ("Carla Díaz", "carla@acme.test")
GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]


@pytest.fixture
def microsoft() -> Iterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator()
    emulator.add_app(TENANT, "app-1", secret="secret-1")
    emulator.add_app(
        TENANT, "basic-1", secret="secret-b", permissions=frozenset({"Mail.ReadBasic.All"})
    )
    emulator.add_user(DROPBOX)
    emulator.start()
    yield emulator
    emulator.stop()


def graph_dropbox(sessions: S, settings: Settings, microsoft: MicrosoftEmulator) -> None:
    """The dropbox's Exchange mailbox (crm@), a mailbox of its own CRM user, added with
    ``--dropbox``: Graph reads ``/users/{the user's address}``."""
    with sessions.begin() as session:
        session.add(User(email=DROPBOX, name="Northwind CRM dropbox"))
    add_mailbox(sessions, settings, microsoft, name="crm", user=DROPBOX, dropbox=True)


# --- the emulator: GET /messages/{id}/$value ------------------------------------------------


def token(microsoft: MicrosoftEmulator, client: str = "app-1", secret: str = "secret-1") -> str:
    app = msal.ConfidentialClientApplication(
        client,
        client_credential=secret,
        authority=f"{microsoft.base}/{TENANT}",
        instance_discovery=False,
        http_client=_Http(str(microsoft.ca_pem), 30),
    )
    return str(app.acquire_token_for_client(scopes=GRAPH_SCOPE)["access_token"])


def get(microsoft: MicrosoftEmulator, path: str, bearer: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{microsoft.base}/v1.0/users/{DROPBOX}{path}",
        headers={"Authorization": f"Bearer {bearer}", **headers},
        verify=str(microsoft.ca_pem),
        timeout=30,
    )


def test_the_emulator_serves_a_messages_mime_content_as_graph_documents_it(microsoft):
    """``$value`` is the message as MIME, typed ``text/plain``: a message seeded from MIME
    is served with its bytes (and its JSON read from its headers), one seeded as JSON is
    rendered from its properties; an unknown id is 404 ErrorItemNotFound, another folder's
    message 404 under that folder, and Mail.ReadBasic (no body) is refused."""
    sent = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    raw = email_bytes(
        sender=ANA,
        to=["Carla Díaz <carla@acme.test>"],
        cc=[DROPBOX],
        subject="Renewal timeline",
        when=sent,
        message_id="seeded-1@northwind.test",
        body="Hi Carla, here is the timeline.",
    )
    seeded = microsoft.deliver_mime(DROPBOX, raw)
    made = microsoft.deliver(
        DROPBOX,
        subject="Pricing call",
        sender=("Ana Ruiz", ANA_ADDRESS),
        to=[CARLA],
        message_id="<json-1@northwind.test>",
        sent=sent,
        body="Hi Carla, about [OPP-101].",
        headers=[("In-Reply-To", "<q-1@acme.test>")],
        sensitivity="personal",
    )
    bearer = token(microsoft)
    answer = get(microsoft, f"/messages/{seeded}/$value", bearer)
    assert answer.status_code == 200 and answer.content == raw
    assert answer.headers["Content-Type"] == MIME_TYPE == "text/plain"
    resource = get(microsoft, f"/messages/{seeded}", bearer).json()
    assert resource["from"]["emailAddress"] == {"name": "Ana Ruiz", "address": ANA_ADDRESS}
    assert [r["emailAddress"]["address"] for r in resource["ccRecipients"]] == [DROPBOX]
    assert resource["toRecipients"][0]["emailAddress"]["name"] == "Carla Díaz"
    assert resource["internetMessageId"] == "<seeded-1@northwind.test>"
    assert (resource["subject"], resource["sentDateTime"]) == (
        "Renewal timeline",
        "2026-03-02T09:30:00Z",
    )
    assert resource["bodyPreview"].startswith("Hi Carla, here is the timeline.")

    rendered = get(microsoft, f"/mailFolders/inbox/messages/{made}/$value", bearer)
    assert rendered.status_code == 200 and rendered.headers["Content-Type"] == "text/plain"
    mime = message_from_bytes(rendered.content, policy=policy.default)
    assert mime["From"].addresses[0].addr_spec == ANA_ADDRESS
    assert mime["To"].addresses[0].display_name == "Carla Díaz"
    assert (mime["Subject"], mime["Message-ID"]) == ("Pricing call", "<json-1@northwind.test>")
    assert mime["Date"].datetime == sent
    assert (mime["In-Reply-To"], mime["Sensitivity"]) == ("<q-1@acme.test>", "Personal")
    body = mime.get_body(("plain",))
    assert body is not None and "about [OPP-101]" in body.get_content()

    gone = get(microsoft, "/messages/AAkALnothing/$value", bearer)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ErrorItemNotFound"
    elsewhere = get(microsoft, f"/mailFolders/sentitems/messages/{made}/$value", bearer)
    assert elsewhere.status_code == 404
    basic = get(microsoft, f"/messages/{made}/$value", token(microsoft, "basic-1", "secret-b"))
    assert basic.status_code == 403 and basic.json()["error"]["code"] == "ErrorAccessDenied"


# --- the dropbox ----------------------------------------------------------------------------


def test_a_message_bccd_to_a_graph_dropbox_is_logged_as_the_senders_own_and_a_strangers_refused(
    sessions, settings, company: DemoCompany, microsoft, now
):
    settings = dropbox_address(settings)
    graph_dropbox(sessions, settings, microsoft)
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
    microsoft.deliver_mime(DROPBOX, bcc, conversation_id="AAQkrenewal")
    microsoft.deliver_mime(DROPBOX, stranger)
    report = sync(sessions, settings, "crm", now)
    assert report.excluded["refused"] == 1 and report.quarantined == 0
    rows = by_subject(timeline(sessions))
    logged = rows["Renewal timeline"]
    assert logged["direction"] == "outbound"
    assert {p["address"] for p in logged["participants"]} == {ANA_ADDRESS, "carla@acme.test"}
    assert ("contact", "Carla Díaz", "address") in links(logged)
    assert "Please log this" not in rows
    assert sighted_for(sessions, "mid:bcc-1@northwind.test") == {"crm": ANA_ADDRESS}
    # it counts as Ana's, never as the dropbox's own user's
    assert "Renewal timeline" in by_subject(timeline(sessions, user=ANA_ADDRESS))
    assert "Renewal timeline" not in by_subject(timeline(sessions, user=DROPBOX))
    with sessions() as session:
        refused = explain(session, "<stranger-1@globex.test>")
        kept = set(
            session.scalars(
                select(ThreadKey.key)
                .join(Activity, Activity.id == ThreadKey.activity_id)
                .where(Activity.key == "mid:bcc-1@northwind.test")
            )
        )
    assert refused.verdict == "skipped" and refused.skipped[0]["reason"] == "refused"
    assert "provider-thread:AAQkrenewal" in kept  # Graph's conversationId, as the JSON path
    again = sync(sessions, settings, "crm", now)  # the delta link: nothing new, nothing twice
    assert (again.new_activities, again.new_sightings) == (0, 0)


def test_forwards_to_a_graph_dropbox_log_their_originals_with_their_own_people_date_and_deal(
    sessions, settings, company: DemoCompany, microsoft, now
):
    demo_mailboxes(sessions, company)
    graph_dropbox(sessions, settings, microsoft)
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
    microsoft.deliver_mime(DROPBOX, inline)
    microsoft.deliver_mime(DROPBOX, attached)
    deliver(company.maildirs["ana"], original, now - timedelta(days=3), "budget.host")
    sync(sessions, settings, "crm", now)
    sync(sessions, settings, "ana", now)  # Ana's own copy of the attached original

    rows = by_subject(timeline(sessions))
    assert "Fwd: Server sizing" not in rows and "Fwd: Pilot budget" not in rows
    sizing = rows["Server sizing"]
    assert sizing["direction"] == "inbound"
    assert datetime.fromisoformat(sizing["occurred_at"]) == sent.astimezone(UTC)
    assert {p["address"] for p in sizing["participants"]} == {"dan@acme.test", ANA_ADDRESS}
    assert ("opportunity", "OPP-101 Acme platform renewal", "manual") in links(sizing)
    assert ("contact", "Dan Wu", "address") in links(sizing)
    assert sighted_for(sessions, sizing["key"]) == {"crm": ANA_ADDRESS}
    budget = rows["Pilot budget"]  # one activity: the forward and Ana's copy
    assert budget["key"] == "mid:budget-7@globex.test"
    assert datetime.fromisoformat(budget["occurred_at"]) == now - timedelta(days=3)
    assert sighted_for(sessions, budget["key"]) == {"crm": ANA_ADDRESS, "ana": None}
    assert ("opportunity", "OPP-202 Globex pilot", "contact-role") in links(budget)


def test_a_graph_dropbox_reads_json_mail_as_mime_and_quarantines_what_it_cannot_read(
    sessions, settings, company: DemoCompany, microsoft, now
):
    """A message Exchange holds as properties is read through its MIME rendering; a private
    one stays out; one over limits.message_bytes is quarantined unread, one that is no
    message with its bytes (rfc822), one Graph refuses with its reason; a 503 on ``$value``
    is tried again; none stops the batch."""
    limits = LimitSettings(message_bytes=64 * 1024)
    settings = dropbox_address(settings).model_copy(update={"limits": limits})
    graph_dropbox(sessions, settings, microsoft)
    microsoft.deliver(
        DROPBOX,
        subject="Pricing call",
        sender=("Ana Ruiz", ANA_ADDRESS),
        to=[CARLA],
        cc=[("CRM", DROPBOX)],
        message_id="<json-1@northwind.test>",
        sent=now - timedelta(hours=5),
        body="Hi Carla, the pricing we discussed.",
    )
    microsoft.deliver(
        DROPBOX,
        subject="Salary talk",
        sender=("Ana Ruiz", ANA_ADDRESS),
        to=[CARLA],
        message_id="<private-1@northwind.test>",
        sent=now - timedelta(hours=4),
        sensitivity="private",
    )
    big = email_bytes(
        sender=ANA,
        to=["Carla Díaz <carla@acme.test>"],
        subject="The whole catalogue",
        when=now - timedelta(hours=3),
        message_id="big-1@northwind.test",
        body="catalogue line\n" * 6000,  # 90 KB
    )
    large = microsoft.deliver_mime(DROPBOX, big)
    noise = b"this is no message at all\n"
    broken = microsoft.deliver_mime(DROPBOX, noise)
    gone = microsoft.deliver_mime(
        DROPBOX,
        email_bytes(sender=ANA, to=[DROPBOX], subject="Gone", when=now, message_id="g@n.test"),
    )
    microsoft.inject(status=503, retry_after=0, path="/$value")
    microsoft.inject(status=404, path=f"/{gone}/$value")  # refused for good: that one only
    report = sync(sessions, settings, "crm", now)

    assert len(microsoft.faults) == 0  # the 503 was met, and tried again
    rows = by_subject(timeline(sessions))
    assert set(rows) == {"Pricing call"}
    pricing = rows["Pricing call"]
    assert pricing["key"] == "mid:json-1@northwind.test"
    assert {p["address"] for p in pricing["participants"]} == {ANA_ADDRESS, "carla@acme.test"}
    assert sighted_for(sessions, pricing["key"]) == {"crm": ANA_ADDRESS}
    assert report.excluded["private"] == 1 and report.quarantined == 3
    with sessions() as session:
        held = {q.provider_id: q for q in session.scalars(select(QuarantineEntry))}
    assert set(held) == {large, broken, gone}
    assert "MIME content cannot be read" in held[gone].reason and "404" in held[gone].reason
    assert "limits.message_bytes" in held[large].reason and held[large].raw is None
    assert (held[broken].format, held[broken].raw) == ("rfc822", noise)
    assert "Salary" not in " ".join(q.reason for q in held.values())
