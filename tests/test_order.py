"""Results never depend on the order providers deliver items in (issue 9, points 9 and 10).

A corpus of conversations (tags, replies without tags, a reply that names only its parent,
a provider thread id without References, two deals at one account, two mailboxes, a
meeting) is delivered through the in-memory connector kind in random orders, folder
orders, mailbox orders, batch cuts and pass cuts. Every delivery must end with the same
activities, links, reasons, notes, sightings and open follow-up tasks as the others.
Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.memory.connector import MemoryWorld
from syncd.crm import mailboxes
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.crm.models import (
    Activity,
    Contact,
    Link,
    Mailbox,
    Opportunity,
    Sighting,
    Task,
    User,
)
from syncd.demo import load_company
from syncd.items import MailItem, MeetingItem, Participant
from syncd.sync import sync_mailbox

from .servers import new_pg_database

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
T0 = NOW - timedelta(days=10)
USERS = {"ana": "ana@northwind.test", "ben": "ben@northwind.test"}


def company(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "users": ["email,name", "ana@northwind.test,Ana", "ben@northwind.test,Ben"],
        "accounts": ["name,domains", "Acme,acme.test", "Globex,globex.test"],
        "contacts": [
            "emails,name,account",
            "carla@acme.test,Carla,acme.test",
            "dan@acme.test,Dan,acme.test",
            "eve@globex.test,Eve,globex.test",
        ],
        "opportunities": [
            "external_id,name,account,owner,contacts",
            "OPP-1,Renewal,acme.test,ana@northwind.test,carla@acme.test",
            "OPP-2,Upsell,acme.test,ana@northwind.test,dan@acme.test",
            "OPP-3,Pilot,globex.test,ben@northwind.test,",
        ],
    }
    for kind, rows in files.items():
        (root / f"{kind}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def mail(
    n: int,
    hours: float,
    sender: str,
    to: tuple[str, ...],
    subject: str,
    *,
    cc: tuple[str, ...] = (),
    refs: tuple[int, ...] = (),
    reply_to: int | None = None,
    gmail_thread: str | None = None,
    body: str = "",
) -> MailItem:
    key = f"mid:{n}@corpus.test"
    references = [f"mid:{r}@corpus.test" for r in refs]
    parent = [f"mid:{reply_to}@corpus.test"] if reply_to else []
    root = references[0] if references else (parent[0] if parent else key)
    people = [
        Participant(sender, "", "from"),
        *(Participant(a, "", "to") for a in to),
        *(Participant(a, "", "cc") for a in cc),
    ]
    return MailItem(
        key=key,
        provider_id=f"p{n}",
        message_id=key[4:],
        subject=subject,
        sent_at=T0 + timedelta(hours=hours),
        participants=tuple(people),
        thread_key=root,
        related_keys=tuple(dict.fromkeys([*references, *parent])),
        provider_thread_id=gmail_thread,
        body=body,
    )


ANA, BEN = USERS["ana"], USERS["ben"]
CARLA, DAN, EVE, FRANK = "carla@acme.test", "dan@acme.test", "eve@globex.test", "frank@acme.test"
CORPUS: list[MailItem] = [
    # a tagged proposal and replies without the tag (References name the root)
    mail(1, 0, ANA, (CARLA,), "Proposal [OPP-1]", cc=(BEN,)),
    mail(2, 5, CARLA, (ANA,), "Re: Proposal", refs=(1,)),
    mail(3, 9, ANA, (CARLA,), "Re: Proposal", refs=(1, 2)),
    # a conversation whose tag comes only in its third message, for the other deal
    mail(4, 20, DAN, (ANA,), "Question on seats"),
    mail(5, 22, ANA, (DAN,), "Re: Question on seats", refs=(4,)),
    mail(6, 30, DAN, (ANA,), "Re: Question on seats [OPP-2]", refs=(4, 5)),
    # replies naming only their parent (In-Reply-To): the tag is two hops away
    mail(7, 40, EVE, (BEN,), "Pilot kickoff [OPP-3]"),
    mail(8, 41, BEN, (EVE,), "Re: Pilot kickoff", reply_to=7),
    mail(9, 45, EVE, (BEN,), "Re: Pilot kickoff", reply_to=8),
    # a Gmail thread: the reply has no References, only the provider's thread id
    mail(10, 50, ANA, (DAN,), "Seats, again", gmail_thread="g1", body="see [OPP-2]"),
    mail(11, 53, DAN, (ANA,), "Re: Seats, again", gmail_thread="g1"),
    # someone at Acme who is no contact: the account's deal with the latest tagged activity
    mail(12, 60, FRANK, (ANA,), "Invoice address"),
    mail(13, 61, ANA, (FRANK,), "Re: Invoice address", refs=(12,)),
    # carla again, untagged and unthreaded: her role decides
    mail(14, 70, ANA, (CARLA,), "Training dates"),
]
MEETINGS: list[MeetingItem] = [
    MeetingItem(
        key="ical:m1@corpus.test",
        uid="m1@corpus.test",
        recurrence_id=None,
        provider_id="m1",
        subject="Seats workshop",
        start=T0 + timedelta(hours=26),
        end=T0 + timedelta(hours=27),
        participants=(
            Participant(ANA, "", "organizer"),
            Participant(DAN, "", "attendee"),
            Participant(FRANK, "", "attendee"),
        ),
    )
]


def folders(user: str) -> dict[str, list[MailItem]]:
    """Where each message lies in a user's mailbox: Sent, or INBOX if addressed to them."""
    address = USERS[user]
    sent = [m for m in CORPUS if m.participants[0].address == address]
    inbox = [
        m for m in CORPUS if m not in sent and any(p.address == address for p in m.participants)
    ]
    return {"INBOX": inbox, "Sent": sent}


