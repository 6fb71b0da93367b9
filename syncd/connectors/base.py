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
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncd.config import LimitSettings
from syncd.items import Batch, ContactCard, Cursor, MailItem, MeetingItem, TaskItem
from syncd.secrets import Secret


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


def check_tls(host: str, tls: str) -> None:
    """Refuse to send a password in clear anywhere but to this machine."""
    if tls not in ("implicit", "starttls", "none"):
        raise ConnectorError(f"tls {tls!r} is not one of implicit, starttls, none")
    if tls == "none" and not is_loopback(host):
        raise ConnectorError(
            f"--tls none would send the password to {host!r} in clear; it is allowed only "
            "for a loopback host (127.0.0.1, ::1, localhost): use --tls implicit or starttls"
        )


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


def open_watcher(spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event) -> Any:
    """Start the kind's push watcher (IMAP IDLE) if it has one and the mailbox wants it;
    ``on_change(name)`` is called from the watcher's thread when new mail arrives."""
    module, _ = _module(spec)
    watch = getattr(module, "watch", None)
    return watch(spec, on_change, stop) if watch else None


def open_connector(spec: MailboxSpec) -> Connector:
    """Look up the connector for ``spec.kind`` in the one registry and open it."""
    module, attr = _module(spec)
    factory: ConnectorFactory = getattr(module, attr)
    return factory(spec)
