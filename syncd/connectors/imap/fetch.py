"""A group of an IMAP folder's new UIDs fetched and read as mail items, in this process or in
a worker of the parse pool (:mod:`syncd.connectors.parsepool`).

A :class:`Group` is a run of new UIDs (one pool task; no FETCH names more than
:data:`MAX_UIDS_PER_COMMAND` of them) and everything needed to read it anywhere: the
mailbox's spec (its settings and its secret), the folder, and the UIDVALIDITY the main
process found. Reading it
(:func:`read_runs`) yields runs of the group (each one batch) cut by count and by
``limits.batch_bytes``, each read as mail items (:func:`~.parse.mail_item`):

- **Body policy** ``metadata`` **or** ``snippet`` (headers, and the start of the text): one
  FETCH asks each message's RFC822.SIZE with at most :data:`HEADER_BYTES` of its header
  (and the first :data:`~.parse.SNIPPET_BYTES` of its text), so what a message costs in
  memory is bounded before anything is known of it. A message over ``limits.message_bytes``
  is quarantined with nothing more fetched; a header longer than the cut is fetched whole in
  a second FETCH (a rare one: DKIM- and ARC-signed headers are a few KB).
- **Body policy** ``full``: the RFC822.SIZE of each message first, so that one over
  ``limits.message_bytes`` is quarantined without its body ever being fetched, then the whole
  message of the others.

A digest that reads the header alone (``headers_only``: the historical import's,
:class:`syncd.harvest.collect.MailDigest`) is sent the header alone: one FETCH asks at most
:data:`HEADER_BYTES` of each message's header and nothing else (no size: nothing more is
fetched but the rest of a header longer than the cut, up to ``limits.header_bytes`` and one
byte, so that a longer one is quarantined as over that limit), and no invitation is looked
for.

An invitation needs its whole message: BODYSTRUCTURE is asked only for the messages whose
answer cannot rule one out (:func:`~.parse.needs_structure`), and the whole message of those
that hold one after that. INTERNALDATE (the time a message without a usable Date or Received
header is logged at) is asked only for such messages, after they are read.

Every command selects the folder readonly first and checks its UIDVALIDITY against the
group's: a folder rebuilt since the main process read it raises
:class:`~syncd.connectors.base.CursorExpired`, in a worker as in this process. syncd only
ever sends ``BODY.PEEK`` (it never marks mail as read).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from imapclient import IMAPClient

from syncd.batching import by_size, chunked
from syncd.config import LimitSettings
from syncd.connectors.base import CursorExpired, MailboxSpec, too_large
from syncd.connectors.imap import ImapSettings
from syncd.connectors.imap.parse import (
    HEADER_BYTES,
    SNIPPET_BYTES,
    fetch_attributes,
    has_calendar_part,
    mail_item,
    needs_structure,
    provider_id,
    undated,
)
from syncd.connectors.imap.session import ImapSession
from syncd.connectors.kind import typed
from syncd.items import MailItem, Quarantined
from syncd.limits import ticking

MAX_UIDS_PER_COMMAND = 1000  # keeps a FETCH well under Dovecot's 64 KB command line

Read = MailItem | Quarantined
# a digest: what a reader of the items wants of a run, made where the run is read (a parse
# pool worker): a top-level function or a picklable object; see syncd.items.Batch.digest
Digest = Callable[[list[MailItem]], Any]
Run = tuple[int, list[Read], Any]  # a run's last UID, what was read of it, and its digest


@dataclass(frozen=True)
class Group:
    """New UIDs of one folder, in order, to be read as runs: a parse pool task. With a
    ``digest``, each run's mail items are handed to it where the run is read, and only the
    digest and the quarantined items come back."""

    spec: MailboxSpec
    folder: str
    uidvalidity: int
    uids: tuple[int, ...]
    digest: Digest | None = None
    # a worker keeps its connection after this group for the read's next one (none of the
    # last groups of a read: see read_in_worker); ``read``: which read (a token of its own)
    keep: bool = False
    read: str = ""

    def describe(self) -> str:
        return f"UIDs {self.uids[0]}-{self.uids[-1]} of {self.folder!r}"

    @property
    def headers_only(self) -> bool:
        """Whether the digest reads the header alone (``headers_only``): then only the
        header is fetched (body policy but ``full``)."""
        return self.spec.body_policy != "full" and bool(getattr(self.digest, "headers_only", False))


def read_runs(session: ImapSession, group: Group) -> Iterator[Run]:
    """The group's runs, each fetched and read when the one before has been taken."""
    raw_runs = _whole_runs if group.spec.body_policy == "full" else _header_runs
    for last, run, data in raw_runs(session, group):
        with ticking():  # one timer a run bounds each message's parse (never across a yield)
            read = _read(session, group, run, data)
            digest = None
            if group.digest is not None:
                digest = group.digest([r for r in read if isinstance(r, MailItem)])
                read = [r for r in read if isinstance(r, Quarantined)]
        yield last, read, digest


