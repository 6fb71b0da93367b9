"""The ``imap`` kind's checks (``syncd doctor``) and holdings (``syncd audit``).

:func:`probe` connects and logs in as a sync would (:class:`~.session.ImapSession`), reads
CAPABILITY and the folders syncd reads; with a CalDAV server, it logs in there, asks the
calendar that takes the follow-up tasks for the privileges the user has on it (a PROPFIND of
``current-user-privilege-set``, RFC 3744 §5.4: nothing is written) and compares this
machine's clock with that server's HTTP ``Date``. IMAP itself sends no time a client could
compare (INTERNALDATE is the message's, not the server's clock), so an IMAP mailbox without
CalDAV has no clock check.

:func:`holdings` lists, per folder, the UIDs from 1 to the last one its stored cursor says
syncd read, under the same UIDVALIDITY: a message in that range that syncd has no record of
is a gap. Messages after the cursor are the next poll's, not gaps. It lists them a window of
:data:`UID_WINDOW` UIDs at a time (``UID SEARCH UID a:b``), ascending, each window one chunk:
what it holds never grows with the folder.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from datetime import date, datetime
from functools import partial
from typing import Any

from imapclient import IMAPClient

from syncd.connectors.base import AuthError, ConnectorError, MailboxSpec, reauth
from syncd.connectors.imap import ImapSettings
from syncd.connectors.imap.connector import ImapConnector
from syncd.connectors.imap.parse import provider_id
from syncd.connectors.kind import AUDIT_WINDOW as WINDOW
from syncd.connectors.kind import Check, clock_check, typed
from syncd.connectors.registry import Held

UID_WINDOW = 20_000  # UIDs one SEARCH of syncd audit covers (the ids of one chunk at most)
WRITE_PRIVILEGES = {"write", "write-content", "bind", "all"}  # RFC 3744 §3.1-3.5
PRIVILEGES_BODY = (
    '<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop>'
    "<d:current-user-privilege-set/></d:prop></d:propfind>"
)


def _settings_fix(name: str) -> str:
    return (
        "check that the server is up and reachable from this machine (DNS, firewall, port); "
        f"to change the mailbox's server: 'syncd mailbox remove {name}' then 'syncd mailbox add'"
    )


def probe(spec: MailboxSpec) -> list[Check]:
    where = f"mailbox {spec.name!r}"
    connector = ImapConnector(spec)
    session = connector.session
    server = f"{session.host}:{session.port}"
    checks: list[Check] = []
    try:
        try:
            client = session.connect()
        except AuthError as exc:
            return [Check(f"{where}: IMAP login", "fail", str(exc), reauth(spec.name))]
        except ConnectorError as exc:
            return [Check(f"{where}: IMAP server", "fail", str(exc), _settings_fix(spec.name))]
        checks.append(Check(f"{where}: IMAP login", "ok", f"logged in to {server}"))
        checks.append(_capabilities(where, spec, client))
        try:
            folders = connector.folders()
            checks.append(Check(f"{where}: IMAP folders", "ok", "reads " + ", ".join(folders)))
        except ConnectorError as exc:
            checks.append(Check(f"{where}: IMAP folders", "fail", str(exc)))
    finally:
        connector.close()
    settings = typed(spec.settings, ImapSettings)
    if settings.caldav_url:
        checks.extend(_caldav(spec))
    else:
        checks.append(
            Check(
                f"{where}: clock",
                "ok",
                "not compared: IMAP sends no server time, and the mailbox has no CalDAV server",
            )
        )
    return checks


def _capabilities(where: str, spec: MailboxSpec, client: IMAPClient) -> Check:
    caps = sorted(c.decode(errors="replace") for c in client.capabilities())
    notable = [c for c in caps if c in ("IMAP4REV1", "IMAP4rev1", "IDLE", "CONDSTORE")]
    if typed(spec.settings, ImapSettings).idle and "IDLE" not in caps:
        return Check(
            f"{where}: IMAP capabilities",
            "warn",
            "the mailbox asks for IDLE, which the server does not offer: new mail waits for "
            "the next poll",
            f"'syncd mailbox remove {spec.name}' and add it again without --idle",
        )
    return Check(f"{where}: IMAP capabilities", "ok", " ".join(notable) or "(none notable)")


def _caldav(spec: MailboxSpec) -> list[Check]:
    """Login, the task calendar's write privilege, and the clock, over CalDAV."""
    from syncd.connectors.imap.caldav import CalDavClient

    where = f"mailbox {spec.name!r}"
    try:
        client = CalDavClient(spec)
    except ConnectorError as exc:
        return [Check(f"{where}: CalDAV", "fail", str(exc), reauth(spec.name))]
    try:
        try:
            writer = client.task_writer()
        except AuthError as exc:
            return [Check(f"{where}: CalDAV login", "fail", str(exc), reauth(spec.name))]
        except ConnectorError as exc:
            return [Check(f"{where}: CalDAV server", "fail", str(exc), _settings_fix(spec.name))]
        checks = [Check(f"{where}: CalDAV login", "ok", f"logged in to {client.url}")]
        if writer is None:
            checks.append(
                Check(
                    f"{where}: calendar writable",
                    "warn",
                    "the CalDAV account has no calendar: follow-up tasks are not written",
                    "create a calendar for the user on the CalDAV server",
                )
            )
            response = client.dav.propfind(client.url, PRIVILEGES_BODY, depth=0)
        else:
            url = str(writer.calendar.url)
            response = client.dav.propfind(url, PRIVILEGES_BODY, depth=0)
            checks.append(_writable(where, url, _privileges(response.tree)))
        checks.append(clock_check(f"{where}: clock (CalDAV Date)", response.headers.get("Date")))
        return checks
    except Exception as exc:  # a PROPFIND the server answers oddly: said, never a traceback
        return [Check(f"{where}: CalDAV", "fail", client.masked(exc), _settings_fix(spec.name))]
    finally:
        client.close()


