"""A Maildir folder (``cur/``, ``new/``) as a mail source; Maildir++ subfolders (``.Sent``,
``.Archive``) are folders of their own.

The cursor is the (ctime, unique name) of the last message stored. ctime, unlike mtime,
cannot be set back: a message copied or moved into the folder with its old date (as Dovecot
does for INTERNALDATE) still sorts after the cursor. A rename (``new/`` -> ``cur/``, a
flag) re-reads a message once; its key makes that a no-op. The cursor never passes the last
second before a scan, so a file renamed in during the scan is read on the next one. A poll
of an unchanged folder stats two directories and lists nothing (``new/`` and ``cur/`` keep
their mtimes until something is added, renamed or removed).

Memory stays flat whatever the folder holds: the folder is read in windows of at most
``window`` entries, each the next ones in (ctime, unique name) order, found by a listing
that keeps only the smallest (:func:`heapq.nsmallest`); nothing of a message outlives its
window. A folder of N messages is listed about N / window + 1 times (a listing stats every
file: a few microseconds each). The read and parse of
one chunk of entries is :func:`read_entries`; :func:`read_chunk` does it from a picklable
:class:`Chunk` (the folder's path, the entries, the limits), for a worker process.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from syncd.batching import by_size
from syncd.config import LimitSettings
from syncd.connectors import parsepool
from syncd.connectors.base import ConnectorError
from syncd.connectors.local.files import (
    NotRegularFile,
    Odd,
    TooLarge,
    file_time,
    kind,
    mail_batch,
    open_dir,
    read_regular,
    skipped_once,
    unreadable,
)
from syncd.connectors.mime import clean, read_message
from syncd.items import Batch, Cursor, MailItem, Quarantined
from syncd.limits import ticking

# entries held at most while a folder is read (about 10 MB of them): a larger window lists
# a big folder fewer times, a smaller one holds less
WINDOW = 20_000
PARALLEL_MIN = 1000  # entries of a window: fewer are read in this process (a poll)

log = logging.getLogger("syncd.local")


class Entry(NamedTuple):
    """A message file as listed. As a tuple it sorts in the order a folder is read in:
    (ctime, unique name), then where it is (unique in one listing)."""

    ctime_ns: int
    unique: str  # the name up to the flags (``:2,S``): the message's id in its folder
    sub: str  # "new" or "cur"
    name: str  # the file's name in it, as the OS gives it
    mtime_ns: int
    size: int
    mode: int


def open_folder(path: Path, subs: Sequence[str], follow: bool, option: str) -> dict[str, int]:
    """File descriptors of the folder's ``subs`` (new/ and cur/; the caller closes them),
    opened without following a link (but the folder itself when ``follow``). Raises
    ConnectorError when one is missing, :class:`Odd` when one is a link or not a folder."""
    try:
        folder = open_dir(path, follow=follow)
    except FileNotFoundError:
        raise ConnectorError(
            f"folder {str(path)!r} does not exist; check the path given to {option}"
        ) from None
    except Odd as odd:
        raise Odd(f"the folder {odd}: not read") from None
    fds: dict[str, int] = {}
    try:
        for sub in subs:
            try:
                fds[sub] = open_dir(sub, dir_fd=folder)
            except FileNotFoundError:
                raise ConnectorError(
                    f"Maildir folder {str(path)!r} has no {sub}/ directory; "
                    f"check the path given to {option}"
                ) from None
            except Odd as odd:
                raise Odd(f"its {sub}/ {odd}: the folder is not read") from None
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    finally:
        os.close(folder)
    return fds


def listing(fds: Mapping[str, int], since: int = 0) -> Iterator[Entry]:
    """Every message file in the folder, as the directories list them (no order); those
    with a ctime before ``since`` are left out before anything is made of them. A link is
    an entry of its own (its own ctime and mode, never its target's)."""
    for sub, fd in fds.items():
        with os.scandir(fd) as it:  # closing it rewinds ``fd`` for the next listing
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # moved or deleted while we looked
                if st.st_ctime_ns < since:
                    continue
                name = entry.name
                yield Entry(
                    st.st_ctime_ns,
                    name.split(":", 1)[0],
                    sub,
                    name,
                    st.st_mtime_ns,
                    st.st_size,
                    st.st_mode,
                )


def windows(fds: Mapping[str, int], after: tuple[int, str], size: int) -> Iterator[list[Entry]]:
    """The messages after the cursor's (ctime, unique name), in that order, ``size`` at a
    time: each window is listed anew and holds the ``size`` smallest entries past the
    last one of the previous window (by their whole key: ties on ctime are never split or
    dropped). A file added or renamed meanwhile has a ctime past the cursor's cap (the last
    second before the pass), so it is read on the next pass if not on this one; a window
    shorter than ``size`` is the last."""
    bound: tuple[int, str] | tuple[int, str, str, str] = after
    while True:
        window = heapq.nsmallest(size, _beyond(listing(fds, bound[0]), bound))
        if not window:
            return
        full = len(window) == size
        bound = (window[-1].ctime_ns, window[-1].unique, window[-1].sub, window[-1].name)
        yield window
        del window  # never two windows held at once
        if not full:
            return


def _beyond(
    entries: Iterator[Entry], bound: tuple[int, str] | tuple[int, str, str, str]
) -> Iterator[Entry]:
    """The entries past ``bound``: a cursor's (ctime, unique name), or a whole key."""
    edge, width = bound[0], len(bound)
    for e in entries:
        if e.ctime_ns > edge or e[:width] > bound:
            yield e


def read_entries(
    fds: Mapping[str, int], source: str, entries: Sequence[Entry], limits: LimitSettings
) -> list[MailItem | Quarantined]:
    """Read and parse a chunk of entries of a folder opened as ``fds``: a message, or a
    quarantine entry for one not read (a link, a FIFO, a file over the limit...) or not
    parsed; nothing for one deleted since it was listed. A file a mail client renamed since
    (new/ -> cur/, flags) is found by one listing of names, once a chunk."""
    results: list[MailItem | Quarantined] = []
    moved: dict[str, tuple[str, str, int]] | None = None
    for i, entry in enumerate(entries):
        provider_id = f"{source}/{clean(entry.unique)}"
        data: bytes | None
        try:
            if not stat.S_ISREG(entry.mode):  # never opened: a link, a FIFO, ...
                raise NotRegularFile(kind(entry.mode))
            try:
                data = read_regular(entry.name, limits.message_bytes, dir_fd=fds[entry.sub])
            except FileNotFoundError:
                if moved is None:
                    moved = _renamed(fds, {e.unique for e in entries[i:]})
                data = _read_moved(fds, moved.get(entry.unique), limits.message_bytes)
        except (OSError, TooLarge) as exc:  # this entry only
            results.append(unreadable(provider_id, exc))
            continue
        if data is not None:
            results.append(
                read_message(data, provider_id, file_time(entry.mtime_ns), limits=limits)
            )
    return results


@dataclass(frozen=True)
class Chunk:
    """A chunk of a folder's entries to read elsewhere (a worker process): all picklable."""

    path: str  # the folder, opened again as a pass opens it
    subs: tuple[str, ...]
    follow: bool
    option: str  # the command-line option that names it, for an error
    source: str  # the source's name, the provider ids' prefix
    entries: tuple[Entry, ...]
    limits: LimitSettings


def read_chunk(chunk: Chunk) -> list[MailItem | Quarantined]:
    """:func:`read_entries` of a :class:`Chunk`, for a worker process (a top-level
    function of one picklable argument): the folder is opened again by its path, as a pass
    opens it (:func:`open_folder`). A folder that is gone or has become a link since raises
    ConnectorError: the pass stops, and the next one quarantines the folder."""
    try:
        fds = open_folder(Path(chunk.path), chunk.subs, chunk.follow, chunk.option)
    except Odd as odd:
        raise ConnectorError(f"Maildir folder {chunk.source}: {odd}") from None
    try:
        with ticking():  # one timer bounds each file's parse (syncd.limits)
            return read_entries(fds, chunk.source, chunk.entries, chunk.limits)
    finally:
        for fd in fds.values():
            os.close(fd)


def _renamed(fds: Mapping[str, int], wanted: set[str]) -> dict[str, tuple[str, str, int]]:
    """Where the files of these unique names are now: (sub, name, mode), by one listing of
    names (a stat only for those wanted)."""
    found: dict[str, tuple[str, str, int]] = {}
    for sub, fd in fds.items():
        with os.scandir(fd) as it:
            for entry in it:
                unique = entry.name.split(":", 1)[0]
                if unique in wanted and not entry.name.startswith("."):
                    try:
                        mode = entry.stat(follow_symlinks=False).st_mode
                    except FileNotFoundError:
                        continue
                    found[unique] = (sub, entry.name, mode)
    return found


def _read_moved(
    fds: Mapping[str, int], found: tuple[str, str, int] | None, limit: int
) -> bytes | None:
    if found is None:
        return None  # deleted since the listing: nothing to log
    sub, name, mode = found
    if not stat.S_ISREG(mode):
        raise NotRegularFile(kind(mode))
    try:
        return read_regular(name, limit, dir_fd=fds[sub])
    except FileNotFoundError:
        return None  # renamed again: read on the next pass (past the cursor's cap)


class MaildirFolder:
    """One Maildir folder (``cur/`` + ``new/``) as a mail source.

    The folder is opened once a pass, ``cur/`` and ``new/`` inside it without following a
    link, and every file relative to them (``openat``): nothing outside the folder is ever
    read. A link, a FIFO, a device or a subdirectory among the messages, a file syncd may
    not read or one over ``limits.message_bytes`` is quarantined with its reason (and no
    bytes); the messages around it are read. A folder that is itself a link (or whose
    ``cur/`` or ``new/`` is) is quarantined once and not read. ``window``: the entries
    held at most while it is read (:func:`windows`; None: :data:`WINDOW`)."""

    SUBS: tuple[str, ...] = ("new", "cur")  # where the messages are, inside the folder
    OPTION = "--maildir"

    def __init__(
        self,
        name: str,
        path: Path,
        batch_size: int,
        limits: LimitSettings | None = None,
        follow: bool = True,
        window: int | None = None,
        processes: int = 1,
    ) -> None:
        self.name = name
        self.path = path
        self.batch_size = batch_size
        self.limits = limits or LimitSettings()
        self.follow = follow  # the configured Maildir itself may be a link; its subfolders not
        self.window = window or WINDOW
        self.processes = processes  # sync.parse_processes (1: every file read here)

    def _open(self) -> dict[str, int]:
        """File descriptors of new/ and cur/ (the caller closes them)."""
        return open_folder(self.path, self.SUBS, self.follow, self.OPTION)

    def estimate(self) -> int | None:
        """The files in the folder (a listing of names only)."""
        try:
            return sum(
                1
                for sub in self.SUBS
                for entry in os.scandir(self.path / sub)
                if not entry.name.startswith(".")
            )
        except OSError:
            return None

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state: dict[str, Any] = json.loads(cursor.value) if cursor is not None else {}
        # a cursor of a folder once quarantined has only what had been read before
        after, quiet = (int(state.get("c", 0)), str(state.get("n", ""))), state.get("d")
        settled = time.time_ns() - 1_000_000_000
        try:
            fds = self._open()
        except Odd as odd:
            skipped = skipped_once(state, f"Maildir folder {self.name}: {odd}", self.name)
            if skipped is not None:
                yield skipped
            return
        try:
            yield from self._changes(fds, after, quiet, settled)
        finally:
            for fd in fds.values():
                os.close(fd)

    def _changes(
        self, fds: dict[str, int], after: tuple[int, str], quiet: object, settled: int
    ) -> Iterator[Batch[MailItem]]:
        # the mtimes of new/ and cur/: any delivery, rename or deletion changes one
        stamps = [os.fstat(fds[sub]).st_mtime_ns for sub in self.SUBS]
        if quiet is not None and quiet == stamps:
            return  # nothing delivered, renamed or deleted since a settled scan: no listing
        # directory stamps are trusted next time only once they are a second old
        trusted = stamps if max(stamps) < settled else None
        last: Entry | None = None  # the last entry read
        cursor: Cursor | None = None  # the last one given
        for window in windows(fds, after, self.window):
            final = len(window) < self.window  # else the next listing tells
            runs = list(by_size(self._sizes(window), self.batch_size, self.limits.batch_bytes))
            for (_, end), read in zip(runs, self._read(fds, window, runs), strict=True):
                last = window[end - 1]
                cursor = self._past(
                    last, after, settled, trusted if final and end == len(window) else None
                )
                yield mail_batch(read, cursor)
            del window  # never two windows held at once
        if last is None:
            if trusted != quiet:
                yield mail_batch([], self._cursor(after, trusted))
            return
        # the last window was full and the listing after it found nothing more
        end_cursor = self._past(last, after, settled, trusted)
        if end_cursor != cursor:
            yield mail_batch([], end_cursor)

    def _read(
        self, fds: dict[str, int], window: list[Entry], runs: list[tuple[int, int]]
    ) -> Iterator[list[MailItem | Quarantined]]:
        """The messages of each run of the window, in order: read and parsed by the parse
        pool's workers (``sync.parse_processes``) when the window is large enough for it to
        pay off, else here. A chunk whose worker died is read here, with a warning."""
        if parsepool.size(self.processes) <= 1 or len(window) < PARALLEL_MIN:
            for start, end in runs:
                yield read_entries(fds, self.name, window[start:end], self.limits)
            return
        chunks = (
            Chunk(
                str(self.path),
                self.SUBS,
                self.follow,
                self.OPTION,
                self.name,
                tuple(window[start:end]),
                self.limits,
            )
            for start, end in runs
        )

        def rescue(chunk: Chunk, reason: str) -> list[MailItem | Quarantined]:
            log.warning("%s: a parse worker failed (%s); read here instead", self.name, reason)
            return read_entries(fds, self.name, chunk.entries, self.limits)

        yield from parsepool.ordered(
            read_chunk,
            chunks,
            processes=self.processes,
            in_flight=parsepool.size(self.processes),
            rescue=rescue,
            raises=(ConnectorError,),
        )

    def _past(
        self, entry: Entry, after: tuple[int, str], settled: int, stamps: list[int] | None
    ) -> Cursor:
        """The cursor past ``entry``, but never past the last second before the scan; it
        keeps the directory stamps (given with the last entry) only when it is past it."""
        newest = (entry.ctime_ns, entry.unique)
        last = max(after, min(newest, (settled, "")))
        return self._cursor(last, stamps if last == newest else None)

    def _sizes(self, entries: list[Entry]) -> list[int]:
        """The bytes each entry adds to a batch: none for one that is never read."""
        limit = self.limits.message_bytes
        return [e.size if e.size <= limit and stat.S_ISREG(e.mode) else 0 for e in entries]

    @staticmethod
    def _cursor(last: tuple[int, str], stamps: list[int] | None) -> Cursor:
        return Cursor(json.dumps({"c": last[0], "n": last[1], "d": stamps}))


class EmlFolder(MaildirFolder):
    """A folder of ``.eml`` files (one message a file, e.g. saved from a mail client), read
    like one Maildir folder: the same safe reads, order and cursor. A file that is not a
    message is quarantined with its reason."""

    SUBS = (".",)
    OPTION = "--eml"
