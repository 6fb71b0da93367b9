"""Participants -> contacts, accounts and users; item -> opportunity. Pure: no I/O.

The sync job fills a :class:`CrmIndex` from the database for each batch, with just what
that batch can match (``syncd.crm.lookups``): the cost of matching does not grow with the
CRM. Every link carries its reason; for the opportunity they rank, strongest first:

==============  ================================================================
``address``     contact: a participant's address is one of the contact's addresses
``contact``     account: the account of a matched contact
``domain``      account: a participant's domain (or a parent domain) is the account's
``tag``         opportunity: ``[OPP-<external id>]`` in the subject or body
``thread``      opportunity: the deal of the item's conversation (see :func:`settle`)
``contact-role`` opportunity: the open opportunity a matched contact has a role in
``account``     opportunity: the open opportunity of a matched account
``manual``      any: an admin's link (``syncd link``); kept by every settling, and a
                manual deal link counts in its conversation as the item's own tag
==============  ================================================================

Results never depend on the order items arrive in. :func:`match` decides what an item
says by itself (participants, tags, and the deal its contacts and accounts point to);
:func:`settle` then decides the deal of each item of a conversation from all of that
conversation's stored items, so a reply stored before the message it answers is relinked
when that message arrives. Where several open deals are candidates, the one whose latest
*tagged* activity is the most recent wins: tags are facts of the items themselves, so
that evidence does not depend on order either (links made by weaker rules never count,
or the first guess would feed itself).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Literal, NamedTuple

from syncd.items import (
    Direction,
    Item,
    LinkReason,
    LinkType,
    MailItem,
    OpportunityStatus,
    Participant,
    ParticipantRole,
)
from syncd.matching.addresses import domain_of, is_free_mail
from syncd.matching.forgotten import is_forgotten

# how a deal is chosen where no tag names one (config: matching.opportunity)
OpportunityPolicy = Literal["most-recent", "single-open-only", "all-open"]


@dataclass(frozen=True)
class UserRef:
    id: int
    email: str
    name: str


# CRM records as tuples rather than frozen dataclasses: a batch loads thousands of them
class ContactRef(NamedTuple):
    id: int
    name: str
    account_id: int | None


class OpportunityRef(NamedTuple):
    id: int
    external_id: str
    name: str
    account_id: int
    status: OpportunityStatus
    contact_ids: frozenset[int] = frozenset()


@dataclass
class CrmIndex:
    """What the matcher knows of the CRM: the users, the company's domains and the
    exclusions whole; of the contacts, account domains and opportunities, the part one batch
    can match (filled by ``syncd.crm.lookups``). Every look-up is by key: opportunities are
    indexed by external id, by account and by contact with a role, so the cost of matching
    an item does not depend on the size of the CRM."""

    company_domains: set[str] = field(default_factory=set)
    users: dict[str, UserRef] = field(default_factory=dict)
    contacts: dict[str, ContactRef] = field(default_factory=dict)
    account_domains: dict[str, int] = field(default_factory=dict)
    opportunities: dict[int, OpportunityRef] = field(default_factory=dict)
    # opportunity -> the time of its latest tagged activity (the "most recent" evidence)
    last_activity: dict[int, datetime] = field(default_factory=dict)
    blocked_addresses: set[str] = field(default_factory=set)
    blocked_domains: set[str] = field(default_factory=set)
    tag_prefix: str = "OPP-"
    # the keys of this batch's items that an admin deleted (syncd activity delete)
    dropped: set[str] = field(default_factory=set)
    # whether any item was deleted when the pass began (else no batch looks its keys up)
    any_dropped: bool = False
    # digests of the addresses and domains an admin had forgotten (syncd.crm.forget)
    forgotten: frozenset[str] = frozenset()
    # how a deal is chosen where no tag names one (matching.opportunity): see weak_choice
    opportunity_policy: OpportunityPolicy = "single-open-only"

    def __post_init__(self) -> None:
        self._by_external: dict[str, OpportunityRef] = {}
        self._by_account: dict[int, list[OpportunityRef]] = {}
        self._by_contact: dict[int, list[OpportunityRef]] = {}
        # what syncd.crm.lookups has looked up already, found or not: addresses, domains,
        # tag names, and the accounts and contacts whose deals are all in the index
        self.looked_up_addresses: set[str] = set()
        self.looked_up_domains: set[str] = set()
        self.looked_up_tags: set[str] = set()
        self.deals_of_accounts: set[int] = set()
        self.deals_of_contacts: set[int] = set()
        # the domains of the matched contacts' accounts (an account with none shares its
        # parent's: its people write from another account's domain)
        self.domains_of_accounts: dict[int, frozenset[str]] = {}
        # contact id -> its account, for the contacts looked up (a role's evidence)
        self.contact_accounts: dict[int, int | None] = {}
        self._internal: dict[str, bool] = {}  # by domain
        self._blocked: dict[str, bool] = {}  # by domain
        self._tag_re = _tag_pattern(self.tag_prefix)
        for opp in list(self.opportunities.values()):
            self._index_opportunity(opp)

    def for_batch(self) -> CrmIndex:
        """An index with this one's users, domains and exclusions, and no CRM records yet."""
        return CrmIndex(
            company_domains=self.company_domains,
            users=self.users,
            blocked_addresses=self.blocked_addresses,
            blocked_domains=self.blocked_domains,
            tag_prefix=self.tag_prefix,
            forgotten=self.forgotten,
            any_dropped=self.any_dropped,
            opportunity_policy=self.opportunity_policy,
        )

    def add_opportunity(self, opp: OpportunityRef, last_tagged: datetime | None) -> None:
        """Add a deal (once), with the time of its latest tagged activity."""
        if opp.id in self.opportunities:
            return
        self.opportunities[opp.id] = opp
        if last_tagged is not None:
            self.last_activity[opp.id] = last_tagged
        self._index_opportunity(opp)

    def _index_opportunity(self, opp: OpportunityRef) -> None:
        external = opp.external_id.lower()
        known = self._by_external.get(external)
        if known is None or opp.id < known.id:  # the same id in another case: the oldest
            self._by_external[external] = opp
        self._by_account.setdefault(opp.account_id, []).append(opp)
        for contact_id in opp.contact_ids:
            self._by_contact.setdefault(contact_id, []).append(opp)

    def related(self, contacts: set[int], accounts: set[int]) -> list[OpportunityRef]:
        """The deals of these accounts, or in which one of these contacts has a role, by id."""
        by_account, by_contact = self._by_account, self._by_contact
        lists = [by_account[a] for a in accounts if a in by_account]
        lists += [by_contact[c] for c in contacts if c in by_contact]
        if len(lists) == 1:  # one account's deals, most often
            return sorted(lists[0], key=attrgetter("id"))
        found = {o.id: o for deals in lists for o in deals}
        return [found[k] for k in sorted(found)]

    def opportunity_by_tag(self, tag: str) -> OpportunityRef | None:
        """``[OPP-42]`` names the opportunity whose external id is ``42`` or ``OPP-42``."""
        bare, prefixed = self.tag_names(tag)
        return self._by_external.get(bare) or self._by_external.get(prefixed)

    def tags(self, text: str) -> list[str]:
        return self._tag_re.findall(text)

    def tag_names(self, tag: str) -> tuple[str, str]:
        """The external ids (lower case) a tag may name: ``42`` and ``opp-42``."""
        return tag.lower(), (self.tag_prefix + tag).lower()

    def set_last_activity(self, opportunity_id: int, when: datetime | None) -> None:
        """The time of a deal's latest tagged activity, as now stored (None: it has none)."""
        if when is None:
            self.last_activity.pop(opportunity_id, None)
        else:
            self.last_activity[opportunity_id] = when

    def held(self) -> int:
        """How many CRM records and look-ups the index holds (its memory, roughly)."""
        looked_up = self.looked_up_addresses, self.looked_up_domains, self.looked_up_tags
        return sum(len(s) for s in looked_up) + len(self.opportunities)

    def is_internal(self, address: str) -> bool:
        return address in self.users or _in_domains_memo(
            domain_of(address), self.company_domains, self._internal
        )

    def account_for_domain(self, domain: str) -> int | None:
        if is_free_mail(domain):
            return None
        for candidate in parents(domain):
            if candidate in self.account_domains:
                return self.account_domains[candidate]
        return None

    def is_blocked(self, address: str) -> bool:
        """On the exclusion lists, or forgotten (``syncd forget``)."""
        return (
            address in self.blocked_addresses
            or _in_domains_memo(domain_of(address), self.blocked_domains, self._blocked)
            or (bool(self.forgotten) and is_forgotten(address, self.forgotten))
        )


