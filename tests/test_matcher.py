"""The matcher and exclusions, pure: an index in memory, items in, links with reasons out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.items import MailItem, Participant
from syncd.matching.addresses import normalize_address
from syncd.matching.exclusions import Excluded, exclusion, mail_exclusion
from syncd.matching.matcher import (
    ContactRef,
    CrmIndex,
    OpportunityRef,
    ThreadNode,
    UserRef,
    match,
    settle,
)

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def index(**kw: Any) -> CrmIndex:
    base: dict[str, Any] = dict(
        company_domains={"northwind.test"},
        users={"ana@northwind.test": UserRef(1, "ana@northwind.test", "Ana")},
        contacts={
            "carla@acme.test": ContactRef(10, "Carla", 100),
            "frank@gmail.com": ContactRef(11, "Frank", None),
        },
        account_domains={"acme.test": 100, "globex.test": 200, "gmail.com": 200},
        opportunities={
            1: OpportunityRef(1, "OPP-1", "Renewal", 100, "open", frozenset({10})),
            2: OpportunityRef(2, "OPP-2", "Upsell", 100, "open"),
            3: OpportunityRef(3, "OPP-3", "Pilot", 200, "won"),
        },
    )
    base.update(kw)
    return CrmIndex(**base)


def mail(sender: str, *to: str, subject: str = "hello", key: str = "mid:1@x", **kw) -> MailItem:
    parts = [Participant(sender, "", "from"), *(Participant(t, "", "to") for t in to)]
    return MailItem(
        key=key,
        provider_id="p",
        message_id=key[4:],
        subject=subject,
        sent_at=T0,
        participants=tuple(parts),
        thread_key=kw.pop("thread_key", key),
        **kw,
    )


def links(m):
    return {(lk.type, lk.target_id, lk.reason) for lk in m.links}


def test_contact_by_address_account_by_contact_and_opportunity_by_role():
    m = match(mail("ana@northwind.test", "carla@acme.test"), index())
    assert links(m) == {
        ("contact", 10, "address"),
        ("account", 100, "contact"),
        ("opportunity", 1, "contact-role"),
    }
    assert m.direction == "outbound"
    assert [(p.address, p.user_id, p.contact_id) for p in m.participants] == [
        ("ana@northwind.test", 1, None),
        ("carla@acme.test", None, 10),
    ]


def test_account_by_domain_and_parent_domain_never_by_free_mail():
    m = match(mail("x@eu.globex.test", "ana@northwind.test"), index())
    assert links(m) == {("account", 200, "domain")}
    assert m.note and m.note.startswith("only closed opportunities: OPP-3")
    free = match(mail("someone@gmail.com", "ana@northwind.test"), index())
    assert links(free) == set() and not free.has_crm_participant
    frank = match(mail("frank@gmail.com", "ana@northwind.test"), index())
    assert links(frank) == {("contact", 11, "address")}


def test_a_tag_wins_over_everything_and_unknown_tags_are_noted():
    m = match(mail("carla@acme.test", "ana@northwind.test", subject="Re: [opp-2] price"), index())
    assert ("opportunity", 2, "tag") in links(m)
    m = match(mail("carla@acme.test", "ana@northwind.test", subject="[OPP-99] x"), index())
    assert m.note == "tag OPP-99 names no opportunity"


def node(id_: int, minutes: int, tags=(), contacts=(), accounts=(100,), opp=None, note=None):
    return ThreadNode(
        id=id_,
        key=f"mid:{id_}@x",
        when=T0 + timedelta(minutes=minutes),
        tags=tuple(tags),
        contact_ids=tuple(contacts),
        account_ids=tuple(accounts),
        deals=(opp,) if opp else (),
        note=note,
    )


def wanted(nodes, idx=None) -> dict[int, tuple[int, str] | None]:
    """What each node ends with after settling (its one deal, or None)."""
    result = {n.id: n.deals for n in nodes}
    result.update({c.activity_id: c.deals for c in settle(nodes, idx or index())})
    assert all(len(deals) <= 1 for deals in result.values())
    return {k: deals[0] if deals else None for k, deals in result.items()}


def test_the_thread_links_a_reply_to_the_deal_of_its_conversation():
    # the tagged message decides, whatever the reply's contact-role would say
    tagged = node(1, 0, tags=(2,))
    reply = node(2, 5, contacts=(10,), opp=(1, "contact-role"))
    assert wanted([reply, tagged]) == {1: None, 2: (2, "thread")}
    # without a tag the first item's own deal is the thread's: carla has a role in OPP-1
    first = node(3, 0, contacts=(10,), opp=(1, "contact-role"))
    later = node(4, 9, contacts=(), opp=None, note="ambiguous opportunity, linked to ...")
    assert wanted([later, first]) == {3: (1, "contact-role"), 4: (1, "thread")}
    assert [c.note for c in settle([later, first], index()) if c.activity_id == 4] == [None]


def test_each_reply_follows_the_nearest_earlier_tag_of_its_thread():
    a = node(1, 0, tags=(1,))
    b = node(2, 10)
    c = node(3, 20, tags=(2,))
    d = node(4, 30)
    early = node(5, -5)  # before any tag: the first tag of the thread
    nodes = [d, c, b, a, early]
    assert wanted(nodes) == {1: None, 2: (1, "thread"), 3: None, 4: (2, "thread"), 5: (1, "thread")}


def test_most_recent_activity_decides_and_ties_are_ambiguous():
    idx = index(
        opportunities={
            1: OpportunityRef(1, "OPP-1", "Renewal", 100, "open"),
            2: OpportunityRef(2, "OPP-2", "Upsell", 100, "open"),
        },
        opportunity_policy="most-recent",
    )
    tie = match(mail("dan@acme.test", "ana@northwind.test"), idx)
    assert links(tie) == {("account", 100, "domain")}
    assert tie.note and "ambiguous" in tie.note and "OPP-1" in tie.note and "OPP-2" in tie.note
    idx.set_last_activity(2, T0 - timedelta(days=1))
    m = match(mail("dan@acme.test", "ana@northwind.test"), idx)
    assert ("opportunity", 2, "account") in links(m)


def test_exclusions():
    idx = index(blocked_domains={"lawfirm.test"})
    internal = mail("ana@northwind.test", "bob@northwind.test")
    assert exclusion(internal, match(internal, idx), idx) == Excluded("internal-only")
    blocked = mail("x@lawfirm.test", "carla@acme.test")
    why = exclusion(blocked, match(blocked, idx), idx)
    assert why == Excluded("blocklisted", "x@lawfirm.test")
    assert str(why) == "blocklisted: x@lawfirm.test"
    stranger = mail("x@unknown.test", "ana@northwind.test")
    assert exclusion(stranger, match(stranger, idx), idx) == Excluded("no CRM participant")
    assert mail_exclusion(mail("a@b.c", "d@e.f", auto_submitted="no"), []) is None
    junk = mail_exclusion(mail("a@b.c", "d@e.f", precedence="junk"), [])
    assert str(junk) == "bulk: Precedence junk" and junk == Excluded("bulk", "Precedence junk")
    assert str(mail_exclusion(mail("a@b.c", "d@e.f", labels=("Chat",)), ["chat"])) == (
        "excluded label: Chat"
    )


@given(st.emails())
def test_normalising_an_address_is_idempotent_and_case_blind(address):
    norm = normalize_address(address)
    assert norm == normalize_address(norm) == normalize_address(" " + address.upper() + " ")


def test_a_role_counts_unless_its_contact_moved_to_another_account():
    idx = index(
        contacts={
            "k@gmail.com": ContactRef(12, "Kim", None),  # no account: the role is evidence
            "moved@globex.test": ContactRef(13, "Mo", 200),  # now at Globex
        },
        opportunities={
            1: OpportunityRef(1, "OPP-1", "Renewal", 100, "open", frozenset({12, 13})),
            4: OpportunityRef(4, "OPP-4", "Pilot", 200, "open"),
        },
    )
    idx.contact_accounts.update({12: None, 13: 200})
    kim = match(mail("k@gmail.com", "ana@northwind.test", "eve@globex.test"), idx)
    assert ("opportunity", 1, "contact-role") in links(kim)
    mo = match(mail("moved@globex.test", "ana@northwind.test"), idx)
    assert ("opportunity", 4, "account") in links(mo)
    assert ("opportunity", 1, "contact-role") not in links(mo)
