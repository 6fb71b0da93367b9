"""``syncd crm load``: CRM records from CSV (UTF-8, a header row, ``;`` between values).

Upserts by natural key: a user and a contact by email, an account by external id, domain
or name, an opportunity by external id. One transaction per file: every bad row is
reported with its line and column, and nothing of that file is written. Every value is
checked against the column it goes to (``syncd.crm.loader_values``: its length, no control
characters; an amount finite and within Numeric(18, 2)) before the database sees it, on
SQLite as on PostgreSQL.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from syncd.config import check_holidays, check_timezone, parse_working_hours
from syncd.crm import loader_values as values
from syncd.crm import rematch
from syncd.crm.loader_values import Row, RowError
from syncd.crm.models import (
    Account,
    AccountDomain,
    Contact,
    ContactAddress,
    Opportunity,
    OpportunityContact,
    User,
)
from syncd.matching.addresses import is_free_mail, normalize_domain


class RecordKind(StrEnum):
    """What a CSV file holds (the choices of ``syncd crm load``)."""

    users = "users"
    accounts = "accounts"
    contacts = "contacts"
    opportunities = "opportunities"


COLUMNS: dict[RecordKind, tuple[set[str], set[str]]] = {
    # kind: (required, optional)
    RecordKind.users: (
        {"email", "name"},
        {"timezone", "working_hours", "holidays", "call_list"},
    ),
    RecordKind.accounts: ({"name", "domains"}, {"external_id"}),
    RecordKind.contacts: ({"emails", "name"}, {"account", "title", "phone"}),
    RecordKind.opportunities: (
        {"external_id", "name", "account", "owner"},
        {"stage", "amount", "currency", "close_date", "status", "contacts"},
    ),
}
MAX_REPORTED = 50


class LoadError(Exception):
    """A CSV file cannot be loaded; the message lists every bad row."""


@dataclass
class LoadReport:
    kind: RecordKind
    created: int = 0
    updated: int = 0
    # what was loaded all the same, each with its line ("... line 4: ..."); --strict: errors
    warnings: list[str] = field(default_factory=list)
    where: str = ""  # the row being loaded ("FILE line N"), for a warning's prefix
    # what changed in a way that may change how stored activities match (a new address or
    # domain, a contact moved to another account, a new or changed deal): the daemon
    # re-matches the activities they touch (syncd.crm.rematch)
    addresses: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)
    opportunities: set[int] = field(default_factory=set)
    queued: int = 0  # re-match requests queued for the daemon

    def warn(self, message: str) -> None:
        self.warnings.append(f"{self.where}: {message}")


def _account(session: Session, column: str, value: str) -> Account:
    """An account named by one of its domains or by its name."""
    by_domain = session.scalar(
        select(Account).join(AccountDomain).where(AccountDomain.domain == normalize_domain(value))
    )
    found = by_domain or session.scalar(select(Account).where(Account.name == value))
    if found is None:
        raise RowError(column, f"no account with domain or name {value!r}; load accounts first")
    return found


Record = TypeVar("Record", User, Account, Contact, Opportunity)


def _upsert(
    session: Session, report: LoadReport, found: Record | None, new: Callable[[], Record]
) -> Record:
    """``found``, counted as updated; else ``new()`` added to the session, counted as
    created."""
    if found is not None:
        report.updated += 1
        return found
    record = new()
    session.add(record)
    report.created += 1
    return record


def _load_user(session: Session, row: Row, report: LoadReport) -> None:
    email = values.address("email", values.required(row, "email"))
    name = values.required(row, "name", User.name)
    tz = values.optional(row, "timezone", User.timezone)
    if tz:
        try:
            check_timezone(tz)
        except ValueError as exc:
            raise RowError("timezone", str(exc)) from None
    hours = values.optional(row, "working_hours", User.working_hours)
    if hours:
        try:
            parse_working_hours(hours)
        except ValueError as exc:
            raise RowError("working_hours", str(exc)) from None
    days_off = values.optional(row, "holidays", User.holidays)
    if days_off:
        try:
            days_off = check_holidays(days_off)
        except ValueError as exc:
            raise RowError("holidays", str(exc)) from None
    calls = values.yes_no(row, "call_list")
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(email=email, name=name)
        session.add(user)
        report.created += 1
        report.addresses.add(email)  # a colleague now: internal, no longer a contact
    else:
        report.updated += 1
    user.name, user.timezone, user.working_hours = name, tz, hours
    user.holidays, user.call_list = days_off, calls


def _load_account(session: Session, row: Row, report: LoadReport) -> None:
    name = values.required(row, "name", Account.name)
    domains = _domains(row, report)
    external_id = values.optional(row, "external_id", Account.external_id)
    found = _find_account(session, external_id, domains, name)
    account = _upsert(session, report, found, lambda: Account(name=name))
    account.name = name
    account.external_id = external_id or account.external_id
    session.flush()
    for d in domains:
        owner = session.scalar(select(AccountDomain).where(AccountDomain.domain == d))
        if owner is None:
            session.add(AccountDomain(domain=d, account_id=account.id))
            report.domains.add(d)
        elif owner.account_id != account.id:
            raise RowError("domains", f"domain {d!r} already belongs to another account")


def _domains(row: Row, report: LoadReport) -> list[str]:
    """The account's domains, normalised. A free-mail domain (gmail.com: everyone's) cannot
    tell an account: it is left out with a warning, and the rest of the row loads."""
    domains = [
        values.fit("domains", normalize_domain(d), AccountDomain.domain)
        for d in values.split(values.required(row, "domains"))
    ]
    kept = []
    for d in domains:
        if "." not in d:
            raise RowError("domains", f"{d!r} is not a domain such as 'acme.com'")
        if is_free_mail(d):
            report.warn(
                f"column 'domains': {d!r} is a free-mail domain, which cannot tell an account: "
                "left out of the account's domains (remove it from the file)"
            )
        else:
            kept.append(d)
    if not kept:
        raise RowError("domains", "no domain but free-mail ones; give the company's own domain")
    return kept


def _find_account(
    session: Session, external_id: str | None, domains: list[str], name: str
) -> Account | None:
    """The account a row updates: by external id, else by one of its domains, else by
    name."""
    account = None
    if external_id:
        account = session.scalar(select(Account).where(Account.external_id == external_id))
    if account is None:
        account = session.scalar(
            select(Account).join(AccountDomain).where(AccountDomain.domain.in_(domains))
        )
    if account is None:
        account = session.scalar(select(Account).where(Account.name == name))
    return account


def _load_contact(session: Session, row: Row, report: LoadReport) -> None:
    emails = [values.address("emails", e) for e in values.split(values.required(row, "emails"))]
    name = values.required(row, "name", Contact.name)
    account_value = values.given(row, "account")
    account = _account(session, "account", account_value) if account_value else None
    contact = _upsert(
        session, report, _contact_of(session, emails, name), lambda: Contact(name=name)
    )
    moved = account is not None and contact.account_id != account.id
    contact.name = name
    contact.auto_created = False  # the admin's now: its name no longer follows its mail
    contact.account_id = account.id if account else contact.account_id
    contact.title = values.optional(row, "title", Contact.title) or contact.title
    contact.phone = values.optional(row, "phone", Contact.phone) or contact.phone
    session.flush()
    have = {a.address for a in contact.addresses}
    for e in emails:
        if e not in have:
            session.add(ContactAddress(address=e, contact_id=contact.id))
            report.addresses.add(e)
    if moved:  # its mail now belongs to another account
        report.addresses |= have | set(emails)


def _contact_of(session: Session, emails: list[str], name: str) -> Contact | None:
    """The contact a row updates: the one of its first address (the row's key), or none
    (a new contact). Another of its addresses already on another contact is an error that
    names both: loading it would take the address from that contact."""
    found = select(ContactAddress.address, ContactAddress.contact_id).where(
        ContactAddress.address.in_(emails)
    )
    owners: dict[str, int] = {address: owner for address, owner in session.execute(found)}
    mine = owners.get(emails[0])
    for address in emails[1:]:
        other = owners.get(address)
        if other is not None and other != mine:
            owner = session.get(Contact, other)
            this = f"contact {name!r}" + (" (a new one)" if mine is None else "")
            raise RowError(
                "emails",
                f"{address!r} belongs to contact {owner.name if owner else other!r} "
                f"(id {other}), not to {this}, whose first address is {emails[0]!r}; "
                "an address is one contact's: remove it from this row, or give that "
                "contact's row instead",
            )
    return session.get(Contact, mine) if mine is not None else None


def _load_opportunity(session: Session, row: Row, report: LoadReport) -> None:
    external_id = values.required(row, "external_id", Opportunity.external_id)
    name = values.required(row, "name", Opportunity.name)
    stage = values.optional(row, "stage", Opportunity.stage)
    account = _account(session, "account", values.required(row, "account"))
    owner = _owner(session, row)
    status = values.status(row)
    amount = values.amount(row["amount"]) if values.given(row, "amount") else None
    currency = values.currency(row)
    close_date = values.close_date(row)
    roles = _contact_roles(session, row)
    found = session.scalar(select(Opportunity).where(Opportunity.external_id == external_id))
    opp = _upsert(session, report, found, lambda: Opportunity(external_id=external_id))
    before = None if found is None else (found.account_id, found.status)
    opp.name, opp.account_id, opp.owner_id, opp.status = name, account.id, owner.id, status
    opp.stage = stage
    opp.amount, opp.currency, opp.close_date = amount, currency, close_date
    session.flush()
    current = {oc.contact_id: oc for oc in opp.contacts}
    for contact_id, contact_role in roles.items():
        if contact_id in current:
            current[contact_id].role = contact_role
        else:
            opp.contacts.append(OpportunityContact(contact_id=contact_id, role=contact_role))
    if before != (account.id, status) or not roles.keys() <= current.keys():
        report.opportunities.add(opp.id)  # new, moved, opened or closed, or with new roles


def _owner(session: Session, row: Row) -> User:
    owner_email = values.address("owner", values.required(row, "owner"))
    owner = session.scalar(select(User).where(User.email == owner_email))
    if owner is None:
        raise RowError("owner", f"no CRM user {owner_email!r}; load users first")
    return owner


def _contact_roles(session: Session, row: Row) -> dict[int, str | None]:
    """``contacts``: ``address=role`` entries, as contact id -> role (None: no role)."""
    roles: dict[int, str | None] = {}
    for entry in values.split(row.get("contacts") or ""):
        address, _, role = entry.partition("=")
        norm = values.address("contacts", address)
        contact_id = session.scalar(
            select(ContactAddress.contact_id).where(ContactAddress.address == norm)
        )
        if contact_id is None:
            raise RowError("contacts", f"no contact with address {norm!r}; load contacts first")
        roles[contact_id] = values.fit("contacts", role.strip(), OpportunityContact.role) or None
    return roles


LOADERS: dict[RecordKind, Callable[[Session, Row, LoadReport], None]] = {
    RecordKind.users: _load_user,
    RecordKind.accounts: _load_account,
    RecordKind.contacts: _load_contact,
    RecordKind.opportunities: _load_opportunity,
}


def load_csv(
    session: Session, kind: RecordKind | str, path: Path, *, strict: bool = False
) -> LoadReport:
    """Load one file into the caller's transaction; raise LoadError listing every bad row.
    What loads with a warning (a free-mail domain left out) is in the report's
    ``warnings``; ``strict``: a warning is an error like any other."""
    if kind not in COLUMNS:
        raise LoadError(f"unknown record kind {kind!r}; use one of {', '.join(COLUMNS)}")
    kind = RecordKind(kind)
    reader = _reader(path, kind)
    report = LoadReport(kind)
    errors: list[str] = []
    for row in reader:
        report.where = f"{path} line {reader.line_num}"
        warned = len(report.warnings)
        error = _load_row(session, kind, row, report, report.where)
        if error:
            errors.append(error)
        if strict:
            errors.extend(report.warnings[warned:])
        if len(errors) >= MAX_REPORTED:
            errors.append("... (stopped after 50 errors)")
            break
    if errors:
        raise LoadError("nothing was loaded from this file:\n  " + "\n  ".join(errors))
    report.queued = rematch.queue(session, report.addresses, report.domains, report.opportunities)
    return report


def _reader(path: Path, kind: RecordKind) -> csv.DictReader[str]:
    """The file's rows, its header checked against the kind's columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise LoadError(
            f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8"
        ) from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    _check_header(path, kind, header)
    return reader


def _check_header(path: Path, kind: RecordKind, header: list[str]) -> None:
    """Every required column present, and no column the kind does not know."""
    required, optional = COLUMNS[kind]
    unknown = [h for h in header if h not in required | optional]
    missing = sorted(required - set(header))
    if not unknown and not missing:
        return
    parts = []
    if unknown:
        parts.append(f"unknown column(s) {', '.join(repr(u) for u in unknown)}")
    if missing:
        parts.append(f"missing required column(s) {', '.join(repr(m) for m in missing)}")
    allowed = ", ".join(sorted(required)) + "; optional: " + ", ".join(sorted(optional))
    raise LoadError(f"{path} line 1: {' and '.join(parts)}; {kind} columns are {allowed}")


def _load_row(
    session: Session, kind: RecordKind, row: Row, report: LoadReport, where: str
) -> str | None:
    """Load one row in a savepoint; the error that names its problem, if any."""
    if None in row:
        return f"{where}: more values than columns"
    try:
        with session.begin_nested():
            LOADERS[kind](session, row, report)
    except RowError as exc:
        value = values.shown(values.given(row, exc.column))
        return f"{where}, column {exc.column!r} (value {value}): {exc}"
    except StatementError as exc:  # a check above missed something: never the SQL
        orig = exc.orig if exc.orig is not None else exc
        first = str(orig).splitlines()[0][:200] if str(orig) else ""
        return (
            f"{where}: the CRM database refused this row "
            f"({orig.__class__.__name__}: {first}); fix the row"
        )
    return None
