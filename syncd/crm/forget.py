"""``syncd forget``: a person (an address) or a company (a domain) forgotten everywhere, and
never logged again.

What goes:

- every activity whose only CRM reason was the forgotten address or domain (no other
  participant is a CRM contact or at a CRM account's domain): with its participants, body,
  links and sightings; its open follow-up tasks cancelled, in the calendars too;
- from every other activity: the forgotten participants and their contact links;
- the address (or any address at the domain, and the domain itself) wherever a text
  writes it: activities, tasks, contacts' names and titles, deleted items' subjects;
- the contact addresses, the contacts left with none, the account domains, and the
  accounts left with no domain, contact or deal;
- quarantined messages and skipped items that hold it, and the historical imports'
  records of the person.

Only whole addresses and domains match (``jimbob@`` is not ``bob@``). Message-IDs and
thread keys of activities kept are left as they are: they identify those messages (a
follow-up task's uid, a conversation), and are counted.

What stays is a SHA-256 digest, in ``forgotten``: the matcher (``blocklisted``, the skip's
key kept as a hash), the historical import (left out of what it stores, ``excluded``) and
the quarantine (no bytes kept) exclude anyone whose address or domain has it, so the person
is never logged again and their address is nowhere in clear. A CRM user's address, the
company's domains and free-mail domains are refused.

One transaction: ``--dry-run`` runs all of it and rolls back, so it shows exactly what the
real run removes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, delete, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from syncd.batching import chunked
from syncd.config import Settings
from syncd.crm import quarantine as quarantine_store
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
    RematchRequest,
    SkippedItem,
    Task,
    ThreadKey,
    User,
)
from syncd.crm.rows import LOOKUP_CHUNK
from syncd.matching.addresses import (
    domain_of,
    free_mail_domains,
    is_free_mail,
    normalize_address,
    normalize_domain,
)
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
    keys_kept: int = 0  # Message-IDs and thread keys of kept activities that hold it
    already: bool = False  # forgotten before: only what came since was removed


class _Needle:
    """The forgotten thing, as SQL and text see it."""

    def __init__(self, kind: Kind, value: str) -> None:
        self.kind, self.value = kind, value
        at = re.escape(value)
        # a whole word: jimbob@ is not bob@, notacme.com and acme.community not acme.com
        after = r"(?![\w-]|\.[\w-])"
        if kind == "address":  # quoted, after "mailto:" or "to=": still the address
            pattern = rf"(?<![\w.+@-]){at}{after}"
        else:  # an address at it or under it, "@acme.com", or the domain alone
            local = r"(?:[\w.+'=-]+@|@)?"
            pattern = rf"(?<![\w.+-]){local}(?:[\w-]+\.)*(?<![\w-]){at}{after}"
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
    _refuse_ours(session, settings, kind, value)
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


def _refuse_ours(session: Session, settings: Settings, kind: Kind, value: str) -> None:
    """What must never be forgotten: a CRM user's address, the company's own domains (and
    their subdomains), and a free-mail domain (everyone's): forgetting one would exclude
    every message of a salesperson, of the company, or of everyone on it, for good."""
    users = set(session.scalars(select(User.email)))
    if kind == "address":
        if value in users:
            raise ValueError(f"{value!r} is a CRM user's address; syncd never forgets its users")
        return
    own = {normalize_domain(d) for d in settings.company.domains} | {domain_of(u) for u in users}
    if any(value == d or d.endswith("." + value) or value.endswith("." + d) for d in own):
        raise ValueError(
            f"{value!r} is the company's own domain (company.domains); forget a person's "
            "address instead"
        )
    if is_free_mail(value) or any(d.endswith("." + value) for d in free_mail_domains()):
        raise ValueError(
            f"{value!r} is a free-mail domain (or holds one), everyone's; forget a person's "
            "address instead"
        )


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
    """The address in what is left: texts cleaned, rows about it removed. Keys that hold it
    (a Message-ID at a forgotten domain) are left as they are, and counted: they identify
    the messages kept (a follow-up task's uid, a conversation), and none is shown."""
    done.texts_cleaned += _clean_column(
        session,
        needle,
        Activity,
        [Activity.subject, Activity.snippet, Activity.body, Activity.match_note],
    )
    done.texts_cleaned += _clean_column(session, needle, Task, [Task.title, Task.description])
    done.texts_cleaned += _clean_column(session, needle, DroppedItem, [DroppedItem.subject])
    done.texts_cleaned += _clean_column(session, needle, Contact, [Contact.name, Contact.title])
    # quarantined messages one at a time: each may hold megabytes
    entries = session.execute(select(QuarantineEntry.id, QuarantineEntry.reason)).all()
    for entry_id, reason in entries:
        raw = quarantine_store.raw(session, entry_id) or b""
        if needle.text.search(reason) or needle.text.search(raw.decode("utf-8", "replace")):
            session.execute(delete(QuarantineEntry).where(QuarantineEntry.id == entry_id))
            done.quarantine_removed += 1
    for skip in session.scalars(
        select(SkippedItem).where(
            or_(needle.like(SkippedItem.provider_id), needle.like(SkippedItem.key))
        )
    ):
        if needle.text.search(skip.provider_id) or needle.text.search(skip.key or ""):
            session.delete(skip)
            done.skips_removed += 1
    for person in session.scalars(
        select(ImportPerson).where(
            or_(needle.like(ImportPerson.data), needle.like(ImportPerson.key))
        )
    ):
        if needle.address(person.key):
            session.delete(person)
            done.import_records_removed += 1
            continue
        cleaned = _clean_json(person.data, needle)
        if cleaned != person.data:
            person.data = cleaned
            done.import_records_removed += 1
    for request in session.scalars(select(RematchRequest).where(needle.like(RematchRequest.value))):
        if needle.text.search(request.value):
            session.delete(request)  # its activities are removed or cleaned already
    for column in (Activity.key, Activity.thread_key, ThreadKey.key, DroppedItem.key):
        done.keys_kept += sum(
            1
            for value in session.scalars(select(column).where(needle.like(column)))
            if needle.text.search(value)
        )


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
