"""What the CRM already holds that the import's verdicts depend on (:class:`~.decide.Crm`),
read once before deciding."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.config import Settings
from syncd.crm.models import Account, AccountDomain, Contact, ContactAddress, User
from syncd.harvest.decide import Crm
from syncd.harvest.people import merge_key
from syncd.matching.addresses import domain_of, normalize_domain


def known_crm(session: Session, settings: Settings, import_id: str | None = None) -> Crm:
    """The CRM as the verdicts see it: without what the import ``import_id`` itself created
    (so a resumed import reaches the verdicts of an uninterrupted one). The company's
    domains are ``company.domains``, else the domains of its users."""
    users = list(session.scalars(select(User.email)))
    own_domains = {normalize_domain(d) for d in settings.company.domains}
    contacts = select(ContactAddress.address, ContactAddress.contact_id).join(Contact)
    accounts = select(AccountDomain.domain, AccountDomain.account_id).join(Account)
    if import_id is not None:
        contacts = contacts.where(Contact.import_id.is_(None) | (Contact.import_id != import_id))
        accounts = accounts.where(Account.import_id.is_(None) | (Account.import_id != import_id))
    return Crm(
        internal_domains=frozenset(own_domains or {domain_of(u) for u in users}),
        user_addresses=frozenset(merge_key(u) for u in users) | frozenset(users),
        excluded_addresses=frozenset(settings.exclusions.addresses),
        excluded_domains=frozenset(settings.exclusions.domains),
        contact_by_address={a: c for a, c in session.execute(contacts)},
        account_by_domain={d: a for d, a in session.execute(accounts)},
    )