def read_in_worker(group: Group) -> list[Run]:
    """A parse pool task: the group read on a connection of the worker's own (not counted
    against ``sync.imap_connections`` here: the main process holds a slot for it for as
    long as its read goes on). A group marked ``keep`` leaves its connection open for the
    worker's next group of the same read: a new connection's first FETCH costs a server
    that has to load the folder's index for it (about 0.1 s at 65,000 messages in Dovecot)
    as much as a FETCH of a thousand headers. A kept connection that no group takes within
    :data:`KEEP_SECONDS` is closed (the read goes on without it, or has ended): within
    :data:`KEPT_FOR` of the end of the group that kept it; the read holds the slots its
    workers used until then."""
    key = _key(group)
    session = _kept.take(key) or ImapSession(group.spec, counted=False)
    try:
        runs = list(read_runs(session, group))
    except BaseException:
        session.close()
        raise
    if group.keep:
        _kept.put(key, session)
    else:
        session.close()
    return runs


KEEP_SECONDS = 0.25  # a worker's kept connection no group took this long is closed
REAP_EVERY = KEEP_SECONDS / 5
# a connection kept after a group is closed this long after the group ended, at the latest
# (the reaper drops it without a round trip to the server)
KEPT_FOR = KEEP_SECONDS + 2 * REAP_EVERY
Key = tuple[str, str, str, int | None, str, str, int, str]


def _key(group: Group) -> Key:
    """What a kept connection must be the same for: the server, the account, the folder (as
    the group's read found it) and the read itself (a connection's view of the folder is
    as old as its last command: another read's new UIDs may be unknown to it)."""
    s = typed(group.spec.settings, ImapSettings)
    login = s.login or group.spec.user_email
    return (
        group.spec.name,
        s.host,
        s.tls,
        s.port,
        login,
        group.folder,
        group.uidvalidity,
        group.read,
    )


class _Kept:
    """The connection a worker keeps between two groups of one read (at most one), and the
    thread that closes it once it has waited :data:`KEEP_SECONDS` for nothing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: tuple[Key, ImapSession, float] | None = None
        self.reaper: threading.Thread | None = None

    def take(self, key: Key) -> ImapSession | None:
        with self.lock:
            held, self.held = self.held, None
        if held is None:
            return None
        if held[0] == key:
            return held[1]
        held[1].drop()  # another read's: it is not used again
        return None

    def put(self, key: Key, session: ImapSession) -> None:
        with self.lock:
            old, self.held = self.held, (key, session, time.monotonic())
            if self.reaper is None:
                self.reaper = threading.Thread(target=self._reap, name="kept", daemon=True)
                self.reaper.start()
        if old is not None:
            old[1].drop()

    def _reap(self) -> None:
        while True:
            time.sleep(REAP_EVERY)
            with self.lock:
                held = self.held
                if held is None:
                    self.reaper = None
                    return
                if time.monotonic() - held[2] < KEEP_SECONDS:
                    continue
                self.held = None
            held[1].drop()  # no LOGOUT: nothing may keep it open longer


_kept = _Kept()


# what a run is before it is read: its last UID, its UIDs, and each one's FETCH answer (none:
# over the size limit, its size under RFC822.SIZE alone)
RawRun = tuple[int, list[int], dict[int, Any]]


def first_bytes(policy: str) -> int:
    """What the first FETCH may bring of one message (``metadata``, ``snippet``)."""
    return HEADER_BYTES + (SNIPPET_BYTES if policy == "snippet" else 0)


def run_size(spec: MailboxSpec) -> int:
    """UIDs a run holds at most: ``batch_size``, no more than one FETCH may name, and (but
    ``full``) no more than ``limits.batch_bytes`` of first answers."""
    most = min(spec.batch_size, MAX_UIDS_PER_COMMAND)
    if spec.body_policy == "full":
        return most
    return max(1, min(most, spec.limits.batch_bytes // first_bytes(spec.body_policy)))


def _whole_runs(session: ImapSession, group: Group) -> Iterator[RawRun]:
    """``full``: sizes first, then each run's whole messages (but those over the limit)."""
    folder, uv, uids = group.folder, group.uidvalidity, list(group.uids)
    limits = group.spec.limits
    sizes: dict[int, int] = {}
    for chunk in chunked(uids, MAX_UIDS_PER_COMMAND):
        sizes |= session.call(
            f"FETCH {folder} RFC822.SIZE",
            partial(_sizes, folder=folder, uids=chunk, uidvalidity=uv),
        )
    limit = limits.message_bytes
    # what each message holds in memory once fetched; one over the limit is not
    weights = [n if (n := sizes.get(u, 0)) <= limit else 0 for u in uids]
    for start, end in by_size(weights, run_size(group.spec), limits.batch_bytes):
        run = uids[start:end]
        wanted = [u for u in run if u in sizes and sizes[u] <= limit]
        data: dict[int, Any] = (
            session.call(
                f"FETCH {folder}",
                partial(_fetch, folder=folder, uids=wanted, uidvalidity=uv, policy="full"),
            )
            if wanted
            else {}
        )
        for uid in run:
            if uid in sizes and sizes[uid] > limit:
                data[uid] = {b"RFC822.SIZE": sizes[uid]}
        yield run[-1], run, data


