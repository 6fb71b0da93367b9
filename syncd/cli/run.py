"""``syncd sync``, ``run``, ``status`` and ``demo``: syncing, the daemon, and how it goes."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.cli.common import (
    _json,
    app,
    chosen_mailboxes,
    fail,
    out,
    printable,
    say,
    state,
)
from syncd.cli.records import activities_cmd, tasks_cmd
from syncd.connectors.base import ConnectorError
from syncd.connectors.transport import (
    mask_urls,
)
from syncd.crm import reports
from syncd.crm.database import (
    make_engine,
    safe_url,
    upgrade,
)
from syncd.crm.models import Mailbox
from syncd.display import shown, zone
from syncd.report import SyncReport

# --- sync, run, status ------------------------------------------------------------------


@app.command("sync")
def sync_cmd(
    name: Annotated[str | None, typer.Argument(help="One mailbox (default: all).")] = None,
) -> None:
    """One pass over one or all mailboxes, then exit.

    Exits non-zero if any mailbox failed. A
    mailbox another process is syncing now is synced once that pass is over."""

    sessions = state.sessions()
    names = chosen_mailboxes(name)
    if not names:
        fail("no mailbox is connected; add one with 'syncd mailbox add'")
    failed = 0
    for n in names:
        try:
            r = _sync_in_turn(sessions, n)
        except ConnectorError as exc:
            say(f"{n}: failed: {mask_urls(str(exc))}", sys.stderr)
            failed += 1
            continue
        if r.ok:
            say(
                f"{n}: ok: {r.new_activities} new activities, {r.new_sightings} sightings, "
                f"{sum(r.excluded.values())} not logged, {r.quarantined} quarantined, "
                f"{r.tasks_changed} tasks changed, {r.tasks_written} written"
            )
        else:
            failed += 1
            say(f"{n}: {r.state}: {mask_urls(r.error or '')}", sys.stderr)
    if failed:
        raise typer.Exit(1)


def _sync_in_turn(sessions: sessionmaker[Session], name: str) -> SyncReport:
    """One pass of the mailbox; while another process syncs it (a running daemon, a worker,
    another 'syncd sync'), wait for its turn, saying so once."""
    from syncd.sync import sync_mailbox

    said = False
    while True:
        report = sync_mailbox(sessions, state.settings(), name)
        if not report.busy:
            return report
        if not said:
            say(f"{name}: waiting: being synced by {report.busy}", sys.stderr)
            said = True
        time.sleep(0.5)


@app.command("run")
def run_cmd() -> NoReturn:
    """The daemon: poll every mailbox at its interval until SIGTERM/SIGINT.

    With
    ``metrics.address`` in the config, Prometheus metrics are served at
    http://ADDRESS/metrics."""
    from syncd import metrics
    from syncd.daemon import Daemon

    metrics.serve(state.settings(), state.sessions())
    raise typer.Exit(Daemon(state.sessions(), state.settings()).run())


WRITER_FIX = (
    "mail is still read and logged; give syncd write access to that calendar or task list (see the "
    "error), then the pending tasks are written at the next poll, or now with 'syncd sync {name}'"
)


def _shown(row: reports.StatusRow) -> reports.StatusRow:
    """A row as it may be printed: what an error quotes of a URL masked (one stored by an
    older syncd may hold a password), and the fix of a task write-back that is not ok."""
    tasks = row["tasks"]
    if row["error"]:
        row["error"] = mask_urls(row["error"])
    if tasks["error"]:
        tasks["error"] = mask_urls(tasks["error"])
    if tasks["state"] != "ok":
        tasks["fix"] = WRITER_FIX.format(name=row["mailbox"])
    return row


STATUS_EXIT = {"ok": 0, "failing": 1, "parked": 2}


