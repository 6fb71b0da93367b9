"""What the CRM already holds that the import's verdicts depend on (:class:`~.decide.Crm`),
read once before deciding."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm.models import (
    Account,
    AccountDomain,
    Contact,
    ContactAddress,
    ForgottenDigest,
    User,
)
from syncd.crm.rows import LOOKUP_CHUNK, one_of
from syncd.harvest.decide import Crm
from syncd.harvest.people import Person, merge_key
from syncd.matching.addresses import domain_of, normalize_domain


def known_crm(
    session: Session,
    settings: Settings,
    import_id: str | None = None,
    people: Iterable[Person] | None = None,
) -> Crm:
    """The CRM as the verdicts see it: without what the import ``import_id`` itself created
    (so a resumed import reaches the verdicts of an uninterrupted one). The company's
    domains are ``company.domains``, else the domains of its users. With ``people``, only
    what their verdicts can look up is read (the contacts of their addresses, the accounts
    of their domains), by key, never the whole CRM."""
    users = list(session.scalars(select(User.email)))
    own_domains = {normalize_domain(d) for d in settings.company.domains}
    contacts = select(ContactAddress.address, ContactAddress.contact_id).join(Contact)
    accounts = select(AccountDomain.domain, AccountDomain.account_id).join(Account)
    if import_id is not None:
        contacts = contacts.where(Contact.import_id.is_(None) | (Contact.import_id != import_id))
        accounts = accounts.where(Account.import_id.is_(None) | (Account.import_id != import_id))
    addresses: list[str] | None = None
    domains: list[str] | None = None
    if people is not None:
        seen = list(people)
        addresses = sorted({a for p in seen for a in (*p.spellings, p.key)})
        domains = sorted({domain_of(p.address) for p in seen})
    return Crm(
        internal_domains=frozenset(own_domains or {domain_of(u) for u in users}),
        user_addresses=frozenset(merge_key(u) for u in users) | frozenset(users),
        excluded_addresses=frozenset(settings.exclusions.addresses),
        excluded_domains=frozenset(settings.exclusions.domains),
        contact_by_address=_pairs(session, contacts, ContactAddress.address, addresses),
        account_by_domain=_pairs(session, accounts, AccountDomain.domain, domains),
        forgotten=frozenset(session.scalars(select(ForgottenDigest.digest))),
    )


def _pairs(
    session: Session,
    query: Select[str, int],
    key: InstrumentedAttribute[str],
    wanted: list[str] | None,
) -> dict[str, int]:
    """``query``'s (key, id) rows: all of them (None), or those of the keys wanted."""
    if wanted is None:
        return {k: v for k, v in session.execute(query)}
    found: dict[str, int] = {}
    for chunk in chunked(wanted, LOOKUP_CHUNK):
        found.update((k, v) for k, v in session.execute(query.where(one_of(session, key, chunk))))
    return found
