"""CRM records removed by hand (issue 15): ``syncd contact``, ``syncd account`` and
``syncd opportunity`` (merging two contacts is :mod:`syncd.crm.merge`).

- **contact remove EMAIL** removes the contact that has the address: all its addresses, its
  roles in deals, what the imports counted of it. Its activities stay (they are the
  company's record of what was said) but lose their links to it, their participants are no
  longer it, and its follow-up tasks stay without it. The links an admin had vetoed for it
  go too: a veto names a record by id, and the id may be given to a record made later.
- **contact remove-address EMAIL** takes one address off its contact, never the last one
  (that is ``contact remove``). An activity whose participant had that address loses its
  link to the contact, unless another of its participants is still the contact or an admin
  linked it by hand.
- **account remove DOMAIN** removes the account with all its domains. Its contacts stay,
  without an account; its activities lose their links to it. An account that still has
  deals is refused, naming them: a deal cannot be left without its account.
- **account remove-domain DOMAIN** takes one domain off its account, never the last one.
  An activity linked to the account by a participant at that domain, and by nothing else,
  loses the link.
- **opportunity remove EXT_ID** removes a deal: its links, its contacts' roles and the
  vetoes on it; its tasks stay without it.

Why the conversations are settled again: a contact's role or a deal may be what chose the
deal of a conversation, and a removed deal may have tied with another. Each command settles
the conversations it touched (:func:`syncd.settle.settle_activities`, as ``syncd link`` does)
and has the follow-up rules of the owners of their open tasks run again at their next pass.

Each runs in the caller's transaction, one for the command, and returns what it changed,
counted; ``--dry-run`` runs all of it and rolls back, so it shows what the real run changes.
A record that does not exist, or a change that cannot be made, is a
:class:`~syncd.crm.corrections.CorrectionError` naming the value and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, delete, func, or_, select, update
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm import conversations, lookups
from syncd.crm.corrections import CorrectionError
from syncd.crm.models import (
    Account,
    AccountDomain,
    ActivityParticipant,
    Contact,
    ContactAddress,
    ContactKnowledge,
    Link,
    LinkVeto,
    Opportunity,
    OpportunityContact,
    RematchRequest,
    Task,
)
from syncd.crm.rows import IN_LIMIT
from syncd.items import LinkType
from syncd.matching.addresses import domain_of, normalize_address, normalize_domain
from syncd.matching.matcher import parents
from syncd.settle import settle_activities, settle_keys

# --- finding the record named ---------------------------------------------------------------


def contact_named(session: Session, value: str) -> Contact:
    address = normalize_address(value)
    if not address:
        raise CorrectionError(
            f"{value!r} is not an email address; give one of the contact's addresses"
        )
    found = session.scalar(
        select(Contact).join(ContactAddress).where(ContactAddress.address == address)
    )
    if found is None:
        raise CorrectionError(
            f"no contact has the address {address!r}; give one of its addresses as loaded "
            "('syncd crm load contacts FILE'; 'syncd activities --json' shows the addresses "
            "of each activity's participants)"
        )
    return found


def _account(session: Session, value: str) -> Account:
    domain = normalize_domain(value)
    found = session.scalar(
        select(Account).join(AccountDomain).where(AccountDomain.domain == domain)
    )
    if found is not None:
        return found
    named = session.scalar(select(Account).where(Account.name == value.strip()))
    if named is not None:
        raise CorrectionError(
            f"{value!r} is an account's name; give one of its domains: "
            + ", ".join(_domains(session, named.id))
        )
    raise CorrectionError(
        f"no account has the domain {domain!r}; give one of the account's domains as loaded "
        "('syncd crm load accounts FILE')"
    )


def _opportunity(session: Session, value: str) -> Opportunity:
    wanted = value.strip()
    found = session.scalar(select(Opportunity).where(Opportunity.external_id == wanted))
    if found is None:  # as a tag names it: case-blind, when that names one deal only
        alike = session.scalars(
            select(Opportunity).where(func.lower(Opportunity.external_id) == wanted.lower())
        ).all()
        found = alike[0] if len(alike) == 1 else None
    if found is None:
        raise CorrectionError(
            f"no opportunity {wanted!r}; give its external id as loaded ('syncd crm load "
            "opportunities FILE'), as 'syncd activities' shows it (e.g. OPP-101)"
        )
    return found


def addresses_of(session: Session, contact_id: int) -> list[str]:
    return sorted(
        session.scalars(
            select(ContactAddress.address).where(ContactAddress.contact_id == contact_id)
        )
    )


def _domains(session: Session, account_id: int) -> list[str]:
    return sorted(
        session.scalars(select(AccountDomain.domain).where(AccountDomain.account_id == account_id))
    )


def _deal(o: Opportunity) -> str:
    return f"{o.external_id} {o.name}"


# --- shared steps -------------------------------------------------------------------------


def changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; how many rows it changed."""
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount or 0)


