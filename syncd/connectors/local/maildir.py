"""A Maildir folder (``cur/``, ``new/``) as a mail source; Maildir++ subfolders (``.Sent``,
``.Archive``) are folders of their own.

The cursor is the (ctime, unique name) of the last message stored. ctime, unlike mtime,
cannot be set back: a message copied or moved into the folder with its old date (as Dovecot
does for INTERNALDATE) still sorts after the cursor. A rename (``new/`` -> ``cur/``, a
flag) re-reads a message once; its key makes that a no-op. The cursor never passes the last
second before a scan, so a file renamed in during the scan is read on the next one. A poll
of an unchanged folder stats two directories and lists nothing (``new/`` and ``cur/`` keep
their mtimes until something is added, renamed or removed).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.batching import by_size
from syncd.config import LimitSettings
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


@dataclass(frozen=True)
class _Entry:
    ctime_ns: int
    unique: str
    sub: str  # "new" or "cur"
    name: str  # the file's name in it, as the OS gives it
    mtime_ns: int
    size: int
    mode: int


class MaildirFolder:
    """One Maildir folder (``cur/`` + ``new/``) as a mail source.

    The folder is opened once a pass, ``cur/`` and ``new/`` inside it without following a
    link, and every file relative to them (``openat``): nothing outside the folder is ever
    read. A link, a FIFO, a device or a subdirectory among the messages, a file syncd may
    not read or one over ``limits.message_bytes`` is quarantined with its reason (and no
    bytes); the messages around it are read. A folder that is itself a link (or whose
    ``cur/`` or ``new/`` is) is quarantined once and not read."""

    SUBS: tuple[str, ...] = ("new", "cur")  # where the messages are, inside the folder
    OPTION = "--maildir"

    def __init__(
        self,
        name: str,
        path: Path,
        batch_size: int,
        limits: LimitSettings | None = None,
        follow: bool = True,
    ) -> None:
        self.name = name
        self.path = path
        self.batch_size = batch_size
        self.limits = limits or LimitSettings()
        self.follow = follow  # the configured Maildir itself may be a link; its subfolders not

    def _open(self) -> dict[str, int]:
        """File descriptors of new/ and cur/ (the caller closes them)."""
        try:
            folder = open_dir(self.path, follow=self.follow)
        except FileNotFoundError:
            raise ConnectorError(
                f"folder {str(self.path)!r} does not exist; check the path given to {self.OPTION}"
            ) from None
        except Odd as odd:
            raise Odd(f"the folder {odd}: not read") from None
        fds: dict[str, int] = {}
        try:
            for sub in self.SUBS:
                fds[sub] = self._open_sub(sub, folder)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        finally:
            os.close(folder)
        return fds

    def _open_sub(self, sub: str, folder: int) -> int:
        try:
            return open_dir(sub, dir_fd=folder)
        except FileNotFoundError:
            raise ConnectorError(
                f"Maildir folder {str(self.path)!r} has no {sub}/ directory; "
                f"check the path given to {self.OPTION}"
            ) from None
        except Odd as odd:
            raise Odd(f"its {sub}/ {odd}: the folder is not read") from None

    def _listing(self, fds: dict[str, int]) -> list[_Entry]:
        """Every message, in ctime order (the entry's own, never a link target's)."""
        entries = []
        for sub, fd in fds.items():
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # moved or deleted while we looked
                    unique = entry.name.split(":", 1)[0]
                    entries.append(
                        _Entry(
                            st.st_ctime_ns,
                            unique,
                            sub,
                            entry.name,
                            st.st_mtime_ns,
                            st.st_size,
                            st.st_mode,
                        )
                    )
        entries.sort(key=lambda e: (e.ctime_ns, e.unique, e.sub, e.name))
        return entries

    def _read(self, entry: _Entry, fds: dict[str, int], moved: dict[str, _Entry]) -> bytes | None:
        """The message's bytes; ``moved`` is filled, once a scan, by the first file that a
        mail client renamed (new/ -> cur/, flags) since the listing."""
        limit = self.limits.message_bytes
        try:
            return read_regular(entry.name, limit, dir_fd=fds[entry.sub])
        except FileNotFoundError:
            pass
        if not moved:
            moved.update({e.unique: e for e in self._listing(fds)})
            moved["/"] = entry  # no unique name holds a "/": listed once a scan
        found = moved.get(entry.unique)
        if found is None:
            return None  # deleted since the listing: nothing to log
        if not stat.S_ISREG(found.mode):
            raise NotRegularFile(kind(found.mode))
        try:
            return read_regular(found.name, limit, dir_fd=fds[found.sub])
        except FileNotFoundError:
            return None

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
        pending = self._after(fds, after)
        if not pending:
            if trusted != quiet:
                yield mail_batch([], self._cursor(after, trusted))
            return
        moved: dict[str, _Entry] = {}
        for start, end in by_size(self._sizes(pending), self.batch_size, self.limits.batch_bytes):
            chunk = pending[start:end]
            kept = trusted if end == len(pending) else None
            yield mail_batch(
                self._messages(chunk, fds, moved), self._past(chunk[-1], after, settled, kept)
            )

    def _after(self, fds: dict[str, int], after: tuple[int, str]) -> list[_Entry]:
        """The messages after the cursor's (ctime, unique name)."""
        return [e for e in self._listing(fds) if (e.ctime_ns, e.unique) > after]

    def _messages(
        self, chunk: list[_Entry], fds: dict[str, int], moved: dict[str, _Entry]
    ) -> list[MailItem | Quarantined]:
        return [r for e in chunk if (r := self._message(e, fds, moved)) is not None]

    def _past(
        self, entry: _Entry, after: tuple[int, str], settled: int, stamps: list[int] | None
    ) -> Cursor:
        """The cursor past ``entry``, but never past the last second before the scan; it
        keeps the directory stamps (given with the last entry) only when it is past it."""
        newest = (entry.ctime_ns, entry.unique)
        last = max(after, min(newest, (settled, "")))
        return self._cursor(last, stamps if last == newest else None)

    def _sizes(self, entries: list[_Entry]) -> list[int]:
        """The bytes each entry adds to a batch: none for one that is never read."""
        limit = self.limits.message_bytes
        return [e.size if e.size <= limit and stat.S_ISREG(e.mode) else 0 for e in entries]

    def _message(
        self, entry: _Entry, fds: dict[str, int], moved: dict[str, _Entry]
    ) -> MailItem | Quarantined | None:
        """One entry read: a message, a quarantine entry, or None when it is gone."""
        provider_id = f"{self.name}/{clean(entry.unique)}"
        try:
            if not stat.S_ISREG(entry.mode):  # never opened: a link, a FIFO, ...
                raise NotRegularFile(kind(entry.mode))
            data = self._read(entry, fds, moved)
        except (OSError, TooLarge) as exc:  # this entry only
            return unreadable(provider_id, exc)
        if data is None:
            return None
        return read_message(data, provider_id, file_time(entry.mtime_ns), limits=self.limits)

    @staticmethod
    def _cursor(last: tuple[int, str], stamps: list[int] | None) -> Cursor:
        return Cursor(json.dumps({"c": last[0], "n": last[1], "d": stamps}))


class EmlFolder(MaildirFolder):
    """A folder of ``.eml`` files (one message a file, e.g. saved from a mail client), read
    like one Maildir folder: the same safe reads, order and cursor. A file that is not a
    message is quarantined with its reason."""

    SUBS = (".",)
    OPTION = "--eml"
