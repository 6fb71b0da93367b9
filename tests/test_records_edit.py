"""CRM records removed or merged by hand (issue 15): ``syncd contact remove``,
``remove-address`` and ``merge``, ``syncd account remove`` and ``remove-domain``, ``syncd
opportunity remove``, run as the admin runs them, on SQLite and PostgreSQL. The activities
stay and lose only what pointed to the record; a deal chosen through it is chosen again; a
merge doubles no row; a dry run changes nothing and shows what the run does; an unknown
value is an error naming it (exit 2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

import syncd.cli.records_edit  # noqa: F401  (registers the commands)
from syncd.cli import app
from syncd.config import Settings
from syncd.crm import corrections
from syncd.crm.loader import load_csv
from syncd.crm.models import (
    Account,
    AccountDomain,
    ActivityParticipant,
    Base,
    Contact,
    ContactAddress,
    ContactKnowledge,
    Link,
    LinkVeto,
    Opportunity,
    OpportunityContact,
    Task,
)
from syncd.demo import DemoCompany, deliver, email_bytes

from .test_pipeline import S, by_subject, demo_mailboxes, links, sync, timeline

ACME_DEAL = "OPP-101 Acme platform renewal"
GLOBEX_DEAL = "OPP-202 Globex pilot"
ROLLOUT = "OPP-203 Globex rollout"


def cli(settings: Settings, db_url: str, *args: str) -> Result:
    env = {"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def as_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def counts(result: Result) -> dict[str, str]:
    """The ``  label: value`` lines of a summary."""
    assert result.exit_code == 0, result.stderr
    lines = [line.strip().split(": ", 1) for line in result.stdout.splitlines()]
    return {line[0]: line[1] for line in lines if len(line) == 2}


def contact_id(sessions: S, address: str) -> int | None:
    with sessions() as session:
        return session.scalar(
            select(ContactAddress.contact_id).where(ContactAddress.address == address)
        )


def deal_links(row: Any) -> set[tuple[str, str]]:
    return {(name, reason) for type_, name, reason in links(row) if type_ == "opportunity"}


def add_rollout(sessions: S, company: DemoCompany, tmp_path: Path, now: datetime) -> None:
    """A second open Globex deal, OPP-203, named by tag in yesterday's mail from someone at
    Globex who is no contact: the most recent deal of the account, and nobody's role."""
    path = tmp_path / "rollout.csv"
    path.write_text(
        "external_id,name,account,owner,status\n"
        "OPP-203,Globex rollout,globex.test,ben@northwind.test,open\n",
        encoding="utf-8",
    )
    with sessions.begin() as session:
        load_csv(session, "opportunities", path)
    when = now - timedelta(days=1)
    mail = email_bytes(
        sender="Ops <ops@globex.test>",
        to=["ana@northwind.test"],
        subject="Rollout plan [OPP-203]",
        when=when,
        message_id="rollout-1@globex.test",
    )
    deliver(company.maildirs["ana"], mail, when, "rollout.host")


@pytest.fixture
def synced(sessions: S, settings: Settings, company: DemoCompany, now: datetime) -> DemoCompany:
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    sync(sessions, settings, "ben", now)
    return company


# --- contact remove ---------------------------------------------------------------------


