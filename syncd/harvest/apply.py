"""The import's verdicts made real, and undone: contacts, their addresses and accounts
created (each marked with the import's id), what each mailbox knows of each contact
(``contact_knowledge``), and :func:`undo`.

Applying is idempotent: a person whose address is already on a contact (an earlier run of
the same import that was killed, or a second complete run) adds no second contact; their
knowledge rows are set, not added to, so a re-run counts nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from syncd.crm.models import (
    Account,
    AccountDomain,
    Activity,
    ActivityParticipant,
    Contact,
    ContactAddress,
    ContactKnowledge,
    Link,
    Opportunity,
    OpportunityContact,
)
from syncd.harvest import store
from syncd.harvest.decide import Verdict
from syncd.harvest.people import People

# public suffixes of two labels common enough to name accounts right without a list
_SECOND_LEVEL = {"co", "com", "org", "net", "ac", "gov", "edu", "ne", "or", "gv"}


@dataclass
class Applied:
    contacts_created: int = 0
    contacts_updated: int = 0
    accounts_created: int = 0
    addresses_added: int = 0


def account_name(domain: str) -> str:
    """``acme.com`` -> ``Acme``, ``mail.acme.co.uk`` -> ``Acme``, ``x-y.io`` -> ``X-Y``."""
    labels = domain.split(".")
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL and len(labels[-1]) == 2:
        name = labels[-3]
    else:
        name = labels[-2] if len(labels) >= 2 else labels[0]
    return "-".join(part.capitalize() for part in name.split("-"))


def apply(
    session: Session,
    import_id: str | None,
    verdicts: Sequence[Verdict],
    by_mailbox: Mapping[str, People],
    *,
    update_names: bool,
) -> Applied:
    """Apply one chunk of verdicts (call inside a transaction). ``import_id``: the import
    that creates them (None: the daemon's address-book sync, whose contacts are the CRM's)."""
    done = Applied()
    for v in verdicts:
        if v.action == "skip":
            continue
        contact = _existing(session, v)
        if contact is None:
            contact = Contact(
                name=v.name[:200],
                first_name=v.first_last[0][:100] if v.first_last else None,
                last_name=v.first_last[1][:100] if v.first_last else None,
                account_id=_account_id(session, import_id, v, done),
                import_id=import_id,
            )
            session.add(contact)
            session.flush()
            done.contacts_created += 1
        else:
            if update_names:
                contact.name = v.name[:200]
                if v.first_last:
                    contact.first_name, contact.last_name = v.first_last
                contact.account_id = _account_id(session, import_id, v, done) or contact.account_id
            done.contacts_updated += 1
        done.addresses_added += _add_addresses(session, import_id, contact.id, v)
        _know(session, import_id, contact.id, {v.person.key, *v.person.aliases}, by_mailbox)
    return done


def _existing(session: Session, v: Verdict) -> Contact | None:
    """The contact that already holds one of the person's addresses."""
    if v.contact_id is not None:
        return session.get(Contact, v.contact_id)
    spellings = [*v.person.spellings, v.person.key]
    return session.scalar(
        select(Contact)
        .join(ContactAddress)
        .where(ContactAddress.address.in_(spellings))
        .order_by(Contact.id)
        .limit(1)
    )


def _account_id(session: Session, import_id: str | None, v: Verdict, done: Applied) -> int | None:
    if v.domain is None:
        return None
    found = session.scalar(select(AccountDomain.account_id).where(AccountDomain.domain == v.domain))
    if found is not None or not v.new_account:
        return found
    name = account_name(v.domain)
    if session.scalar(select(Account.id).where(Account.name == name)) is not None:
        name = v.domain  # the name is another account's: the domain names this one
    account = Account(name=name[:300], import_id=import_id)
    account.domains.append(AccountDomain(domain=v.domain))
    session.add(account)
    session.flush()
    done.accounts_created += 1
    return account.id


