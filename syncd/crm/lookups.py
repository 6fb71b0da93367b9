"""The matcher's CRM index, filled from the database for each batch with just what that
batch can match (``syncd.matching.matcher.CrmIndex``).

A pass used to load the whole CRM and the matcher to scan every opportunity for each item:
the cost grew with the CRM (bench/matching_scale.py). Now a pass loads the users, the
company's domains and the exclusions once (:func:`base_index`), and each batch looks up
what the pass has not looked up yet, one query a table and chunk, never one an item
(:func:`fill`; the sync job starts over from the base when the index holds too much):

- the contacts of its participants' addresses, and the accounts of their domains (and the
  domains' parents), each looked up once a pass, found or not;
- the deals its ``[OPP-n]`` tags name (by ``lower(external_id)``, an expression index);
- every deal of the accounts and contacts found, with the contacts that have a role in it
  and the time of its latest tagged activity (``opportunities.last_tagged_at``).

The look-ups are Core statements on the session's connection (no ORM objects), each list
of keys one parameter (``syncd.crm.rows.one_of``).

The settling of conversations asks for the deals of its stored items' contacts and
accounts the same way (:func:`fill_deals`). Whether a newly tagged activity reorders the
open deals is one indexed query (:func:`reranks`), and the time it teaches is
restated in the batch's transaction (:func:`restate_tagged`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select, text, update
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm.models import (
    AccountDomain,
    Activity,
    Contact,
    ContactAddress,
    DroppedItem,
    ForgottenDigest,
    Link,
    Opportunity,
    OpportunityContact,
    User,
)
from syncd.crm.rows import LOOKUP_CHUNK, one_of
from syncd.items import Item, MailItem, conversation_keys, fit, thread_mark
from syncd.matching.addresses import domain_of, is_free_mail
from syncd.matching.matcher import ContactRef, CrmIndex, OpportunityRef, UserRef, parents, tag_text

# The oldest CRM a pass decides against, in seconds: its index is read again past that
# (``syncd.decide.PassIndex``), so an activity recorded this long after a CRM change was
# matched against it (``syncd.crm.rematch.queued_activities``).
VIEW_SECONDS = 30


def company_domains(session: Session, settings: Settings) -> set[str]:
    """The configured domains, else the domains of the CRM users' addresses."""
    if settings.company.domains:
        return set(settings.company.domains)
    return {domain_of(e) for e in session.scalars(select(User.email))}


def base_index(session: Session, settings: Settings) -> CrmIndex:
    """What a pass loads once: the users, the company's domains, the exclusions."""
    return CrmIndex(
        company_domains=company_domains(session, settings),
        users={u.email: UserRef(u.id, u.email, u.name) for u in session.scalars(select(User))},
        blocked_addresses=set(settings.exclusions.addresses),
        blocked_domains=set(settings.exclusions.domains),
        tag_prefix=settings.matching.opportunity_tag_prefix,
        opportunity_policy=settings.matching.opportunity,
        forgotten=frozenset(session.scalars(select(ForgottenDigest.digest))),
        any_dropped=session.scalar(select(DroppedItem.key).limit(1)) is not None,
    )


def fill(session: Session, index: CrmIndex, items: Iterable[Item]) -> None:
    """Add to the index what these items can match and it does not hold yet (see the
    module's docstring); what was looked up and not found is not looked up again."""
    key_lookups(session)
    addresses: set[str] = set()
    tags: set[str] = set()
    for item in _with_invitations(items):
        addresses.update(p.address for p in item.participants)
        for tag in index.tags(tag_text(item)):
            tags.update(index.tag_names(tag))
    addresses = {a for a in addresses - index.looked_up_addresses if not index.is_internal(a)}
    domains = {
        parent
        for a in addresses
        if not is_free_mail(domain := domain_of(a))
        for parent in parents(domain)
    } - index.looked_up_domains
    # keys as the CRM stores them (a key with a NUL, or too long, is compared by its hash)
    if index.any_dropped:  # one query a batch, only once an item was ever deleted
        index.dropped.update(_dropped(session, list(_with_invitations(items))))
    contacts = _fill_contacts(session, index, addresses)
    _fill_account_domains(session, index, {c.account_id for c in contacts if c.account_id})
    accounts = _fill_domains(session, index, domains)
    _fill_tagged(session, index, tags - index.looked_up_tags)
    accounts.update(c.account_id for c in contacts if c.account_id is not None)
    fill_deals(session, index, {c.id for c in contacts}, accounts)


