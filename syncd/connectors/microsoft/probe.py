"""The ``microsoft`` kind's checks (``syncd doctor``) and holdings (``syncd audit``), through
the real session (:class:`~.client.GraphClient`: msal, O365, immutable ids).

:func:`probe`: a token from the sign-in service (the app's client secret or certificate, or
the user's device-code sign-in), then one read per permission syncd needs, which Graph
answers 403 when it is not granted: the Inbox (``GET mailFolders/inbox``, Mail.Read), the
primary calendar (``GET calendar``, Calendars.Read/ReadWrite; its ``canEdit`` says whether
follow-up events can be written there, and nothing is written) and, when follow-ups go to
To Do, the To Do lists (Tasks.ReadWrite.All). The clock is compared with Graph's HTTP
``Date`` header.

:func:`holdings`: per folder syncd reads (``graph:inbox``, ``graph:sentitems``), the ids of
the messages Graph lists in the audit's window (up to the start of the mailbox's last
complete pass, see ``syncd.audit.window``): ``$filter`` on ``receivedDateTime``,
``$select=id``, with immutable ids as syncd stores them (the session's
``Prefer: IdType="ImmutableId"``), handed on a page at a time.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import requests

from syncd.connectors.base import AuthError, ConnectorError, MailboxSpec, reauth
from syncd.connectors.kind import AUDIT_WINDOW as WINDOW
from syncd.connectors.kind import Check, clock_check, typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.client import AUTHORITY, GraphClient
from syncd.connectors.microsoft.mail import FOLDERS
from syncd.connectors.microsoft.parse import error_text
from syncd.connectors.registry import Held

PAGE = 1000  # ids a page of messages lists ($top, Graph's most)


def window(cursors: Mapping[str, str]) -> tuple[datetime, datetime] | None:
    """The audit's window (see syncd.audit.window); None before a complete pass."""
    value = cursors.get(WINDOW)
    if value is None:
        return None
    lower, _, upper = value.partition("/")
    return datetime.fromisoformat(lower), datetime.fromisoformat(upper)


@dataclass(frozen=True)
class _Permission:
    what: str  # the check's name
    path: str  # what is read
    app: str  # the application permission
    user: str  # the delegated one (device-code sign-in)


MAIL = _Permission(
    "mail", "/mailFolders/inbox?$select=displayName,totalItemCount", "Mail.Read", "Mail.Read"
)
CALENDAR = _Permission(
    "calendar", "/calendar?$select=name,canEdit", "Calendars.ReadWrite", "Calendars.ReadWrite"
)
TODO = _Permission("To Do", "/todo/lists", "Tasks.ReadWrite.All", "Tasks.ReadWrite")


def _reach_fix(settings: MicrosoftSettings) -> str:
    host = settings.authority or AUTHORITY
    return (
        f"check that this machine reaches {host} and Microsoft Graph (DNS, firewall, proxy; "
        "--ca-bundle for a TLS-inspecting proxy)"
    )


def probe(spec: MailboxSpec) -> list[Check]:
    where = f"mailbox {spec.name!r}"
    settings = typed(spec.settings, MicrosoftSettings)
    try:
        client = GraphClient(spec)
    except AuthError as exc:
        return [Check(f"{where}: Microsoft sign-in", "fail", str(exc), reauth(spec.name))]
    except ConnectorError as exc:
        return [Check(f"{where}: Microsoft sign-in", "fail", str(exc), _reach_fix(settings))]
    try:
        try:
            client.refresh()
        except AuthError as exc:
            return [Check(f"{where}: Microsoft sign-in", "fail", str(exc), reauth(spec.name))]
        except ConnectorError as exc:
            return [Check(f"{where}: Microsoft sign-in", "fail", str(exc), _reach_fix(settings))]
        how = "the app's credentials" if settings.mode == "app" else "the user's sign-in"
        checks = [Check(f"{where}: Microsoft sign-in", "ok", f"a token for {how}")]
        wanted = [MAIL, CALENDAR] + ([TODO] if settings.tasks == "todo" else [])
        for permission in wanted:
            check, answer = _read(client, spec, permission)
            checks.append(check)
            if answer is None:
                return checks  # the mailbox or Graph itself failed: each read would say so
            if permission is CALENDAR and answer:
                checks.append(_writable(where, settings, answer))
        checks.append(_clock(where, client))
        return checks
    finally:
        client.con.session.close()