def _header_runs(session: ImapSession, group: Group) -> Iterator[RawRun]:
    """``metadata``/``snippet``: slices of the group fetched at once with their sizes and
    the cut header (and text), bounded by ``limits.batch_bytes``; each slice cut into runs
    by what they hold and may still fetch (a whole header, a whole invitation), and each
    run completed."""
    spec, folder, uv, bare = group.spec, group.folder, group.uidvalidity, group.headers_only
    limits, policy = spec.limits, spec.body_policy
    step = run_size(spec)
    for piece in chunked(list(group.uids), step):
        first: dict[int, Any] = session.call(
            f"FETCH {folder}",
            partial(
                _first,
                folder=folder,
                uids=piece,
                uidvalidity=uv,
                policy=policy,
                limit=limits.message_bytes,
                headers_only=bare,
            ),
        )
        weights = [_weight(first.get(u), limits, policy, bare) for u in piece]
        for start, end in by_size(weights, step, limits.batch_bytes):
            run = piece[start:end]
            # taken out of the slice's answers: what a run fetches more is let go with it
            data = {u: first.pop(u) for u in run if u in first}
            cut = [u for u in run if u in data and _is_cut(data[u], limits.message_bytes)]
            # a cut header may hold its Content-Type past the cut: its structure is asked
            # (never for a digest that reads the header alone: it wants no invitation)
            unsure = [
                u
                for u in run
                if not bare
                and u in data
                and not _over(data[u], limits.message_bytes)
                and (u in cut or needs_structure(data[u], policy))
            ]
            if cut or unsure:
                more: dict[int, Any] = session.call(
                    f"FETCH {folder}",
                    partial(
                        _complete,
                        folder=folder,
                        uidvalidity=uv,
                        cut=cut,
                        unsure=unsure,
                        # without its size, a header only up to the header limit, and a byte
                        cap=limits.header_bytes + 1 if bare else None,
                    ),
                )
                for uid, d in more.items():
                    if uid in data:
                        data[uid].update(d)
            yield run[-1], run, data


def _read(session: ImapSession, group: Group, run: list[int], data: dict[int, Any]) -> list[Read]:
    """The run's answers read as items: one over the size limit quarantined (its body never
    fetched); one the server did not answer for (deleted meanwhile) left out. A message
    without a usable date of its own is read again with its INTERNALDATE, asked for it."""
    folder, uv, limits = group.folder, group.uidvalidity, group.spec.limits
    limit = limits.message_bytes
    read: dict[int, Read] = {}
    no_date: list[int] = []
    for uid in run:
        d = data.get(uid)
        if d is None:
            continue
        pid = provider_id(folder, uv, uid)
        if _over(d, limit):
            read[uid] = Quarantined(pid, too_large(d[b"RFC822.SIZE"], limit))
            continue
        read[uid] = mail_item(pid, d, limits)
        if undated(read[uid], d):
            no_date.append(uid)
    if no_date:
        dates: dict[int, Any] = session.call(
            f"FETCH {folder} INTERNALDATE",
            partial(_internal_dates, folder=folder, uids=no_date, uidvalidity=uv),
        )
        for uid in no_date:
            data[uid][b"INTERNALDATE"] = dates.get(uid, {}).get(b"INTERNALDATE")
            read[uid] = mail_item(provider_id(folder, uv, uid), data[uid], limits)
    return [read[u] for u in run if u in read]


def _over(d: Mapping[bytes, Any], limit: int) -> bool:
    size = d.get(b"RFC822.SIZE")
    return isinstance(size, int) and size > limit


def _is_cut(d: Mapping[bytes, Any], limit: int) -> bool:
    """Whether the first answer holds only the start of the header (it filled the cut)."""
    header = d.get(b"BODY[HEADER]")
    return (
        not _over(d, limit)
        and isinstance(header, (bytes, bytearray))
        and len(header) >= HEADER_BYTES
    )