def key_lookups(session: Session) -> None:
    """Tell PostgreSQL's planner, for the rest of this transaction, that reading an index
    costs little more than a scan (``random_page_cost`` 1.1, what SSDs and a cached CRM
    give; its default of 4 models spinning disks): the look-ups of a batch are a thousand
    keys at a time, and with the default the planner scans a table of a hundred thousand
    domains or deals instead of probing its index, at several times the cost
    (bench/matching_scale.py). A pass looks up in a read transaction of its own; a
    re-match looks up in its write transaction, whose later statements are planned alike."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL random_page_cost = 1.1"))


def _dropped(session: Session, items: list[Item]) -> set[str]:
    """Which of these items' keys an admin deleted, and which of their conversation keys a
    salesperson removed with #nocrm (as ``thread_mark`` gives them); one query a chunk,
    every batch: only the keys found are kept, so memory does not grow with the mail read."""
    keys = {fit(i.key) for i in items}
    threads = {thread_mark(k) for i in items for k in conversation_keys(i)}
    found: set[str] = set()
    for chunk in chunked(sorted(keys | threads), LOOKUP_CHUNK):
        for key, whole in session.execute(
            select(DroppedItem.key, DroppedItem.whole_thread).where(
                one_of(session, DroppedItem.key, chunk)
            )
        ):
            if key in keys or (whole and key in threads):
                found.add(key)
    return found


def _with_invitations(items: Iterable[Item]) -> Iterator[Item]:
    """The items, and the invitations a mail carries (each may be logged as a meeting)."""
    for item in items:
        yield item
        if isinstance(item, MailItem):
            yield from item.invitations


def _fill_contacts(session: Session, index: CrmIndex, addresses: set[str]) -> list[ContactRef]:
    """The contacts of these addresses, added to the index; returns those found."""
    query = select(ContactAddress.address, Contact.id, Contact.name, Contact.account_id).join(
        Contact
    )
    found: list[ContactRef] = []
    for chunk in chunked(sorted(addresses), LOOKUP_CHUNK):
        for address, contact_id, name, account_id in (
            session.connection()
            .execute(query.where(one_of(session, ContactAddress.address, chunk)))
            .all()
        ):
            index.contacts[address] = ref = ContactRef(contact_id, name, account_id)
            index.contact_accounts[contact_id] = account_id
            found.append(ref)
    index.looked_up_addresses |= addresses
    return found


def _fill_account_domains(session: Session, index: CrmIndex, accounts: set[int]) -> None:
    """The domains of these accounts (the matched contacts'), those not looked up yet."""
    wanted = sorted(accounts - index.domains_of_accounts.keys())
    found: dict[int, set[str]] = {a: set() for a in wanted}
    for domain, account_id in _account_domains(session, AccountDomain.account_id, wanted):
        found[account_id].add(domain)
    index.domains_of_accounts.update((a, frozenset(d)) for a, d in found.items())


def _fill_domains(session: Session, index: CrmIndex, domains: set[str]) -> set[int]:
    """The accounts of these domains, added to the index; returns those found."""
    found: set[int] = set()
    for domain, account_id in _account_domains(session, AccountDomain.domain, sorted(domains)):
        index.account_domains[domain] = account_id
        found.add(account_id)
    index.looked_up_domains |= domains
    return found


def _account_domains(
    session: Session, column: InstrumentedAttribute[Any], keys: list[Any]
) -> Iterator[tuple[str, int]]:
    """(domain, account id) of every account domain whose ``column`` is one of ``keys``."""
    query = select(AccountDomain.domain, AccountDomain.account_id)
    for chunk in chunked(keys, LOOKUP_CHUNK):
        yield from (session.connection().execute(query.where(one_of(session, column, chunk))).all())


def _fill_tagged(session: Session, index: CrmIndex, names: set[str]) -> None:
    """The deals these tag names (lower case) name. ``lower()`` in SQL folds ASCII only
    (SQLite, PostgreSQL in the C locale), so a name with other letters is found by a LIKE
    that leaves them out, then compared in Python (a scan, for such tags only)."""
    ids: set[int] = set()
    plain = sorted(n for n in names if n.isascii())
    for chunk in chunked(plain, LOOKUP_CHUNK):
        ids.update(
            session.connection().scalars(
                select(Opportunity.id).where(func.lower(Opportunity.external_id).in_(chunk))
            )
        )
    for name in sorted(names - set(plain)):
        pattern = "".join(_like(c) if c.isascii() else "_" for c in name)
        for opp_id, external_id in session.connection().execute(
            select(Opportunity.id, Opportunity.external_id).where(
                Opportunity.external_id.ilike(pattern, escape="\\")
            )
        ):
            if external_id.lower() == name:
                ids.add(opp_id)
    load_opportunities(session, index, ids)
    index.looked_up_tags |= names


def fill_tags(session: Session, index: CrmIndex, names: set[str]) -> None:
    """The deals these tag names (lower case) name, those not looked up yet."""
    _fill_tagged(session, index, names - index.looked_up_tags)


def _like(c: str) -> str:
    return "\\" + c if c in "%_\\" else c


def fill_deals(
    session: Session, index: CrmIndex, contact_ids: Iterable[int], account_ids: Iterable[int]
) -> None:
    """Add every deal of these accounts, and every deal in which one of these contacts has a
    role, to the index (those it already holds whole are not read again). The deals of the
    contacts' roles are asked for by id first, and only those the index does not hold are
    read: most are deals of the contacts' own accounts, read just before."""
    accounts = set(account_ids) - index.deals_of_accounts
    contacts = set(contact_ids) - index.deals_of_contacts
    _fill_contact_accounts(session, index, contacts)
    for chunk in chunked(sorted(accounts), LOOKUP_CHUNK):
        _load_deals(session, index, one_of(session, Opportunity.account_id, chunk))
    roles: set[int] = set()
    for chunk in chunked(sorted(contacts), LOOKUP_CHUNK):
        roles.update(
            session.connection().scalars(
                select(OpportunityContact.opportunity_id).where(
                    one_of(session, OpportunityContact.contact_id, chunk)
                )
            )
        )
    load_opportunities(session, index, roles)
    index.deals_of_accounts |= accounts
    index.deals_of_contacts |= contacts


def _fill_contact_accounts(session: Session, index: CrmIndex, contacts: set[int]) -> None:
    """The accounts of these contacts (the settling's: its stored items name contacts by
    id), those not known yet."""
    wanted = sorted(contacts - index.contact_accounts.keys())
    for chunk in chunked(wanted, LOOKUP_CHUNK):
        for contact_id, account_id in (
            session.connection()
            .execute(
                select(Contact.id, Contact.account_id).where(one_of(session, Contact.id, chunk))
            )
            .all()
        ):
            index.contact_accounts[contact_id] = account_id


def load_opportunities(session: Session, index: CrmIndex, ids: set[int]) -> None:
    """Add these deals to the index (those it does not hold yet)."""
    for chunk in chunked(sorted(ids - index.opportunities.keys()), LOOKUP_CHUNK):
        _load_deals(session, index, one_of(session, Opportunity.id, chunk))


def _load_deals(session: Session, index: CrmIndex, where: ColumnElement[bool]) -> None:
    """Add the deals that meet this condition to the index, each with the contacts that
    have a role in it and the time of its latest tagged activity: one query, the deals
    found read whole (for an account's deals, asking for their ids first, then for them,
    and for their roles in a query of their own, cost twice as much:
    bench/matching_scale.py; the deals of contacts' roles are asked for by id first only
    because most of them are held already, see :func:`fill_deals`)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    contact = OpportunityContact.contact_id
    # the list as the driver gives it (psycopg: a list of ints), not walked again by SQLAlchemy
    agg = func.array_agg(contact, type_=NullType()) if postgres else func.group_concat(contact)
    roles = select(agg).where(OpportunityContact.opportunity_id == Opportunity.id)
    query = select(
        Opportunity.id,
        Opportunity.external_id,
        Opportunity.name,
        Opportunity.account_id,
        Opportunity.status,
        Opportunity.last_tagged_at,
        roles.scalar_subquery(),
    ).where(where)
    for opp_id, external_id, name, account_id, status, last_tagged, contacts in (
        session.connection().execute(query).all()
    ):
        if opp_id in index.opportunities:
            continue
        if not contacts:
            contact_ids: frozenset[int] = frozenset()
        elif postgres:
            contact_ids = frozenset(contacts)
        else:  # group_concat: "12,40"
            contact_ids = frozenset(map(int, str(contacts).split(",")))
        ref = OpportunityRef(opp_id, external_id, name, account_id, status, contact_ids)
        index.add_opportunity(ref, last_tagged)


def restate_tagged(session: Session, opportunity_ids: list[int]) -> dict[int, datetime | None]:
    """Set ``last_tagged_at`` of these deals to the time of their latest stored tagged
    activity, in the batch's transaction (a batch that does not commit teaches nothing),
    and return it. One row at a time in the order of their ids, so two passes that tag the
    same deals lock them in one order and never deadlock."""
    table = cast(Table, Opportunity.__table__)
    latest = (
        select(func.max(Activity.occurred_at))
        .join(Link, Link.activity_id == Activity.id)
        .where(Link.type == "opportunity", Link.reason == "tag", Link.target_id == table.c.id)
        .scalar_subquery()
    )
    ids = sorted(opportunity_ids)
    connection = session.connection()
    connection.execute(
        update(table).where(table.c.id == bindparam("opp")).values(last_tagged_at=latest),
        [{"opp": opp_id} for opp_id in ids],
    )
    now: dict[int, datetime | None] = {}
    for chunk in chunked(ids, LOOKUP_CHUNK):
        for opp_id, when in connection.execute(
            select(Opportunity.id, Opportunity.last_tagged_at).where(
                one_of(session, Opportunity.id, chunk)
            )
        ):
            now[opp_id] = when
    return now


def reranks(
    session: Session, opportunity_id: int, before: datetime | None, after: datetime | None
) -> bool:
    """Whether a deal whose latest tagged activity moved from ``before`` to ``after`` (None:
    none, behind every deal that has one) passed or met another open deal on its way, up
    or down: then what weaker links chose between them may change."""
    low, high = (before, after) if _at_or_below(before, after) else (after, before)
    if high is None:  # both None: it did not move
        return False
    theirs = Opportunity.last_tagged_at
    others = select(Opportunity.id).where(
        Opportunity.status == "open", Opportunity.id != opportunity_id
    )
    if low is None:
        others = others.where(or_(theirs.is_(None), theirs <= high))
    else:
        others = others.where(theirs >= low, theirs <= high)
    return session.connection().scalar(others.limit(1)) is not None


def _at_or_below(a: datetime | None, b: datetime | None) -> bool:
    return a is None or (b is not None and a <= b)
