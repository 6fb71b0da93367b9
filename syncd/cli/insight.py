"""``syncd contacts``, ``syncd opportunities`` and ``syncd report activity|pipeline``: how hot
each contact and deal is, and what managers read (``syncd.crm.insight``). Tables in a
terminal; ``--json`` (times ISO 8601 with their offset) and ``--csv`` for scripts. Every time
shown is in the zone of the user it is about (a deal's owner), with the zone named."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from syncd.cli.common import _json, app, fail, parse_day, printable, state
from syncd.display import iso, shown, zone

if TYPE_CHECKING:
    from syncd.crm import insight  # imported by the commands that use it
    from syncd.engagement import Engagement

report_app = typer.Typer(help="Reports for managers.", no_args_is_help=True)
app.add_typer(report_app, name="report")

LEVEL_STYLE = {"hot": "bold red", "warm": "yellow", "cold": "blue"}


def _text(value: str) -> str:
    """Text from outside (a contact's name: anyone's display name) as a table shows it:
    control characters escaped, and no rich markup ('[/Sales]' is text, never a tag)."""
    return escape(printable(value))


class By(StrEnum):
    user = "user"
    account = "account"
    opportunity = "opportunity"


def _console() -> Console:
    return Console(width=max(120, Console().width))


def _check_level(level: str | None) -> None:
    if level is not None and level not in LEVEL_STYLE:
        fail(f"--level {level!r} is not hot, warm or cold", 2)


R = TypeVar("R", "insight.ContactEngagement", "insight.AccountEngagement")


def _chosen(rows: list[R], level: str | None, limit: int) -> list[R]:
    """The rows of one level (all: None), at most ``limit`` of them (all: 0)."""
    if level is not None:
        rows = [r for r in rows if r.engagement.level == level]
    return rows[:limit] if limit else rows


def _level(e: Engagement) -> str:
    return f"[{LEVEL_STYLE[e.level]}]{e.level}[/]"


def _engagement_json(e: Engagement, tz: Any) -> dict[str, Any]:
    return {
        "level": e.level,
        "points": round(e.points, 2),
        "last_touch": iso(e.last_touch, tz),
        "reason": e.reason,
    }


@app.command("contacts")
def contacts_cmd(
    account: Annotated[
        str | None, typer.Option(help="Only this account's (a domain or its name).")
    ] = None,
    level: Annotated[str | None, typer.Option(help="Only hot, warm or cold ones.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).", min=0)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The contacts, hottest first: hot, warm or cold from their emails and meetings of
    the last engagement.window_days, with the last touch and the reason."""
    from syncd.crm import insight

    _check_level(level)
    settings = state.settings()
    tz = zone(settings)
    with state.sessions()() as session:
        try:
            rows = insight.contacts(session, settings, datetime.now(UTC), account)
        except LookupError as exc:
            fail(f"--account: {exc}", 2)
    rows = _chosen(rows, level, limit)
    if as_json:
        _json(
            [
                {
                    "id": r.id,
                    "name": r.name,
                    "address": r.address,
                    "account": r.account,
                    **_engagement_json(r.engagement, tz),
                }
                for r in rows
            ]
        )
        return
    table = Table("contact", "account", "engagement", "last touch", "why")
    for r in rows:
        table.add_row(
            _text(f"{r.name} <{r.address}>"),
            _text(r.account or "-"),
            _level(r.engagement),
            shown(r.engagement.last_touch, tz),
            r.engagement.reason,
        )
    _console().print(table)