def linked(session: Session, type_: LinkType, target_id: int) -> set[int]:
    """The activities linked to this record."""
    return set(
        session.scalars(
            select(Link.activity_id).where(Link.type == type_, Link.target_id == target_id)
        )
    )


def _unlink_all(session: Session, type_: LinkType, target_id: int) -> tuple[int, int]:
    """Every link to a record that goes, and every veto on it: (links, vetoes) removed."""
    links = changed(session, delete(Link).where(Link.type == type_, Link.target_id == target_id))
    vetoes = changed(
        session, delete(LinkVeto).where(LinkVeto.type == type_, LinkVeto.target_id == target_id)
    )
    return links, vetoes


def follow(session: Session, settings: Settings, activity_ids: Iterable[int]) -> int:
    """The conversations of these activities settled again (a deal may have been chosen by
    what changed), and the follow-up rules of the owners of their open tasks run again at
    their next pass; how many activities were relinked."""
    ids = sorted(set(activity_ids))
    if not ids:
        return 0
    session.flush()
    relinked = settle_activities(session, lookups.base_index(session, settings), ids)
    conversations.rerun_followups(session, ids)
    return relinked


# --- contact remove -------------------------------------------------------------------------


@dataclass(frozen=True)
class ContactRemoved:
    """What ``syncd contact remove`` removed (or, ``--dry-run``, would remove)."""

    contact: str
    addresses: list[str]
    roles: list[str]  # "OPP-101 Acme platform renewal (Decision maker)"
    activities: int  # it was on, kept without it
    links_removed: int
    participants_unlinked: int
    tasks_detached: int  # follow-up tasks that named it, kept without it
    vetoes_removed: int
    relinked: int  # activities whose deal was decided again


def remove_contact(session: Session, settings: Settings, address: str) -> ContactRemoved:
    """Remove the contact that has ``address`` (see the module's docstring)."""
    contact = contact_named(session, address)
    cid, name = contact.id, contact.name
    addresses = addresses_of(session, cid)
    roles = [
        f"{_deal(o)} ({role})" if role else _deal(o)
        for o, role in session.execute(
            select(Opportunity, OpportunityContact.role)
            .join(OpportunityContact, OpportunityContact.opportunity_id == Opportunity.id)
            .where(OpportunityContact.contact_id == cid)
            .order_by(Opportunity.external_id)
        )
    ]
    on = linked(session, "contact", cid) | set(
        session.scalars(
            select(ActivityParticipant.activity_id).where(ActivityParticipant.contact_id == cid)
        )
    )
    links, vetoes = _unlink_all(session, "contact", cid)
    participants = changed(
        session,
        update(ActivityParticipant)
        .where(ActivityParticipant.contact_id == cid)
        .values(contact_id=None),
    )
    tasks = changed(session, update(Task).where(Task.contact_id == cid).values(contact_id=None))
    for model, column in (
        (OpportunityContact, OpportunityContact.contact_id),
        (ContactKnowledge, ContactKnowledge.contact_id),
        (ContactAddress, ContactAddress.contact_id),
        (Contact, Contact.id),
    ):
        session.execute(delete(model).where(column == cid))
    relinked = follow(session, settings, on)
    return ContactRemoved(
        name, addresses, roles, len(on), links, participants, tasks, vetoes, relinked
    )


