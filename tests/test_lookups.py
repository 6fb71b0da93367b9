"""The matcher's index is filled per batch from the database (syncd.crm.lookups): a batch's
index holds what its items can match and nothing else, every deal's stored evidence
(``last_tagged_at``) follows what is stored, and whether a newly tagged activity reorders
the open deals is decided by the database as the old whole-CRM scan decided it.
SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from syncd import decide as decide_module
from syncd.config import Settings
from syncd.crm import lookups
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.crm.loader import load_csv
from syncd.crm.models import Account, Activity, Link, Opportunity, User
from syncd.decide import PassIndex, decide
from syncd.demo import load_company
from syncd.items import MailItem, Participant

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def crm(root: Path, extra_contacts: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    contacts = ["emails,name,account", "carla@acme.test,Carla,acme.test"]
    contacts += ["dan@acme.test,Dan,acme.test", "eve@globex.test,Eve,globex.test"]
    contacts += [f"p{i}@initech.test,P{i},initech.test" for i in range(extra_contacts)]
    files = {
        "users": ["email,name", "ana@northwind.test,Ana"],
        "accounts": [
            "name,domains",
            "Acme,acme.test",
            "Globex,globex.test",
            "Initech,initech.test",
        ],
        "contacts": contacts,
        "opportunities": [
            "external_id,name,account,owner,contacts",
            "OPP-1,Renewal,acme.test,ana@northwind.test,carla@acme.test",
            "OPP-2,Upsell,acme.test,ana@northwind.test,dan@acme.test",
            "OPP-3,Pilot,globex.test,ana@northwind.test,",
            "OPP-4,Other,initech.test,ana@northwind.test,",
            "Q-7,Quiet,globex.test,ana@northwind.test,",
            "Été-1,Summer,initech.test,ana@northwind.test,",
        ],
    }
    for kind, rows in files.items():
        (root / f"{kind}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def company(sessions: sessionmaker[Session], tmp_path: Path, extra_contacts: int = 0) -> PassIndex:
    """The test CRM loaded, and a pass's index on it (nothing read yet)."""
    load_company(sessions, crm(tmp_path / "crm", extra_contacts))
    return PassIndex(sessions, Settings(home=tmp_path / "home"))


def mail(n: int, sender: str, *to: str, subject: str = "hello", minutes: int = 0) -> MailItem:
    people = (Participant(sender, "", "from"), *(Participant(a, "", "to") for a in to))
    return MailItem(
        key=f"mid:{n}@x",
        provider_id=str(n),
        message_id=f"{n}@x",
        subject=subject,
        sent_at=T0 + timedelta(minutes=minutes),
        participants=people,
        thread_key=f"mid:{n}@x",
    )


def ids_of(session: Session, *external: str) -> set[int]:
    return set(session.scalars(select(Opportunity.id).where(Opportunity.external_id.in_(external))))


