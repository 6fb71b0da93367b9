"""An mbox archive (the format of a Google Takeout export) as a mail source.

An mbox is append-only: the cursor is the number of messages read plus a fingerprint of
the file's head (its first :attr:`MboxArchive.HEAD` bytes), so a rewritten file is read
again (:class:`CursorExpired`), and the file's size and mtime, so a poll of an unchanged
archive reads nothing. Messages are located first (:func:`mbox_starts`, as Python's
``mailbox.mbox`` splits them) and read one by one at their offsets.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from syncd.batching import by_size
from syncd.config import LimitSettings
from syncd.connectors.base import ConnectorError, CursorExpired, too_large
from syncd.connectors.local.files import (
    READ_FLAGS,
    Odd,
    file_time,
    kind,
    mail_batch,
    mbox_starts,
    skipped_once,
)
from syncd.connectors.mime import read_message
from syncd.items import Batch, Cursor, MailItem, Quarantined


class MboxArchive:
    """An mbox file, read in order and resumed by message count.

    The file is opened once a pass without following a link and without waiting (a FIFO);
    anything but a regular file is quarantined once and not read. Messages are located
    first and read one by one at their offsets: one over ``limits.message_bytes`` is
    quarantined by its size without being read."""

    HEAD = 65536

    def __init__(
        self, name: str, path: Path, batch_size: int, limits: LimitSettings | None = None
    ) -> None:
        self.name = name
        self.path = path
        self.batch_size = batch_size
        self.limits = limits or LimitSettings()

    def _open(self) -> int:
        try:
            fd = os.open(self.path, READ_FLAGS)
        except FileNotFoundError:
            raise ConnectorError(
                f"mbox file {str(self.path)!r} does not exist; check the path given to --mbox"
            ) from None
        except OSError as exc:
            what = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise Odd(f"mbox file {self.name}: {what}: not read") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise Odd(f"mbox file {self.name}: {kind(mode)}, not a regular file: not read")
        return fd

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state: dict[str, Any] = json.loads(cursor.value) if cursor else {}
        try:
            fd = self._open()
        except Odd as odd:
            skipped = skipped_once(state, str(odd), self.name)
            if skipped is not None:
                yield skipped
            return
        try:
            yield from self._changes(fd, state)
        finally:
            os.close(fd)

    def _resume(self, state: dict[str, Any], size: int, mtime_ns: int, head: str) -> int | None:
        """How many messages were read before; None when the file has not changed since.
        Raises :class:`CursorExpired` when it was rewritten rather than appended to."""
        if "count" not in state:
            return 0
        old_size = int(state["size"])
        if old_size == size and state["mtime"] == mtime_ns:
            return None  # unchanged since the last sync: no scan of a large archive
        if 0 <= size < old_size or (old_size >= self.HEAD and state["head"] != head):
            raise CursorExpired(f"mbox {str(self.path)!r} was rewritten, not appended to")
        return int(state["count"])

    def _changes(self, fd: int, state: dict[str, Any]) -> Iterator[Batch[MailItem]]:
        st = os.fstat(fd)
        size, mtime_ns = st.st_size, st.st_mtime_ns
        head = hashlib.sha256(os.pread(fd, self.HEAD, 0)).hexdigest()[:32]
        done = self._resume(state, size, mtime_ns, head)
        if done is None:
            return
        starts = mbox_starts(fd, size)
        ends = starts[1:]
        ends.append(size)
        limit = self.limits.message_bytes
        todo = range(done, len(starts))
        sizes = [n if (n := ends[i] - starts[i]) <= limit else 0 for i in todo]
        fallback = file_time(mtime_ns)
        for first, end in by_size(sizes, self.batch_size, self.limits.batch_bytes):
            results = [
                self._message(fd, i, starts[i], ends[i] - starts[i], fallback)
                for i in todo[first:end]
            ]
            count = done + end
            final = count == len(starts)
            cursor = {
                "count": count,
                "head": head,
                # the size is only a promise of "nothing new" once everything is read
                "size": size if final else -1,
                "mtime": mtime_ns if final else -1,
            }
            yield mail_batch(results, Cursor(json.dumps(cursor)))

    def _message(
        self, fd: int, i: int, start: int, length: int, fallback: datetime
    ) -> MailItem | Quarantined:
        """The ``i``-th message, ``length`` bytes from ``start`` (its From_ line first)."""
        provider_id = f"{self.name}/{i}"
        limit = self.limits.message_bytes
        if length > limit:
            return Quarantined(provider_id, too_large(length, limit))
        data = os.pread(fd, length, start)
        if data.endswith(b"\n\n"):
            data = data[:-1]  # the blank line before the next From_ line
        data = data.partition(b"\n")[2]  # the From_ line is the mbox's, not the message's
        return read_message(data, provider_id, fallback, limits=self.limits)
