"""Participants -> contacts, accounts and users; item -> opportunity. Pure: no I/O.

The sync job builds a :class:`CrmIndex` from the database once per pass and tells it what
each recorded batch linked (:meth:`CrmIndex.remember`), so that the thread rule and the
"most recent activity" rule see earlier items of the same pass.

Every link carries its reason:

==============  ================================================================
``address``     contact: a participant's address is one of the contact's addresses
``contact``     account: the account of a matched contact
``domain``      account: a participant's domain (or a parent domain) is the account's
``tag``         opportunity: ``[OPP-<external id>]`` in the subject or body
``thread``      opportunity: an earlier item of the same thread is linked to it
``contact-role`` opportunity: the open opportunity a matched contact has a role in
``account``     opportunity: the open opportunity of a matched account with the most
                recent activity
==============  ================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from syncd.items import Item, MailItem, MeetingItem
from syncd.matching.addresses import domain_of, is_free_mail


@dataclass(frozen=True)
class UserRef:
    id: int
    email: str
    name: str


@dataclass(frozen=True)
class ContactRef:
    id: int
    name: str
    account_id: int | None


@dataclass(frozen=True)
class AccountRef:
    id: int
    name: str


@dataclass(frozen=True)
class OpportunityRef:
    id: int
    external_id: str
    name: str
    account_id: int
    status: str
    contact_ids: frozenset[int] = frozenset()


@dataclass
class CrmIndex:
    """What the matcher knows of the CRM: built by ``syncd.crm.queries.load_index``."""

    company_domains: set[str] = field(default_factory=set)
    users: dict[str, UserRef] = field(default_factory=dict)
    contacts: dict[str, ContactRef] = field(default_factory=dict)
    accounts: dict[int, AccountRef] = field(default_factory=dict)
    account_domains: dict[str, int] = field(default_factory=dict)
    opportunities: dict[int, OpportunityRef] = field(default_factory=dict)
    last_activity: dict[int, datetime] = field(default_factory=dict)  # opportunity -> time
    thread_opportunity: dict[str, int] = field(default_factory=dict)  # thread key -> opp
    blocked_addresses: set[str] = field(default_factory=set)
    blocked_domains: set[str] = field(default_factory=set)
    tag_prefix: str = "OPP-"

    def __post_init__(self) -> None:
        self._by_external = {o.external_id.lower(): o for o in self.opportunities.values()}
        self._tag_re = re.compile(r"\[" + re.escape(self.tag_prefix) + r"([\w.\-]+)\]", re.I)

    def opportunity_by_tag(self, tag: str) -> OpportunityRef | None:
        """``[OPP-42]`` names the opportunity whose external id is ``42`` or ``OPP-42``."""
        return self._by_external.get(tag.lower()) or self._by_external.get(
            (self.tag_prefix + tag).lower()
        )

    def tags(self, text: str) -> list[str]:
        return self._tag_re.findall(text)

    def remember(self, thread_keys: list[str], opportunity_id: int | None, when: datetime) -> None:
        """Record what a just-stored item was linked to."""
        if opportunity_id is None:
            return
        for key in thread_keys:
            self.thread_opportunity.setdefault(key, opportunity_id)
        last = self.last_activity.get(opportunity_id)
        if last is None or when > last:
            self.last_activity[opportunity_id] = when

    def is_internal(self, address: str) -> bool:
        return address in self.users or _in_domains(domain_of(address), self.company_domains)

    def account_for_domain(self, domain: str) -> int | None:
        if is_free_mail(domain):
            return None
        for candidate in _parents(domain):
            if candidate in self.account_domains:
                return self.account_domains[candidate]
        return None

    def is_blocked(self, address: str) -> bool:
        return address in self.blocked_addresses or _in_domains(
            domain_of(address), self.blocked_domains
        )


def _parents(domain: str) -> list[str]:
    """``eu.mail.acme.test`` -> [itself, ``mail.acme.test``, ``acme.test``]."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]


def _in_domains(domain: str, domains: set[str]) -> bool:
    return any(d in domains for d in _parents(domain))


@dataclass(frozen=True)
class ParticipantMatch:
    address: str
    name: str
    role: str
    contact_id: int | None = None
    user_id: int | None = None


@dataclass(frozen=True)
class LinkDecision:
    type: str  # contact / account / opportunity
    target_id: int
    reason: str


@dataclass(frozen=True)
class Match:
    participants: tuple[ParticipantMatch, ...]
    links: tuple[LinkDecision, ...]
    direction: str
    note: str | None = None

    @property
    def opportunity_id(self) -> int | None:
        return next((lk.target_id for lk in self.links if lk.type == "opportunity"), None)

    @property
    def has_crm_participant(self) -> bool:
        return any(lk.type in ("contact", "account") for lk in self.links)