# --- contact remove-address ---------------------------------------------------------------


@dataclass(frozen=True)
class AddressRemoved:
    """What ``syncd contact remove-address`` removed."""

    address: str
    contact: str
    addresses_left: list[str]
    participants_unlinked: int
    links_removed: int  # activities that had no other reason to be linked to the contact
    relinked: int


def remove_address(session: Session, settings: Settings, address: str) -> AddressRemoved:
    """Take ``address`` off its contact (see the module's docstring)."""
    contact = contact_named(session, address)
    gone = normalize_address(address)
    left = [a for a in addresses_of(session, contact.id) if a != gone]
    if not left:
        raise CorrectionError(
            f"{gone!r} is the last address of contact {contact.name!r}; remove the contact "
            f"instead: 'syncd contact remove {gone}'"
        )
    had = ActivityParticipant.address == gone, ActivityParticipant.contact_id == contact.id
    on = set(session.scalars(select(ActivityParticipant.activity_id).where(*had)))
    participants = changed(session, update(ActivityParticipant).where(*had).values(contact_id=None))
    links = 0
    for chunk in chunked(sorted(on), IN_LIMIT):
        still = select(ActivityParticipant.activity_id).where(
            ActivityParticipant.activity_id.in_(chunk),
            ActivityParticipant.contact_id == contact.id,
        )
        links += changed(
            session,
            delete(Link).where(
                Link.activity_id.in_(chunk),
                Link.activity_id.not_in(still),
                Link.type == "contact",
                Link.target_id == contact.id,
                Link.reason != "manual",  # an admin's link was never the address's
            ),
        )
    session.execute(delete(ContactAddress).where(ContactAddress.address == gone))
    relinked = follow(session, settings, on)
    return AddressRemoved(gone, contact.name, left, participants, links, relinked)


# --- account remove and remove-domain ------------------------------------------------------


@dataclass(frozen=True)
class AccountRemoved:
    """What ``syncd account remove`` removed."""

    account: str
    domains: list[str]
    contacts_detached: int  # kept, without an account
    activities: int  # linked to it, kept without the link
    links_removed: int
    vetoes_removed: int
    relinked: int


def remove_account(session: Session, settings: Settings, domain: str) -> AccountRemoved:
    """Remove the account that has ``domain`` (see the module's docstring)."""
    account = _account(session, domain)
    deals = session.scalars(
        select(Opportunity)
        .where(Opportunity.account_id == account.id)
        .order_by(Opportunity.external_id)
    ).all()
    if deals:
        raise CorrectionError(
            f"account {account.name!r} still has {len(deals)} opportunit(ies): "
            + ", ".join(_deal(o) for o in deals)
            + "; remove them first ('syncd opportunity remove "
            + f"{deals[0].external_id}'), then the account"
        )
    domains = _domains(session, account.id)
    on = linked(session, "account", account.id)
    links, vetoes = _unlink_all(session, "account", account.id)
    contacts = changed(
        session,
        update(Contact).where(Contact.account_id == account.id).values(account_id=None),
    )
    session.execute(delete(AccountDomain).where(AccountDomain.account_id == account.id))
    session.execute(delete(Account).where(Account.id == account.id))
    relinked = follow(session, settings, on)
    return AccountRemoved(account.name, domains, contacts, len(on), links, vetoes, relinked)


@dataclass(frozen=True)
class DomainRemoved:
    """What ``syncd account remove-domain`` removed."""

    domain: str
    account: str
    domains_left: list[str]
    links_removed: int  # activities linked to the account by that domain only
    relinked: int