@dataclass(frozen=True)
class Delivery:
    """One way a provider may deliver the corpus."""

    seed: int
    batch_size: int
    passes: int  # the mail arrives over this many passes
    mailbox_order: tuple[str, ...]
    folder_order: tuple[str, ...]


def deliveries() -> st.SearchStrategy[Delivery]:
    return st.builds(
        Delivery,
        seed=st.integers(0, 2**32 - 1),
        batch_size=st.sampled_from([1, 2, 3, 5, 100]),
        passes=st.integers(1, 3),
        mailbox_order=st.permutations(("ana", "ben")).map(tuple),
        folder_order=st.permutations(("INBOX", "Sent")).map(tuple),
    )


def fresh_database(kind: str, pg_base: str | None, tmp: Path) -> sessionmaker[Session]:
    if kind == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(dir=tmp)}/crm.db"
    else:
        assert pg_base is not None
        url = new_pg_database(pg_base)
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, company(tmp / "crm"))
    with sessions.begin() as session:
        for name, address in USERS.items():
            user_id = session.scalar(select(User.id).where(User.email == address))
            assert user_id is not None
            mailboxes.add_mailbox(session, name=name, kind="memory", user_id=user_id, settings={})
    return sessions


def recent(home: Path) -> Settings:
    """The world is written for the most-recent rule (every policy is a function of the
    stored set, so the order cannot matter to any of them)."""
    return Settings(home=home, matching={"opportunity": "most-recent"})


def run(sessions: sessionmaker[Session], home: Path, how: Delivery) -> dict[str, Any]:
    import random

    rng = random.Random(how.seed)
    world = MemoryWorld()
    plan: dict[str, dict[str, list[Any]]] = {}
    for user in USERS:
        box = world.mailbox(user)
        box.batch_size = how.batch_size
        sources: dict[str, list[Any]] = {}
        for name in how.folder_order:
            items = list(folders(user)[name])
            rng.shuffle(items)
            sources[name] = items
        if user == "ana":
            meetings: list[Any] = list(MEETINGS)
            sources["calendar"] = meetings
        plan[user] = sources
        for name in sources:
            (box.calendar if name == "calendar" else box.mail)[name] = []
    settings_ = recent(home)
    for p in range(1, how.passes + 1):
        for user in how.mailbox_order:
            box = world.mailbox(user)
            for name, items in plan[user].items():
                upto = len(items) * p // how.passes
                target: list[Any] = box.calendar[name] if name == "calendar" else box.mail[name]
                target[:] = items[:upto]
            report = sync_mailbox(
                sessions, settings_, user, now=lambda: NOW, connector_factory=world.connector
            )
            assert report.ok, report.error
            assert report.quarantined == 0
    return snapshot(sessions)


