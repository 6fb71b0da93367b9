"""``syncd import contacts``, ``import undo`` and ``import list``: the one-time historical
import of the people every mailbox already knows (``syncd.harvest``)."""

from __future__ import annotations

import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy import select

from syncd.cli.common import _json, app, fail, out, parse_day, say, state
from syncd.connectors.transport import mask_urls
from syncd.crm.models import Import, Mailbox
from syncd.display import shown, zone

if TYPE_CHECKING:
    from syncd.harvest.apply import Applied

import_app = typer.Typer(
    help="The one-time historical import: the contacts and accounts mailboxes already know.",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")


class Accounts(StrEnum):
    create = "create"
    existing = "existing"
    never = "never"


class _Live:
    """rich progress on stderr: a line a mailbox and source, with items read of about how
    many it holds (where the source can tell: IMAP STATUS, a Maildir's files, Gmail's
    profile, a Graph folder's count), the people in the stretch in hand, the time spent and
    the time left."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[tuple[str, str], TaskID] = {}

    def source(self, mailbox: str, source: str, total: int | None) -> None:
        if self.progress is not None:
            self.tasks[(mailbox, source)] = self.progress.add_task(
                f"{mailbox} {source}", total=total, people=0
            )

    def read(self, mailbox: str, source: str, items: int, people: int) -> None:
        task = self.tasks.get((mailbox, source))
        if self.progress is not None and task is not None:
            self.progress.update(task, completed=items, people=people)


def _since(value: str | None) -> datetime | None:
    return parse_day("--since", value)


def _targets(
    mailboxes: list[str], everything: bool, paths: list[Path], user: str | None
) -> list[Any]:
    from syncd.harvest.run import Target

    if paths and not user:
        fail("--path needs --user EMAIL: the address of the person whose mail it is", 2)
    if not (mailboxes or everything or paths):
        fail("say what to read: --mailbox NAME (repeatable), --all, or --path PATH --user EMAIL", 2)
    with state.sessions()() as session:
        rows = {m.name: m.user.email for m in session.scalars(select(Mailbox))}
    if everything:
        mailboxes = sorted(rows)
    unknown = [m for m in mailboxes if m not in rows]
    if unknown:
        fail(f"no mailbox named {unknown[0]!r}; see 'syncd mailbox list'", 2)
    return [Target(m, rows[m]) for m in mailboxes] + [
        Target(str(p.expanduser().resolve()), user or "", p.expanduser().resolve()) for p in paths
    ]


@import_app.command("contacts")
def contacts_cmd(
    mailbox: Annotated[
        list[str] | None, typer.Option("--mailbox", help="A mailbox to read; repeatable.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Read every mailbox.")] = False,
    path: Annotated[
        list[Path] | None,
        typer.Option(
            "--path",
            help="A Google Takeout .mbox, a Maildir or a folder of .eml files; repeatable "
            "(with --user).",
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Whose mail the --path files are (an address).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only mail and meetings from DATE (YYYY-MM-DD).")
    ] = None,
    min_messages: Annotated[
        int,
        typer.Option(
            "--min-messages",
            min=1,
            help="Someone never written to nor met is imported from this many messages.",
        ),
    ] = 2,
    two_way_only: Annotated[
        bool,
        typer.Option("--two-way-only", help="Only people with a conversation both ways."),
    ] = False,
    accounts: Annotated[
        Accounts,
        typer.Option(
            "--accounts",
            help="A company domain's missing account: create it, attach existing ones only, "
            "or attach none.",
        ),
    ] = Accounts.create,
    update_names: Annotated[
        bool,
        typer.Option(
            "--update-names", help="Also change the name and account of existing contacts."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and report; change nothing in the CRM.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write every candidate and its decision to FILE.csv."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Turn what the mailboxes know into CRM contacts and accounts.

    Reads the headers of every folder syncd reads (sent mail weighs most), the meetings'
    attendees, and files given with --path; skips internal, role and machine addresses,
    people seen only in bulk mail or auto-replies, the exclusion lists and one-off strangers,
    each with its reason in the --report. Killed, it goes on where it stopped when run again
    with the same sources; a run after a --dry-run applies the harvest the dry run made.
    Everything it creates carries the import's id: 'syncd import undo ID' removes it.
    Exit codes: 0 done, 1 a source could not be read (nothing applied), 2 bad options.
    """
    from syncd.harvest.decide import Policy
    from syncd.harvest.run import ContactImport

    targets = _targets(mailbox or [], everything, path or [], user)
    policy = Policy(
        min_messages=min_messages,
        two_way_only=two_way_only,
        accounts=accounts.value,
        update_names=update_names,
    )
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        TextColumn("items, {task.fields[people]} people in hand"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=as_json or not console.is_terminal) as bar:
        job = ContactImport(
            state.sessions(),
            state.settings(),
            targets,
            since=_since(since),
            policy=policy,
            progress=_Live(bar),
        )
        outcome = job.run(dry_run=dry_run, report=report)
    summary = outcome.summary()
    if as_json:
        _json(summary)
    else:
        _print_summary(summary, dry_run, report)
    for name, why in outcome.warnings.items():
        say(f"{name}: {why}", sys.stderr)
    if outcome.failed:
        for name, why in outcome.failed.items():
            say(f"{name}: not read: {why}", sys.stderr)
        say("nothing was applied; fix the source (or leave it out) and run again", sys.stderr)
        raise typer.Exit(1)


def outcome_applied(summary: dict[str, Any]) -> Applied | None:
    """What the run applied, as the summary holds it (None for a dry run)."""
    from syncd.harvest.apply import Applied

    applied = summary["applied"]
    return Applied(**applied) if applied else None


def _print_summary(summary: dict[str, Any], dry_run: bool, report: Path | None) -> None:
    table = Table("", "people", title=f"import {summary['import']}")
    table.add_row("items read", str(summary["items_read"]))
    table.add_row("candidates", str(summary["candidates"]))
    table.add_row("to import" if dry_run else "imported", str(summary["to_import"]))
    table.add_row("already contacts", str(summary["to_update"]))
    for reason, count in summary["skipped"].items():
        table.add_row(f"skipped: {reason}", str(count))
    applied = summary["applied"]
    result = outcome_applied(summary)
    if result is not None:
        table.add_row("contacts updated", str(result.contacts_updated))
        table.add_row("addresses added", str(result.addresses_added))
        table.add_row("accounts created", str(result.accounts_created))
    else:
        table.add_row("accounts to create", str(summary["accounts_to_create"]))
    out.print(table)
    if report is not None:
        say(f"report: {report}")
    if dry_run:
        say("dry run: nothing changed; run again without --dry-run to apply these decisions")
    elif applied:
        say(f"undo with: syncd import undo {summary['import']}")


@import_app.command("undo")
def undo_cmd(
    import_id: Annotated[str, typer.Argument(help="The import's id (see 'syncd import list').")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove what one import created.

    Its contacts and accounts that have no activity of their own since (those are kept and
    named), the addresses it added to other contacts, and what it counted."""
    from syncd.harvest.apply import undo

    with state.sessions().begin() as session:
        row = session.get(Import, import_id)
        if row is None:
            fail(f"no import {import_id!r}; see 'syncd import list'")
        if row.state == "undone":
            fail(f"import {import_id!r} was already undone")
        result = undo(session, import_id, row.started_at)
        row.state = "undone"
    if as_json:
        _json(vars(result))
        return
    say(
        f"import {import_id} undone: {result.contacts_removed} contacts, "
        f"{result.accounts_removed} accounts and {result.addresses_removed} addresses removed"
    )
    for name in result.contacts_kept:
        say(f"kept contact {name!r}: it has activity of its own")
    for name in result.accounts_kept:
        say(f"kept account {name!r}: it has contacts, deals or activity of its own")


@import_app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every import: its id, state, when it ran and what it did."""
    with state.sessions()() as session:
        rows: list[dict[str, Any]] = [
            {
                "import": r.id,
                "kind": r.kind,
                "state": r.state,
                "started_at": r.started_at.isoformat(),
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "summary": r.summary,
            }
            for r in session.scalars(select(Import).order_by(Import.started_at))
        ]
    if as_json:
        _json(rows)
        return
    table = Table("import", "kind", "state", "started", "contacts created")
    for r in rows:
        created = ((r["summary"] or {}).get("applied") or {}).get("contacts_created", "")
        started = shown(datetime.fromisoformat(r["started_at"]), zone(state.settings()))
        table.add_row(r["import"], r["kind"], r["state"], started, str(created))
    out.print(table)


@import_app.command("mail")
def mail_cmd(
    since: Annotated[
        str, typer.Option("--since", help="Log mail and meetings from DATE (YYYY-MM-DD) on.")
    ],
    mailbox: Annotated[
        list[str] | None, typer.Option("--mailbox", help="A mailbox to read; repeatable.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Read every mailbox.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Log past mail and meetings as activities, back to --since.

    Through the daemon's own pipeline (the same matching, exclusions and quarantine), with
    the follow-up rules off for the past: no task for a conversation of last year. What is
    logged already is not logged twice. Killed, it goes on where it stopped when run
    again; a running daemon keeps syncing meanwhile (the two take turns on each mailbox).
    Exit codes: 0 done, 1 a mailbox failed (named), 2 bad options."""
    import time

    from syncd.sync import SyncJob

    when = _since(since)
    assert when is not None
    names = [t.name for t in _targets(mailbox or [], everything, [], None)]
    settings = state.settings()
    sessions = state.sessions()
    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = {"mailbox": name, "new_activities": 0, "new_sightings": 0}
        row.update(quarantined=0, not_logged=0, state="ok", error=None)
        waiting = False
        while True:
            report = SyncJob(
                sessions, settings, name, past=when, budget=settings.sync.pass_budget
            ).run()
            if report.busy:
                if not waiting and not as_json:
                    say(f"{name}: waiting: being synced by {report.busy}", sys.stderr)
                waiting = True
                time.sleep(1.0)
                continue
            row["new_activities"] += report.new_activities
            row["new_sightings"] += report.new_sightings
            row["quarantined"] += report.quarantined
            row["not_logged"] += sum(report.excluded.values())
            row["state"], row["error"] = report.state, mask_urls(report.error or "") or None
            if not report.yielded or not report.ok:
                break
        rows.append(row)
        if not as_json:
            if row["state"] == "ok":
                say(
                    f"{name}: ok: {row['new_activities']} new activities, "
                    f"{row['new_sightings']} sightings, {row['not_logged']} not logged, "
                    f"{row['quarantined']} quarantined (since {since})"
                )
            else:
                say(f"{name}: {row['state']}: {mask_urls(row['error'] or '')}", sys.stderr)
    if as_json:
        _json(rows)
    if any(r["state"] != "ok" for r in rows):
        raise typer.Exit(1)