@functools.lru_cache(maxsize=16)
def _tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(r"\[" + re.escape(prefix) + r"([\w.\-]+)\]", re.I)


@functools.lru_cache(maxsize=65536)
def parents(domain: str) -> tuple[str, ...]:
    """``eu.mail.acme.test`` -> (itself, ``mail.acme.test``, ``acme.test``)."""
    labels = domain.split(".")
    return tuple(".".join(labels[i:]) for i in range(max(1, len(labels) - 1)))


def _in_domains(domain: str, domains: set[str]) -> bool:
    return any(d in domains for d in parents(domain))


def _in_domains_memo(domain: str, domains: set[str], memo: dict[str, bool]) -> bool:
    """:func:`_in_domains`, remembered by domain (asked for every participant)."""
    known = memo.get(domain)
    if known is None:
        known = memo[domain] = _in_domains(domain, domains)
    return known


def _matched_domain(domain: str, index: CrmIndex) -> str:
    """The domain (or parent) of an address that an account has, else the domain itself."""
    return next((d for d in parents(domain) if d in index.account_domains), domain)


def _under(domains: frozenset[str], parent: str) -> bool:
    """Whether one of these domains is below ``parent``."""
    return any(d.endswith("." + parent) for d in domains)


# tuples rather than frozen dataclasses: several are made for every item (a third of the
# matcher's time went into frozen dataclasses' __init__, bench/matching_scale.py)
class ParticipantMatch(NamedTuple):
    address: str
    name: str
    role: ParticipantRole
    contact_id: int | None = None
    user_id: int | None = None


