"""``syncd forget``: a person (an address) or a company (a domain) forgotten everywhere, and
never logged again.

What goes:

- every activity whose only CRM reason was the forgotten address or domain (no other
  participant is a CRM contact or at a CRM account's domain): with its participants, body,
  links and sightings; its follow-up tasks cancelled, in the calendars too;
- from every other activity: the forgotten participants, their links, and the address (or
  any address at the domain, and the domain itself) wherever it is written: subject, body,
  snippet, note;
- the contact addresses, the contacts left with none, the account domains, and the
  accounts left with no domain, contact or deal;
- every other trace: tasks' texts, quarantined messages that hold it, skipped items, the
  historical imports' people, and keys (Message-IDs, thread keys) that hold it, which are
  replaced by a hash of themselves (such an item is never read again: its forgotten
  participant makes it excluded).

What stays is its SHA-256 digest, in ``forgotten``: the matcher and the historical import
exclude anyone whose address or domain has that digest (as ``blocklisted`` and
``excluded``), so the person is never logged again and their address is nowhere in clear.

One transaction: ``--dry-run`` runs all of it and rolls back, so it shows exactly what the
real run removes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, delete, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm.corrections import remove_activities
from syncd.crm.models import (
    Account,
    AccountDomain,
    Activity,
    ActivityParticipant,
    Contact,
    ContactAddress,
    DroppedItem,
    ForgottenDigest,
    ImportPerson,
    Link,
    Opportunity,
    QuarantineEntry,
    Sighting,
    SkippedItem,
    Task,
    ThreadKey,
)
from syncd.crm.rows import LOOKUP_CHUNK
from syncd.matching.addresses import domain_of, normalize_address, normalize_domain
from syncd.matching.forgotten import Kind, digest, parents

FORGOTTEN = "[forgotten]"


@dataclass
class Forgotten:
    """What ``syncd forget`` removed (or, ``--dry-run``, would remove)."""

    kind: Kind
    value: str
    activities_removed: list[int] = field(default_factory=list)
    activities_cleaned: list[int] = field(default_factory=list)
    tasks_cancelled: int = 0
    contacts_removed: list[str] = field(default_factory=list)  # their names
    addresses_removed: int = 0
    domains_removed: int = 0
    accounts_removed: list[str] = field(default_factory=list)
    accounts_kept: list[str] = field(default_factory=list)  # with deals or other contacts
    texts_cleaned: int = 0
    quarantine_removed: int = 0
    skips_removed: int = 0
    import_records_removed: int = 0
    keys_hashed: int = 0
    already: bool = False  # forgotten before: only what came since was removed


class _Needle:
    """The forgotten thing, as SQL and text see it."""

    def __init__(self, kind: Kind, value: str) -> None:
        self.kind, self.value = kind, value
        at = re.escape(value)
        pattern = at if kind == "address" else rf"(?:[\w.+'=-]+@)?(?:[\w-]+\.)*{at}"
        self.text = re.compile(pattern, re.IGNORECASE)

    def address(self, address: str) -> bool:
        norm = normalize_address(address)
        if self.kind == "address":
            return norm == self.value
        d = domain_of(norm)
        return d == self.value or d.endswith("." + self.value)

    def domain(self, domain: str) -> bool:
        return self.kind == "domain" and (domain == self.value or domain.endswith("." + self.value))

    def like(self, column: Any) -> Any:
        """Rows whose column may hold it (a prefilter; the text pattern decides)."""
        escaped = self.value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return func.lower(cast(column, Text)).like(f"%{escaped}%", escape="\\")

    def clean(self, text: str | None) -> str | None:
        return self.text.sub(FORGOTTEN, text) if text else text


def forget(
    session: Session,
    settings: Settings,
    *,
    address: str | None = None,
    domain: str | None = None,
    now: datetime,
) -> Forgotten:
    """Forget ``address`` or ``domain`` (one of them) in the caller's transaction."""
    if (address is None) == (domain is None):
        raise ValueError("forget an address or a domain")
    kind: Kind = "address" if address else "domain"
    value = normalize_address(address) if address else normalize_domain(domain or "")
    if not value or (kind == "domain" and "." not in value):
        raise ValueError(f"{value!r} is not an {kind}")
    needle = _Needle(kind, value)
    done = Forgotten(kind, value)
    key = digest(kind, value)
    done.already = session.get(ForgottenDigest, key) is not None
    if not done.already:
        session.add(ForgottenDigest(digest=key, kind=kind, created_at=now))
    _activities(session, settings, needle, done, now)
    _contacts(session, needle, done)
    if kind == "domain":
        _domains(session, needle, done)
    _traces(session, needle, done)
    session.flush()
    return done