@app.command("accounts")
def accounts_cmd(
    level: Annotated[str | None, typer.Option(help="Only hot, warm or cold ones.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).", min=0)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The accounts, hottest first: hot, warm or cold from the emails and meetings with
    their people of the last engagement.window_days, with the last touch and the reason."""
    from syncd.crm import insight

    _check_level(level)
    settings = state.settings()
    tz = zone(settings)
    with state.sessions()() as session:
        rows = insight.accounts(session, settings, datetime.now(UTC))
    rows = _chosen(rows, level, limit)
    if as_json:
        _json(
            [
                {
                    "id": r.id,
                    "name": r.name,
                    "domains": list(r.domains),
                    **_engagement_json(r.engagement, tz),
                }
                for r in rows
            ]
        )
        return
    table = Table("account", "domains", "engagement", "last touch", "why")
    for r in rows:
        table.add_row(
            _text(r.name),
            _text(", ".join(r.domains) or "-"),
            _level(r.engagement),
            shown(r.engagement.last_touch, tz),
            r.engagement.reason,
        )
    _console().print(table)


@app.command("opportunities")
def opportunities_cmd(
    include_closed: Annotated[bool, typer.Option("--all", help="Won and lost deals too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The open deals, hottest first, with their engagement, last touch and the reason."""
    from syncd.crm import insight

    settings = state.settings()
    with state.sessions()() as session:
        rows = insight.opportunities(session, settings, datetime.now(UTC), include_closed)
    if as_json:
        _json([_deal_json(settings, d) for d in rows])
        return
    table = Table("deal", "account", "stage", "owner", "engagement", "last touch", "why")
    for d in rows:
        tz = zone(settings, d.owner_timezone)
        table.add_row(
            _text(f"{d.external_id} {d.name}"),
            _text(d.account),
            _text(d.stage or d.status),
            d.owner,
            _level(d.engagement),
            shown(d.engagement.last_touch, tz),
            d.engagement.reason,
        )
    _console().print(table)


def _deal_json(settings: Any, d: insight.DealEngagement) -> dict[str, Any]:
    tz = zone(settings, d.owner_timezone)
    return {
        "external_id": d.external_id,
        "name": d.name,
        "account": d.account,
        "stage": d.stage,
        "status": d.status,
        "owner": d.owner,
        "amount": d.amount,
        "close_date": d.close_date,
        "last_activity": iso(d.last_activity, tz),
        **_engagement_json(d.engagement, tz),
    }


@report_app.command("activity")
def report_activity_cmd(
    since: Annotated[
        str | None, typer.Option(help="From this day (YYYY-MM-DD; default 7 days ago).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="To this day, included (YYYY-MM-DD; default today).")
    ] = None,
    by: Annotated[By, typer.Option(help="One row per user, account or opportunity.")] = By.user,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What each salesperson did in a period: emails sent and received, meetings held,
    contacts, accounts and deals touched, follow-ups done and overdue, and their open deals
    cooling down (no touch for call_list.cooling_days). --by account or opportunity counts
    the same per account or deal."""
    from syncd.crm import insight

    now = datetime.now(UTC)
    tz = zone(state.settings())  # days are the company's: a team's day, not UTC's

    def day_start(option: str, value: str | None) -> datetime | None:
        found = parse_day(option, value)
        return None if found is None else datetime.combine(found.date(), time(), tzinfo=tz)

    today = datetime.combine(now.astimezone(tz).date(), time(), tzinfo=tz)
    start = day_start("--since", since) or today - timedelta(days=7)
    end_day = day_start("--until", until)
    end = end_day + timedelta(days=1) if end_day else now
    if end <= start:
        fail(f"the period is empty: it starts {start.date()} and ends before it", 2)
    with state.sessions()() as session:
        rows = insight.activity_report(session, state.settings(), start, end, now, by.value)
    data = [r.as_dict() for r in rows]
    if as_json:
        _json(
            {
                "since": start.isoformat(),
                "until": end.astimezone(tz).isoformat(),
                "by": by.value,
                "rows": data,
            }
        )
        return
    columns = list(data[0]) if data else list(insight.ActivityCounts("", "").as_dict())
    if as_csv:
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(data)
        return
    titles = {
        "key": by.value,
        "name": "name",
        "emails_sent": "sent",
        "emails_received": "received",
        "meetings": "meetings",
        "contacts_touched": "contacts",
        "accounts_touched": "accounts",
        "deals_touched": "deals",
        "followups_done": "follow-ups done",
        "followups_overdue": "overdue",
        "deals_cooling": "cooling",
    }
    table = Table(
        *(titles[c] for c in columns),
        title=f"activity {start.date()} to {(end - timedelta(seconds=1)).astimezone(tz).date()} "
        f"({tz.key} days)",
    )
    for row in data:
        table.add_row(*(_text(str(row[c])) for c in columns))
    _console().print(table)


@report_app.command("pipeline")
def report_pipeline_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The open deals by stage, each with its last activity and engagement."""
    from syncd.crm import insight

    settings = state.settings()
    with state.sessions()() as session:
        rows = insight.opportunities(session, settings, datetime.now(UTC))
    stages: dict[str, list[insight.DealEngagement]] = {}
    for d in sorted(rows, key=lambda d: (d.stage or "", -d.engagement.points, d.external_id)):
        stages.setdefault(d.stage or "(no stage)", []).append(d)
    if as_json:
        _json({stage: [_deal_json(settings, d) for d in deals] for stage, deals in stages.items()})
        return
    table = Table(
        "stage", "deal", "account", "owner", "amount", "close", "last activity", "engagement"
    )
    for stage, deals in stages.items():
        for i, d in enumerate(deals):
            tz = zone(settings, d.owner_timezone)
            table.add_row(
                _text(stage) if i == 0 else "",
                _text(f"{d.external_id} {d.name}"),
                _text(d.account),
                d.owner,
                d.amount or "-",
                d.close_date or "-",
                shown(d.last_activity, tz),
                f"{_level(d.engagement)} {d.engagement.reason}",
            )
        table.add_section()
    _console().print(table)