def test_a_removed_contact_leaves_its_activities_and_the_deal_its_role_chose_is_chosen_again(
    sessions, settings, db_url, company, tmp_path, now
):
    add_rollout(sessions, company, tmp_path, now)
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    rows = by_subject(timeline(sessions))
    assert deal_links(rows["Pilot scope"]) == {(GLOBEX_DEAL, "contact-role")}  # Eva's role
    eva = contact_id(sessions, "eva@globex.test")

    done = cli(settings, db_url, "contact", "remove", "Eva@Globex.test")

    assert done.stdout.splitlines()[0] == "removed contact 'Eva Novak' (eva@globex.test)"
    shown = counts(done)
    assert shown["opportunity roles removed"] == f"1 ({GLOBEX_DEAL} (Champion))"
    assert (shown["activities it was on (kept)"], shown["contact links removed"]) == ("3", "3")
    assert shown["activities relinked"] == "3"  # its two conversations, and the call
    after = by_subject(timeline(sessions))
    assert after.keys() == rows.keys()  # every activity stays
    # Globex's two open deals, and nobody's role to tell them apart: no guess (the default
    # single-open-only policy), the account only, with a note naming both
    for subject in ("Pilot scope", "Re: Pilot scope", "Globex pilot check-in"):
        assert deal_links(after[subject]) == set()
    assert (after["Pilot scope"]["note"] or "").startswith("ambiguous opportunity")
    assert ("account", "Globex", "contact") in links(after["Pilot scope"])
    assert not any(n == "Eva Novak" for r in after.values() for _, n, _ in links(r))
    with sessions() as session:
        assert session.get(Contact, eva) is None
        assert not session.scalars(
            select(ContactAddress).where(ContactAddress.contact_id == eva)
        ).all()
        assert not session.scalars(
            select(Link).where(Link.type == "contact", Link.target_id == eva)
        ).all()
        assert not session.scalars(
            select(OpportunityContact).where(OpportunityContact.contact_id == eva)
        ).all()
        gone = session.scalars(
            select(ActivityParticipant.contact_id).where(
                ActivityParticipant.address == "eva@globex.test"
            )
        ).all()
        assert gone and set(gone) == {None}
        assert session.scalar(select(Task.id).where(Task.contact_id == eva)) is None


# --- contact remove-address ---------------------------------------------------------------


def test_a_removed_address_unlinks_only_what_no_other_address_of_the_contact_is_on(
    sessions, settings, db_url, company, now
):
    both = now - timedelta(days=2)
    mail = email_bytes(
        sender="Carla Díaz <carla.diaz@acme-corp.test>",
        to=["ana@northwind.test"],
        cc=["carla@acme.test"],
        subject="From my other address",
        when=both,
        message_id="other-1@acme-corp.test",
    )
    deliver(company.maildirs["ana"], mail, both, "other-address.host")
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    reply = by_subject(timeline(sessions))["Re: Renewal proposal [OPP-101]"]
    corrections_link(sessions, settings, reply["id"], "carla@acme.test")

    done = cli(settings, db_url, "contact", "remove-address", "carla@acme.test")

    shown = counts(done)
    assert shown["addresses left"] == "carla.diaz@acme-corp.test"
    rows = by_subject(timeline(sessions))
    carla = ("contact", "Carla Díaz")
    linked = {s for s, r in rows.items() if carla in {(t, n) for t, n, _ in links(r)}}
    # the mail on which her other address is, and the one linked by hand, keep her
    assert linked == {"From my other address", reply["subject"]}
    assert ("contact", "Carla Díaz", "manual") in links(rows[reply["subject"]])
    assert int(shown["contact links removed"]) == 3  # proposal, nudge, QBR
    with sessions() as session:
        assert (
            session.scalar(
                select(ContactAddress.id).where(ContactAddress.address == "carla@acme.test")
            )
            is None
        )
    assert contact_id(sessions, "carla.diaz@acme-corp.test") is not None

    last = cli(settings, db_url, "contact", "remove-address", "carla.diaz@acme-corp.test")
    assert last.exit_code == 2
    assert "'carla.diaz@acme-corp.test' is the last address of contact 'Carla Díaz'" in last.stderr
    assert "'syncd contact remove carla.diaz@acme-corp.test'" in last.stderr
    assert contact_id(sessions, "carla.diaz@acme-corp.test") is not None


def corrections_link(sessions: S, settings: Settings, activity: int, contact: str) -> None:
    with sessions.begin() as session:
        target = corrections.target_of(session, contact=contact)
        corrections.link(session, settings, activity, target, datetime.now(UTC))


# --- contact merge ----------------------------------------------------------------------------