def _add_addresses(session: Session, import_id: str | None, contact_id: int, v: Verdict) -> int:
    """Every spelling of the person not yet on a contact becomes one of its addresses."""
    spellings = sorted(set(v.person.spellings) or {v.person.key})
    taken = set(
        session.scalars(select(ContactAddress.address).where(ContactAddress.address.in_(spellings)))
    )
    new = [a for a in spellings if a not in taken and len(a) <= 320]
    for address in new:
        session.add(ContactAddress(address=address, contact_id=contact_id, import_id=import_id))
    return len(new)


def _know(
    session: Session,
    import_id: str | None,
    contact_id: int,
    keys: set[str],
    by_mailbox: Mapping[str, People],
) -> None:
    for mailbox, people in by_mailbox.items():
        found = [people.by_key[k] for k in sorted(keys) if k in people.by_key]
        if not found:
            continue
        person = found[0]
        if len(found) > 1:  # one person under several keys (a card joined them): add up
            person = store.load(person.key, store.dump(person))
            for more in found[1:]:
                person.merge(more)
        row = session.get(ContactKnowledge, (contact_id, mailbox))
        if row is None:
            row = ContactKnowledge(contact_id=contact_id, mailbox=mailbox)
            session.add(row)
        row.first_seen, row.last_seen = person.first_seen, person.last_seen
        row.sent, row.received, row.meetings = person.sent, person.received, person.meetings
        row.import_id = import_id


@dataclass
class Undone:
    contacts_removed: int = 0
    contacts_kept: list[str] = field(default_factory=list)  # with activity of their own
    accounts_removed: int = 0
    accounts_kept: list[str] = field(default_factory=list)
    addresses_removed: int = 0


def undo(session: Session, import_id: str, since: datetime) -> Undone:
    """Remove what the import created that has no activity of its own since: its contacts
    (with their addresses), the addresses it added to other contacts, what it counted,
    and its accounts left with no contact, deal or activity. Activity "of its own" is
    activity logged ``since`` (the import's start). Call inside a transaction."""
    result = Undone()
    contacts = list(session.scalars(select(Contact).where(Contact.import_id == import_id)))
    for contact in contacts:
        if _has_activity(session, contact.id, since):
            result.contacts_kept.append(contact.name)
            contact.import_id = None  # it is the CRM's own now
            continue
        session.delete(contact)
        result.contacts_removed += 1
    session.flush()
    used = exists().where(ActivityParticipant.address == ContactAddress.address)
    gone = session.execute(
        delete(ContactAddress).where(ContactAddress.import_id == import_id, ~used)
    )
    result.addresses_removed = int(gone.rowcount or 0)  # type: ignore[attr-defined]
    session.execute(delete(ContactKnowledge).where(ContactKnowledge.import_id == import_id))
    for account in session.scalars(select(Account).where(Account.import_id == import_id)):
        if _account_in_use(session, account.id, since):
            result.accounts_kept.append(account.name)
            account.import_id = None
            continue
        session.delete(account)
        result.accounts_removed += 1
    return result


def _has_activity(session: Session, contact_id: int, since: datetime) -> bool:
    new = select(Activity.id).where(Activity.created_at >= since)
    return bool(
        session.scalar(
            select(
                exists().where(
                    ActivityParticipant.contact_id == contact_id,
                    ActivityParticipant.activity_id.in_(new),
                )
            )
        )
        or session.scalar(
            select(
                exists().where(
                    Link.type == "contact", Link.target_id == contact_id, Link.activity_id.in_(new)
                )
            )
        )
        or session.scalar(select(exists().where(OpportunityContact.contact_id == contact_id)))
    )


def _account_in_use(session: Session, account_id: int, since: datetime) -> bool:
    new = select(Activity.id).where(Activity.created_at >= since)
    return bool(
        session.scalar(select(exists().where(Contact.account_id == account_id)))
        or session.scalar(select(exists().where(Opportunity.account_id == account_id)))
        or session.scalar(
            select(
                exists().where(
                    Link.type == "account", Link.target_id == account_id, Link.activity_id.in_(new)
                )
            )
        )
    )
