"""The protocols every connector implements, its errors, and the registry of kinds.

Terminology
-----------
connector
    The code that knows one provider (``local``, ``imap``, ``gmail``, ``microsoft``).
    Nothing outside ``syncd/connectors/`` imports a provider's library.
source
    One stream inside a mailbox with its own cursor: a mail folder, a label, a calendar.
    A source's name (``maildir:INBOX``, ``calendar``) is stable: the cursor is stored under it.
batch
    A group of items and the cursor to store once they are recorded. The sync job commits
    a batch and its cursor in one transaction.
task writer
    Writes a follow-up task into the user's calendar, idempotently by the task's uid.
re-parser
    Reads one quarantined item again from the bytes kept of it, by its ``format``
    (``syncd quarantine retry``): the same parser a connector uses, as it is now.
watcher
    A thread that tells the daemon when new mail arrives (IMAP IDLE), started by
    :func:`open_watcher`; ``is_alive()`` says whether it still watches.
"""

from __future__ import annotations

import base64
import functools
import inspect
import ipaddress
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from syncd.config import LimitSettings
from syncd.items import Batch, ContactCard, Cursor, MailItem, MeetingItem, TaskItem
from syncd.secrets import Secret

T = TypeVar("T")


class ConnectorError(Exception):
    """A provider failed; the mailbox is marked failing and retried later."""


class AuthError(ConnectorError):
    """The provider refused our credentials; the mailbox is parked until an admin fixes it."""


class CursorExpired(ConnectorError):
    """The provider no longer accepts the stored cursor; the source is read again."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK = "127.0.0.1, ::1, localhost"


def check_tls(host: str, tls: str) -> None:
    """Refuse to send a password in clear anywhere but to this machine."""
    if tls not in ("implicit", "starttls", "none"):
        raise ConnectorError(f"tls {tls!r} is not one of implicit, starttls, none")
    if tls == "none" and not is_loopback(host):
        raise ConnectorError(
            f"--tls none would send the password to {host!r} in clear; it is allowed only "
            f"for a loopback host ({LOOPBACK}): use --tls implicit or starttls"
        )


# --- URLs: the same rule for every HTTP endpoint a mailbox can be given -------------------

# settings that hold an endpoint syncd sends a password, a token or a client secret to, and
# the option (or file) they come from, for messages
URL_SETTINGS: dict[str, str] = {
    "caldav_url": "--caldav",
    "api_endpoint": "--api-endpoint",
    "calendar_endpoint": "calendar_endpoint",
    "auth_uri": "the OAuth client's auth_uri",
    "token_uri": "the OAuth client's token_uri",
    "authority": "--authority",
    "graph_url": "--graph-url",
}
# a login or password in a URL (scheme://login:password@host/), wherever the URL is in a text
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@")


def mask_urls(text: str) -> str:
    """``text`` with the login and password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its login and password, and them (percent-decoded), if it held any."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    login, colon, password = userinfo.partition(":")
    return (
        urlunsplit(parts._replace(netloc=hostport)),
        unquote(login) or None,
        unquote(password) if colon else None,
    )


# query parameters that carry a credential (a URL is shown, logged and stored in clear)
_SECRET_QUERY = re.compile(r"pass|pwd|secret|token|key|auth|sig|credential|session", re.I)


