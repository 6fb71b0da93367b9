"""What managers and salespeople read (issue 16): engagement scores (pure), the contacts and
deals listed hottest first, the activity and pipeline reports, times in the user's own zone
with the zone named, and follow-up due dates that skip public holidays. The reports on
SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from syncd.cli import app
from syncd.config import EngagementSettings, Settings
from syncd.crm import insight
from syncd.demo import DemoCompany
from syncd.display import shown
from syncd.engagement import Touch, score
from syncd.followups import WorkingTime

from .test_pipeline import demo_mailboxes, sync

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RULES = EngagementSettings()


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def test_replies_weigh_more_than_mail_sent_meetings_more_and_old_touches_fade():
    replies = score(
        [Touch(ago(1), "reply"), Touch(ago(2), "reply"), Touch(ago(3), "reply")], RULES, NOW
    )
    assert replies.level == "hot"
    assert replies.reason == "3 replies in 14 days; last touch a day ago"
    sent = score([Touch(ago(1), "sent"), Touch(ago(2), "sent"), Touch(ago(3), "sent")], RULES, NOW)
    assert sent.level == "warm" and sent.points < replies.points
    meeting = score([Touch(ago(1), "meeting")], RULES, NOW)
    assert meeting.points > score([Touch(ago(1), "reply")], RULES, NOW).points
    faded = score([Touch(ago(60), "reply"), Touch(ago(61), "meeting")], RULES, NOW)
    assert faded.level == "cold"
    assert faded.reason == "1 reply and 1 meeting in 90 days; last touch 60 days ago"
    assert score([Touch(ago(200), "reply")], RULES, NOW).reason == "no email or meeting in 90 days"
    # a meeting next week is no touch yet
    assert score([Touch(NOW + timedelta(days=7), "meeting")], RULES, NOW).points == 0


def test_engagement_thresholds_are_checked_when_the_config_is_read():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"warm .* must be below hot"):
        EngagementSettings(hot=1.0, warm=2.0)


def test_times_are_shown_in_the_users_zone_with_the_zone_named():
    when = datetime(2026, 7, 1, 7, 30, tzinfo=UTC)
    assert shown(when, ZoneInfo("Europe/Berlin")) == "2026-07-01 09:30 CEST"
    assert shown(when, ZoneInfo("America/Los_Angeles")) == "2026-07-01 00:30 PDT"
    assert shown(None, ZoneInfo("UTC")) == "-"


def test_follow_up_due_dates_skip_public_holidays_as_well_as_weekends():
    settings = Settings()
    plain = WorkingTime.for_user(settings, "Europe/Berlin", "09:00-17:00")
    german = WorkingTime.for_user(settings, "Europe/Berlin", "09:00-17:00", "DE")
    bavarian = WorkingTime.for_user(settings, "Europe/Berlin", "09:00-17:00", "DE-BY")
    wed = datetime(2026, 12, 23, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    # Thu 24th, then Fri 25th and Mon 28th ... with Christmas (25th, 26th) off in Germany
    assert plain.add_business_days(wed, 2).date().isoformat() == "2026-12-25"
    assert german.add_business_days(wed, 2).date().isoformat() == "2026-12-28"
    # Epiphany (6 January) is a holiday in Bavaria, not in Germany as a whole
    monday = datetime(2027, 1, 5, 18, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert german.next_start(monday).date().isoformat() == "2027-01-06"
    assert bavarian.next_start(monday).date().isoformat() == "2027-01-07"
    company = settings.model_copy(
        update={"company": settings.company.model_copy(update={"holidays": "DE"})}
    )
    assert WorkingTime.for_user(company, "Europe/Berlin", None).add_business_days(wed, 2).day == 28


@pytest.mark.parametrize(
    ("value", "error"),
    [("XX", "names no country"), ("DE-ZZ", "DE has no subdivision 'ZZ'")],
)
def test_an_unknown_holiday_calendar_is_refused_naming_the_fix(value, error):
    from pydantic import ValidationError

    from syncd.config import CompanySettings

    with pytest.raises(ValidationError, match=error):
        CompanySettings(holidays=value)


def cli(settings: Settings, db_url: str, *args: str) -> Any:
    env = {"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "250"}
    return CliRunner().invoke(app, list(args), env=env)


def test_reports_count_each_salespersons_activity_and_list_deals_by_stage(
    sessions, settings, company: DemoCompany, now, db_url
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    sync(sessions, settings, "ben", now)
    with sessions() as session:
        rows = {
            r.key: r.as_dict()
            for r in insight.activity_report(
                session, settings, now - timedelta(days=30), now + timedelta(seconds=1), now
            )
        }
    ana = rows["ana@northwind.test"]
    # the demo's mail: Ana sent the proposal, the nudge and the pilot answer; Carla and Eva
    # wrote to her; the Acme QBR and the Globex check-in took place; the workshop is ahead
    assert (ana["emails_sent"], ana["emails_received"], ana["meetings"]) == (3, 2, 2)
    assert ana["accounts_touched"] == 2 and ana["deals_touched"] == 2
    assert ana["followups_overdue"] >= 1
    ben = rows["ben@northwind.test"]  # on Cc of Ana's proposal: no customer mail of his own
    assert (ben["emails_sent"], ben["emails_received"], ben["meetings"]) == (0, 0, 1)

    result = cli(settings, db_url, "report", "activity", "--since", "2000-01-01", "--csv")
    assert result.exit_code == 0, result.output
    table = {r["key"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert table["ana@northwind.test"]["emails_sent"] == "3"
    by_deal = json.loads(
        cli(settings, db_url, "report", "activity", "--by", "opportunity", "--json").stdout
    )
    deals = {r["key"]: r for r in by_deal["rows"]}
    assert deals["OPP-202"]["emails_received"] >= 1

    pipeline = json.loads(cli(settings, db_url, "report", "pipeline", "--json").stdout)
    assert set(pipeline) == {"Proposal", "Discovery"}
    (renewal,) = pipeline["Proposal"]
    assert renewal["external_id"] == "OPP-101"
    # Ana works in Berlin: the deal's last activity is in her zone, with its offset
    assert renewal["last_activity"].endswith(("+01:00", "+02:00"))
    assert renewal["level"] in ("hot", "warm")
    shown_table = cli(settings, db_url, "report", "pipeline")
    assert "OPP-101 Acme platform renewal" in shown_table.stdout
    assert " CET" in shown_table.stdout or " CEST" in shown_table.stdout


def test_contacts_and_deals_are_listed_hottest_first_with_the_reason(
    sessions, settings, company: DemoCompany, now, db_url
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    listed = json.loads(cli(settings, db_url, "contacts", "--json").stdout)
    points = [c["points"] for c in listed]
    assert points == sorted(points, reverse=True)
    eva = next(c for c in listed if c["address"] == "eva@globex.test")
    assert eva["reason"].startswith("1 reply")
    only = json.loads(cli(settings, db_url, "contacts", "--account", "acme.test", "--json").stdout)
    assert {c["account"] for c in only} == {"Acme Corp"}
    unknown = cli(settings, db_url, "contacts", "--account", "nowhere.test")
    assert unknown.exit_code == 2 and "no account with domain or name 'nowhere.test'" in (
        unknown.stderr
    )
    deals = json.loads(cli(settings, db_url, "opportunities", "--json").stdout)
    assert [d["external_id"] for d in deals] in (["OPP-101", "OPP-202"], ["OPP-202", "OPP-101"])
    assert all(d["reason"] for d in deals)


def test_users_csv_sets_holidays_and_the_call_list_and_refuses_an_unknown_calendar(
    sessions, tmp_path
):
    from sqlalchemy import select

    from syncd.crm.loader import LoadError, load_csv
    from syncd.crm.models import User

    path = tmp_path / "users.csv"
    path.write_text("email,name,holidays,call_list\nzoe@northwind.test,Zoe,de-by,no\n")
    with sessions.begin() as session:
        load_csv(session, "users", path)
    with sessions() as session:
        zoe = session.scalar(select(User).where(User.email == "zoe@northwind.test"))
        assert zoe is not None and (zoe.holidays, zoe.call_list) == ("DE-BY", False)
    path.write_text("email,name,holidays\nzoe@northwind.test,Zoe,Narnia\n")
    with sessions.begin() as session, pytest.raises(LoadError, match="holidays"):
        load_csv(session, "users", path)


def test_a_name_that_looks_like_markup_is_shown_as_it_is(sessions, settings, tmp_path, db_url):
    from syncd.crm.loader import load_csv

    path = tmp_path / "contacts.csv"
    path.write_text("emails,name\nkim@acme.test,Kim [/Sales] [bold]Lee\n")
    with sessions.begin() as session:
        load_csv(session, "contacts", path)
    shown_ = cli(settings, db_url, "contacts")
    assert shown_.exit_code == 0, shown_.output
    assert "Kim [/Sales] [bold]Lee" in shown_.stdout


def test_accounts_are_listed_hottest_first_with_their_domains(
    sessions, settings, company: DemoCompany, now, db_url
):
    demo_mailboxes(sessions, company)
    sync(sessions, settings, "ana", now)
    listed = json.loads(cli(settings, db_url, "accounts", "--json").stdout)
    assert [a["name"] for a in listed][:2] in (["Globex", "Acme Corp"], ["Acme Corp", "Globex"])
    acme = next(a for a in listed if a["name"] == "Acme Corp")
    assert acme["domains"] == ["acme-corp.test", "acme.test"]
    assert acme["level"] in ("hot", "warm") and acme["reason"]
    points = [a["points"] for a in listed]
    assert points == sorted(points, reverse=True)