def test_a_batch_index_holds_what_its_items_can_match_and_nothing_else(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    index = company(sessions, tmp_path, extra_contacts=50)
    items = [
        mail(1, "ana@northwind.test", "carla@acme.test"),  # a contact: her account's deals
        mail(2, "someone@eu.globex.test", "ana@northwind.test"),  # a parent domain
        mail(
            3,
            "ana@northwind.test",
            "x@gmail.com",
            "eve@globex.test",
            subject="see [opp-q-7] [OPP-9] [OPP-ÉTÉ-1]",
        ),
    ]
    got = index.load(items)
    assert set(got.contacts) == {"carla@acme.test", "eve@globex.test"}  # not the 50 others
    assert set(got.account_domains) == {"acme.test", "globex.test"}
    with sessions() as session:
        # Été-1 by a tag in other capitals: SQL's lower() folds ASCII only
        assert set(got.opportunities) == ids_of(session, "OPP-1", "OPP-2", "OPP-3", "Q-7", "Été-1")
    decisions = decide(items, got, index.settings, Counter())
    by_key = {d.item.key: {(lk.type, lk.reason) for lk in d.match.links} for d in decisions}
    assert by_key["mid:1@x"] == {
        ("contact", "address"),
        ("account", "contact"),
        ("opportunity", "contact-role"),
    }
    assert ("opportunity", "tag") in by_key["mid:3@x"]  # [opp-q-7] names Q-7, case-blind


def test_a_deal_reached_only_by_a_contacts_role_is_read_for_the_batch(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Zoe has no account (she writes from free mail) and a role in a deal of Initech's:
    # no account of the batch leads to that deal, only her role does
    root = crm(tmp_path / "crm")
    with (root / "contacts.csv").open("a", encoding="utf-8") as f:
        f.write("zoe@gmail.com,Zoe,\n")
    with (root / "opportunities.csv").open("a", encoding="utf-8") as f:
        f.write("OPP-5,Advisory,initech.test,ana@northwind.test,zoe@gmail.com\n")
    load_company(sessions, root)
    index = PassIndex(sessions, Settings(home=tmp_path / "home"))
    items = [mail(1, "ana@northwind.test", "zoe@gmail.com", "carla@acme.test")]
    got = index.load(items)
    with sessions() as session:
        # Acme's deals by Carla's account (OPP-1 also by her role), OPP-5 by Zoe's role only
        assert set(got.opportunities) == ids_of(session, "OPP-1", "OPP-2", "OPP-5")
        advisory = ids_of(session, "OPP-5")
    (decision,) = decide(items, got, index.settings, Counter())
    deals = {(lk.target_id, lk.reason) for lk in decision.match.links if lk.type == "opportunity"}
    # two deals with a role of the batch's contacts: a tie, no deal guessed (the note says so)
    assert deals == set()
    assert "OPP-5 (Advisory)" in (decision.match.note or "")
    only_zoe = [mail(2, "ana@northwind.test", "zoe@gmail.com")]
    (alone,) = decide(only_zoe, index.load(only_zoe), index.settings, Counter())
    deals = {(lk.target_id, lk.reason) for lk in alone.match.links if lk.type == "opportunity"}
    assert deals == {(advisory.pop(), "contact-role")}


def test_last_tagged_at_follows_what_is_stored_and_a_failed_batch_teaches_nothing(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from syncd.crm.recorder import Decision
    from syncd.matching.matcher import match
    from syncd.settle import settle_touched

    index = company(sessions, tmp_path)
    later = mail(1, "ana@northwind.test", "carla@acme.test", subject="[OPP-1]", minutes=60)
    earlier = mail(2, "ana@northwind.test", "carla@acme.test", subject="[OPP-1]", minutes=5)

    def last(session: Session) -> datetime | None:
        return session.scalar(
            select(Opportunity.last_tagged_at).where(Opportunity.external_id == "OPP-1")
        )

    for item in (later, earlier):  # newest first, as providers deliver
        got = index.load([item])
        with sessions.begin() as session:
            decisions = [Decision(item, match(item, got))]
            _record(session, decisions)
            settle_touched(session, got, decisions)
    with sessions() as session:
        assert last(session) == later.sent_at
    newest = mail(3, "ana@northwind.test", "carla@acme.test", subject="[OPP-1]", minutes=600)
    got = index.load([newest])
    session = sessions()
    try:
        with session.begin():
            decisions = [Decision(newest, match(newest, got))]
            _record(session, decisions)
            settle_touched(session, got, decisions)
            raise RuntimeError("the batch's transaction fails")
    except RuntimeError:
        pass
    finally:
        session.close()
    with sessions() as session:
        assert last(session) == later.sent_at


def test_a_long_pass_reads_the_crm_again_once_its_index_is_view_seconds_old(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = company(sessions, tmp_path)
    clock = [time.monotonic()]  # the index reads the CRM at its first load
    monkeypatch.setattr(decide_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    item = mail(1, "frank@initech.test", "ana@northwind.test")
    assert "frank@initech.test" not in index.load([item]).contacts
    path = tmp_path / "frank.csv"
    path.write_text("emails,name,account\nfrank@initech.test,Frank,initech.test\n")
    with sessions.begin() as session:
        load_csv(session, "contacts", path)
    clock[0] += lookups.VIEW_SECONDS - 1  # the pass's view of the CRM is kept this long
    assert "frank@initech.test" not in index.load([item]).contacts
    clock[0] += 2  # and read again past it
    assert index.load([item]).contacts["frank@initech.test"].name == "Frank"


def test_the_migration_fills_last_tagged_at_from_stored_tags(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0006")
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.execute(insert(User), [{"id": 1, "email": "ana@northwind.test", "name": "Ana"}])
        session.execute(insert(Account), [{"id": 1, "name": "Acme"}])
        session.execute(
            insert(Opportunity),
            [
                {
                    "id": i,
                    "external_id": f"OPP-{i}",
                    "name": "x",
                    "account_id": 1,
                    "owner_id": 1,
                    "status": "open",
                }
                for i in (1, 2)
            ],
        )
        for n, (reason, minutes) in enumerate((("tag", 5), ("tag", 50), ("account", 500))):
            session.execute(
                insert(Activity),
                [
                    {
                        "id": n + 1,
                        "key": f"k{n}",
                        "kind": "email",
                        "subject": "s",
                        "occurred_at": T0 + timedelta(minutes=minutes),
                        "direction": "outbound",
                        "thread_key": f"k{n}",
                        "status": "confirmed",
                        "created_at": T0,
                    }
                ],
            )
            session.execute(
                insert(Link),
                [{"activity_id": n + 1, "type": "opportunity", "target_id": 1, "reason": reason}],
            )
    upgrade(engine)
    with sessions() as session:
        got = dict(session.execute(select(Opportunity.id, Opportunity.last_tagged_at)).all())
    assert got == {1: T0 + timedelta(minutes=50), 2: None}
    engine.dispose()


def _reranks_by_scan(
    times: dict[int, datetime | None],
    statuses: dict[int, str],
    opp: int,
    before: datetime | None,
    after: datetime | None,
) -> bool:
    """The rule over the whole CRM in memory (the reference): another open deal that was
    behind or tied and is now ahead or tied, or the other way round (None is behind all)."""

    def key(t: datetime | None) -> float:
        return float("-inf") if t is None else t.timestamp()

    for other, theirs in times.items():
        if other == opp or statuses[other] != "open" or key(before) == key(after):
            continue
        up = key(before) <= key(theirs) <= key(after)
        down = key(after) <= key(theirs) <= key(before)
        if up or down:
            return True
    return False


_hours = st.one_of(st.none(), st.integers(0, 6))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.lists(
        st.tuples(_hours, st.sampled_from(["open", "won", "lost"])), min_size=1, max_size=6
    ),
    before=_hours,
    after=_hours,
)
def test_reranking_is_decided_by_the_database_as_by_a_scan_of_every_deal(
    sessions: sessionmaker[Session], tmp_path: Path, data, before, after
) -> None:
    with sessions.begin() as session:
        if session.scalar(select(User.id)) is None:
            session.execute(insert(User), [{"id": 1, "email": "a@n.test", "name": "A"}])
            session.execute(insert(Account), [{"id": 1, "name": "Acme"}])
        session.execute(delete(Opportunity))
        times: dict[int, datetime | None] = {}
        statuses: dict[int, str] = {}
        for i, (hours, status) in enumerate(data, start=1):
            times[i] = None if hours is None else T0 + timedelta(hours=hours)
            statuses[i] = status
            session.execute(
                insert(Opportunity),
                [
                    {
                        "id": i,
                        "external_id": f"O-{i}",
                        "name": "x",
                        "account_id": 1,
                        "owner_id": 1,
                        "status": status,
                        "last_tagged_at": times[i],
                    }
                ],
            )
    old = None if before is None else T0 + timedelta(hours=before, minutes=30)
    new = None if after is None else T0 + timedelta(hours=after, minutes=30)
    with sessions.begin() as session:
        session.execute(update(Opportunity).where(Opportunity.id == 1).values(last_tagged_at=new))
        got = lookups.reranks(session, 1, old, new)
    assert got == _reranks_by_scan(times, statuses, 1, old, new)


def test_a_meeting_moved_earlier_lowers_its_deal_evidence(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from syncd.crm.recorder import Decision
    from syncd.items import MeetingItem
    from syncd.matching.matcher import match
    from syncd.settle import settle_touched

    index = company(sessions, tmp_path)

    def meeting(hours: int) -> MeetingItem:
        start = T0 + timedelta(hours=hours)
        return MeetingItem(
            key="ical:m1",
            uid="m1",
            recurrence_id=None,
            provider_id="m1",
            subject="Review [OPP-1]",
            start=start,
            end=start + timedelta(hours=1),
            participants=(
                Participant("ana@northwind.test", "", "organizer"),
                Participant("carla@acme.test", "", "attendee"),
            ),
        )

    for hours in (48, 2):  # stored, then rescheduled two days earlier
        item = meeting(hours)
        got = index.load([item])
        decisions = [Decision(item, match(item, got))]
        with sessions.begin() as session:
            _record(session, decisions)
            settle_touched(session, got, decisions)
    with sessions() as session:
        stored = session.scalar(
            select(Opportunity.last_tagged_at).where(Opportunity.external_id == "OPP-1")
        )
    assert stored == T0 + timedelta(hours=2)


def _record(session: Session, decisions: list[Any]) -> Any:
    """Store a batch as the sync job's recorder does (settling is the caller's); returns
    what it stored (``BatchResult``)."""
    from syncd.crm.recorder import record_batch

    return record_batch(
        session,
        mailbox_id=_mailbox(session),
        source="test",
        decisions=decisions,
        quarantined=[],
        cursor=None,
        body_policy="snippet",
        now=T0,
    )


def _mailbox(session: Session) -> int:
    from syncd.crm import mailboxes
    from syncd.crm.models import Mailbox

    found = session.scalar(select(Mailbox.id))
    if found is not None:
        return found
    user_id = session.scalar(select(User.id))
    assert user_id is not None
    mailboxes.add_mailbox(session, name="ana", kind="local", user_id=user_id, settings={})
    session.flush()
    mailbox_id = session.scalar(select(Mailbox.id))
    assert mailbox_id is not None
    return mailbox_id


def test_a_pass_index_past_its_bound_starts_over_and_decides_the_same(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch
) -> None:
    import syncd.decide

    load_company(sessions, crm(tmp_path / "crm", extra_contacts=20))
    batches = [
        [
            mail(
                10 * b + i,
                "ana@northwind.test",
                f"p{(b * 7 + i) % 20}@initech.test",
                "carla@acme.test" if i % 2 else "eve@globex.test",
                subject="[OPP-3]" if i == 3 else "hi",
            )
            for i in range(5)
        ]
        for b in range(4)
    ]

    def links(index: PassIndex) -> list[tuple[str, set[tuple[str, int, str]]]]:
        out: list[tuple[str, set[tuple[str, int, str]]]] = []
        for items in batches:
            for d in decide(items, index.load(items), index.settings, Counter()):
                out.append(
                    (d.item.key, {(lk.type, lk.target_id, lk.reason) for lk in d.match.links})
                )
        return out

    settings_ = Settings(home=tmp_path / "home")
    whole = PassIndex(sessions, settings_)
    expected = links(whole)
    assert whole.get().held() > 10  # it kept what every batch looked up
    monkeypatch.setattr(syncd.decide, "INDEX_HELD", 3)
    bounded = PassIndex(sessions, settings_)
    assert links(bounded) == expected
    assert bounded.get().held() < whole.get().held()  # started over from the base
