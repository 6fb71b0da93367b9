"""``syncd quarantine``: the items syncd could not read, why, and a retry after an upgrade."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.cli.common import (
    _json,
    fail,
    out,
    printable,
    quarantine_app,
    say,
    state,
)
from syncd.crm import quarantine as quarantine_store
from syncd.crm.models import Mailbox
from syncd.display import shown, zone

if TYPE_CHECKING:
    from syncd.quarantine import Status

# --- quarantine -------------------------------------------------------------------------


def _known_mailbox(session: Session, name: str | None) -> None:
    if name is not None and session.scalar(select(Mailbox.id).where(Mailbox.name == name)) is None:
        fail(f"--mailbox {name!r}: no mailbox has that name; see 'syncd mailbox list'", 2)


def _size(n: int | None) -> str:
    if n is None:
        return "not kept"
    return f"{n} bytes" if n < 10240 else f"{n // 1024} KB"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


@quarantine_app.command("list")
def quarantine_list(
    mailbox: Annotated[
        str | None, typer.Option("--mailbox", help="Only this mailbox's entries.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The items syncd could not read, oldest first: id, mailbox, source, provider id, when,
    attempts, whether a copy was kept (needed for a retry), and the reason."""
    with state.sessions()() as session:
        _known_mailbox(session, mailbox)
        rows = quarantine_store.entries(session, mailbox)
    if as_json:
        _json([r.as_dict() for r in rows])
        return
    if not rows:
        say("nothing is quarantined" + (f" in mailbox {mailbox!r}" if mailbox else ""))
        return
    tz = zone(state.settings())
    table = Table("id", "mailbox", "source", "provider id", "since", "tries", "kept", "reason")
    for r in rows:
        table.add_row(
            str(r.id),
            Text(r.mailbox),
            Text(printable(r.source)),
            Text(printable(r.provider_id)),
            shown(r.created_at, tz),
            str(r.attempts),
            f"{r.format}, {_size(r.size)}" if r.retryable else "no copy",
            Text(printable(r.reason)),
        )
    out.print(table)
    say(
        "details: syncd quarantine show ID; read again with this version of syncd: "
        "syncd quarantine retry ID ... (or --all)"
    )


class ShownEntry(quarantine_store.QuarantineRow):
    """``syncd quarantine show --json``: the entry, and where its bytes were written."""

    raw_file: str | None


def _entry_or_fail(session: Session, entry_id: int) -> quarantine_store.Entry:
    found = quarantine_store.entries(session, ids=[entry_id])
    if not found:
        fail(f"no quarantine entry {entry_id}; see 'syncd quarantine list' for the ids", 2)
    return found[0]


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file only its owner can read (0600), never over another."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fail(f"--raw {str(path)!r} exists already; give the name of a new file", 2)
        raise
    except OSError as exc:
        fail(f"--raw {str(path)!r}: {exc.strerror}")
        raise
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)