def remove_domain(session: Session, settings: Settings, domain: str) -> DomainRemoved:
    """Take ``domain`` off its account (see the module's docstring)."""
    account = _account(session, domain)
    gone = normalize_domain(domain)
    left = [d for d in _domains(session, account.id) if d != gone]
    if not left:
        raise CorrectionError(
            f"{gone!r} is the last domain of account {account.name!r}; remove the account "
            f"instead: 'syncd account remove {gone}'"
        )
    session.execute(delete(AccountDomain).where(AccountDomain.domain == gone))
    unlinked = _without_reason(session, account.id, gone, set(left))
    for chunk in chunked(unlinked, IN_LIMIT):
        session.execute(
            delete(Link).where(
                Link.activity_id.in_(chunk), Link.type == "account", Link.target_id == account.id
            )
        )
    relinked = follow(session, settings, unlinked)
    return DomainRemoved(gone, account.name, left, len(unlinked), relinked)


def _without_reason(session: Session, account_id: int, gone: str, left: set[str]) -> list[int]:
    """The activities linked to the account (not by hand) that have a participant at the
    domain ``gone`` (or below it), and none that is a contact at the account or at one of
    its other domains."""
    literal = gone.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    near = [ActivityParticipant.address.like(f"%{at}{literal}", escape="\\") for at in "@."]
    candidates = set(
        session.scalars(
            select(Link.activity_id)
            .join(ActivityParticipant, ActivityParticipant.activity_id == Link.activity_id)
            .where(
                Link.type == "account",
                Link.target_id == account_id,
                Link.reason != "manual",
                or_(*near),
            )
        )
    )
    staff = set(session.scalars(select(Contact.id).where(Contact.account_id == account_id)))
    at_gone: set[int] = set()
    reasons: set[int] = set()
    for chunk in chunked(sorted(candidates), IN_LIMIT):
        for activity_id, address, contact_id, user_id in session.execute(
            select(
                ActivityParticipant.activity_id,
                ActivityParticipant.address,
                ActivityParticipant.contact_id,
                ActivityParticipant.user_id,
            ).where(ActivityParticipant.activity_id.in_(chunk))
        ):
            domains = set(parents(domain_of(address)))
            if user_id is None and gone in domains:
                at_gone.add(activity_id)
            if user_id is None and (contact_id in staff or domains & left):
                reasons.add(activity_id)
    return sorted(at_gone - reasons)


# --- opportunity remove ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpportunityRemoved:
    """What ``syncd opportunity remove`` removed."""

    opportunity: str
    account: str
    activities: int  # linked to it, kept without the link
    links_removed: int
    roles_removed: int
    vetoes_removed: int
    tasks_detached: int  # follow-up tasks that named it, kept without it
    relinked: int  # activities whose deal was decided again (another may be chosen)


def remove_opportunity(
    session: Session, settings: Settings, external_id: str
) -> OpportunityRemoved:
    """Remove the deal ``external_id`` (see the module's docstring)."""
    deal = _opportunity(session, external_id)
    name, account = _deal(deal), session.get(Account, deal.account_id)
    before = lookups.base_index(session, settings)
    lookups.load_opportunities(session, before, {deal.id})
    # the conversations that may have chosen it by a weaker rule, or tied it with another
    keys = conversations.conversation_keys_of_candidates(session, before, [deal.id])
    on = linked(session, "opportunity", deal.id)
    keys |= {key for _, key in conversations.thread_keys_of(session, on)}
    links, vetoes = _unlink_all(session, "opportunity", deal.id)
    roles = changed(
        session, delete(OpportunityContact).where(OpportunityContact.opportunity_id == deal.id)
    )
    tasks = changed(
        session, update(Task).where(Task.opportunity_id == deal.id).values(opportunity_id=None)
    )
    session.execute(delete(Opportunity).where(Opportunity.id == deal.id))
    session.execute(  # a re-match a CRM load queued for it: settled here instead
        delete(RematchRequest).where(
            RematchRequest.kind == "opportunity", RematchRequest.value == str(deal.id)
        )
    )
    session.flush()
    relinked = settle_keys(session, lookups.base_index(session, settings), keys)
    conversations.rerun_followups(session, sorted(on))
    return OpportunityRemoved(
        name, account.name if account else "", len(on), links, roles, vetoes, tasks, relinked
    )