def snapshot(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Everything a user can see, named by keys, never by row ids (those follow order)."""
    with sessions() as session:
        names = {
            "contact": dict(session.execute(select(Contact.id, Contact.name)).all()),
            "opportunity": dict(
                session.execute(select(Opportunity.id, Opportunity.external_id)).all()
            ),
        }
        keys = dict(session.execute(select(Activity.id, Activity.key)).all())
        boxes = dict(session.execute(select(Mailbox.id, Mailbox.name)).all())
        result: dict[str, Any] = {}
        for a in session.scalars(select(Activity)):
            links = sorted(
                (lk.type, names.get(lk.type, {}).get(lk.target_id, lk.target_id), lk.reason)
                for lk in session.scalars(select(Link).where(Link.activity_id == a.id))
            )
            seen = sorted(
                boxes[s.mailbox_id]
                for s in session.scalars(select(Sighting).where(Sighting.activity_id == a.id))
            )
            result[a.key] = (a.kind, a.direction, a.match_note, tuple(links), tuple(seen))
        tasks = {
            t.uid: (
                keys[t.activity_id] if t.activity_id is not None else None,
                t.title,
                re.sub(r"Activity #\d+", "Activity #", t.description),
                names["opportunity"].get(t.opportunity_id) if t.opportunity_id else None,
                t.due,
            )
            for t in session.scalars(select(Task).where(Task.status == "open"))
        }
    return {"activities": result, "open tasks": tasks}


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The corpus delivered oldest first, in one pass, one batch: what every order must give."""
    with tempfile.TemporaryDirectory() as tmp:
        sessions = fresh_database("sqlite", None, Path(tmp))
        how = Delivery(
            seed=0,
            batch_size=1000,
            passes=1,
            mailbox_order=("ana", "ben"),
            folder_order=("INBOX", "Sent"),
        )
        # oldest first: the order a naive implementation gets right
        world_sorted = snapshot_sorted(sessions, Path(tmp) / "home", how)
    return world_sorted


def snapshot_sorted(sessions: sessionmaker[Session], home: Path, how: Delivery) -> dict[str, Any]:
    world = MemoryWorld()
    for user in USERS:
        box = world.mailbox(user)
        box.batch_size = how.batch_size
        everything = sorted(
            [m for items in folders(user).values() for m in items], key=lambda m: m.sent_at
        )
        box.mail["all"] = everything
        if user == "ana":
            box.calendar["calendar"] = list(MEETINGS)
    for user in how.mailbox_order:
        report = sync_mailbox(
            sessions, recent(home), user, now=lambda: NOW, connector_factory=world.connector
        )
        assert report.ok, report.error
    return snapshot(sessions)


def test_the_reference_delivery_links_every_conversation_to_its_deal(reference):
    acts = reference["activities"]

    def deal(n: int) -> tuple[str, str] | None:
        return next(
            ((t, r) for k, t, r in acts[f"mid:{n}@corpus.test"][3] if k == "opportunity"), None
        )

    assert deal(1) == ("OPP-1", "tag")
    assert deal(2) == deal(3) == ("OPP-1", "thread")
    assert deal(6) == ("OPP-2", "tag")
    assert deal(4) == deal(5) == ("OPP-2", "thread")  # the tag came later in the thread
    assert deal(7) == ("OPP-3", "tag")
    assert deal(8) == deal(9) == ("OPP-3", "thread")  # two hops of In-Reply-To
    assert deal(10) == ("OPP-2", "tag")
    assert deal(11) == ("OPP-2", "thread")  # only the Gmail thread id joins them
    # frank is no contact: Acme's open deal whose latest tagged activity is the newest
    assert deal(12) == ("OPP-2", "account") and deal(13) == ("OPP-2", "thread")
    assert deal(14) == ("OPP-1", "contact-role")
    assert acts["ical:m1@corpus.test"][3].count(("opportunity", "OPP-2", "contact-role")) == 1
    assert reference["open tasks"], "the corpus must exercise follow-up tasks"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(how=deliveries())
def test_any_delivery_order_gives_the_same_crm(database, how, reference, tmp_path, request):
    pg_base = request.getfixturevalue("pg_server") if database == "postgresql" else None
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        sessions = fresh_database(database, pg_base, Path(tmp))
        got = run(sessions, Path(tmp) / "home", how)
        sessions.kw["bind"].dispose()
    assert got["activities"] == reference["activities"]
    assert got["open tasks"] == reference["open tasks"]


def _deliver(sessions: sessionmaker[Session], home: Path, sources: dict[str, list[MailItem]]):
    world = MemoryWorld()
    box = world.mailbox("ana")
    box.batch_size = 1  # every item its own batch: the hardest cut
    box.mail.update(sources)
    report = sync_mailbox(
        sessions, recent(home), "ana", now=lambda: NOW, connector_factory=world.connector
    )
    assert report.ok, report.error
    return snapshot(sessions)["activities"]


def _chain() -> list[MailItem]:
    """Thirteen messages, each naming only its parent (In-Reply-To): the tag is 12 hops away."""
    first = mail(100, 0, DAN, (ANA,), "Seats [OPP-2]")
    rest = [
        mail(
            100 + i,
            i,
            ANA if i % 2 else DAN,
            (DAN if i % 2 else ANA,),
            "Re: Seats",
            reply_to=99 + i,
        )
        for i in range(1, 13)
    ]
    return [first, *rest]


def _copies() -> dict[str, list[MailItem]]:
    """One message seen twice: one copy's body is cut short (a preview), the other's is not."""
    full = mail(200, 0, ANA, (CARLA,), "Terms [OPP-1]", body="and for the upsell: [OPP-2]")
    cut = mail(200, 0, ANA, (CARLA,), "Terms [OPP-1]", body="and for the ups")
    return {"INBOX": [full], "Sent": [cut]}


SCENARIOS: dict[str, Any] = {
    "a long In-Reply-To chain": lambda: {"INBOX": _chain()},
    "candidates at two accounts": lambda: {
        "INBOX": [
            mail(300, 0, FRANK, (ANA,), "Intro", cc=(EVE,)),
            mail(301, 5, EVE, (ANA,), "Pilot [OPP-3]"),
            mail(302, 9, CARLA, (ANA,), "Renewal [OPP-1]"),
        ]
    },
    "copies with different text": _copies,
    "an unknown tag on an ambiguous mail": lambda: {
        "INBOX": [
            mail(400, 0, FRANK, (ANA,), "Invoice [OPP-999]"),
            mail(401, 5, DAN, (ANA,), "Seats [OPP-2]"),
        ]
    },
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_hard_cases_end_the_same_in_every_order(scenario, db_url, tmp_path, company_crm):
    results = []
    for n, order in enumerate(("oldest first", "newest first")):
        sessions = company_crm(tmp_path / f"{n}")
        sources = SCENARIOS[scenario]()
        if order == "newest first":
            sources = {k: list(reversed(v)) for k, v in reversed(list(sources.items()))}
        results.append(_deliver(sessions, tmp_path / f"home{n}", sources))
    assert results[0] == results[1]
    acts = results[0]

    def deals(n: int) -> list[tuple[str, str]]:
        links = acts[f"mid:{n}@corpus.test"][3]
        return sorted((t, r) for k, t, r in links if k == "opportunity")

    if scenario == "a long In-Reply-To chain":
        assert all(deals(100 + i) == [("OPP-2", "thread")] for i in range(1, 13))
    elif scenario == "candidates at two accounts":
        assert deals(300) == [("OPP-1", "account")]  # the latest tagged of its candidates
    elif scenario == "copies with different text":
        assert deals(200) == [("OPP-1", "tag"), ("OPP-2", "tag")]
    else:
        assert "tag OPP-999 names no opportunity" in (acts["mid:400@corpus.test"][2] or "")


@pytest.fixture
def company_crm(db_url: str, request: pytest.FixtureRequest):
    """A fresh CRM per call, on this test's database kind."""

    def make(root: Path) -> sessionmaker[Session]:
        root.mkdir(parents=True, exist_ok=True)
        pg_base = request.getfixturevalue("pg_server") if db_url.startswith("postgresql") else None
        return fresh_database("postgresql" if pg_base else "sqlite", pg_base, root)

    return make