def check_url(url: str, what: str) -> None:
    """Refuse an endpoint that would carry a password or token in clear: ``https://``, or
    ``http://`` to this machine only (the ``--tls none`` rule). The message names ``what``,
    the URL without its credentials, the rule and the fix."""
    shown = mask_urls(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        raise ConnectorError(
            f"{what} {shown!r} is not a URL ({exc}); give https://HOST/..."
        ) from None
    secret_keys = [k for k, _ in parse_qsl(parts.query, True) if _SECRET_QUERY.search(k)]
    if secret_keys:
        bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
        raise ConnectorError(
            f"{what} {bare!r} carries {', '.join(sorted(set(secret_keys)))} in its query: "
            "credentials never travel or are stored in a URL; give the URL without them and "
            "the secret through the mailbox's password or key options"
        )
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise ConnectorError(
            f"{what} {shown!r} is not an http(s) URL with a host; give https://HOST/..."
        )
    if scheme == "http" and not is_loopback(host):
        fixed = urlsplit(split_credentials(url)[0])._replace(scheme="https").geturl()
        raise ConnectorError(
            f"{what} {shown!r} would send the password or token to {host!r} in clear: plain "
            f"http is allowed only for a loopback host ({LOOPBACK}); use {fixed!r}"
        )


def check_endpoints(name: str, settings: Mapping[str, Any], secret: Secret | None = None) -> None:
    """Every endpoint of a mailbox's settings under :func:`check_url`: run by ``mailbox
    add``/``reauth`` and again whenever a connector opens (a row edited by hand). A secret
    that names its own token endpoint (a Google service account key) is checked too."""
    for key, option in URL_SETTINGS.items():
        value = settings.get(key)
        if value:
            check_url(str(value), f"mailbox {name!r}: {option}")
    if secret is not None and secret.reveal().startswith("{"):
        try:
            token_uri = json.loads(secret.reveal()).get("token_uri")
        except (ValueError, AttributeError):
            token_uri = None
        if token_uri:
            check_url(str(token_uri), f"mailbox {name!r}: the stored key's token_uri")


def secret_forms(*secrets: str) -> list[str]:
    """The ways a secret can show up in a server's error or a library's message: as it is,
    quoted the IMAP way (``\\`` and ``"`` escaped), in a Python repr of the str or of its
    UTF-8 bytes (a list of server lines), decoded as Latin-1, and base64 (SASL); longest
    first, so that masking one never leaves part of another."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
        for text in (secret, quoted):
            raw = text.encode("utf-8")
            forms.update(
                (
                    text,
                    repr(text)[1:-1],
                    repr(raw)[2:-1],
                    raw.decode("latin-1"),
                    base64.b64encode(raw).decode(),
                )
            )
    return sorted((f for f in forms if len(f) >= 3 or f in secrets), key=len, reverse=True)


def mask_secret(text: str, *secrets: str) -> str:
    """``text`` with every form of the secrets (:func:`secret_forms`) replaced by ``***``."""
    for form in secret_forms(*secrets):
        text = text.replace(form, "***")
    return text


def too_large(size: int, limit: int) -> str:
    """The quarantine reason of an item not read for its size."""
    return f"{size} bytes, over the limit of {limit} bytes (limits.message_bytes): not read"


def batches(sizes: Sequence[int], count: int, budget: int) -> Iterator[tuple[int, int]]:
    """Cut items of these sizes into runs ``[start, end)`` of at most ``count`` items whose
    sizes add up to at most ``budget`` bytes (``limits.batch_bytes``), so that what a batch
    holds in memory is bounded; an item larger than the budget is a run of its own."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= count or total + size > budget):
            yield start, i
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield start, len(sizes)


@functools.cache
def _keywords(parse: Callable[..., Any]) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(parse).parameters)
    except (TypeError, ValueError):
        return frozenset()


def call_parser(parse: Callable[..., T], *args: Any, **optional: Any) -> T:
    """Call a parser with ``args`` and those of the ``optional`` keywords it takes (such as
    ``body_policy``, which the parsers may grow): a parser can grow a keyword without every
    caller changing in the same commit."""
    takes = _keywords(parse)
    return parse(*args, **{k: v for k, v in optional.items() if k in takes})


class MailSource(Protocol):
    name: str

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]: ...


class CalendarSource(Protocol):
    name: str

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]: ...


class TaskWriter(Protocol):
    def put(self, task: TaskItem) -> str:
        """Create or update the task (idempotent by ``task.uid``); return the provider's id."""
        ...


class BatchTaskWriter(TaskWriter, Protocol):
    def put_many(self, tasks: Sequence[TaskItem]) -> list[str]:
        """:meth:`put` for several tasks in fewer round trips; ids in the same order."""
        ...


class ContactSource(Protocol):
    def contacts(self) -> Iterator[ContactCard]: ...


@dataclass(frozen=True)
class MailboxSpec:
    """What a connector needs to know about one mailbox (read from the CRM database)."""

    name: str
    kind: str
    user_email: str
    settings: Mapping[str, Any]
    batch_size: int = 500
    body_policy: str = "snippet"
    secret: Secret | None = None  # the mailbox's password or token, decrypted
    # what one item may hold (the config's [limits]); frozen, so one default serves all
    limits: LimitSettings = field(default_factory=LimitSettings)


class Connector(Protocol):
    def mail_sources(self) -> list[MailSource]: ...

    def calendar_sources(self) -> list[CalendarSource]: ...

    def task_writer(self) -> TaskWriter | None: ...

    def close(self) -> None: ...


ConnectorFactory = Callable[[MailboxSpec], Connector]

_REGISTRY: dict[str, str] = {
    # kind -> "module:factory"; imported lazily so a kind's library loads only when used
    "local": "syncd.connectors.local:LocalConnector",
    "imap": "syncd.connectors.imap:ImapConnector",
    "gmail": "syncd.connectors.gmail:GmailConnector",
    "microsoft": "syncd.connectors.microsoft:MicrosoftConnector",
}


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def _module(spec: MailboxSpec) -> tuple[Any, str]:
    try:
        target = _REGISTRY[spec.kind]
    except KeyError:
        raise ConnectorError(
            f"mailbox {spec.name!r}: unknown kind {spec.kind!r}; known kinds: {', '.join(kinds())}"
        ) from None
    module_name, _, attr = target.partition(":")
    return __import__(module_name, fromlist=[attr]), attr


