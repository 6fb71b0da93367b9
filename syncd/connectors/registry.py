"""The registry: the one place that lists connector kinds and the formats of kept items.

Adding a provider touches only ``syncd/connectors/``: a package ``<kind>/`` whose
``__init__`` defines ``KIND`` (:class:`syncd.connectors.kind.Kind`), and one line here.
The CLI, the sync job and the daemon reach every kind through these functions, by name.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable, Generator
from typing import NamedTuple

from syncd.connectors.base import (
    Connector,
    ConnectorError,
    MailboxSpec,
    Reparser,
    Reread,
    RereadContext,
    UnknownFormat,
    Watcher,
)
from syncd.connectors.kind import Check, Kind
from syncd.connectors.transport import check_endpoints

KINDS: dict[str, str] = {
    # kind -> its package; a package's __init__ is light (its models), the rest loads on use
    "local": "syncd.connectors.local",  # a Maildir, mbox archives and a vdir calendar on disk
    "imap": "syncd.connectors.imap",  # IMAP mail, CalDAV calendars
    "gmail": "syncd.connectors.gmail",  # the Gmail and Google Calendar APIs
    "microsoft": "syncd.connectors.microsoft",  # Microsoft Graph: Outlook mail, calendar, To Do
    "memory": "syncd.connectors.memory",  # mail, meetings and tasks in memory (tests)
}

SHARED_FORMATS: dict[str, str] = {
    # formats that several kinds keep raw copies in -> "module:reparser"
    "rfc822": "syncd.connectors.mime:reread",  # an RFC 5322/MIME message (local, imap, gmail)
    "ical": "syncd.connectors.ical:reread",  # an iCalendar object (vdir file, CalDAV resource)
}


def kinds(*, hidden: bool = True) -> list[str]:
    """The kinds' names; ``hidden=False`` leaves out those not offered to admins."""
    return sorted(k for k in KINDS if hidden or not kind(k).hidden)


@functools.cache
def kind(name: str) -> Kind:
    """The kind named ``name``; ConnectorError naming the known kinds otherwise."""
    try:
        package = KINDS[name]
    except KeyError:
        raise ConnectorError(
            f"unknown kind {name!r}; known kinds: {', '.join(kinds(hidden=False))}"
        ) from None
    found = importlib.import_module(package).KIND
    if not isinstance(found, Kind) or found.name != name:
        raise AssertionError(f"{package}.KIND does not describe kind {name!r}")
    return found


def open_connector(spec: MailboxSpec) -> Connector:
    """Open the connector of ``spec.kind``; an endpoint that would carry a secret in clear
    (a row edited by hand) is refused before anything opens."""
    try:
        check_endpoints(spec.name, spec.settings, spec.secret)
    except ConnectorError as exc:
        raise ConnectorError(
            f"{exc}. The mailbox's stored settings hold it: add the mailbox again with an "
            f"https:// URL ('syncd mailbox remove {spec.name}', then 'syncd mailbox add')"
        ) from None
    factory: Callable[[MailboxSpec], Connector] = kind(spec.kind).load("open")
    return factory(spec)


def open_watcher(
    spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
) -> Watcher | None:
    """Start the kind's push watcher (IMAP IDLE) if it has one and the mailbox wants it;
    ``on_change(name)`` is called from the watcher's thread when new mail arrives; setting
    ``stop`` ends it."""
    watch = kind(spec.kind).load("watch")
    return watch(spec, on_change, stop) if watch else None


def probe(spec: MailboxSpec) -> list[Check]:
    """``syncd doctor``'s checks of one mailbox, by its kind's probe (none: one line saying
    so). Changes nothing at the provider that stays."""
    found = kind(spec.kind).load("probe")
    if found is None:
        return [Check(f"mailbox {spec.name!r}", "ok", f"kind {spec.kind!r} has nothing to check")]
    checks: list[Check] = found(spec)
    return checks


class Held(NamedTuple):
    """A chunk of what one source holds (``syncd audit``): provider ids, as many as one
    listing call gives (an IMAP ``UID SEARCH`` window, a page), never a whole folder.
    ``ordered``: the ids come in an order of their own (UIDs ascending, the provider's
    pages), in which the audit names the first missing ones; False for a listing in no
    order (a Maildir's directories), whose missing ids are named smallest first."""

    source: str
    ids: list[str]
    ordered: bool = True


def holdings(spec: MailboxSpec, cursors: dict[str, str]) -> Generator[Held, None, None] | None:
    """What the provider holds, per source, up to where each source's stored cursor
    (source -> its value) says syncd has read, in chunks (:class:`Held`), listed as they are
    consumed: each source audited comes at least once (an empty chunk when it holds
    nothing), its chunks one after another. None when the kind cannot say. The provider is
    asked as the chunks are taken: an error (ConnectorError or another) comes from the
    iteration, and closing the generator closes the kind's connection."""
    found = kind(spec.kind).load("holdings")
    if found is None:
        return None
    held: Generator[Held, None, None] = found(spec, cursors)
    return held


def formats() -> dict[str, str]:
    """Every format of kept items -> its re-parser ("module:function")."""
    found = dict(SHARED_FORMATS)
    for name in KINDS:
        found.update(kind(name).formats)
    return found


def reparse(fmt: str, data: bytes, ctx: RereadContext) -> Reread:
    """Read a quarantined item again with the current parser for ``fmt``. Raises
    :class:`UnknownFormat`, or whatever the parser raises when it still cannot read it."""
    known = formats()
    target = known.get(fmt)
    if target is None:
        raise UnknownFormat(
            f"no parser reads format {fmt!r} (known: {', '.join(sorted(known))}); "
            "it was kept by another version of syncd"
        )
    module, _, attr = target.partition(":")
    parse: Reparser = getattr(importlib.import_module(module), attr)
    return parse(data, ctx)
