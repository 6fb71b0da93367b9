"""``syncd forget`` (issue 15), on SQLite and PostgreSQL: a person or a company forgotten
leaves no trace of the address (or domain) in any table, checked by a scan of every column
of every table; --dry-run shows exactly what the run removes; and they are never logged or
imported again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from syncd.config import Settings
from syncd.crm.explain import explain
from syncd.crm.forget import forget
from syncd.crm.models import Base
from syncd.demo import DemoCompany, deliver, email_bytes
from syncd.harvest.decide import Policy
from syncd.harvest.run import ContactImport, Target

from .test_pipeline import S, by_subject, demo_mailboxes, sync, timeline


def traces(sessions: S, needle: str) -> list[str]:
    """Every table and column that still holds ``needle`` (any case), with the value."""
    found = []
    with sessions() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).mappings():
                for column, value in row.items():
                    text = _text(value)
                    if text is not None and needle in text.lower():
                        found.append(f"{table.name}.{column}: {text[:120]!r}")
    return found


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return None


def run_forget(sessions: S, settings: Settings, dry_run: bool, **what: str) -> dict[str, Any]:
    with sessions() as session:
        done = forget(session, settings, now=datetime.now(UTC), **what)
        if dry_run:
            session.rollback()
        else:
            session.commit()
    return vars(done)


def harvest(sessions: S, settings: Settings, since: datetime | None = None) -> dict[str, str]:
    """A contacts import's verdicts (``since``: another import than the first, read anew)."""
    job = ContactImport(
        sessions, settings, [Target("ana", "ana@northwind.test")], since=since, policy=Policy()
    )
    outcome = job.run(dry_run=True)
    return {v.person.key: v.reason or v.action for v in outcome.verdicts}


@pytest.fixture
def synced(sessions: S, settings: Settings, company: DemoCompany, now: datetime) -> DemoCompany:
    demo_mailboxes(sessions, company)
    # a quarantined message that holds her address
    deliver(company.maildirs["ana"], b"not a message; eva@globex.test\r\n", now, "broken.host")
    sync(sessions, settings, "ana", now)
    sync(sessions, settings, "ben", now)
    assert harvest(sessions, settings)["eva@globex.test"] == "update"  # the import knows her
    return company


def test_a_forgotten_person_leaves_no_trace_and_is_never_logged_again(
    sessions, settings, synced: DemoCompany, now
):
    assert traces(sessions, "eva@globex.test")  # everywhere, before
    before = by_subject(timeline(sessions))
    dry = run_forget(sessions, settings, True, address="Eva@Globex.test")
    assert by_subject(timeline(sessions)).keys() == before.keys()  # the dry run kept all
    done = run_forget(sessions, settings, False, address="eva@globex.test")
    assert done == dry  # the dry run showed exactly what the run removed
    assert done["contacts_removed"] == ["Eva Novak"] and done["quarantine_removed"] == 1
    after = by_subject(timeline(sessions))
    assert {"Pilot scope", "Re: Pilot scope"} <= before.keys() - after.keys()
    assert len(done["activities_removed"]) == len(before) - len(after)
    assert traces(sessions, "eva@globex.test") == []

    # she writes again: not logged, and the import leaves her out
    again = email_bytes(
        sender="Eva Novak <eva@globex.test>",
        to=["ana@northwind.test"],
        subject="Pilot scope, again",
        when=now - timedelta(hours=1),
        message_id="q-9@example.org",
    )
    deliver(synced.maildirs["ana"], again, now - timedelta(hours=1), "again.host")
    report = sync(sessions, settings, "ana", now)
    assert report.excluded["blocklisted"] >= 1
    assert "Pilot scope, again" not in by_subject(timeline(sessions))
    with sessions() as session:
        why = explain(session, "<q-9@example.org>")
    assert why.verdict == "skipped" and why.skipped[0]["reason"] == "blocklisted"
    assert "eva@globex.test" not in harvest(sessions, settings)
    fresh = harvest(sessions, settings, since=datetime(2000, 1, 1, tzinfo=UTC))  # read anew
    assert "eva@globex.test" not in fresh and fresh["carla@acme.test"] == "update"
    assert traces(sessions, "eva@globex.test") == []
    # forgetting her again finds nothing more
    assert run_forget(sessions, settings, False, address="eva@globex.test")["already"]