def test_a_merge_moves_addresses_roles_links_vetoes_participants_and_counts_without_doubles(
    sessions, settings, db_url, synced, now
):
    carla = contact_id(sessions, "carla@acme.test")
    dan = contact_id(sessions, "dan@acme.test")
    assert carla is not None and dan is not None
    rows = by_subject(timeline(sessions))
    qbr, workshop = rows["Acme QBR"], rows["Acme onboarding workshop"]
    proposal = rows["Renewal proposal [OPP-101]"]
    assert {n for t, n, _ in links(qbr) if t == "contact"} == {"Carla Díaz", "Dan Wu"}
    with sessions.begin() as session:
        renewal, pilot = (
            session.scalars(select(Opportunity.id).where(Opportunity.external_id == e)).one()
            for e in ("OPP-101", "OPP-202")
        )
        session.add_all(
            [
                OpportunityContact(opportunity_id=renewal, contact_id=dan, role="IT lead"),
                OpportunityContact(opportunity_id=pilot, contact_id=dan, role="Sponsor"),
                ContactKnowledge(contact_id=carla, mailbox="ana", sent=2, received=1, meetings=0),
                ContactKnowledge(contact_id=dan, mailbox="ana", sent=3, received=0, meetings=1),
                ContactKnowledge(contact_id=dan, mailbox="ben", sent=1, received=1, meetings=0),
            ]
        )
        him = corrections.target_of(session, contact="dan@acme.test")
        her = corrections.target_of(session, contact="carla@acme.test")
        # Dan taken off the workshop, and Carla linked to it by hand: her link lifts the veto
        corrections.unlink(session, settings, workshop["id"], him, datetime.now(UTC))
        corrections.link(session, settings, workshop["id"], her, datetime.now(UTC))
        # Dan barred from the proposal: the veto holds for the person, her address link goes
        corrections.unlink(session, settings, proposal["id"], him, datetime.now(UTC))

    merge = ("contact", "merge", "--json", "carla@acme.test", "dan@acme.test")
    done = as_json(cli(settings, db_url, *merge))

    assert (done["kept"], done["merged"], done["addresses_moved"]) == (
        "Carla Díaz",
        "Dan Wu",
        ["dan@acme.test"],
    )
    assert (done["roles_moved"], done["roles_dropped"]) == (1, 1)
    assert done["links_dropped"] == 2  # the QBR's second link, and the proposal's (vetoed)
    assert (done["vetoes_moved"], done["vetoes_dropped"]) == (1, 1)
    assert done["knowledge_moved"] == 2 and done["warnings"] == []
    with sessions() as session:
        assert session.get(Contact, dan) is None
        assert sorted(
            session.scalars(
                select(ContactAddress.address).where(ContactAddress.contact_id == carla)
            )
        ) == ["carla.diaz@acme-corp.test", "carla@acme.test", "dan@acme.test"]
        roles = session.execute(
            select(OpportunityContact.opportunity_id, OpportunityContact.role).where(
                OpportunityContact.contact_id == carla
            )
        ).all()
        assert sorted(roles) == sorted([(renewal, "Decision maker"), (pilot, "Sponsor")])
        contact_links = session.execute(
            select(Link.activity_id, Link.target_id).where(Link.type == "contact")
        ).all()
        assert {t for _, t in contact_links} == {carla, contact_id(sessions, "eva@globex.test")}
        assert [a for a, _ in contact_links].count(qbr["id"]) == 1
        assert session.execute(
            select(LinkVeto.activity_id, LinkVeto.target_id).where(LinkVeto.type == "contact")
        ).all() == [(proposal["id"], carla)]
        assert set(
            session.scalars(
                select(ActivityParticipant.contact_id).where(
                    ActivityParticipant.address == "dan@acme.test"
                )
            )
        ) == {carla}
        knowledge = {
            k.mailbox: (k.sent, k.received, k.meetings)
            for k in session.scalars(select(ContactKnowledge))
        }
        assert knowledge == {"ana": (5, 1, 1), "ben": (1, 1, 0)}
    after = by_subject(timeline(sessions))
    assert ("contact", "Carla Díaz", "manual") in links(after["Acme onboarding workshop"])
    assert not [lk for lk in links(after["Renewal proposal [OPP-101]"]) if lk[0] == "contact"]