def _lag(seconds: float | None) -> str:
    """A lag as an admin reads it: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _parsed(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """How each mailbox is doing; exits 1 when one is failing, 2 when one is parked.

    Per mailbox: kind, state (ok / failing / parked), last success, items, lag, last
    error, the state of its follow-up task write-back (tasks: ok / failing), and how many of
    its items are quarantined. A failing or parked mailbox's error names the fix.

    Exit code, for Nagios-style checks: 0 when every mailbox is ok, 1 when one is failing
    (it is retried with backoff), 2 when one is parked (it waits for an admin; this wins).
    --json adds per mailbox lag_seconds (since the start of the last pass that read
    everything; never caught up: since its first attempt), caught_up_at, and lease_owner
    (the process syncing it now, if one is)."""
    with state.sessions()() as session:
        rows = [_shown(r) for r in reports.status_report(session)]
    code = max((STATUS_EXIT.get(r["state"], 1) for r in rows), default=0)
    if as_json:
        _json(rows)
        raise typer.Exit(code)
    table = Table(
        "mailbox",
        "kind",
        "user",
        "state",
        "last success",
        "items",
        "lag",
        "error",
        "tasks",
        "quarantined",
    )
    colour = {"ok": "green", "failing": "yellow", "parked": "red"}
    notes: list[str] = []
    tz = zone(state.settings())
    for r in rows:
        tasks = r["tasks"]
        tasks_cell = Text(tasks["state"], style=colour.get(tasks["state"], "white"))
        if tasks["error"]:
            tasks_cell.append(f": {printable(tasks['error'])}")
        if "fix" in tasks:
            notes.append(f"{r['mailbox']}: follow-up tasks are not written: {tasks['fix']}")
        if r["quarantined"]:
            n = r["quarantined"]
            notes.append(
                f"{r['mailbox']}: {n} item{'s' if n != 1 else ''} could not be read: see "
                f"'syncd quarantine list --mailbox {r['mailbox']}'"
            )
        if r["lease_owner"]:
            notes.append(f"{r['mailbox']}: being synced now by {r['lease_owner']}")
        table.add_row(
            Text(r["mailbox"]),
            r["kind"],
            r["user"],
            Text(r["state"], style=colour.get(r["state"], "white")),
            shown(_parsed(r["last_success"]), tz, "never"),
            str(r["items"]),
            _lag(r["lag_seconds"]),
            Text(printable(r["error"] or "")),
            tasks_cell,
            str(r["quarantined"]),
        )
    out.print(table)
    for note in notes:
        say(note)
    raise typer.Exit(code)


@app.command("demo")
def demo_cmd(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to build the sample company.")
    ] = Path("syncd-demo"),
) -> None:
    """Build a sample company (CRM, two Maildirs, a calendar), sync it once, show the result.

    Uses its own database under DIR/state unless --config or SYNCD_HOME says otherwise; keep
    it running afterwards with: SYNCD_HOME=DIR/state syncd run
    """
    from syncd.demo import add_local_mailbox, build_demo, load_company
    from syncd.sync import sync_mailbox

    directory = directory.expanduser().resolve()
    if state.config is None and not os.environ.get("SYNCD_HOME"):
        state._settings = state.settings().model_copy(update={"home": directory / "state"})
    company = build_demo(directory)
    url = state.settings().database_url()
    upgrade(make_engine(url))
    sessions = state.sessions()
    load_company(sessions, company.root / "crm")
    with sessions() as session:
        existing = set(session.scalars(select(Mailbox.name)))
    for name, path in company.maildirs.items():
        if name not in existing:
            extra = {"calendar": str(company.calendar)} if name == "ana" else {}
            add_local_mailbox(sessions, name, f"{name}@northwind.test", maildir=str(path), **extra)
    for name in company.maildirs:
        r = sync_mailbox(sessions, state.settings(), name)
        say(
            f"synced {name}: {r.state}, {r.new_activities} new activities, "
            f"{sum(r.excluded.values())} not logged ({dict(r.excluded)}), "
            f"{r.quarantined} quarantined, {r.tasks_written} tasks written"
        )
    out.rule("Timeline")
    activities_cmd()
    out.rule("Follow-up tasks")
    tasks_cmd()
    say(
        f"\nThe sample company is in {directory}; its database is {safe_url(url)}.\n"
        f"Tasks were written as VTODO files into {company.calendar}.\n"
        f"Keep it in sync with:  SYNCD_HOME={directory / 'state'} syncd run"
    )