def test_a_forgotten_domain_leaves_no_trace_and_its_account_with_deals_is_kept(
    sessions, settings, synced: DemoCompany, now
):
    done = run_forget(sessions, settings, False, domain="GLOBEX.test")
    assert done["domains_removed"] == 1 and done["accounts_kept"] == ["Globex"]
    assert done["activities_removed"] and done["contacts_removed"] == ["Eva Novak"]
    assert traces(sessions, "globex.test") == []
    assert not any(r["subject"] == "Pilot scope" for r in timeline(sessions))
    # someone else there writes, with a Message-ID at the domain: skipped, and no trace
    new = email_bytes(
        sender="Ivo <ivo@eu.globex.test>",
        to=["ana@northwind.test"],
        subject="Hello from Globex",
        when=now - timedelta(hours=1),
        message_id="new-1@globex.test",
    )
    deliver(synced.maildirs["ana"], new, now - timedelta(hours=1), "globex-new.host")
    away = email_bytes(
        sender="Ivo <ivo@eu.globex.test>",
        to=["ana@northwind.test"],
        subject="Out of office",
        when=now - timedelta(hours=1),
        message_id="away-1@globex.test",
        headers={"Auto-Submitted": "auto-replied"},
    )
    deliver(synced.maildirs["ana"], away, now - timedelta(hours=1), "globex-away.host")
    report = sync(sessions, settings, "ana", now)
    assert report.excluded["blocklisted"] >= 1 and report.excluded["auto-reply"] >= 1
    assert traces(sessions, "globex.test") == []
    with sessions() as session:
        why = explain(session, "<new-1@globex.test>")
    assert why.verdict == "skipped" and why.skipped[0]["reason"] == "blocklisted"


def test_only_whole_addresses_and_domains_are_forgotten():
    from syncd.crm.forget import _Needle

    bob = _Needle("address", "bob@globex.test")
    assert bob.clean("to <Bob@Globex.test>, jimbob@globex.test, bob@globex.test.au") == (
        "to <[forgotten]>, jimbob@globex.test, bob@globex.test.au"
    )
    assert bob.clean("'bob@globex.test' <bob@globex.test>; mailto:bob@globex.test?to=x") == (
        "'[forgotten]' <[forgotten]>; mailto:[forgotten]?to=x"
    )
    assert bob.clean("email=bob@globex.test, x.bob@globex.test") == (
        "email=[forgotten], x.bob@globex.test"
    )
    acme = _Needle("domain", "acme.com")
    assert acme.clean("x@eu.acme.com; www.acme.com; notacme.com; acme.community") == (
        "[forgotten]; [forgotten]; notacme.com; acme.community"
    )
    assert acme.clean("all @acme.com senders, url=acme.com, 'acme.com'") == (
        "all [forgotten] senders, url=[forgotten], '[forgotten]'"
    )


@pytest.mark.parametrize(
    ("what", "why"),
    [
        ({"address": "ana@northwind.test"}, "a CRM user's address"),
        ({"domain": "northwind.test"}, "the company's own domain"),
        ({"domain": "eu.northwind.test"}, "the company's own domain"),
        ({"domain": "gmail.com"}, "a free-mail domain"),
        ({"domain": "co.uk"}, "a free-mail domain"),  # above yahoo.co.uk
    ],
)
def test_what_must_never_be_forgotten_is_refused(sessions, settings, company, what, why):
    with sessions() as session, pytest.raises(ValueError, match=why):
        forget(session, settings, now=datetime.now(UTC), **what)


def test_forget_needs_an_address_or_a_domain(sessions, settings, company):
    with sessions() as session, pytest.raises(ValueError, match="not an domain"):
        forget(session, settings, domain="localhost", now=datetime.now(UTC))
    with sessions() as session, pytest.raises(ValueError, match="an address or a domain"):
        forget(session, settings, now=datetime.now(UTC))


def test_a_person_is_taken_out_of_what_others_keep_in_the_crm(sessions, settings, synced):
    qbr = by_subject(timeline(sessions))["Acme QBR"]  # Carla and Dan, both Acme contacts
    done = run_forget(sessions, settings, False, address="carla@acme.test")
    assert qbr["id"] in done["activities_cleaned"]
    assert done["contacts_removed"] == []  # Carla keeps her other address
    kept = by_subject(timeline(sessions))["Acme QBR"]
    addresses = {p["address"] for p in kept["participants"]}
    assert "carla@acme.test" not in addresses and "dan@acme.test" in addresses
    assert traces(sessions, "carla@acme.test") == []
    assert traces(sessions, "carla.diaz@acme-corp.test")  # not what was asked