class LinkDecision(NamedTuple):
    type: LinkType
    target_id: int
    reason: LinkReason


# the deals chosen by a weaker rule (one, or every open one under all-open; none), and a
# note saying why none was (or None)
Choice = tuple[tuple[LinkDecision, ...], str | None]
DealLink = tuple[int, LinkReason]  # an activity's deal, and the reason it is linked to it
Deals = tuple[DealLink, ...]  # an activity's deals chosen by weaker rules, by id


@dataclass(frozen=True)
class Match:
    participants: tuple[ParticipantMatch, ...]
    links: tuple[LinkDecision, ...]
    direction: Direction
    note: str | None = None

    @property
    def opportunity_id(self) -> int | None:
        return next((lk.target_id for lk in self.links if lk.type == "opportunity"), None)

    @property
    def has_crm_participant(self) -> bool:
        return any(lk.type in ("contact", "account") for lk in self.links)


def _direction(item: Item, index: CrmIndex) -> Direction:
    first = item.sender if isinstance(item, MailItem) else item.organizer
    if all(index.is_internal(p.address) for p in item.participants):
        return "internal"
    if first is not None and index.is_internal(first.address):
        return "outbound"
    return "inbound"


def _most_recent(candidates: list[OpportunityRef], index: CrmIndex) -> list[OpportunityRef]:
    """The candidates whose last activity is the most recent (more than one is a tie)."""
    if len(candidates) == 1:
        return candidates
    floor = datetime.min.replace(tzinfo=None)
    last = index.last_activity
    times = [(t.replace(tzinfo=None) if (t := last.get(o.id)) else floor) for o in candidates]
    best = max(times)
    return [o for o, t in zip(candidates, times, strict=True) if t == best]


def _names(opps: list[OpportunityRef]) -> str:
    return ", ".join(f"{o.external_id} ({o.name})" for o in sorted(opps, key=lambda o: o.id))


def tag_text(item: Item) -> str:
    """Where an item's ``[OPP-n]`` tags are read: its subject and its body or description."""
    return item.subject + "\n" + (item.body if isinstance(item, MailItem) else item.description)


def tagged_opportunities(item: Item, index: CrmIndex) -> tuple[list[int], str | None]:
    """The deals an item names by tag, and a note for tags that name none."""
    tagged, unknown = [], []
    for tag in dict.fromkeys(t.lower() for t in index.tags(tag_text(item))):
        opp = index.opportunity_by_tag(tag)
        (tagged.append(opp.id) if opp else unknown.append(tag))
    note = f"tag {index.tag_prefix}{', '.join(unknown)} names no opportunity" if unknown else None
    return list(dict.fromkeys(tagged)), note


