"""Contacts created from the mail itself (``matching.create_contacts``).

A salesperson writes to someone new at a customer: the mail is logged (the account matches
by domain), but the person is nobody in the CRM. Under ``matching.create_contacts``:

- ``never`` (the default): they stay nobody;
- ``sent``: an unknown person at a known account whom a user wrote to becomes a contact;
- ``two-way``: only once they also wrote back (a user's mail to them and theirs to a user).

The evidence is the stored mail (participants and directions), so the same contacts are
created whatever order the mail arrives in: the batch that completes the evidence creates
the contact, in its own transaction, and re-matches every stored activity of that address
(``syncd.crm.rematch``). The skip rules of the historical import apply: internal people,
role and machine addresses (noreply@, mailer-daemon@ ...), blocklisted and forgotten
addresses are never created, and a person at a free-mail domain never is (no account is
known by it); bulk mail and auto-replies are never logged, so they are no evidence. A
created contact is marked ``auto_created`` and named by the display name its mail carried
most often; that name follows the mail until an admin loads the contact (``crm load`` makes
it the admin's: no longer auto-created).

Other passes running at the time may have looked the address up before it existed; the
address is queued for the daemon's re-match (``rematch_queue``), which links what they log.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm import rematch
from syncd.crm.models import Activity, ActivityParticipant, Contact, ContactAddress
from syncd.crm.recorder import Decision
from syncd.crm.rows import LOOKUP_CHUNK, one_of
from syncd.harvest.names import best_name, split_name
from syncd.harvest.people import is_role_address
from syncd.matching.addresses import domain_of
from syncd.matching.matcher import ContactRef, CrmIndex

log = logging.getLogger("syncd.crm")

SENT_ROLES = ("to", "cc", "bcc")


def create_contacts(
    session: Session, settings: Settings, index: CrmIndex, decisions: Sequence[Decision]
) -> int:
    """Create the contacts this stored batch completes the evidence of (see the module's
    docstring), in the batch's transaction; returns how many were created."""
    policy = settings.matching.create_contacts
    if policy == "never" or not decisions:
        return 0
    unknown: dict[str, int] = {}  # address -> the account of its domain
    for d in decisions:
        for p in d.match.participants:
            if p.contact_id is not None or p.user_id is not None or p.address in unknown:
                continue
            account = _candidate(p.address, index)
            if account is not None:
                unknown[p.address] = account
    known = _auto_created(session, decisions)
    if not unknown and not known:
        return 0
    evidence = _evidence(session, sorted(set(unknown) | set(known)))
    created: list[str] = []
    for address in sorted(unknown):
        sent, replied, _ = evidence.get(address, (False, False, Counter()))
        if not sent or (policy == "two-way" and not replied):
            continue
        if session.scalar(select(ContactAddress.id).where(ContactAddress.address == address)):
            continue  # another pass created it meanwhile
        names = evidence[address][2]
        name = best_name(names, address) or address
        split = split_name(name)
        contact = Contact(
            name=name[:200],
            account_id=unknown[address],
            auto_created=True,
            first_name=split[0][:100] if split else None,
            last_name=split[1][:100] if split else None,
        )
        session.add(contact)
        session.flush()
        session.add(ContactAddress(address=address, contact_id=contact.id))
        index.contacts[address] = ContactRef(contact.id, contact.name, contact.account_id)
        created.append(address)
    for address, contact in known.items():  # the name its mail carries most often, now
        name = best_name(evidence.get(address, (False, False, Counter()))[2], address)
        if name and name[:200] != contact.name:
            contact.name = name[:200]
            split = split_name(name)
            contact.first_name = split[0][:100] if split else None
            contact.last_name = split[1][:100] if split else None
    if created:
        session.flush()
        ids = rematch.touched(session, created, ())
        rematch.rematch(session, settings, sorted(ids))
        rematch.queue(session, addresses=created)  # passes that looked them up before
        log.info("%d contact(s) created from the mail (create_contacts = %s)", len(created), policy)
    return len(created)


def _candidate(address: str, index: CrmIndex) -> int | None:
    """The account of an address that may become a contact, or None: not a colleague, a
    role address, blocklisted or forgotten, and at a known account's domain."""
    if index.is_internal(address) or index.is_blocked(address) or is_role_address(address):
        return None
    return index.account_for_domain(domain_of(address))


def _auto_created(session: Session, decisions: Sequence[Decision]) -> dict[str, Contact]:
    """The auto-created contacts of this batch's participants, by address (their names
    follow their mail)."""
    addresses = sorted(
        {p.address for d in decisions for p in d.match.participants if p.contact_id is not None}
    )
    found: dict[str, Contact] = {}
    for chunk in chunked(addresses, LOOKUP_CHUNK):
        for address, contact in session.execute(
            select(ContactAddress.address, Contact)
            .join(Contact, Contact.id == ContactAddress.contact_id)
            .where(one_of(session, ContactAddress.address, chunk), Contact.auto_created)
        ):
            found[address] = contact
    return found


def _evidence(session: Session, addresses: list[str]) -> dict[str, tuple[bool, bool, Counter[str]]]:
    """Per address, from the stored mail: whether a user wrote to it, whether it wrote to a
    user, and the display names it carried (counted, in the order of the names: the
    most-often one wins, a tie by name, whatever the order the mail came in)."""
    sent: set[str] = set()
    replied: set[str] = set()
    names: dict[str, list[str]] = defaultdict(list)
    for chunk in chunked(addresses, LOOKUP_CHUNK):
        for address, name, role, direction in session.execute(
            select(
                ActivityParticipant.address,
                ActivityParticipant.name,
                ActivityParticipant.role,
                Activity.direction,
            )
            .join(Activity, Activity.id == ActivityParticipant.activity_id)
            .where(one_of(session, ActivityParticipant.address, chunk), Activity.kind == "email")
        ):
            if direction == "outbound" and role in SENT_ROLES:
                sent.add(address)
            elif direction == "inbound" and role == "from":
                replied.add(address)
            names[address].append(name)
    return {a: (a in sent, a in replied, Counter(sorted(names.get(a, [])))) for a in addresses}