def _weight(
    d: Mapping[bytes, Any] | None, limits: LimitSettings, policy: str, headers_only: bool
) -> int:
    """What a message holds in memory once its run is complete: its first answer, and its
    size where its whole header or (an invitation) its whole message may be fetched (read
    for the header alone: the header limit, where its whole header may be fetched)."""
    limit = limits.message_bytes
    if d is None or _over(d, limit):
        return 0
    held = sum(len(v) for v in d.values() if isinstance(v, (bytes, bytearray)))
    if headers_only:
        return held + (limits.header_bytes if _is_cut(d, limit) else 0)
    size = d.get(b"RFC822.SIZE")
    if isinstance(size, int):
        if _is_cut(d, limit):  # its whole header, and it may be an invitation
            held += 2 * size
        elif needs_structure(d, policy):  # it may be an invitation, fetched whole
            held += size
    return held


# --- commands, run by the session (retried on a dropped connection) -----------------------------


def _select(client: IMAPClient, folder: str, uidvalidity: int) -> None:
    """The folder selected readonly with the group's UIDVALIDITY: by a SELECT unless the
    connection has it selected so already (a session's :class:`~.session.Client`)."""
    if getattr(client, "selected", None) == (folder, True, uidvalidity):
        return
    selected = client.select_folder(folder, readonly=True)
    if selected[b"UIDVALIDITY"] != uidvalidity:
        raise CursorExpired(f"UIDVALIDITY of {folder!r} changed during the sync")


def _sizes(client: IMAPClient, folder: str, uids: list[int], uidvalidity: int) -> dict[int, int]:
    """RFC822.SIZE of each message: what it would cost to fetch, before any body is."""
    _select(client, folder, uidvalidity)
    sizes: dict[int, int] = {}
    for uid, d in client.fetch(uids, [b"RFC822.SIZE"]).items():
        size = d.get(b"RFC822.SIZE")
        sizes[uid] = size if isinstance(size, int) else 0  # unknown: checked once read
    return sizes


def _first(
    client: IMAPClient,
    folder: str,
    uids: list[int],
    uidvalidity: int,
    policy: str,
    limit: int,
    headers_only: bool = False,
) -> dict[int, Any]:
    """Each message's size and the start of its header (and text), or (``headers_only``: a digest
    that reads those alone) the start of its header only: the answers' keys as a whole
    header's (``BODY[HEADER]``, ``BODY[TEXT]<0>``); a message over the limit keeps only its
    size (what was fetched of it is dropped at once)."""
    _select(client, folder, uidvalidity)
    answers: dict[int, Any] = client.fetch(uids, fetch_attributes(policy, headers_only))
    for uid, d in answers.items():
        if _over(d, limit):
            answers[uid] = {b"RFC822.SIZE": d[b"RFC822.SIZE"]}
            continue
        header = d.pop(b"BODY[HEADER]<0>", None)
        if header is not None:
            d[b"BODY[HEADER]"] = header
    return answers


def _complete(
    client: IMAPClient,
    folder: str,
    uidvalidity: int,
    cut: list[int],
    unsure: list[int],
    cap: int | None = None,
) -> dict[int, Any]:
    """The whole header of the messages whose first answer cut it (``cap``: its first
    ``cap`` bytes at most), and the whole message of those that hold an invitation (asked
    by BODYSTRUCTURE of the ``unsure`` ones)."""
    _select(client, folder, uidvalidity)
    more: dict[int, dict[bytes, Any]] = {}
    # only the messages asked, and only bytes: a FETCH answer the server sends unasked (a
    # flag changed by another client) never replaces what was fetched
    if cut:
        item = b"BODY.PEEK[HEADER]" + (b"<0.%d>" % cap if cap else b"")
        key = b"BODY[HEADER]<0>" if cap else b"BODY[HEADER]"
        for uid, d in client.fetch(cut, [item]).items():
            header = d.get(key)
            if uid in cut and isinstance(header, (bytes, bytearray)):
                more.setdefault(uid, {})[b"BODY[HEADER]"] = header
    if unsure:
        structures = client.fetch(unsure, [b"BODYSTRUCTURE"])
        whole = [
            u
            for u, d in structures.items()
            if u in unsure and has_calendar_part(d.get(b"BODYSTRUCTURE"))
        ]
        if whole:
            for uid, d in client.fetch(whole, [b"BODY.PEEK[]"]).items():
                body = d.get(b"BODY[]")
                if uid in whole and isinstance(body, (bytes, bytearray)):
                    more.setdefault(uid, {})[b"BODY[]"] = body
    return more


def _fetch(
    client: IMAPClient, folder: str, uids: list[int], uidvalidity: int, policy: str
) -> dict[int, Any]:
    """What the policy needs of each message (``full``: all of it)."""
    _select(client, folder, uidvalidity)
    data: dict[int, Any] = client.fetch(uids, fetch_attributes(policy))
    return data


def _internal_dates(
    client: IMAPClient, folder: str, uids: list[int], uidvalidity: int
) -> dict[int, Any]:
    _select(client, folder, uidvalidity)
    data: dict[int, Any] = client.fetch(uids, [b"INTERNALDATE"])
    return data