def weak_choice(index: CrmIndex, contact_ids: Iterable[int], account_ids: Iterable[int]) -> Choice:
    """The deals the matched contacts and accounts point to, or a note saying why there is
    none (a tie, or only closed deals). The candidates are the open deals in which a matched
    contact has a role (``contact-role``), else the open deals of the matched accounts
    (``account``); of them, ``index.opportunity_policy`` takes:

    - ``most-recent``: the one whose latest tagged activity is the most recent (a tie: none);
    - ``single-open-only``: the only one (several: none);
    - ``all-open``: every one.
    """
    contacts, accounts = set(contact_ids), set(account_ids)
    if not contacts and not accounts:
        return (), None
    related = index.related(contacts, accounts)
    # a role a person kept in another company's deal (they moved: their contact is at
    # another account now) is no evidence; a role of a contact with no account, or at the
    # deal's own account, is
    known = index.contact_accounts
    related = [
        o
        for o in related
        if o.account_id in accounts
        or any(known.get(c) in (None, o.account_id) for c in o.contact_ids & contacts)
    ]
    open_ = [o for o in related if o.status == "open"]
    with_role = [o for o in open_ if o.contact_ids & contacts]
    ranked: tuple[tuple[list[OpportunityRef], LinkReason], ...] = (
        (with_role, "contact-role"),
        (open_, "account"),
    )
    for candidates, reason in ranked:
        if not candidates:
            continue
        if index.opportunity_policy == "all-open":
            return tuple(LinkDecision("opportunity", o.id, reason) for o in candidates), None
        if index.opportunity_policy == "single-open-only":
            return _only_one(candidates, reason, " (matching.opportunity = single-open-only)")
        return _only_one(_most_recent(candidates, index), reason, "")
    if related:
        return (), f"only closed opportunities: {_names(related)}"
    return (), None


def _only_one(candidates: list[OpportunityRef], reason: LinkReason, why: str) -> Choice:
    """The one candidate, or a note naming them all (a tie is never guessed)."""
    if len(candidates) == 1:
        return (LinkDecision("opportunity", candidates[0].id, reason),), None
    return (), f"ambiguous opportunity, linked to the account only: {_names(candidates)}{why}"


DERIVED_NOTES = ("ambiguous opportunity", "only closed opportunities")


class ThreadNode(NamedTuple):
    """One stored activity of a conversation, as :func:`settle` needs it (a tuple: one is
    made for every activity of every conversation a batch touches)."""

    id: int
    key: str
    when: datetime
    tags: tuple[int, ...]  # opportunities it names by tag
    contact_ids: tuple[int, ...]
    account_ids: tuple[int, ...]
    deals: Deals  # its current deal links made by weaker rules than a tag, by id
    note: str | None


@dataclass(frozen=True)
class Relink:
    """What :func:`settle` wants for one activity: its deal links made by weaker rules than
    a tag (none: empty) and its note."""

    activity_id: int
    deals: Deals
    note: str | None
    deal_changed: bool = True
    note_changed: bool = True


def _order(node: ThreadNode) -> tuple[datetime, str]:
    return (node.when, node.key)


def settle(nodes: Iterable[ThreadNode], index: CrmIndex) -> list[Relink]:
    """Decide the deal of every item of one conversation from all of its items.

    A tagged item keeps its tags. Every other item takes the deal of the nearest tagged
    item before it (else the first tagged item after it), by ``thread``. A conversation
    without tags takes the deal its first item points to by itself (``contact-role`` or
    ``account``): that item keeps its own reason, the others link by ``thread``. The result
    depends on the set of items only, never on the order they arrived in. Returns the
    changes to make.
    """
    ordered = sorted(nodes, key=_order)
    tagged = [n for n in ordered if n.tags]
    own = {n.id: weak_choice(index, n.contact_ids, n.account_ids) for n in ordered}
    anchor = None if tagged else _anchor(ordered, own)
    changes: list[Relink] = []
    for n in ordered:
        want, note = _wanted(n, tagged, anchor, own[n.id])
        if want != n.deals or note != n.note:
            changes.append(Relink(n.id, want, note, want != n.deals, note != n.note))
    return changes


def _anchor(
    ordered: list[ThreadNode], own: dict[int, Choice]
) -> tuple[int, tuple[int, ...]] | None:
    """In a conversation without tags: the first item that points to a deal by itself, and
    its deals (activity id, opportunity ids)."""
    for n in ordered:
        decisions = own[n.id][0]
        if decisions:
            return n.id, tuple(sorted(d.target_id for d in decisions))
    return None


