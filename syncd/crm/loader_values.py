"""The values of one CSV row of ``syncd crm load``, each checked against the column it goes
to before the database sees it, on SQLite as on PostgreSQL: its length, no control
characters, an address that is one, an amount finite and within Numeric(18, 2), a known
status, an ISO currency code, an ISO date. A bad value raises :class:`RowError` naming its
column; ``syncd.crm.loader`` reports it with its line.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import get_args

from sqlalchemy.orm import InstrumentedAttribute

from syncd.crm.models import ContactAddress, Opportunity
from syncd.items import OpportunityStatus
from syncd.matching.addresses import normalize_address

Row = dict[str, str]

_STATUSES: dict[str, OpportunityStatus] = {s: s for s in get_args(OpportunityStatus)}
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


class RowError(Exception):
    """A value of a row that cannot be loaded; ``column`` names where it is."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def split(value: str) -> list[str]:
    """A list column's entries (``;`` between them), stripped, none empty."""
    return [v.strip() for v in value.split(";") if v.strip()]


def shown(value: str) -> str:
    """A bad value as its error repeats it (cut to SHOWN characters)."""
    return repr(value if len(value) <= SHOWN else value[:SHOWN] + "...")


def given(row: Row, column: str) -> str:
    """The column's value, stripped ("" when absent)."""
    return (row.get(column) or "").strip()


def fit(column: str, value: str, target: InstrumentedAttribute[object]) -> str:
    """``value`` if it fits the database column ``target``: no control character (PostgreSQL
    refuses NUL; a name goes on into calendars) and not longer than the column."""
    bad = _CONTROL.search(value)
    if bad:
        raise RowError(
            column,
            f"{shown(value)} contains a control character (U+{ord(bad.group()):04X}); remove it",
        )
    limit = getattr(target.property.columns[0].type, "length", None)
    if limit is not None and len(value) > limit:
        raise RowError(
            column, f"is {len(value)} characters long; the CRM keeps at most {limit}: shorten it"
        )
    return value


def optional(row: Row, column: str, target: InstrumentedAttribute[object]) -> str | None:
    value = given(row, column)
    return fit(column, value, target) if value else None


def required(row: Row, column: str, target: InstrumentedAttribute[object] | None = None) -> str:
    value = given(row, column)
    if not value:
        raise RowError(column, "is empty; this column is required")
    return fit(column, value, target) if target is not None else value


def address(column: str, value: str) -> str:
    """An email address, normalised."""
    normalized = normalize_address(value)
    if not normalized:
        raise RowError(column, f"{shown(value)} is not an email address (name@domain)")
    return fit(column, normalized, ContactAddress.address)


def amount(raw: str) -> Decimal:
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


def status(row: Row) -> OpportunityStatus:
    """An opportunity's status (``open`` when not given)."""
    value = (row.get("status") or "open").strip().lower()
    found = _STATUSES.get(value)
    if found is None:
        raise RowError("status", f"{value!r} is not one of {', '.join(_STATUSES)}")
    return found


_YES = {"yes": True, "y": True, "true": True, "on": True, "1": True}
_NO = {"no": False, "n": False, "false": False, "off": False, "0": False}


def yes_no(row: Row, column: str) -> bool | None:
    """yes/no (true/false, on/off, 1/0) as a bool; empty: None (the config decides)."""
    value = given(row, column).lower()
    if not value:
        return None
    found = {**_YES, **_NO}.get(value)
    if found is None:
        raise RowError(column, f"{value!r} is not yes or no (leave it empty for the default)")
    return found


def currency(row: Row) -> str | None:
    """An ISO 4217 code, upper case."""
    code = given(row, "currency").upper() or None
    if code and (len(code) != 3 or not code.isalpha()):
        raise RowError("currency", f"{code!r} is not an ISO 4217 code such as EUR")
    return code


def close_date(row: Row) -> date | None:
    if not given(row, "close_date"):
        return None
    try:
        return date.fromisoformat(row["close_date"].strip())
    except ValueError:
        raise RowError(
            "close_date", f"{row['close_date']!r} is not a date such as 2026-12-31"
        ) from None