def test_contacts_at_two_accounts_are_merged_with_a_warning_naming_both(
    sessions, settings, db_url, synced
):
    done = cli(settings, db_url, "contact", "merge", "carla@acme.test", "eva@globex.test")
    assert done.exit_code == 0, done.stderr
    assert (
        "syncd: warning: contact 'Carla Díaz' is at account 'Acme Corp' and 'Eva Novak' at "
        "'Globex': merged, at 'Acme Corp'"
    ) in done.stderr
    assert done.stdout.splitlines()[0] == "merged contact 'Eva Novak' into 'Carla Díaz'"
    with sessions() as session:
        kept = session.scalars(
            select(Contact).join(ContactAddress).where(ContactAddress.address == "eva@globex.test")
        ).one()
        account = session.get(Account, kept.account_id)
        assert (kept.name, account.name if account else None) == ("Carla Díaz", "Acme Corp")
        assert kept.phone == "+44 20 7946 0000"  # Carla had none


# --- account remove and remove-domain ---------------------------------------------------------


def test_an_account_with_deals_is_refused_naming_them_and_without_them_it_is_removed(
    sessions, settings, db_url, synced
):
    refused = cli(settings, db_url, "account", "remove", "globex.test")
    assert refused.exit_code == 2
    assert f"account 'Globex' still has 1 opportunit(ies): {GLOBEX_DEAL}" in refused.stderr
    assert "'syncd opportunity remove OPP-202'" in refused.stderr
    with sessions() as session:
        globex = session.scalars(select(Account.id).where(Account.name == "Globex")).one()
    assert cli(settings, db_url, "opportunity", "remove", "OPP-202").exit_code == 0

    dry = as_json(cli(settings, db_url, "account", "remove", "globex.test", "--dry-run", "--json"))
    done = as_json(cli(settings, db_url, "account", "remove", "globex.test", "--json"))

    assert dry.pop("dry_run") is True and done.pop("dry_run") is False
    assert dry == done  # the dry run showed what the run did
    assert (done["account"], done["domains"], done["contacts_detached"]) == (
        "Globex",
        ["globex.test"],
        1,
    )
    assert done["links_removed"] == done["activities"] == 3
    with sessions() as session:
        assert session.get(Account, globex) is None
        assert (
            session.scalar(select(AccountDomain.id).where(AccountDomain.account_id == globex))
            is None
        )
        assert (
            session.scalar(select(Link.id).where(Link.type == "account", Link.target_id == globex))
            is None
        )
        eva = session.scalars(
            select(Contact).join(ContactAddress).where(ContactAddress.address == "eva@globex.test")
        ).one()
        assert eva.account_id is None
    assert "Pilot scope" in by_subject(timeline(sessions))


def test_a_removed_domain_unlinks_what_only_it_linked_and_the_last_one_is_refused(
    sessions, settings, db_url, company, now
):
    when = now - timedelta(days=2)
    mail = email_bytes(
        sender="Finance <finance@acme-corp.test>",
        to=["ana@northwind.test"],
        subject="Invoice address",
        when=when,
        message_id="inv-1@acme-corp.test",
    )
    deliver(company.maildirs["ana"], mail, when, "invoice.host")
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    assert ("account", "Acme Corp", "domain") in links(
        by_subject(timeline(sessions))["Invoice address"]
    )

    done = counts(cli(settings, db_url, "account", "remove-domain", "ACME-CORP.test"))

    assert (done["domains left"], done["account links removed"]) == ("acme.test", "1")
    rows = by_subject(timeline(sessions))
    assert not [lk for lk in links(rows["Invoice address"]) if lk[0] == "account"]
    assert ("account", "Acme Corp", "contact") in links(rows["Renewal proposal [OPP-101]"])
    last = cli(settings, db_url, "account", "remove-domain", "acme.test")
    assert last.exit_code == 2
    assert "'acme.test' is the last domain of account 'Acme Corp'" in last.stderr
    assert "'syncd account remove acme.test'" in last.stderr


# --- opportunity remove ---------------------------------------------------------------------


