"""The ``local`` kind's checks (``syncd doctor``) and holdings (``syncd audit``).

:func:`probe` checks, with ``access(2)`` as the user syncd runs as and without writing
anything, that the Maildir's ``cur/`` and ``new/`` and each mbox archive can be read and
that the calendar folder can be written (follow-up tasks go there). Files have no clock to
compare with.

:func:`holdings` lists, per Maildir folder, the messages up to the (ctime, unique name) its
stored cursor holds: one syncd has no record of is a gap; later ones are the next poll's.
The listing is handed on as it is read, :data:`CHUNK` names at a time (a chunk in no order:
the audit names the missing smallest first), never held whole. mbox archives are read once,
by position, and are not audited.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Mapping
from pathlib import Path

from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.kind import Check, typed
from syncd.connectors.local import LocalSettings
from syncd.connectors.local.connector import LocalConnector
from syncd.connectors.local.files import Odd
from syncd.connectors.local.maildir import MaildirFolder, listing
from syncd.connectors.mime import clean
from syncd.connectors.registry import Held

CHUNK = 5000  # names of a Maildir listing handed to syncd audit at once


def _readable(path: Path, folder: bool) -> str | None:
    """Why syncd cannot read ``path`` (None: it can)."""
    if not path.exists():
        return "does not exist"
    if folder and not path.is_dir():
        return "is not a folder"
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        return "cannot be read by this user"
    return None


def probe(spec: MailboxSpec) -> list[Check]:
    where = f"mailbox {spec.name!r}"
    s = typed(spec.settings, LocalSettings)
    user = _user()
    checks: list[Check] = []
    if s.maildir is not None:
        maildir = s.maildir.expanduser()
        problems = [
            f"{sub}/ {why}"
            for sub in ("cur", "new")
            if (why := _readable(maildir / sub, folder=True)) is not None
        ]
        if problems:
            checks.append(
                Check(
                    f"{where}: Maildir",
                    "fail",
                    f"{str(maildir)!r}: {'; '.join(problems)}",
                    f"point --maildir at a Maildir (holding cur/ and new/) readable by {user}",
                )
            )
        else:
            checks.append(Check(f"{where}: Maildir", "ok", f"{str(maildir)!r} is readable"))
    for mbox in s.mbox:
        why = _readable(mbox.expanduser(), folder=False)
        checks.append(
            Check(f"{where}: mbox", "ok", f"{str(mbox)!r} is readable")
            if why is None
            else Check(
                f"{where}: mbox",
                "fail",
                f"{str(mbox)!r} {why}",
                f"make it readable by {user}, or remove it from the mailbox",
            )
        )
    if s.calendar is not None:
        checks.append(_calendar(where, s.calendar.expanduser(), user))
    return checks or [Check(where, "warn", "the mailbox names no Maildir, mbox or calendar")]


def _calendar(where: str, folder: Path, user: str) -> Check:
    what = f"{where}: calendar writable"
    how = "checked with access(2); nothing written"
    why = _readable(folder, folder=True)
    if why is None and not os.access(folder, os.W_OK | os.X_OK):
        why = "cannot be written by this user"
    if why is not None:
        return Check(
            what,
            "fail",
            f"{str(folder)!r} {why} ({how}): follow-up tasks cannot be written",
            f"create it, writable by {user} (under systemd, list it in the unit's ReadWritePaths=)",
        )
    return Check(what, "ok", f"{str(folder)!r} ({how})")


def _user() -> str:
    try:
        import pwd

        return f"the user {pwd.getpwuid(os.geteuid()).pw_name!r}"
    except (ImportError, KeyError):
        return "the user syncd runs as"


def holdings(spec: MailboxSpec, cursors: Mapping[str, str]) -> Generator[Held, None, None]:
    for source in LocalConnector(spec).mail_sources():
        stored = cursors.get(source.name)
        if not isinstance(source, MaildirFolder) or stored is None:
            continue
        state = json.loads(stored)
        last = (int(state.get("c", 0)), str(state.get("n", "")))
        try:
            fds = source._open()
        except (Odd, ConnectorError):
            continue  # quarantined or gone: the pass says so
        try:
            yield Held(source.name, [], ordered=False)  # listed, if empty
            chunk: set[str] = set()  # a name listed twice (new/ and cur/) counts once in it
            for e in listing(fds):
                if (e.ctime_ns, e.unique) <= last:
                    chunk.add(f"{source.name}/{clean(e.unique)}")
                    if len(chunk) >= CHUNK:
                        yield Held(source.name, sorted(chunk), ordered=False)
                        chunk = set()
            if chunk:
                yield Held(source.name, sorted(chunk), ordered=False)
        finally:
            for fd in fds.values():
                os.close(fd)