def _privileges(tree: Any) -> set[str]:
    """The privilege names (``write-content``) of a current-user-privilege-set answer."""
    found: set[str] = set()
    if tree is None:
        return found
    for privilege in tree.iter("{DAV:}privilege"):
        for child in privilege:
            tag = str(child.tag)
            found.add(tag.rsplit("}", 1)[-1])
    return found


def _writable(where: str, url: str, privileges: set[str]) -> Check:
    what = f"{where}: calendar writable"
    method = "checked by the DAV:current-user-privilege-set of the calendar; nothing written"
    if privileges & WRITE_PRIVILEGES:
        return Check(what, "ok", f"{url}: {', '.join(sorted(privileges))} ({method})")
    return Check(
        what,
        "fail",
        f"{url}: the user may not write it (privileges: {', '.join(sorted(privileges)) or 'none'};"
        f" {method}): follow-up tasks cannot be written",
        "give the user write access to the calendar on the CalDAV server",
    )


def holdings(spec: MailboxSpec, cursors: Mapping[str, str]) -> Generator[Held, None, None]:
    connector = ImapConnector(spec)
    try:
        since = _lower(cursors.get(WINDOW))
        for folder in connector.folders():
            stored = cursors.get(f"imap:{folder}")
            if stored is None:
                continue  # never read yet: nothing to compare
            position = json.loads(stored)
            select = partial(_uidvalidity, folder=folder)
            uidvalidity: int = connector.session.call(f"SELECT {folder}", select)
            if uidvalidity != position.get("uv"):
                continue  # the next pass reads it all again
            source, last = f"imap:{folder}", int(position.get("uid", 0))
            yield Held(source, [])  # listed, if empty
            for low in range(1, last + 1, UID_WINDOW):
                high = min(low + UID_WINDOW - 1, last)
                search = partial(
                    _search, folder=folder, uidvalidity=uidvalidity, uids=(low, high), since=since
                )
                found: list[int] = connector.session.call(f"SEARCH {folder}", search)
                if found:
                    yield Held(source, [provider_id(folder, uidvalidity, u) for u in found])
    finally:
        connector.close()


def _lower(window: str | None) -> date | None:
    """The first day of the audit's window (``--since``), if the mailbox has one."""
    return datetime.fromisoformat(window.partition("/")[0]).date() if window else None


def _uidvalidity(client: IMAPClient, folder: str) -> int:
    return int(client.select_folder(folder, readonly=True)[b"UIDVALIDITY"])


def _search(
    client: IMAPClient,
    folder: str,
    uidvalidity: int,
    uids: tuple[int, int],
    since: date | None = None,
) -> list[int]:
    """The folder's UIDs in ``uids`` (both ends in), ascending (from ``since`` on, by
    internal date, as a first read with ``--since`` searched). The folder is selected again
    when the connection has it no more (a new one after a drop; a session's
    :class:`~.session.Client` knows); a UIDVALIDITY changed meanwhile ends the audit of the
    mailbox with a ConnectorError (the next pass reads the folder again)."""
    selected = getattr(client, "selected", None) == (folder, True, uidvalidity)
    if not selected and _uidvalidity(client, folder) != uidvalidity:
        raise ConnectorError(
            f"UIDVALIDITY of {folder!r} changed during the audit: the next pass reads the "
            "folder again, then audit it again"
        )
    low, high = uids
    found = client.search(["UID", f"{low}:{high}", *(["SINCE", since] if since else [])])
    return sorted(u for u in found if low <= u <= high)
