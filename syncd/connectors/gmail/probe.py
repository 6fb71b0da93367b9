"""The ``gmail`` kind's checks (``syncd doctor``), through the real client
(:class:`~.client.GmailClient`, google-api-python-client).

The token works when ``users.getProfile`` answers (an OAuth mailbox refreshes its token for
it; a service account signs a JWT for the user). The scopes are those Google's token
endpoint reports as granted (the ``scope`` of its answer, RFC 6749 §5.1); a service account
gets no such list (the admin's domain-wide delegation grants them). Follow-up tasks go into
the user's own primary calendar, which the ``calendar.events`` scope lets syncd write: that
scope is the calendar check, and nothing is written. The clock is compared with the
``Date`` header of the same Gmail API.

:func:`holdings`: the ids of the messages ``gmail:mail`` would have read in the audit's
window (up to the start of the mailbox's last complete pass, see ``syncd.audit.window``):
``messages.list`` with ``q=after:LOWER before:UPPER`` in epoch seconds ("dates are
interpreted as midnight PST unless specified in seconds", developers.google.com/workspace/
gmail/api/guides/filtering), every page of ids (``resultSizeEstimate`` is an estimate),
Spam and Trash left out as ``messages.list`` does by default (``includeSpamTrash``), drafts
and chats (never read) by listing them too, with ``labelIds``, and leaving them out (their
ids are the only ones held whole: a mailbox's drafts and chats). The ids are Gmail's message
ids, which syncd records as they are, handed on a page at a time.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from datetime import datetime
from typing import Any

from syncd.connectors.base import AuthError, ConnectorError, MailboxSpec, reauth
from syncd.connectors.gmail.client import UNITS, GmailClient
from syncd.connectors.gmail.signin import SCOPES
from syncd.connectors.kind import AUDIT_WINDOW as WINDOW
from syncd.connectors.kind import Check, clock_check
from syncd.connectors.registry import Held

CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar.events"
NEVER_LISTED = ("DRAFT", "CHAT")  # listed, never read (parse.NEVER_READ, less Spam and Trash)
PAGE = 500  # ids a page of messages.list holds (its most)


def probe(spec: MailboxSpec) -> list[Check]:
    where = f"mailbox {spec.name!r}"
    try:
        client = GmailClient(spec)
        users = client.gmail.users()
        profile = client.execute(UNITS["getProfile"], lambda: users.getProfile(userId="me"))
    except AuthError as exc:
        return [Check(f"{where}: Google sign-in", "fail", str(exc), reauth(spec.name))]
    except ConnectorError as exc:
        return [
            Check(
                f"{where}: Gmail API",
                "fail",
                str(exc),
                "check that this machine reaches the Gmail API (DNS, firewall, proxy)",
            )
        ]
    checks = [
        Check(f"{where}: Google sign-in", "ok", f"signed in as {profile.get('emailAddress')}")
    ]
    granted = getattr(client.http.credentials, "granted_scopes", None)
    if granted is None:
        checks.append(
            Check(
                f"{where}: scopes",
                "ok",
                "not reported for a service account: the domain-wide delegation grants them",
            )
        )
    else:
        missing = sorted(set(SCOPES) - set(granted))
        checks.append(
            Check(f"{where}: scopes", "ok", "granted: " + " ".join(sorted(granted)))
            if not missing
            else Check(
                f"{where}: scopes",
                "fail",
                "not granted: " + " ".join(missing),
                f"{reauth(spec.name)} and allow every access Google asks for",
            )
        )
    calendar = granted is None or CALENDAR_SCOPE in granted
    checks.append(
        Check(
            f"{where}: calendar writable",
            "ok" if calendar else "fail",
            "the primary calendar, by the calendar.events scope (nothing written)",
            "" if calendar else reauth(spec.name),
        )
    )
    response, _ = client.http.request(client.endpoint + "gmail/v1/users/me/profile")
    checks.append(clock_check(f"{where}: clock (Gmail API Date)", response.get("date")))
    return checks


def holdings(spec: MailboxSpec, cursors: Mapping[str, str]) -> Generator[Held, None, None]:
    stored, bounds = cursors.get("gmail:mail"), cursors.get(WINDOW)
    if stored is None or bounds is None or json.loads(stored).get("backfill"):
        return  # no complete pass, or the first sync still under way: nothing to compare
    start, _, end = bounds.partition("/")
    lower = int(datetime.fromisoformat(start).timestamp())
    upper = int(datetime.fromisoformat(end).timestamp())  # before: excludes it
    yield Held("gmail:mail", [])  # listed, if empty
    if lower >= upper:
        return
    client = GmailClient(spec)
    query = f"after:{lower} before:{upper}"
    never: set[str] = set()
    for label in NEVER_LISTED:
        for page in _pages(client, query, labelIds=[label]):
            never.update(page)
    for page in _pages(client, query):
        yield Held("gmail:mail", [i for i in page if i not in never])


def _pages(client: GmailClient, query: str, **labels: Any) -> Iterator[list[str]]:
    """The ids ``messages.list`` gives for ``query`` (and ``labelIds``), a page at a time."""
    users = client.gmail.users()
    pages = client.pages(
        UNITS["list"], users.messages().list, userId="me", q=query, maxResults=PAGE, **labels
    )
    for _, page in pages:
        yield [str(m["id"]) for m in page.get("messages", [])]