class Watcher(Protocol):
    """A push watcher's thread: it watches until ``stop`` is set or it gives up (a refused
    login); the daemon starts a dead one again."""

    def is_alive(self) -> bool: ...


WatcherFactory = Callable[[MailboxSpec, Callable[[str], None], threading.Event], "Watcher | None"]


def open_watcher(
    spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
) -> Watcher | None:
    """Start the kind's push watcher (IMAP IDLE) if it has one and the mailbox wants it;
    ``on_change(name)`` is called from the watcher's thread when new mail arrives; setting
    ``stop`` ends it."""
    module, _ = _module(spec)
    watch = getattr(module, "watch", None)
    return watch(spec, on_change, stop) if watch else None


def open_connector(spec: MailboxSpec) -> Connector:
    """Look up the connector for ``spec.kind`` in the one registry and open it; an endpoint
    that would carry a secret in clear (a row edited by hand) is refused before any opens."""
    try:
        check_endpoints(spec.name, spec.settings, spec.secret)
    except ConnectorError as exc:
        raise ConnectorError(
            f"{exc}. The mailbox's stored settings hold it: add the mailbox again with an "
            f"https:// URL ('syncd mailbox remove {spec.name}', then 'syncd mailbox add')"
        ) from None
    module, attr = _module(spec)
    factory: ConnectorFactory = getattr(module, attr)
    return factory(spec)


# --- re-parsers: quarantined items read again (``syncd quarantine retry``) ------------------


@dataclass(frozen=True)
class RereadContext:
    """What a parser needs besides the bytes: the values the connector gave it."""

    provider_id: str
    body_policy: str  # the mailbox's: metadata, snippet or full
    received: datetime  # a message without a usable Date: header is dated by this
    window: tuple[datetime, datetime]  # calendar occurrences are read within it
    limits: LimitSettings = field(default_factory=LimitSettings)  # the config's [limits]


@dataclass(frozen=True)
class Reread:
    """A quarantined item read again: what can be logged now, and what still cannot be read
    (``problem``: the entry stays quarantined with it, e.g. one unreadable event of a
    calendar object whose other events are read)."""

    items: tuple[MailItem | MeetingItem, ...]
    problem: str | None = None


Reparser = Callable[[bytes, RereadContext], Reread]


class UnknownFormat(ConnectorError):
    """No parser reads this format (an entry stored by a newer or older syncd)."""


def _rfc822(data: bytes, ctx: RereadContext) -> Reread:
    from syncd.connectors import mime

    item = call_parser(
        mime.parse_message,
        data,
        ctx.provider_id,
        ctx.received,
        body_policy=ctx.body_policy,
        limits=ctx.limits,
    )
    return Reread((item,))


def _ical(data: bytes, ctx: RereadContext) -> Reread:
    from syncd.connectors import ical

    found = ical.read_calendar(data, ctx.provider_id, ctx.window, limits=ctx.limits)
    problems = list(getattr(found, "problems", ()))
    return Reread(tuple(found.meetings), "; ".join(problems) if problems else None)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"the kept copy is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the kept copy is not a Graph {what} object")
    return value


def _graph_message(data: bytes, ctx: RereadContext) -> Reread:
    from syncd.connectors import microsoft

    message = _json_object(data, "message")
    if "@removed" in message or message.get("isDraft"):
        return Reread(())  # as the connector: a deletion or a draft is never logged
    return Reread((microsoft.mail_item(message, ctx.body_policy, limits=ctx.limits),))


def _graph_event(data: bytes, ctx: RereadContext) -> Reread:
    from syncd.connectors import microsoft

    event = _json_object(data, "event")
    if "@removed" in event or str(event.get("transactionId") or "").startswith("syncd-"):
        return Reread(())  # as the connector: a removal or syncd's own task is no meeting
    return Reread((microsoft.meeting_item(event, limits=ctx.limits),))


REPARSERS: dict[str, Reparser] = {
    # format (QuarantineEntry.format, Quarantined.format) -> parser; each imports its
    # connector's module only when an entry of that format is retried
    "rfc822": _rfc822,  # an RFC 5322/MIME message (local, imap, gmail raw)
    "ical": _ical,  # an iCalendar object (a vdir .ics file, a CalDAV resource)
    "graph-message": _graph_message,  # a Microsoft Graph message resource (JSON)
    "graph-event": _graph_event,  # a Microsoft Graph event resource (JSON)
}


def reparse(fmt: str, data: bytes, ctx: RereadContext) -> Reread:
    """Read a quarantined item again with the current parser for ``fmt``. Raises
    :class:`UnknownFormat`, or whatever the parser raises when it still cannot read it."""
    parse = REPARSERS.get(fmt)
    if parse is None:
        raise UnknownFormat(
            f"no parser reads format {fmt!r} (known: {', '.join(sorted(REPARSERS))}); "
            "it was kept by another version of syncd"
        )
    return parse(data, ctx)
