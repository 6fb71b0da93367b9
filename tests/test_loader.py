"""CSV values are checked against the columns they go to, on SQLite and PostgreSQL: an amount
that is not a finite number fitting Numeric(18, 2), a text too long for its column or with a
control character, is refused with its line, column, value and what is allowed, and nothing
of that file is written (issue 10)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.crm.loader import LoadError, load_csv
from syncd.crm.models import Account, AccountDomain, Contact, Opportunity, User

HEADER = "external_id,name,account,owner,amount\n"
GOOD_ROW = "OPP-900,Good deal,acme.test,ana@northwind.test,100\n"
ALLOWED = "an amount is a number with at most 2 decimals from -9999999999999.99 to 9999999999999.99"


def load(sessions: sessionmaker[Session], tmp_path: Path, kind: str, text: str) -> None:
    path = tmp_path / f"{kind}.csv"
    path.write_text(text, encoding="utf-8")
    with sessions.begin() as session:
        load_csv(session, kind, path)


def counts(sessions: sessionmaker[Session]) -> tuple[int, ...]:
    with sessions() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model)) or 0
            for model in (User, Account, Contact, Opportunity)
        )


@pytest.mark.parametrize(
    "amount, why",
    [
        ("NaN", "is not a finite number"),
        ("nan", "is not a finite number"),
        ("sNaN", "is not a finite number"),
        ("inf", "is not a finite number"),
        ("-Infinity", "is not a finite number"),
        ("1e400", "is too large for the CRM's amount column"),
        ("1e13", "is too large for the CRM's amount column"),
        ("10000000000000", "is too large for the CRM's amount column"),
        ("9999999999999999.99", "is too large for the CRM's amount column"),
        ("12.345", "has more than 2 decimals"),
        ("1e-400", "has more than 2 decimals"),
        ("12,50", "is not a number"),  # a decimal comma would silently become 1250
        ("1,5", "is not a number"),
        ("twelve", "is not a number"),
    ],
)
def test_an_amount_that_does_not_fit_is_refused_and_nothing_is_written(
    sessions, company, tmp_path, amount, why
):
    before = counts(sessions)
    with pytest.raises(LoadError) as info:
        load(
            sessions,
            tmp_path,
            "opportunities",
            HEADER + GOOD_ROW + f'OPP-901,Bad,acme.test,ana@northwind.test,"{amount}"\n',
        )
    message = str(info.value)
    assert f"line 3, column 'amount' (value {amount!r}): {why}" in message, message
    assert ALLOWED in message and "nothing was loaded from this file" in message
    assert counts(sessions) == before  # not even the good row before it


@pytest.mark.parametrize(
    "amount, stored",
    [
        ("12500", "12500.00"),
        ("12,500.00", "12500.00"),
        ("1,234,567.5", "1234567.50"),
        ("9999999999999.99", "9999999999999.99"),
        ("-9,999,999,999,999.99", "-9999999999999.99"),
        ("7.100", "7.10"),
        ("1E+3", "1000.00"),
        ("0", "0.00"),
    ],
)
def test_an_amount_that_fits_is_stored_exactly(sessions, company, tmp_path, amount, stored):
    load(
        sessions,
        tmp_path,
        "opportunities",
        HEADER + f'OPP-902,Deal,acme.test,ana@northwind.test,"{amount}"\n',
    )
    with sessions() as session:
        value = session.scalar(
            select(Opportunity.amount).where(Opportunity.external_id == "OPP-902")
        )
    assert value == Decimal(stored)


@pytest.mark.parametrize(
    "kind, text, column, why",
    [
        (
            "users",
            "email,name\nzed@northwind.test," + "Z" * 201 + "\n",
            "name",
            "is 201 characters long; the CRM keeps at most 200",
        ),
        (
            "users",
            "email,name\nzed@northwind.test,Zed\x00Nul\n",
            "name",
            "contains a control character (U+0000)",
        ),
        (
            "accounts",
            "name,domains\nInitech,initech.test;" + "d" * 251 + ".test\n",
            "domains",
            "is 256 characters long",
        ),
        (
            "accounts",
            "name,domains,external_id\nInitech,initech.test," + "X" * 101 + "\n",
            "external_id",
            "the CRM keeps at most 100",
        ),
        (
            "contacts",
            "emails,name,phone\nzed@acme.test,Zed," + "5" * 51 + "\n",
            "phone",
            "the CRM keeps at most 50",
        ),
        (
            "contacts",
            "emails,name,title\nzed@acme.test,Zed,Boss\x1b[31m\n",
            "title",
            "contains a control character (U+001B)",
        ),
        (
            "contacts",
            "emails,name\n" + "z" * 320 + "@acme.test,Zed\n",
            "emails",
            "the CRM keeps at most 320",
        ),
        (
            "opportunities",
            HEADER.replace(",amount", ",stage")
            + "OPP-903,Deal,acme.test,ana@northwind.test,"
            + "s" * 101
            + "\n",
            "stage",
            "the CRM keeps at most 100",
        ),
        (
            "opportunities",
            "external_id,name,account,owner,contacts\nOPP-904,Deal,acme.test,ana@northwind.test,carla@acme.test="
            + "r" * 101
            + "\n",
            "contacts",
            "the CRM keeps at most 100",
        ),
    ],
)
def test_a_text_that_does_not_fit_its_column_is_refused_and_nothing_is_written(
    sessions, company, tmp_path, kind, text, column, why
):
    before = counts(sessions)
    with pytest.raises(LoadError) as info:
        load(sessions, tmp_path, kind, text)
    message = str(info.value)
    assert f"line 2, column {column!r} (value " in message and why in message, message
    assert counts(sessions) == before
    assert len(message) < 600  # a long value is shown cut short


def test_a_value_the_database_refuses_is_a_row_error_without_the_sql(sessions, company, tmp_path):
    # an account looked up by a name holding NUL: PostgreSQL refuses it in a query too
    with pytest.raises(LoadError) as info:
        load(sessions, tmp_path, "contacts", "emails,name,account\nzed@acme.test,Zed,Ac\x00me\n")
    message = str(info.value)
    assert "line 2" in message and "SELECT" not in message and "[parameters" not in message


def test_an_address_of_another_contact_is_an_error_naming_both_and_nothing_is_written(
    sessions, company, tmp_path
):
    before = counts(sessions)
    text = (
        "emails,name\n"
        "carla@acme.test,Carla Diaz-Ruiz\n"  # her first address: her row (renamed)
        "zoe@acme.test;eva@globex.test,Zoe Park\n"  # Eva's address on a new contact's row
    )
    with pytest.raises(LoadError) as refused:
        load(sessions, tmp_path, "contacts", text)
    message = str(refused.value)
    assert "contacts.csv line 3, column 'emails'" in message
    assert "'eva@globex.test' belongs to contact 'Eva Novak'" in message
    assert "not to contact 'Zoe Park' (a new one)" in message and "nothing was loaded" in message
    assert counts(sessions) == before
    with sessions() as session:
        names = set(session.scalars(select(Contact.name)))
    assert {"Carla Díaz", "Eva Novak"} <= names and "Zoe Park" not in names

    load(sessions, tmp_path, "contacts", "emails,name\ncarla@acme.test,Carla Diaz-Ruiz\n")
    with sessions() as session:  # a row found by its first address updates that contact
        assert "Carla Diaz-Ruiz" in set(session.scalars(select(Contact.name)))


def test_a_free_mail_domain_on_an_account_is_left_out_with_a_warning_or_refused_if_strict(
    sessions, company, tmp_path
):
    path = tmp_path / "accounts.csv"
    path.write_text("name,domains\nPat's Bakery,gmail.com;patsbakery.test\n", encoding="utf-8")
    with pytest.raises(LoadError) as refused, sessions.begin() as session:
        load_csv(session, "accounts", path, strict=True)
    assert "line 2: column 'domains': 'gmail.com' is a free-mail domain" in str(refused.value)
    with sessions() as session:
        assert session.scalar(select(Account).where(Account.name == "Pat's Bakery")) is None
    with sessions.begin() as session:
        report = load_csv(session, "accounts", path)
    assert report.created == 1 and len(report.warnings) == 1
    assert "accounts.csv line 2: column 'domains': 'gmail.com'" in report.warnings[0]
    with sessions() as session:
        domains = set(session.scalars(select(AccountDomain.domain)))
    assert "patsbakery.test" in domains and "gmail.com" not in domains
    path.write_text("name,domains\nPat,gmail.com\n", encoding="utf-8")
    with pytest.raises(LoadError, match="no domain but free-mail ones"), sessions.begin() as s:
        load_csv(s, "accounts", path)
