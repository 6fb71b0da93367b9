"""``syncd crm load``: CRM records from CSV (UTF-8, a header row, ``;`` between values).

Upserts by natural key: a user and a contact by email, an account by external id, domain
or name, an opportunity by external id. One transaction per file: every bad row is
reported with its line and column, and nothing of that file is written.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.config import check_timezone, parse_working_hours
from syncd.crm.models import (
    Account,
    AccountDomain,
    Contact,
    ContactAddress,
    Opportunity,
    OpportunityContact,
    User,
)
from syncd.matching.addresses import is_free_mail, normalize_address, normalize_domain

COLUMNS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required, optional)
    "users": ({"email", "name"}, {"timezone", "working_hours"}),
    "accounts": ({"name", "domains"}, {"external_id"}),
    "contacts": ({"emails", "name"}, {"account", "title", "phone"}),
    "opportunities": (
        {"external_id", "name", "account", "owner"},
        {"stage", "amount", "currency", "close_date", "status", "contacts"},
    ),
}
MAX_REPORTED = 50


class LoadError(Exception):
    """A CSV file cannot be loaded; the message lists every bad row."""


class RowError(Exception):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


@dataclass
class LoadReport:
    kind: str
    created: int = 0
    updated: int = 0


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(";") if v.strip()]


def _address(column: str, value: str) -> str:
    address = normalize_address(value)
    if not address:
        raise RowError(column, f"{value!r} is not an email address (name@domain)")
    return address


def _required(row: dict[str, str], column: str) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise RowError(column, "is empty; this column is required")
    return value


def _account(session: Session, column: str, value: str) -> Account:
    """An account named by one of its domains or by its name."""
    by_domain = session.scalar(
        select(Account).join(AccountDomain).where(AccountDomain.domain == normalize_domain(value))
    )
    found = by_domain or session.scalar(select(Account).where(Account.name == value))
    if found is None:
        raise RowError(column, f"no account with domain or name {value!r}; load accounts first")
    return found


def _load_user(session: Session, row: dict[str, str], report: LoadReport) -> None:
    email = _address("email", _required(row, "email"))
    name = _required(row, "name")
    tz = (row.get("timezone") or "").strip() or None
    if tz:
        try:
            check_timezone(tz)
        except ValueError as exc:
            raise RowError("timezone", str(exc)) from None
    hours = (row.get("working_hours") or "").strip() or None
    if hours:
        try:
            parse_working_hours(hours)
        except ValueError as exc:
            raise RowError("working_hours", str(exc)) from None
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        session.add(User(email=email, name=name, timezone=tz, working_hours=hours))
        report.created += 1
    else:
        user.name, user.timezone, user.working_hours = name, tz, hours
        report.updated += 1


def _load_account(session: Session, row: dict[str, str], report: LoadReport) -> None:
    name = _required(row, "name")
    domains = [normalize_domain(d) for d in _split(_required(row, "domains"))]
    for d in domains:
        if "." not in d:
            raise RowError("domains", f"{d!r} is not a domain such as 'acme.com'")
        if is_free_mail(d):
            raise RowError(
                "domains",
                f"{d!r} is a free-mail domain and cannot identify an account; remove it",
            )
    external_id = (row.get("external_id") or "").strip() or None
    account = None
    if external_id:
        account = session.scalar(select(Account).where(Account.external_id == external_id))
    if account is None:
        account = session.scalar(
            select(Account).join(AccountDomain).where(AccountDomain.domain.in_(domains))
        )
    if account is None:
        account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        account = Account(name=name, external_id=external_id)
        session.add(account)
        report.created += 1
    else:
        account.name = name
        account.external_id = external_id or account.external_id
        report.updated += 1
    session.flush()
    for d in domains:
        owner = session.scalar(select(AccountDomain).where(AccountDomain.domain == d))
        if owner is None:
            session.add(AccountDomain(domain=d, account_id=account.id))
        elif owner.account_id != account.id:
            raise RowError("domains", f"domain {d!r} already belongs to another account")


def _load_contact(session: Session, row: dict[str, str], report: LoadReport) -> None:
    emails = [_address("emails", e) for e in _split(_required(row, "emails"))]
    name = _required(row, "name")
    account_value = (row.get("account") or "").strip()
    account = _account(session, "account", account_value) if account_value else None
    owners = set(
        session.scalars(select(ContactAddress.contact_id).where(ContactAddress.address.in_(emails)))
    )
    if len(owners) > 1:
        raise RowError("emails", "these addresses belong to different contacts; split the row")
    contact = session.get(Contact, owners.pop()) if owners else None
    if contact is None:
        contact = Contact(name=name)
        session.add(contact)
        report.created += 1
    else:
        report.updated += 1
    contact.name = name
    contact.account_id = account.id if account else contact.account_id
    contact.title = (row.get("title") or "").strip() or contact.title
    contact.phone = (row.get("phone") or "").strip() or contact.phone
    session.flush()
    have = {a.address for a in contact.addresses}
    for e in emails:
        if e not in have:
            session.add(ContactAddress(address=e, contact_id=contact.id))


def _load_opportunity(session: Session, row: dict[str, str], report: LoadReport) -> None:
    external_id = _required(row, "external_id")
    name = _required(row, "name")
    account = _account(session, "account", _required(row, "account"))
    owner_email = _address("owner", _required(row, "owner"))
    owner = session.scalar(select(User).where(User.email == owner_email))
    if owner is None:
        raise RowError("owner", f"no CRM user {owner_email!r}; load users first")
    status = (row.get("status") or "open").strip().lower()
    if status not in ("open", "won", "lost"):
        raise RowError("status", f"{status!r} is not one of open, won, lost")
    amount = None
    if (row.get("amount") or "").strip():
        try:
            amount = Decimal(row["amount"].strip().replace(",", ""))
        except InvalidOperation:
            raise RowError(
                "amount", f"{row['amount']!r} is not a number such as 12500.00"
            ) from None
    currency = (row.get("currency") or "").strip().upper() or None
    if currency and (len(currency) != 3 or not currency.isalpha()):
        raise RowError("currency", f"{currency!r} is not an ISO 4217 code such as EUR")
    close_date = None
    if (row.get("close_date") or "").strip():
        try:
            close_date = date.fromisoformat(row["close_date"].strip())
        except ValueError:
            raise RowError(
                "close_date", f"{row['close_date']!r} is not a date such as 2026-12-31"
            ) from None
    roles: dict[int, str | None] = {}
    for entry in _split(row.get("contacts") or ""):
        address, _, role = entry.partition("=")
        norm = _address("contacts", address)
        contact_id = session.scalar(
            select(ContactAddress.contact_id).where(ContactAddress.address == norm)
        )
        if contact_id is None:
            raise RowError("contacts", f"no contact with address {norm!r}; load contacts first")
        roles[contact_id] = role.strip() or None
    opp = session.scalar(select(Opportunity).where(Opportunity.external_id == external_id))
    if opp is None:
        opp = Opportunity(external_id=external_id)
        session.add(opp)
        report.created += 1
    else:
        report.updated += 1
    opp.name, opp.account_id, opp.owner_id, opp.status = name, account.id, owner.id, status
    opp.stage = (row.get("stage") or "").strip() or None
    opp.amount, opp.currency, opp.close_date = amount, currency, close_date
    session.flush()
    current = {oc.contact_id: oc for oc in opp.contacts}
    for contact_id, contact_role in roles.items():
        if contact_id in current:
            current[contact_id].role = contact_role
        else:
            opp.contacts.append(OpportunityContact(contact_id=contact_id, role=contact_role))


LOADERS: dict[str, Callable[[Session, dict[str, str], LoadReport], None]] = {
    "users": _load_user,
    "accounts": _load_account,
    "contacts": _load_contact,
    "opportunities": _load_opportunity,
}


def load_csv(session: Session, kind: str, path: Path) -> LoadReport:
    """Load one file into the caller's transaction; raise LoadError listing every bad row."""
    if kind not in COLUMNS:
        raise LoadError(f"unknown record kind {kind!r}; use one of {', '.join(COLUMNS)}")
    required, optional = COLUMNS[kind]
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
    unknown = [h for h in header if h not in required | optional]
    missing = sorted(required - set(header))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown column(s) {', '.join(repr(u) for u in unknown)}")
        if missing:
            parts.append(f"missing required column(s) {', '.join(repr(m) for m in missing)}")
        allowed = ", ".join(sorted(required)) + "; optional: " + ", ".join(sorted(optional))
        raise LoadError(f"{path} line 1: {' and '.join(parts)}; {kind} columns are {allowed}")
    report = LoadReport(kind)
    errors: list[str] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            errors.append(f"{path} line {line}: more values than columns")
            continue
        try:
            with session.begin_nested():
                LOADERS[kind](session, row, report)
        except RowError as exc:
            value = (row.get(exc.column) or "").strip()
            errors.append(f"{path} line {line}, column {exc.column!r} (value {value!r}): {exc}")
        if len(errors) >= MAX_REPORTED:
            errors.append("... (stopped after 50 errors)")
            break
    if errors:
        raise LoadError("nothing was loaded from this file:\n  " + "\n  ".join(errors))
    return report