def thread_keys(item: Item) -> list[str]:
    """Every key under which a later item of the same conversation may refer to this one."""
    if isinstance(item, MeetingItem):
        return [f"ical:{item.uid}"]
    keys = [item.key, item.thread_key, *item.related_keys]
    if item.provider_thread_id:
        keys.append(f"provider-thread:{item.provider_thread_id}")
    return list(dict.fromkeys(keys))


def remembered_keys(item: Item) -> list[str]:
    """What the index remembers of a stored item: exactly what the database keeps
    (its key and its thread's key), so a restart sees what an uninterrupted run saw."""
    if isinstance(item, MeetingItem):
        return [f"ical:{item.uid}"]
    return list(dict.fromkeys([item.key, item.thread_key]))


def _direction(item: Item, index: CrmIndex) -> str:
    first = item.sender if isinstance(item, MailItem) else item.organizer
    if all(index.is_internal(p.address) for p in item.participants):
        return "internal"
    if first is not None and index.is_internal(first.address):
        return "outbound"
    return "inbound"


def _most_recent(candidates: list[OpportunityRef], index: CrmIndex) -> list[OpportunityRef]:
    """The candidates whose last activity is the most recent (more than one is a tie)."""
    floor = datetime.min.replace(tzinfo=None)

    def when(o: OpportunityRef) -> datetime:
        t = index.last_activity.get(o.id)
        return t.replace(tzinfo=None) if t else floor

    best = max(when(o) for o in candidates)
    return [o for o in candidates if when(o) == best]


def _names(opps: list[OpportunityRef]) -> str:
    return ", ".join(f"{o.external_id} ({o.name})" for o in sorted(opps, key=lambda o: o.id))


def _opportunity(
    item: Item, index: CrmIndex, contact_ids: list[int], account_ids: list[int]
) -> tuple[list[LinkDecision], str | None]:
    text = item.subject + "\n" + (item.body if isinstance(item, MailItem) else item.description)
    tagged, unknown = [], []
    for tag in dict.fromkeys(t.lower() for t in index.tags(text)):
        opp = index.opportunity_by_tag(tag)
        (tagged.append(opp) if opp else unknown.append(tag))
    note = f"tag {index.tag_prefix}{', '.join(unknown)} names no opportunity" if unknown else None
    if tagged:
        return [LinkDecision("opportunity", o.id, "tag") for o in tagged], note

    for key in thread_keys(item):
        if key in index.thread_opportunity and key != item.key:
            return [LinkDecision("opportunity", index.thread_opportunity[key], "thread")], note

    related = [
        o
        for o in index.opportunities.values()
        if o.account_id in account_ids or o.contact_ids & set(contact_ids)
    ]
    open_ = [o for o in related if o.status == "open"]
    with_role = [o for o in open_ if o.contact_ids & set(contact_ids)]
    for candidates, reason in ((with_role, "contact-role"), (open_, "account")):
        if not candidates:
            continue
        best = _most_recent(candidates, index)
        if len(best) == 1:
            return [LinkDecision("opportunity", best[0].id, reason)], note
        return [], f"ambiguous opportunity, linked to the account only: {_names(best)}"
    if related:
        return [], f"only closed opportunities: {_names(related)}"
    return [], note


def match(item: Item, index: CrmIndex) -> Match:
    """Link an item's participants to users, contacts and accounts, and the item to a deal."""
    participants: list[ParticipantMatch] = []
    links: list[LinkDecision] = []
    contact_ids: list[int] = []
    account_ids: list[int] = []

    def link(kind: str, target: int, reason: str) -> None:
        if not any(lk.type == kind and lk.target_id == target for lk in links):
            links.append(LinkDecision(kind, target, reason))

    for p in item.participants:
        user = index.users.get(p.address)
        if user is not None or index.is_internal(p.address):
            participants.append(
                ParticipantMatch(p.address, p.name, p.role, user_id=user.id if user else None)
            )
            continue
        contact = index.contacts.get(p.address)
        participants.append(
            ParticipantMatch(p.address, p.name, p.role, contact_id=contact.id if contact else None)
        )
        if contact is not None:
            link("contact", contact.id, "address")
            contact_ids.append(contact.id)
            if contact.account_id is not None:
                link("account", contact.account_id, "contact")
                account_ids.append(contact.account_id)
                continue
        account_id = index.account_for_domain(domain_of(p.address))
        if account_id is not None:
            link("account", account_id, "domain")
            account_ids.append(account_id)

    opp_links, note = _opportunity(item, index, contact_ids, account_ids)
    for lk in opp_links:
        link(lk.type, lk.target_id, lk.reason)
    return Match(tuple(participants), tuple(links), _direction(item, index), note)