def _activities(
    session: Session, settings: Settings, needle: _Needle, done: Forgotten, now: datetime
) -> None:
    hits = session.scalars(
        select(ActivityParticipant).where(needle.like(ActivityParticipant.address))
    ).all()
    hits = [p for p in hits if needle.address(p.address)]
    ids = sorted({p.activity_id for p in hits})
    removed: list[Activity] = []
    for chunk in chunked(ids, LOOKUP_CHUNK):
        for activity in session.scalars(select(Activity).where(Activity.id.in_(chunk))):
            if _other_reason(session, activity, needle):
                _clean_activity(session, activity, needle)
                done.activities_cleaned.append(activity.id)
            else:
                removed.append(activity)
                done.activities_removed.append(activity.id)
    done.tasks_cancelled = remove_activities(session, settings, removed, now).tasks


def _other_reason(session: Session, activity: Activity, needle: _Needle) -> bool:
    """Whether another participant than the forgotten ones (and the users) is a CRM
    contact, or at a CRM account's domain (but a forgotten one)."""
    others = [
        p for p in activity.participants if p.user_id is None and not needle.address(p.address)
    ]
    if any(p.contact_id is not None for p in others):
        return True
    domains = {d for p in others for d in parents(domain_of(p.address)) if not needle.domain(d)}
    if not domains:
        return False
    return (
        session.scalar(select(AccountDomain.id).where(AccountDomain.domain.in_(sorted(domains))))
        is not None
    )


def _clean_activity(session: Session, activity: Activity, needle: _Needle) -> None:
    """The forgotten participants and their contact links out, the address out of texts."""
    gone = [p for p in activity.participants if needle.address(p.address)]
    contacts = {p.contact_id for p in gone if p.contact_id is not None}
    for p in gone:
        session.delete(p)
    if contacts:
        session.execute(
            delete(Link).where(
                Link.activity_id == activity.id,
                Link.type == "contact",
                Link.target_id.in_(sorted(contacts)),
            )
        )
    activity.subject = needle.clean(activity.subject) or ""
    activity.snippet = needle.clean(activity.snippet)
    activity.body = needle.clean(activity.body)
    activity.match_note = needle.clean(activity.match_note)


def _contacts(session: Session, needle: _Needle, done: Forgotten) -> None:
    rows = session.scalars(select(ContactAddress).where(needle.like(ContactAddress.address))).all()
    rows = [r for r in rows if needle.address(r.address)]
    touched = {r.contact_id for r in rows}
    for r in rows:
        session.delete(r)
    done.addresses_removed = len(rows)
    session.flush()
    for contact_id in sorted(touched):
        left = session.scalar(select(func.count()).where(ContactAddress.contact_id == contact_id))
        if left:
            continue
        contact = session.get(Contact, contact_id)
        if contact is None:
            continue
        done.contacts_removed.append(contact.name)
        session.execute(delete(Link).where(Link.type == "contact", Link.target_id == contact_id))
        session.delete(contact)


