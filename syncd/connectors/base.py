"""The protocols every connector implements, and its errors.

Terminology (``../shared/DESIGN.md``)
-------------------------------------
kind
    A connector kind (``local``, ``imap``, ``gmail``, ``microsoft``, ``memory``): one
    package under ``syncd/connectors/<kind>/`` (see :mod:`syncd.connectors.kind`), listed
    once in :mod:`syncd.connectors.registry`. Nothing outside ``syncd/connectors/``
    imports a provider's library or a kind's package.
client
    A kind's session with its provider (``GmailClient``, ``GraphClient``, ``ImapSession``,
    ``CalDavClient``). "Account" is only ever the CRM's.
source
    One stream inside a mailbox with its own cursor: a mail folder, a label, a calendar.
    A source's name (``maildir:INBOX``, ``calendar``) is stable: the cursor is stored under it.
batch
    A group of items and the cursor to store once they are recorded. The sync job commits
    a batch and its cursor in one transaction (:mod:`syncd.batching` cuts them).
task writer
    Writes a follow-up task into the user's calendar, idempotently by the task's uid.
re-parser
    Reads one quarantined item again from the bytes kept of it, by its ``format``
    (``syncd quarantine retry``): the same parser a connector uses, as it is now.
watcher
    A thread that tells the daemon when new mail arrives (IMAP IDLE); ``is_alive()`` says
    whether it still watches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from syncd.config import LimitSettings
from syncd.items import Batch, Cursor, MailItem, MeetingItem, TaskItem
from syncd.secrets import Secret, reauth_command

if TYPE_CHECKING:
    from syncd.connectors.kind import KindSettings


class ConnectorError(Exception):
    """A provider failed; the mailbox is marked failing and retried later."""


class AuthError(ConnectorError):
    """The provider refused our credentials; the mailbox is parked until an admin fixes it."""


class CursorExpired(ConnectorError):
    """The provider no longer accepts the stored cursor; the source is read again."""


def reauth(name: str) -> str:
    """The fix for refused or lost credentials, as every message names it."""
    return f"run '{reauth_command(name)}'"


def refused(name: str, problem: str, hint: str = "") -> AuthError:
    """The error of credentials a provider refused: the problem, then the reauth fix."""
    return AuthError(f"{problem}; {hint + ' and ' if hint else ''}{reauth(name)}")


def too_large(size: int, limit: int) -> str:
    """The quarantine reason of an item not read for its size."""
    return f"{size} bytes, over the limit of {limit} bytes (limits.message_bytes): not read"


class MailSource(Protocol):
    name: str

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]: ...


@runtime_checkable
class Digests(Protocol):
    """A mail source that can hand each batch's mail items to a *digest* where they are
    read, in a parse pool worker (:mod:`syncd.connectors.parsepool`) as in this process:
    each batch then comes with ``items`` empty and ``digest`` what the digest made of them
    (the quarantined items, the cursors and the order are as :meth:`MailSource.changes`
    gives them). A reader that wants a little of many items (the historical import's
    people) is then spared their trip between processes. ``digest``: a top-level function,
    or an object of a top-level class, that a worker can be sent (picklable). A digest that
    reads the header alone says so (``headers_only = True``): a source may then fetch
    the header alone (IMAP does), and its items then have no body, invitations or text."""

    name: str

    def digested(
        self, cursor: Cursor | None, digest: Callable[[list[MailItem]], Any]
    ) -> Iterator[Batch[MailItem]]: ...


class CalendarSource(Protocol):
    name: str

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]: ...


class TaskWriter(Protocol):
    def put(self, task: TaskItem) -> str:
        """Create or update the task (idempotent by ``task.uid``); return the provider's id."""
        ...


@runtime_checkable
class BatchTaskWriter(TaskWriter, Protocol):
    """A writer that takes several tasks in one round trip (Graph ``$batch``); the sync's
    write-back hands it chunks instead of one task at a time."""

    def put_many(self, tasks: Sequence[TaskItem]) -> Sequence[str | None]:
        """:meth:`put` for each task: the provider's ids, in the same order."""
        ...


@dataclass(frozen=True)
class MailboxSpec:
    """What a connector needs to know about one mailbox (read from the CRM database).

    ``settings`` is the kind's typed settings model; a mapping given here (a test, a row)
    is validated into it, so a connector reads ``spec.settings.host``, never ``.get()``."""

    name: str
    kind: str
    user_email: str
    settings: KindSettings
    batch_size: int = 500
    body_policy: str = "snippet"
    secret: Secret | None = None  # the mailbox's password or token, decrypted
    # what one item may hold (the config's [limits]); frozen, so one default serves all
    limits: LimitSettings = field(default_factory=LimitSettings)
    home: Path | None = None  # syncd's state directory (a token cache lives there)
    # sync connections open at once to the mailbox's server from this process, across all
    # its mailboxes (IMAP: sync.imap_connections, :mod:`syncd.connectors.throttle`); None:
    # no cap (a push watcher's own connection is never counted)
    server_connections: int | None = None
    # worker processes that fetch and parse a large read (sync.parse_processes, the parse
    # pool: :mod:`syncd.connectors.parsepool`); 0: one per usable CPU, 1: none
    parse_processes: int = 0

    @classmethod
    def of(
        cls,
        name: str,
        kind: str,
        user_email: str,
        settings: Mapping[str, Any] | KindSettings,
        **more: Any,
    ) -> MailboxSpec:
        """A spec from settings as a mapping (a row, a test): validated by the kind's model;
        a value it refuses is a ConnectorError naming the key, the value and the rule."""
        return cls(name, kind, user_email, settings, **more)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if isinstance(self.settings, Mapping):
            from syncd.connectors.kind import SettingsError
            from syncd.connectors.registry import kind

            try:
                typed = kind(self.kind).read_settings(self.settings, f"mailbox {self.name!r}")
            except SettingsError as exc:
                raise ConnectorError(str(exc)) from None
            object.__setattr__(self, "settings", typed)


@runtime_checkable
class Estimates(Protocol):
    """A source that can say, cheaply, about how many items it holds (live progress, ETA:
    ``syncd import contacts``); None when it cannot tell."""

    def estimate(self) -> int | None: ...


class Connector(Protocol):
    def mail_sources(self) -> list[MailSource]: ...

    def calendar_sources(self) -> list[CalendarSource]: ...

    def task_writer(self) -> TaskWriter | None: ...

    def close(self) -> None: ...


class Watcher(Protocol):
    """A push watcher's thread: it watches until ``stop`` is set or it gives up (a refused
    login); the daemon starts a dead one again."""

    def is_alive(self) -> bool: ...


WatcherFactory = Callable[[MailboxSpec, Callable[[str], None], threading.Event], "Watcher | None"]


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


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """A kept copy that must be one JSON object (a provider's resource)."""
    import json

    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"the kept copy is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the kept copy is not a {what} object")
    return value
