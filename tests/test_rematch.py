"""Re-matching stored activities under today's CRM and rules (issue 15), on SQLite and
PostgreSQL: a deal created after its mail was logged gets it when the daemon re-matches
what a CRM load changed; a deal closed since lets its mail go; a contact added since is
linked; the deal policy (matching.opportunity) decides again; manual links and unlinks are
kept; ``syncd rematch --dry-run`` prints what the real run then does, and changes
nothing."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from syncd.cli import app
from syncd.config import Settings
from syncd.crm import corrections, rematch
from syncd.crm.loader import load_csv
from syncd.crm.models import Activity, RematchRequest
from syncd.demo import DemoCompany, deliver, email_bytes
from syncd.matching.matcher import OpportunityPolicy

from .test_pipeline import S, by_subject, demo_mailboxes, links, sync, timeline

OPPORTUNITIES = "external_id,name,account,owner,status,contacts\n"


def load(sessions: S, root: Path, kind: str, text: str) -> int:
    path = root / f"{kind}-{abs(hash(text))}.csv"
    path.write_text(text)
    with sessions.begin() as session:
        return load_csv(session, kind, path).queued


def mail(
    company: DemoCompany, now: datetime, sender: str, subject: str, mid: str, **kw: Any
) -> None:
    when = kw.pop("when", now - timedelta(hours=1))
    data = email_bytes(
        sender=sender, to=["ana@northwind.test"], subject=subject, when=when, message_id=mid, **kw
    )
    deliver(company.maildirs["ana"], data, when, mid.replace("@", "."))


def deals(row: Any) -> set[tuple[str, str]]:
    return {(name, reason) for type_, name, reason in links(row) if type_ == "opportunity"}


def with_policy(settings: Settings, policy: OpportunityPolicy) -> Settings:
    matching = settings.matching.model_copy(update={"opportunity": policy})
    return settings.model_copy(update={"matching": matching})


def test_a_deal_created_after_its_mail_was_logged_gets_it_when_the_daemon_rematches(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    mail(company, now, "Carla Díaz <carla@acme.test>", "Expansion [OPP-303]", "exp-1@acme.test")
    mail(
        company,
        now,
        "Carla Díaz <carla@acme.test>",
        "Re: Expansion",
        "exp-2@acme.test",
        in_reply_to="exp-1@acme.test",
        references=["exp-1@acme.test"],
        when=now - timedelta(minutes=30),
    )
    sync(sessions, settings, "ana", now)
    rows = by_subject(timeline(sessions))
    tagged, reply = rows["Expansion [OPP-303]"], rows["Re: Expansion"]
    assert "tag OPP-303 names no opportunity" in (tagged["note"] or "")
    assert deals(tagged) == {("OPP-101 Acme platform renewal", "contact-role")}
    assert deals(reply) == {("OPP-101 Acme platform renewal", "thread")}

    queued = load(
        sessions,
        company.root,
        "opportunities",
        OPPORTUNITIES + "OPP-303,Acme expansion,acme.test,ana@northwind.test,open,\n",
    )
    assert queued == 1
    done = rematch.run_queued(sessions, settings)  # what the daemon runs
    assert done is not None
    rows = by_subject(timeline(sessions))
    tagged, reply = rows["Expansion [OPP-303]"], rows["Re: Expansion"]
    assert deals(tagged) == {("OPP-303 Acme expansion", "tag")}
    assert tagged["note"] is None
    assert deals(reply) == {("OPP-303 Acme expansion", "thread")}
    shown = {(c.activity_id, c.type, c.old, c.new) for c in done.changes}
    assert (
        tagged["id"],
        "opportunity",
        "OPP-101 Acme platform renewal (contact-role)",
        "OPP-303 Acme expansion (tag)",
    ) in shown
    assert rematch.run_queued(sessions, settings) is None  # the queue was emptied


def test_what_was_recorded_well_after_a_crm_load_is_not_rematched_for_it(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    mail(company, now, "Carla Díaz <carla@acme.test>", "Expansion [OPP-303]", "exp-1@acme.test")
    sync(sessions, settings, "ana", now)
    load(
        sessions,
        company.root,
        "opportunities",
        OPPORTUNITIES + "OPP-303,Acme expansion,acme.test,ana@northwind.test,open,\n",
    )
    # the mail so far was recorded two hours before the load, which was an hour ago; then
    # a pass records a later mail against the CRM as the load left it
    real = datetime.now(UTC)
    with sessions.begin() as session:
        session.execute(update(Activity).values(created_at=real - timedelta(hours=3)))
        session.execute(update(RematchRequest).values(queued_at=real - timedelta(hours=1)))
    mail(company, now, "Carla Díaz <carla@acme.test>", "Re: Expansion [OPP-303]", "exp-2@acme.test")
    sync(sessions, settings, "ana", now + timedelta(minutes=1))
    rows = by_subject(timeline(sessions))
    before, after = rows["Expansion [OPP-303]"], rows["Re: Expansion [OPP-303]"]
    assert deals(after) == {("OPP-303 Acme expansion", "tag")}  # the pass saw the load
    with sessions() as session:
        ids, taken = rematch.queued_activities(session, settings)
        earlier = set(session.scalars(select(Activity.id).where(Activity.id != after["id"])))
    assert taken  # the demo CRM's own loads, and this one
    assert before["id"] in ids
    assert after["id"] not in ids
    assert set(ids) <= earlier
    done = rematch.run_queued(sessions, settings)
    assert done is not None and done.examined == len(ids)
    assert deals(by_subject(timeline(sessions))["Expansion [OPP-303]"]) == {
        ("OPP-303 Acme expansion", "tag")
    }
    assert rematch.run_queued(sessions, settings) is None


def test_a_deal_closed_since_lets_its_mail_go_and_a_contact_added_since_is_linked(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    mail(company, now, "Frank Li <frank@globex.test>", "Pilot budget", "budget-1@globex.test")
    sync(sessions, settings, "ana", now)
    rows = by_subject(timeline(sessions))
    assert deals(rows["Pilot scope"]) == {("OPP-202 Globex pilot", "contact-role")}
    assert links(rows["Pilot budget"]) == {
        ("account", "Globex", "domain"),
        ("opportunity", "OPP-202 Globex pilot", "account"),
    }

    load(
        sessions,
        company.root,
        "opportunities",
        OPPORTUNITIES + "OPP-202,Globex pilot,globex.test,ben@northwind.test,lost,\n",
    )
    load(sessions, company.root, "contacts", "emails,name,account\nfrank@globex.test,Frank Li,\n")
    assert rematch.run_queued(sessions, settings) is not None
    rows = by_subject(timeline(sessions))
    assert deals(rows["Pilot scope"]) == set()
    assert (rows["Pilot scope"]["note"] or "").startswith("only closed opportunities: OPP-202")
    assert links(rows["Pilot budget"]) == {
        ("contact", "Frank Li", "address"),
        ("account", "Globex", "domain"),
    }


@pytest.mark.parametrize(
    ("policy", "wanted", "note"),
    [
        ("most-recent", {("OPP-101 Acme platform renewal", "account")}, None),
        (
            "single-open-only",
            set(),
            "ambiguous opportunity, linked to the account only: OPP-101 (Acme platform renewal), "
            "OPP-301 (Acme expansion A) (matching.opportunity = single-open-only)",
        ),
        (
            "all-open",
            {("OPP-101 Acme platform renewal", "account"), ("OPP-301 Acme expansion A", "account")},
            None,
        ),
    ],
)
def test_the_deal_policy_decides_among_the_open_deals_and_rematch_applies_a_change(
    sessions, settings, company: DemoCompany, now, policy, wanted, note
):
    load(
        sessions,
        company.root,
        "opportunities",
        OPPORTUNITIES + "OPP-301,Acme expansion A,acme.test,ana@northwind.test,open,\n",
    )
    demo_mailboxes(sessions, company)
    mail(company, now, "it@acme.test", "Licences", "lic-1@acme.test")
    mail(
        company,
        now,
        "it@acme.test",
        "Re: Licences",
        "lic-2@acme.test",
        in_reply_to="lic-1@acme.test",
        when=now - timedelta(minutes=5),
    )
    sync(sessions, with_policy(settings, policy), "ana", now)
    rows = by_subject(timeline(sessions))
    assert deals(rows["Licences"]) == wanted
    assert rows["Licences"]["note"] == note
    assert deals(rows["Re: Licences"]) == {(name, "thread") for name, _ in wanted}

    # the policy changed to most-recent: a re-match makes the links it makes
    recent = with_policy(settings, "most-recent")
    with sessions.begin() as session:
        done = rematch.rematch(session, recent, rematch.chosen(session, recent))
    rows = by_subject(timeline(sessions))
    assert deals(rows["Licences"]) == {("OPP-101 Acme platform renewal", "account")}
    assert deals(rows["Re: Licences"]) == {("OPP-101 Acme platform renewal", "thread")}
    assert bool(done.changes) == (policy != "most-recent")


def rematch_cli(settings: Settings, db_url: str, *args: str) -> tuple[int, dict[str, Any]]:
    env = {"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "250"}
    result = CliRunner().invoke(app, ["rematch", "--json", *args], env=env)
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else {
        "error": result.stderr
    }


def test_rematch_keeps_manual_links_and_unlinks_and_its_dry_run_is_the_real_run(
    sessions, settings, company: DemoCompany, now, db_url
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    rows = by_subject(timeline(sessions))
    scope, proposal = rows["Pilot scope"], rows["Renewal proposal [OPP-101]"]
    with sessions.begin() as session:
        deal = corrections.target_of(session, opportunity="OPP-101")
        corrections.link(session, settings, scope["id"], deal, datetime.now(UTC))
        carla = corrections.target_of(session, contact="carla@acme.test")
        corrections.unlink(session, settings, proposal["id"], carla, datetime.now(UTC))
    load(
        sessions,
        company.root,
        "opportunities",
        OPPORTUNITIES
        + "OPP-101,Acme platform renewal,acme.test,ana@northwind.test,won,carla@acme.test\n",
    )
    before = timeline(sessions)
    code, dry = rematch_cli(settings, db_url, "--dry-run")
    assert code == 0, dry
    assert timeline(sessions) == before  # nothing changed
    assert dry["dry_run"] and dry["changes"]
    code, real = rematch_cli(settings, db_url)
    assert code == 0, real
    assert real["changes"] == dry["changes"]
    rows = by_subject(timeline(sessions))
    assert ("opportunity", "OPP-101 Acme platform renewal", "manual") in links(rows["Pilot scope"])
    assert ("contact", "Carla Díaz", "address") not in links(rows["Renewal proposal [OPP-101]"])
    # the won deal is still named by the proposal's own tag; the untagged nudge follows it
    assert deals(rows["Renewal proposal [OPP-101]"]) == {("OPP-101 Acme platform renewal", "tag")}
    _, again = rematch_cli(settings, db_url)
    assert again["changes"] == []  # a second run finds nothing to change


def test_rematch_of_an_unknown_deal_is_refused_naming_it(settings, company, db_url):
    code, out = rematch_cli(settings, db_url, "--opportunity", "OPP-999")
    assert code == 2
    assert "no opportunity with external id 'OPP-999'" in out["error"]


@pytest.mark.integration  # runs the daemon on its threads
def test_the_running_daemon_rematches_what_a_crm_load_changed(
    sessions, settings, company: DemoCompany, now
):
    from syncd.daemon import Daemon

    from .test_daemon import run_daemon

    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    assert deals(by_subject(timeline(sessions))["Pilot scope"]) == {
        ("OPP-202 Globex pilot", "contact-role")
    }
    daemon = Daemon(sessions, settings)

    def scenario() -> None:
        load(
            sessions,
            company.root,
            "opportunities",
            OPPORTUNITIES + "OPP-202,Globex pilot,globex.test,ben@northwind.test,lost,\n",
        )
        deadline = time.monotonic() + 60
        while deals(by_subject(timeline(sessions))["Pilot scope"]) or queued():
            assert time.monotonic() < deadline, "the daemon did not re-match within 60 s"
            time.sleep(0.2)

    def queued() -> int:
        with sessions() as session:
            return rematch.pending(session)

    run_daemon(daemon, scenario)
    assert queued() == 0


def test_the_conversation_size_bound_is_each_conversations_not_the_sum_of_those_settled(
    sessions, settings, company: DemoCompany, now, monkeypatch
):
    from syncd.crm import conversations

    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    load(
        sessions,
        company.root,
        "opportunities",
        OPPORTUNITIES + "OPP-202,Globex pilot,globex.test,ben@northwind.test,lost,\n",
    )
    # the renewal's conversation holds 3 activities, Globex's two of 2: past a bound of 2,
    # only the renewal is left as it is, and everything else is settled all the same
    monkeypatch.setattr(conversations, "THREAD_SIZE", 2)
    with sessions.begin() as session:
        rematch.rematch(session, settings, rematch.chosen(session, settings))
    rows = by_subject(timeline(sessions))
    assert deals(rows["Pilot scope"]) == set()
    assert deals(rows["Re: Pilot scope"]) == set()
    assert deals(rows["Renewal proposal [OPP-101]"]) == {("OPP-101 Acme platform renewal", "tag")}


def test_a_tag_past_the_kept_part_of_the_body_survives_a_rematch(
    sessions, settings, company: DemoCompany, now
):
    demo_mailboxes(sessions, company)
    body = "We went through the numbers once more. " * 12 + "This is for [OPP-202]."
    mail(company, now, "Dan Wu <dan@acme.test>", "Sizing", "sizing-1@acme.test", body=body)
    sync(sessions, settings, "ana", now)  # the default body policy keeps a snippet
    assert deals(by_subject(timeline(sessions))["Sizing"]) == {("OPP-202 Globex pilot", "tag")}
    with sessions.begin() as session:
        done = rematch.rematch(session, settings, rematch.chosen(session, settings))
    assert deals(by_subject(timeline(sessions))["Sizing"]) == {("OPP-202 Globex pilot", "tag")}
    assert not [c for c in done.changes if c.subject == "Sizing"]
