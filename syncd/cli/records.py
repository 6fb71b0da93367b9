"""``syncd db``, ``crm load``, ``activities`` and ``tasks``: the CRM database and records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from syncd.cli.common import (
    _json,
    app,
    crm_app,
    db_app,
    out,
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
) -> None:
    """Load CRM records from CSV; upserts by email, domain, name or external id.

    \b
    users:         email, name [, timezone, working_hours]
    accounts:      name, domains [, external_id]
    contacts:      emails, name [, account, title, phone]
    opportunities: external_id, name, account, owner
                   [, stage, amount, currency, close_date, status, contacts]
    Several values in one cell are separated by ';'. An opportunity's contacts may carry a
    role: 'carla@acme.test=Decision maker'. A bad row is reported with its line and column,
    and nothing of that file is written.
    """
    with state.sessions().begin() as session:
        report = load_csv(session, kind, file)
    say(f"{kind.value}: {report.created} created, {report.updated} updated from {file}")


@app.command("activities")
def activities_cmd(
    contact: Annotated[str | None, typer.Option(help="Only a contact's (by email).")] = None,
    account: Annotated[str | None, typer.Option(help="Only an account's (domain or name).")] = None,
    opportunity: Annotated[
        str | None, typer.Option(help="Only an opportunity's (external id).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The timeline: each activity with its links and the reason for each link."""
    with state.sessions()() as session:
        rows = reports.activity_report(session, contact, account, opportunity)
    if as_json:
        _json(rows)
        return
    table = Table("when", "kind", "dir", "subject", "links (reason)", "mailboxes")
    for r in rows:
        links = "\n".join(f"{lk['type']}: {lk['name']} ({lk['reason']})" for lk in r["links"])
        if r["note"]:
            links += f"\n[dim]{r['note']}[/]"
        subject = r["subject"] + (" [cancelled]" if r["status"] == "cancelled" else "")
        table.add_row(
            r["occurred_at"][:16].replace("T", " "),
            r["kind"],
            r["direction"],
            subject,
            links,
            ", ".join(r["mailboxes"]),
        )
    out.print(table)


@app.command("tasks")
def tasks_cmd(
    user: Annotated[str | None, typer.Option(help="Only a user's (by email).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Follow-up tasks and their state."""
    with state.sessions()() as session:
        rows = reports.task_report(session, user)
    if as_json:
        _json(rows)
        return
    table = Table("due", "user", "status", "title", "rule", "in calendar")
    for r in rows:
        status = r["status"] + (f" ({r['resolution']})" if r["resolution"] else "")
        table.add_row(
            r["due"][:16].replace("T", " "),
            r["user"],
            status,
            r["title"],
            r["rule"],
            "yes" if r["in_calendar"] else (r["write_error"] or "pending"),
        )
    out.print(table)