def _domains(session: Session, needle: _Needle, done: Forgotten) -> None:
    rows = session.scalars(select(AccountDomain).where(needle.like(AccountDomain.domain))).all()
    rows = [r for r in rows if needle.domain(r.domain)]
    touched = {r.account_id for r in rows}
    for r in rows:
        session.delete(r)
    done.domains_removed = len(rows)
    session.flush()
    for account_id in sorted(touched):
        account = session.get(Account, account_id)
        if account is None:
            continue
        in_use = any(
            session.scalar(select(model.id).where(column == account_id).limit(1)) is not None
            for model, column in (
                (AccountDomain, AccountDomain.account_id),
                (Contact, Contact.account_id),
                (Opportunity, Opportunity.account_id),
            )
        )
        if in_use:
            done.accounts_kept.append(account.name)
            account.name = needle.clean(account.name) or FORGOTTEN
            continue
        done.accounts_removed.append(account.name)
        session.execute(delete(Link).where(Link.type == "account", Link.target_id == account_id))
        session.delete(account)


def _traces(session: Session, needle: _Needle, done: Forgotten) -> None:
    """The address in what is left: texts cleaned, keys hashed, rows that are about it
    removed."""
    done.texts_cleaned += _clean_column(session, needle, Task, [Task.title, Task.description])
    done.texts_cleaned += _clean_column(session, needle, DroppedItem, [DroppedItem.subject])
    done.texts_cleaned += _clean_column(session, needle, Contact, [Contact.name, Contact.title])
    for entry in session.scalars(select(QuarantineEntry)):
        raw = (entry.raw or b"").lower()
        if needle.text.search(entry.reason) or needle.text.search(raw.decode("utf-8", "replace")):
            session.delete(entry)
            done.quarantine_removed += 1
    for skip in session.scalars(
        select(SkippedItem).where(
            or_(needle.like(SkippedItem.provider_id), needle.like(SkippedItem.key))
        )
    ):
        session.delete(skip)
        done.skips_removed += 1
    for person in session.scalars(select(ImportPerson).where(needle.like(ImportPerson.data))):
        if needle.address(person.key):
            session.delete(person)
        else:
            person.data = _clean_json(person.data, needle)
        done.import_records_removed += 1
    for person in session.scalars(select(ImportPerson).where(needle.like(ImportPerson.key))):
        session.delete(person)
        done.import_records_removed += 1
    done.keys_hashed += _hash_keys(session, needle, Activity.key, Activity)
    done.keys_hashed += _hash_keys(session, needle, Activity.thread_key, Activity)
    done.keys_hashed += _hash_keys(session, needle, ThreadKey.key, ThreadKey)
    done.keys_hashed += _hash_keys(session, needle, Sighting.provider_id, Sighting)
    done.keys_hashed += _hash_keys(session, needle, DroppedItem.key, DroppedItem)


def _clean_column(
    session: Session, needle: _Needle, model: Any, columns: list[InstrumentedAttribute[Any]]
) -> int:
    cleaned = 0
    for row in session.scalars(select(model).where(or_(*(needle.like(c) for c in columns)))):
        for column in columns:
            value = getattr(row, column.key)
            new = needle.clean(value)
            if new != value:
                setattr(row, column.key, new)
                cleaned += 1
    return cleaned


def _clean_json(value: Any, needle: _Needle) -> Any:
    """A JSON value with every string that holds it cleaned, and every key too."""
    if isinstance(value, str):
        return needle.clean(value)
    if isinstance(value, list):
        return [
            _clean_json(v, needle)
            for v in value
            if not (isinstance(v, str) and needle.text.search(v))
        ]
    if isinstance(value, dict):
        return {
            k: _clean_json(v, needle) for k, v in value.items() if not needle.text.search(str(k))
        }
    return value


def _hash_keys(
    session: Session, needle: _Needle, column: InstrumentedAttribute[str], model: Any
) -> int:
    """Keys and ids that hold it replaced by a hash of themselves (what stays unique stays
    unique; such an item is never read again: its forgotten participant excludes it)."""
    hashed = 0
    for row in session.scalars(select(model).where(needle.like(column))):
        value = getattr(row, column.key)
        if value and needle.text.search(value):
            setattr(row, column.key, _hashed(value))
            hashed += 1
    return hashed


def _hashed(value: str) -> str:
    return "hash:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]