@quarantine_app.command("show")
def quarantine_show(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="The entry's id (see list).")],
    raw_file: Annotated[
        Path | None,
        typer.Option(
            "--raw",
            metavar="FILE",
            help="Write the item's bytes, as read, to FILE (a new file, mode 0600). They are "
            "never printed: they can hold anything.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One quarantined item: why it was not read, where it is (mailbox, source, provider
    id), when, how many attempts, its format and size, and whether it can be retried."""
    from syncd.quarantine import why_not_retryable

    with state.sessions()() as session:
        entry = _entry_or_fail(session, entry_id)
        data = quarantine_store.raw(session, entry_id) if raw_file is not None else None
    if raw_file is not None:
        if data is None:
            fail(f"entry {entry_id} has no bytes to write: {why_not_retryable(entry)}")
            return
        _write_private(raw_file, data)
    if as_json:
        shown: ShownEntry = {**entry.as_dict(), "raw_file": str(raw_file) if raw_file else None}
        _json(shown)
        return
    retry = (
        f"syncd quarantine retry {entry.id}"
        if entry.retryable
        else f"not possible: {why_not_retryable(entry)}"
    )
    raw_line = (
        f"written to {raw_file} (mode 0600)"
        if raw_file is not None
        else ("not shown; write them to a file with --raw FILE" if entry.retryable else "none")
    )
    for label, value in (
        ("entry", str(entry.id)),
        ("reason", entry.reason),
        ("mailbox", entry.mailbox),
        ("source", entry.source),
        ("provider id", entry.provider_id),
        ("quarantined", _when(entry.created_at)),
        ("last attempt", _when(entry.updated_at or entry.created_at)),
        ("attempts", str(entry.attempts)),
        ("format", entry.format or "unknown"),
        ("size", _size(entry.size)),
        ("raw bytes", raw_line),
        ("retry", retry),
    ):
        say(f"{label + ':':<14}{printable(value)}")


@quarantine_app.command("retry")
def quarantine_retry(
    entry_ids: Annotated[
        list[int] | None, typer.Argument(metavar="ID", help="The entries to retry.")
    ] = None,
    all_entries: Annotated[
        bool, typer.Option("--all", help="Retry every entry (of --mailbox, if given).")
    ] = False,
    mailbox: Annotated[
        str | None,
        typer.Option("--mailbox", help="Retry every entry of this mailbox (same as with --all)."),
    ] = None,
) -> None:
    """Read quarantined items again with this version of syncd, e.g. after an upgrade.

    Each item is parsed again from the copy kept of it and goes through the same rules as
    a sync: logged (and its entry dropped), not logged by the rules (bulk, private...:
    the entry is dropped too), or still unreadable (the entry stays, with the new reason).
    Exit code 0 when every item was read, 1 when some is still unreadable or has no copy
    to read, 2 for a bad argument.
    """
    from syncd.quarantine import Retrier

    if entry_ids and (all_entries or mailbox):
        fail("give entry ids, or --all / --mailbox NAME, not both", 2)
    if not entry_ids and not all_entries and mailbox is None:
        fail(
            "say which entries to retry: ID ... (see 'syncd quarantine list'), --all, or "
            "--mailbox NAME",
            2,
        )
    sessions = state.sessions()
    with sessions() as session:
        _known_mailbox(session, mailbox)
        if entry_ids:
            wanted = list(dict.fromkeys(entry_ids))
            entries = quarantine_store.entries(session, ids=wanted)
            missing = sorted(set(wanted) - {e.id for e in entries})
            if missing:
                fail(
                    f"no quarantine entry {', '.join(map(str, missing))}; see 'syncd quarantine "
                    "list' for the ids (nothing was retried)",
                    2,
                )
        else:
            entries = quarantine_store.entries(session, mailbox)
    if not entries:
        say("nothing is quarantined" + (f" in mailbox {mailbox!r}" if mailbox else ""))
        return
    counts: dict[Status, int] = {
        "logged": 0,
        "not logged": 0,
        "still unreadable": 0,
        "not retryable": 0,
    }
    try:
        for outcome in Retrier(sessions, state.settings()).retry(entries):
            e = outcome.entry
            counts[outcome.status] += 1
            line = printable(
                f"{e.id} ({e.mailbox}, {e.provider_id}): {outcome.status}: {outcome.detail}"
            )
            say(line, sys.stdout if outcome.ok else sys.stderr)
    except SQLAlchemyError as exc:
        from syncd.quarantine import reason_of

        fail(f"the CRM database failed during the retry: {reason_of(exc)}; run it again")
    kept = counts["still unreadable"] + counts["not retryable"]
    say(
        f"retried {len(entries)}: {counts['logged']} logged, {counts['not logged']} read and "
        f"not logged by the rules, {kept} still quarantined"
    )
    if kept:
        raise typer.Exit(1)
