"""``syncd doctor`` (is this installation healthy, and if not, what fixes it) and ``syncd
audit`` (what the providers hold that syncd never logged); the work is in
:mod:`syncd.doctor` and :mod:`syncd.audit`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from syncd.cli.common import _json, app, chosen_mailboxes, out, printable, say, state

if TYPE_CHECKING:
    from syncd import audit

COLOUR = {"ok": "green", "warn": "yellow", "fail": "red"}


@app.command("doctor")
def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the installation: config, database, secret.key, every mailbox.

    Check the config, the database, secret.key and every mailbox (credentials, server,
    login, scopes, calendar writable, clock), each with a verdict (ok / warn / fail) and
    the fix. Changes nothing. Exits 1 when any check fails."""
    from syncd import doctor  # the sync machinery: imported by this command only

    checks = doctor.run(state.settings(), state.config)
    if as_json:
        _json(doctor.as_json(checks))
    else:
        table = Table("check", "verdict", "detail", "fix")
        for c in checks:
            table.add_row(
                Text(printable(c.what)),
                Text(c.verdict, style=COLOUR[c.verdict]),
                Text(printable(c.detail)),
                Text(printable(c.fix)),
            )
        out.print(table)
    if doctor.failed(checks):
        raise typer.Exit(1)


@app.command("audit")
def audit_cmd(
    name: Annotated[str | None, typer.Argument(help="The mailbox (default: every one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10000, help="Missing ids listed per folder.")
    ] = 20,
) -> None:
    """Find mail that was never logged, skipped or quarantined.

    Per mailbox and folder, what the provider holds up to syncd's cursor against what
    syncd logged, skipped (with a reason) or quarantined; lists the ids of what is missing.
    Exits 1 when something is missing or a mailbox cannot be audited."""
    from syncd import audit  # the sync machinery: imported by this command only

    sessions = state.sessions()
    names = chosen_mailboxes(name)
    results = audit.audit(sessions, state.settings(), names, datetime.now(UTC), limit)
    if as_json:
        _json(
            [
                {
                    "mailbox": r.mailbox,
                    "error": r.error,
                    "audited": r.audited,
                    "missing": r.missing,
                    "folders": [
                        {**f.__dict__, "missing_ids": list(f.missing_ids)} for f in r.folders
                    ],
                }
                for r in results
            ]
        )
    else:
        _print(results, limit)
    if any(r.error or r.missing for r in results):
        raise typer.Exit(1)


def _print(results: list[audit.MailboxAudit], limit: int) -> None:
    table = Table("mailbox", "folder", "provider", "logged", "skipped", "quarantined", "missing")
    notes: list[str] = []
    for r in results:
        if r.error:
            notes.append(f"{r.mailbox}: not audited: {printable(r.error)}")
        elif not r.audited:
            notes.append(f"{r.mailbox}: its kind cannot list what the provider holds")
        for f in r.folders:
            table.add_row(
                Text(r.mailbox),
                Text(printable(f.folder)),
                str(f.held),
                str(f.logged),
                str(f.skipped),
                str(f.quarantined),
                Text(str(f.missing), style="red" if f.missing else "green"),
            )
            if f.missing:
                shown = ", ".join(printable(i) for i in f.missing_ids)
                more = f" (first {limit} of {f.missing})" if f.missing > limit else ""
                notes.append(f"{r.mailbox} {printable(f.folder)}: missing{more}: {shown}")
    out.print(table)
    for note in notes:
        say(note)
