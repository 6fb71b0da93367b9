"""``syncd crm load``: CRM records from CSV (UTF-8, a header row, ``;`` between values).

Upserts by natural key: a user and a contact by email, an account by external id, domain
or name, an opportunity by external id. One transaction per file: every bad row is
reported with its line and column, and nothing of that file is written. Every value is
checked against the column it goes to (its length, no control characters; an amount finite
and within Numeric(18, 2)) before the database sees it, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import get_args

from sqlalchemy import select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import InstrumentedAttribute, Session

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
from syncd.items import OpportunityStatus
from syncd.matching.addresses import is_free_mail, normalize_address, normalize_domain


class RecordKind(StrEnum):
    """What a CSV file holds (the choices of ``syncd crm load``)."""

    users = "users"
    accounts = "accounts"
    contacts = "contacts"
    opportunities = "opportunities"


COLUMNS: dict[RecordKind, tuple[set[str], set[str]]] = {
    # kind: (required, optional)
    RecordKind.users: ({"email", "name"}, {"timezone", "working_hours"}),
    RecordKind.accounts: ({"name", "domains"}, {"external_id"}),
    RecordKind.contacts: ({"emails", "name"}, {"account", "title", "phone"}),
    RecordKind.opportunities: (
        {"external_id", "name", "account", "owner"},
        {"stage", "amount", "currency", "close_date", "status", "contacts"},
    ),
}
_STATUSES: dict[str, OpportunityStatus] = {s: s for s in get_args(OpportunityStatus)}
MAX_REPORTED = 50
SHOWN = 80  # characters of a bad value repeated in its error

_AMOUNT = Opportunity.__table__.c.amount.type  # Numeric(18, 2)
_SCALE: int = _AMOUNT.scale  # type: ignore[attr-defined]
_QUANTUM = Decimal(1).scaleb(-_SCALE)  # 0.01
# 15 significant digits: what both databases store exactly (PostgreSQL's numeric(18, 2)
# takes 18, but SQLite keeps a NUMERIC column's value as a double, exact to 15)
_DIGITS = min(15, _AMOUNT.precision)  # type: ignore[attr-defined]
_AMOUNT_MAX = Decimal(10) ** (_DIGITS - _SCALE) - _QUANTUM  # 9999999999999.99
_AMOUNT_ALLOWED = (
    f"an amount is a number with at most {_SCALE} decimals from -{_AMOUNT_MAX} to "
    f"{_AMOUNT_MAX}, '.' before the decimals and ',' only between thousands, such as 12500.00 "
    "or 12,500.00"
)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class LoadError(Exception):
    """A CSV file cannot be loaded; the message lists every bad row."""


class RowError(Exception):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


@dataclass
class LoadReport:
    kind: RecordKind
    created: int = 0
    updated: int = 0


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(";") if v.strip()]


def _shown(value: str) -> str:
    return repr(value if len(value) <= SHOWN else value[:SHOWN] + "...")


def _fit(column: str, value: str, target: InstrumentedAttribute[object]) -> str:
    """``value`` if it fits the database column ``target``: no control character (PostgreSQL
    refuses NUL; a name goes on into calendars) and not longer than the column."""
    bad = _CONTROL.search(value)
    if bad:
        raise RowError(
            column,
            f"{_shown(value)} contains a control character (U+{ord(bad.group()):04X}); remove it",
        )
    limit = getattr(target.property.columns[0].type, "length", None)
    if limit is not None and len(value) > limit:
        raise RowError(
            column, f"is {len(value)} characters long; the CRM keeps at most {limit}: shorten it"
        )
    return value


def _optional(
    row: dict[str, str], column: str, target: InstrumentedAttribute[object]
) -> str | None:
    value = (row.get(column) or "").strip()
    return _fit(column, value, target) if value else None


def _address(column: str, value: str) -> str:
    address = normalize_address(value)
    if not address:
        raise RowError(column, f"{_shown(value)} is not an email address (name@domain)")
    return _fit(column, address, ContactAddress.address)


def _required(
    row: dict[str, str], column: str, target: InstrumentedAttribute[object] | None = None
) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise RowError(column, "is empty; this column is required")
    return _fit(column, value, target) if target is not None else value


def _amount(raw: str) -> Decimal:
    """An amount that fits Numeric(18, 2): finite, in range, at most two decimals."""
    text = raw.strip()
    if "," in text:
        if not _THOUSANDS.match(text):
            raise RowError("amount", f"is not a number; {_AMOUNT_ALLOWED}")
        text = text.replace(",", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RowError("amount", f"is not a number; {_AMOUNT_ALLOWED}") from None
    if not value.is_finite():
        raise RowError("amount", f"is not a finite number; {_AMOUNT_ALLOWED}")
    if abs(value) > _AMOUNT_MAX:
        raise RowError("amount", f"is too large for the CRM's amount column; {_AMOUNT_ALLOWED}")
    if value != value.quantize(_QUANTUM):
        raise RowError("amount", f"has more than {_SCALE} decimals (round it); {_AMOUNT_ALLOWED}")
    return value.quantize(_QUANTUM)


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
    name = _required(row, "name", User.name)
    tz = _optional(row, "timezone", User.timezone)
    if tz:
        try:
            check_timezone(tz)
        except ValueError as exc:
            raise RowError("timezone", str(exc)) from None
    hours = _optional(row, "working_hours", User.working_hours)
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
    name = _required(row, "name", Account.name)
    domains = [
        _fit("domains", normalize_domain(d), AccountDomain.domain)
        for d in _split(_required(row, "domains"))
    ]
    for d in domains:
        if "." not in d:
            raise RowError("domains", f"{d!r} is not a domain such as 'acme.com'")
        if is_free_mail(d):
            raise RowError(
                "domains",
                f"{d!r} is a free-mail domain and cannot identify an account; remove it",
            )
    external_id = _optional(row, "external_id", Account.external_id)
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
    name = _required(row, "name", Contact.name)
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
    contact.title = _optional(row, "title", Contact.title) or contact.title
    contact.phone = _optional(row, "phone", Contact.phone) or contact.phone
    session.flush()
    have = {a.address for a in contact.addresses}
    for e in emails:
        if e not in have:
            session.add(ContactAddress(address=e, contact_id=contact.id))


def _load_opportunity(session: Session, row: dict[str, str], report: LoadReport) -> None:
    external_id = _required(row, "external_id", Opportunity.external_id)
    name = _required(row, "name", Opportunity.name)
    stage = _optional(row, "stage", Opportunity.stage)
    account = _account(session, "account", _required(row, "account"))
    owner_email = _address("owner", _required(row, "owner"))
    owner = session.scalar(select(User).where(User.email == owner_email))
    if owner is None:
        raise RowError("owner", f"no CRM user {owner_email!r}; load users first")
    given = (row.get("status") or "open").strip().lower()
    status = _STATUSES.get(given)
    if status is None:
        raise RowError("status", f"{given!r} is not one of {', '.join(_STATUSES)}")
    amount = _amount(row["amount"]) if (row.get("amount") or "").strip() else None
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
        roles[contact_id] = _fit("contacts", role.strip(), OpportunityContact.role) or None
    opp = session.scalar(select(Opportunity).where(Opportunity.external_id == external_id))
    if opp is None:
        opp = Opportunity(external_id=external_id)
        session.add(opp)
        report.created += 1
    else:
        report.updated += 1
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


LOADERS: dict[RecordKind, Callable[[Session, dict[str, str], LoadReport], None]] = {
    RecordKind.users: _load_user,
    RecordKind.accounts: _load_account,
    RecordKind.contacts: _load_contact,
    RecordKind.opportunities: _load_opportunity,
}


def load_csv(session: Session, kind: RecordKind | str, path: Path) -> LoadReport:
    """Load one file into the caller's transaction; raise LoadError listing every bad row."""
    if kind not in COLUMNS:
        raise LoadError(f"unknown record kind {kind!r}; use one of {', '.join(COLUMNS)}")
    kind = RecordKind(kind)
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
            errors.append(
                f"{path} line {line}, column {exc.column!r} (value {_shown(value)}): {exc}"
            )
        except StatementError as exc:  # a check above missed something: never the SQL
            orig = exc.orig if exc.orig is not None else exc
            first = str(orig).splitlines()[0][:200] if str(orig) else ""
            errors.append(
                f"{path} line {line}: the CRM database refused this row "
                f"({orig.__class__.__name__}: {first}); fix the row"
            )
        if len(errors) >= MAX_REPORTED:
            errors.append("... (stopped after 50 errors)")
            break
    if errors:
        raise LoadError("nothing was loaded from this file:\n  " + "\n  ".join(errors))
    return report