def test_a_removed_deal_leaves_its_activities_to_the_remaining_deal_by_settling(
    sessions, settings, db_url, company, tmp_path, now
):
    add_rollout(sessions, company, tmp_path, now)
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    call = by_subject(timeline(sessions))["Globex pilot check-in"]
    with sessions.begin() as session:  # an admin had taken the check-in off the pilot
        target = corrections.target_of(session, opportunity="OPP-202")
        corrections.unlink(session, settings, call["id"], target, datetime.now(UTC))
        pilot = target.id

    done = counts(cli(settings, db_url, "opportunity", "remove", "opp-202"))

    assert (done["contact roles removed"], done["link vetoes removed"]) == ("1", "1")
    assert int(done["activities relinked"]) == 3
    rows = by_subject(timeline(sessions))
    assert deal_links(rows["Pilot scope"]) == {(ROLLOUT, "account")}
    assert deal_links(rows["Re: Pilot scope"]) == {(ROLLOUT, "thread")}
    assert deal_links(rows["Globex pilot check-in"]) == {(ROLLOUT, "account")}
    with sessions() as session:
        assert session.get(Opportunity, pilot) is None
        for model, column in (
            (Link, Link.target_id),
            (LinkVeto, LinkVeto.target_id),
        ):
            assert (
                session.scalar(select(model.id).where(model.type == "opportunity", column == pilot))
                is None
            )
        assert (
            session.scalar(
                select(OpportunityContact.id).where(OpportunityContact.opportunity_id == pilot)
            )
            is None
        )
        assert session.scalar(select(Task.id).where(Task.opportunity_id == pilot)) is None


# --- every command: dry run, unknown values -------------------------------------------------


def snapshot(sessions: S) -> dict[str, list[str]]:
    """Every row of every CRM table."""
    with sessions() as session:
        return {
            t.name: sorted(map(repr, session.execute(select(t)).all()))
            for t in Base.metadata.sorted_tables
        }


COMMANDS = [
    ["contact", "remove", "carla@acme.test"],
    ["contact", "remove-address", "carla.diaz@acme-corp.test"],
    ["contact", "merge", "carla@acme.test", "dan@acme.test"],
    ["account", "remove-domain", "acme-corp.test"],
    ["opportunity", "remove", "OPP-101"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=["-".join(c[:2]) for c in COMMANDS])
def test_a_dry_run_changes_nothing_and_shows_what_the_run_does(
    sessions, settings, db_url, synced, command
):
    before = snapshot(sessions)
    dry = cli(settings, db_url, *command, "--dry-run")
    dry_json = as_json(cli(settings, db_url, *command, "--dry-run", "--json"))
    assert snapshot(sessions) == before

    real = cli(settings, db_url, *command)

    assert real.exit_code == 0, real.stderr
    assert snapshot(sessions) != before
    *shown, last = dry.stdout.splitlines()
    assert last == "nothing was changed (--dry-run)"
    assert shown[0].startswith("would ")
    shown[0] = shown[0].replace("would remove", "removed").replace("would merge", "merged")
    assert shown == real.stdout.splitlines()  # the same counts, the same names
    assert dry_json["dry_run"] is True
    assert dry_json.get("relinked") == int(counts(real)["activities relinked"])


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (
            ["contact", "remove", "nobody@acme.test"],
            "no contact has the address 'nobody@acme.test'; give one of its addresses as loaded",
        ),
        (["contact", "remove", "nobody"], "'nobody' is not an email address; give one of"),
        (["contact", "remove-address", "Nobody@Acme.test"], "the address 'nobody@acme.test'"),
        (["contact", "merge", "carla@acme.test", "nobody@acme.test"], "'nobody@acme.test'"),
        (
            ["contact", "merge", "carla@acme.test", "carla.diaz@acme-corp.test"],
            "are both addresses of contact 'Carla Díaz': nothing to merge",
        ),
        (
            ["account", "remove", "nowhere.test"],
            "no account has the domain 'nowhere.test'; give one of the account's domains",
        ),
        (
            ["account", "remove", "Acme Corp"],
            "'Acme Corp' is an account's name; give one of its domains: acme-corp.test, acme.test",
        ),
        (["account", "remove-domain", "nowhere.test"], "the domain 'nowhere.test'"),
        (
            ["opportunity", "remove", "OPP-999"],
            "no opportunity 'OPP-999'; give its external id as loaded",
        ),
    ],
)
def test_an_unknown_value_is_an_error_naming_it_and_the_fix(
    sessions, settings, db_url, company, command, named
):
    before = snapshot(sessions)
    for options in ([], ["--dry-run"], ["--json"]):
        result = cli(settings, db_url, *command, *options)
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr.startswith("syncd: error: ") and named in result.stderr
    assert snapshot(sessions) == before