def _read(client: GraphClient, spec: MailboxSpec, permission: _Permission) -> tuple[Check, Any]:
    """One read that needs ``permission``: (ok, the answer), (the permission Graph says is
    missing, {}), or (why the read failed, None)."""
    where = f"mailbox {spec.name!r}"
    settings = typed(spec.settings, MicrosoftSettings)
    name = permission.app if settings.mode == "app" else permission.user
    what = f"{where}: {permission.what} ({name})"
    try:
        status, answer = client.request("GET", client.user_url(permission.path), ok=(200, 403, 404))
    except AuthError as exc:
        return Check(what, "fail", str(exc), reauth(spec.name)), None
    except ConnectorError as exc:
        return Check(what, "fail", str(exc), _reach_fix(settings)), None
    if status == 403:
        code, text = error_text(answer)
        if settings.mode == "app":
            fix = (
                f"grant the application permission {name} (Microsoft Graph) to app "
                f"{settings.client_id} with admin consent in Entra ID (App registrations, API "
                f"permissions), then run 'syncd mailbox resume {spec.name}'"
            )
        else:
            fix = f"{reauth(spec.name)} and accept {name}"
        detail = (
            f"Graph refused to read the {permission.what} of {client.user} "
            f"(403 {code}: {text}): {name} is not granted"
        )
        return Check(what, "fail", detail, fix), {}
    if status == 404:
        code, text = error_text(answer)
        return Check(
            what,
            "fail",
            f"{client.where()}: {client.user} not found (404 {code}: {text})",
            "check that the CRM user's address is the Microsoft 365 mailbox's address, and that "
            f"--tenant is its tenant ('syncd mailbox remove {spec.name}', then 'syncd mailbox "
            "add')",
        ), None
    if permission is MAIL:
        count = answer.get("totalItemCount", "?")
        found = f"reads {answer.get('displayName', 'Inbox')} ({count} messages)"
    elif permission is CALENDAR:
        found = (
            f"reads the calendar {answer.get('name', '')!r} (a read does not tell "
            "Calendars.Read from Calendars.ReadWrite)"
        )
    else:
        found = f"reads {len(answer.get('value', []))} To Do list(s)"
    return Check(what, "ok", found), answer


def _writable(where: str, settings: MicrosoftSettings, calendar: Any) -> Check:
    """Follow-ups as events need a calendar whose ``canEdit`` is true; To Do needs none."""
    what = f"{where}: calendar writable"
    name = calendar.get("name", "")
    if calendar.get("canEdit") is not False:
        return Check(what, "ok", f"{name!r}: canEdit (nothing written)")
    if settings.tasks == "todo":
        return Check(
            what,
            "ok",
            f"{name!r} is read-only (canEdit false); follow-ups go to To Do, so nothing is "
            "written there",
        )
    return Check(
        what,
        "fail",
        f"{name!r} is read-only (canEdit false; nothing written): follow-up tasks, written as "
        "events, cannot be written",
        "give the user write access to the calendar in Exchange, or write follow-ups to To Do "
        "(add the mailbox again with --tasks todo)",
    )


def _clock(where: str, client: GraphClient) -> Check:
    what = f"{where}: clock (Graph Date)"
    try:
        response = client._send("GET", client.user_url(MAIL.path), None, None, 1)
    except (ConnectorError, requests.RequestException) as exc:
        return Check(what, "warn", f"not compared: {exc}")
    return clock_check(what, response.headers.get("Date"))


def holdings(spec: MailboxSpec, cursors: Mapping[str, str]) -> Generator[Held, None, None]:
    bounds = window(cursors)
    if bounds is None:
        return  # no complete pass yet: nothing to compare
    lower, upper = bounds
    client = GraphClient(spec)
    try:
        for folder in FOLDERS:
            stored = cursors.get(f"graph:{folder}")
            if stored is None or not json.loads(stored).get("synced"):
                continue  # never read to its end yet
            yield Held(f"graph:{folder}", [])  # listed, if empty
            if lower < upper:
                for page in _pages(client, folder, lower, upper):
                    yield Held(f"graph:{folder}", page)
    finally:
        client.con.session.close()


def _pages(
    client: GraphClient, folder: str, lower: datetime, upper: datetime
) -> Iterator[list[str]]:
    """The messages received in [lower, upper) and sent (as syncd dates them: sent, else
    received) from ``lower`` on, drafts left out, as syncd's delta reads them: a page at a
    time."""
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    query = {
        "$select": "id,sentDateTime,receivedDateTime,isDraft",
        "$filter": f"receivedDateTime ge {lower.strftime(stamp)} "
        f"and receivedDateTime lt {upper.strftime(stamp)}",
        "$top": str(PAGE),
    }
    link: str | None = client.user_url(f"/mailFolders/{folder}/messages?{urlencode(query)}")
    while link:
        _, page = client.request("GET", link)
        ids: list[str] = []
        for message in page.get("value", []):
            dated = message.get("sentDateTime") or message.get("receivedDateTime")
            if message.get("isDraft") or not dated:
                continue
            if datetime.fromisoformat(dated.replace("Z", "+00:00")) >= lower:
                ids.append(str(message["id"]))
        yield ids
        link = page.get("@odata.nextLink")