def _wanted(
    n: ThreadNode,
    tagged: list[ThreadNode],
    anchor: tuple[int, tuple[int, ...]] | None,
    own: Choice,
) -> tuple[Deals, str | None]:
    """The deal links and note one item of a conversation should have (see :func:`settle`)."""
    if n.tags:
        return (), item_facts(n.note)  # its tag links are its deal
    if tagged:
        before = [t for t in tagged if _order(t) <= _order(n)]
        source = before[-1] if before else tagged[0]
        return ((min(source.tags), "thread"),), item_facts(n.note)
    if anchor is not None and n.id != anchor[0]:
        return tuple((deal, "thread") for deal in anchor[1]), item_facts(n.note)
    decisions, weak_note = own
    want = tuple(sorted((d.target_id, d.reason) for d in decisions))
    return want, join_notes(weak_note, item_facts(n.note))


NOTE_SEPARATOR = "; "


def join_notes(*parts: str | None) -> str | None:
    return NOTE_SEPARATOR.join(p for p in parts if p) or None


def item_facts(note: str | None) -> str | None:
    """The parts of a note that are facts of the item (an unknown tag), not of its deal."""
    if not note:
        return None
    return join_notes(*(p for p in note.split(NOTE_SEPARATOR) if not p.startswith(DERIVED_NOTES)))


def match(item: Item, index: CrmIndex) -> Match:
    """Link an item's participants to users, contacts and accounts, and the item to a deal."""
    found = _Links()
    participants = tuple(found.participant(p, index) for p in item.participants)
    tagged, note = tagged_opportunities(item, index)
    for opp_id in tagged:
        found.add("opportunity", opp_id, "tag")
    if not tagged:
        decisions, weak_note = weak_choice(index, found.contact_ids, found.account_ids)
        for decision in decisions:
            found.add(decision.type, decision.target_id, decision.reason)
        note = join_notes(weak_note, note)
    return Match(participants, tuple(found.links), _direction(item, index), note)


@dataclass
class _Links:
    """The links :func:`match` makes for one item (each once), and the contacts and
    accounts its participants matched, in the order found."""

    links: list[LinkDecision] = field(default_factory=list)
    contact_ids: list[int] = field(default_factory=list)
    account_ids: list[int] = field(default_factory=list)
    made: set[tuple[LinkType, int]] = field(default_factory=set)

    def add(self, type_: LinkType, target: int, reason: LinkReason) -> None:
        if (type_, target) not in self.made:
            self.made.add((type_, target))
            self.links.append(LinkDecision(type_, target, reason))

    def participant(self, p: Participant, index: CrmIndex) -> ParticipantMatch:
        """Match one participant: a user (or another internal address), else a contact
        (``address``) and its account (``contact``), else the account of its domain. An
        address at another account's domain speaks for that account (``domain``): the mail a
        person sent from a former employer's address, or from a second company's; not when
        the contact's account has no domain of its own, or its domain is under the address's
        (a subsidiary whose people write from the parent's domain)."""
        user = index.users.get(p.address)
        if user is not None or index.is_internal(p.address):
            return ParticipantMatch(p.address, p.name, p.role, user_id=user.id if user else None)
        contact = index.contacts.get(p.address)
        if contact is not None:
            self.add("contact", contact.id, "address")
            self.contact_ids.append(contact.id)
        domain = domain_of(p.address)
        by_domain = index.account_for_domain(domain)
        if contact is not None and contact.account_id is not None:
            own = index.domains_of_accounts.get(contact.account_id, frozenset())
            if (
                by_domain is not None
                and by_domain != contact.account_id
                and own
                and not any(d in own for d in parents(domain))
                and not _under(own, _matched_domain(domain, index))  # a subsidiary's parent
            ):
                self._account(by_domain, "domain")
            else:
                self._account(contact.account_id, "contact")
        elif by_domain is not None:
            self._account(by_domain, "domain")
        return ParticipantMatch(
            p.address, p.name, p.role, contact_id=contact.id if contact else None
        )

    def _account(self, account_id: int, reason: LinkReason) -> None:
        self.add("account", account_id, reason)
        self.account_ids.append(account_id)
