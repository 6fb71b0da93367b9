"""``syncd db``, ``crm load``, ``activities`` and ``tasks``: the CRM database and records."""

from __future__ import annotations

import csv
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from syncd.cli.common import (
    _json,
    app,
    crm_app,
    db_app,
    fail,
    out,
    parse_day,
    say,
    state,
)
from syncd.crm import reports
from syncd.crm.database import (
    make_engine,
    safe_url,
    upgrade,
)
from syncd.crm.loader import RecordKind, load_csv
from syncd.display import shown, zone

# --- db ---------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the CRM database or migrate it to this version of syncd (Alembic); on
    PostgreSQL, also the job queue of 'syncd worker' (Procrastinate's tables)."""
    url = state.settings().database_url()
    upgrade(make_engine(url))
    from syncd.worker import upgrade_queue  # the job queue of 'syncd worker' (PostgreSQL)

    upgrade_queue(url)
    say(f"database {safe_url(url)} is up to date")


# --- crm --------------------------------------------------------------------------------


@crm_app.command("load")
def crm_load(
    kind: Annotated[RecordKind, typer.Argument(help="What the file holds.")],
    file: Annotated[Path, typer.Argument(help="UTF-8 CSV with a header row.")],
    strict: Annotated[
        bool, typer.Option("--strict", help="A warning is an error: nothing is loaded.")
    ] = False,
) -> None:
    """Load CRM records from CSV; upserts by email, domain, name or external id.

    \b
    users:         email, name [, timezone, working_hours, holidays, call_list]
    accounts:      name, domains [, external_id]
    contacts:      emails, name [, account, title, phone]
    opportunities: external_id, name, account, owner
                   [, stage, amount, currency, close_date, status, contacts]
    Several values in one cell are separated by ';'. An opportunity's contacts may carry a
    role: 'carla@acme.test=Decision maker'. A bad row is reported with its line and column,
    and nothing of that file is written. A contact's row is found by its first address; an
    address that belongs to another contact is an error naming both. A free-mail domain on
    an account is left out with a warning (--strict: an error). The stored activities
    that new addresses, domains and deals concern are re-matched by the daemon.
    """
    with state.sessions().begin() as session:
        report = load_csv(session, kind, file, strict=strict)
    for warning in report.warnings:
        say(f"syncd: warning: {warning}", sys.stderr)
    say(f"{kind.value}: {report.created} created, {report.updated} updated from {file}")
    if report.queued:
        say(
            f"stored activities these changes may concern are re-matched by the running daemon "
            f"({report.queued} change(s) queued); 'syncd rematch --queued' does it now"
        )


@app.command("activities")
def activities_cmd(
    contact: Annotated[str | None, typer.Option(help="Only a contact's (by email).")] = None,
    account: Annotated[str | None, typer.Option(help="Only an account's (domain or name).")] = None,
    opportunity: Annotated[
        str | None, typer.Option(help="Only an opportunity's (external id).")
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="Only those seen by a mailbox of this user (email).")
    ] = None,
    mailbox: Annotated[
        str | None, typer.Option(help="Only those seen by this mailbox (name).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only those from DATE (YYYY-MM-DD, UTC) on.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only those up to DATE (YYYY-MM-DD, UTC), that day included.")
    ] = None,
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="Only this activity (repeat for more).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (one row an activity).")] = False,
) -> None:
    """The timeline: each activity with its links and the reason for each link. A filter
    that names nothing stored (an unknown contact, account, opportunity, user, mailbox or
    id) is an error naming it (exit 2), never an empty table."""
    if as_json and as_csv:
        fail("--json and --csv: give one of them", 2)
    start = parse_day("--since", since)
    end = parse_day("--until", until)
    try:
        with state.sessions()() as session:
            rows = reports.activity_report(
                session,
                contact,
                account,
                opportunity,
                user=user,
                mailbox=mailbox,
                since=start,
                until=end + timedelta(days=1) if end else None,
                ids=tuple(ids or ()),
            )
    except reports.UnknownRecord as exc:
        fail(str(exc), 2)
    if as_json:
        _json(rows)
        return
    if as_csv:
        _activities_csv(rows)
        return
    tz = _reader_zone(user)
    table = Table("id", "when", "kind", "dir", "subject", "links (reason)", "mailboxes")
    for r in rows:
        table.add_row(
            str(r["id"]),
            shown(datetime.fromisoformat(r["occurred_at"]), tz),
            r["kind"],
            r["direction"],
            r["subject"] + (" [cancelled]" if r["status"] == "cancelled" else ""),
            _links(r, "\n") + (f"\n[dim]{r['note']}[/]" if r["note"] else ""),
            ", ".join(r["mailboxes"]),
        )
    out.print(table)


def _links(row: reports.ActivityRow, sep: str) -> str:
    return sep.join(f"{lk['type']}: {lk['name']} ({lk['reason']})" for lk in row["links"])


def _activities_csv(rows: list[reports.ActivityRow]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(
        ["id", "occurred_at", "kind", "direction", "status", "subject", "participants",
         "links", "note", "mailboxes"]
    )  # fmt: skip
    for r in rows:
        writer.writerow(
            [
                r["id"],
                r["occurred_at"],
                r["kind"],
                r["direction"],
                r["status"],
                r["subject"],
                "; ".join(f"{p['role']}: {p['address']}" for p in r["participants"]),
                _links(r, "; "),
                r["note"] or "",
                " ".join(r["mailboxes"]),
            ]
        )


def _reader_zone(user: str | None) -> ZoneInfo:
    """The zone times are shown in: the user's own (their tasks, their mail), else the
    company's."""
    settings = state.settings()
    if user is None:
        return zone(settings)
    from sqlalchemy import select

    from syncd.crm.models import User
    from syncd.matching.addresses import normalize_address

    with state.sessions()() as session:
        tz = session.scalar(select(User.timezone).where(User.email == normalize_address(user)))
    return zone(settings, tz)


@app.command("tasks")
def tasks_cmd(
    user: Annotated[str | None, typer.Option(help="Only a user's (by email).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Follow-up tasks and their state."""
    try:
        with state.sessions()() as session:
            rows = reports.task_report(session, user)
    except reports.UnknownRecord as exc:
        fail(str(exc), 2)
    if as_json:
        _json(rows)
        return
    table = Table("due", "user", "status", "title", "rule", "in calendar")
    zones: dict[str, ZoneInfo] = {}
    for r in rows:
        status = r["status"] + (f" ({r['resolution']})" if r["resolution"] else "")
        tz = zones.get(r["user"]) or zones.setdefault(r["user"], _reader_zone(r["user"]))
        table.add_row(
            shown(datetime.fromisoformat(r["due"]), tz),
            r["user"],
            status,
            r["title"],
            r["rule"],
            "yes" if r["in_calendar"] else (r["write_error"] or "pending"),
        )
    out.print(table)
