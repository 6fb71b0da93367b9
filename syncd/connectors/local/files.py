"""Reading and writing files in folders other people can write to (a Maildir, a calendar
folder, an mbox archive), so that nothing planted there can redirect syncd.

- Reads: a file is opened relative to the directory syncd opened (``openat``), without
  following a symbolic link, without waiting (a FIFO) and without becoming a controlling
  terminal (a tty); only a regular file is read, and only up to a size limit, checked on
  the open file (``fstat``) and again while it is read.
- Writes: a new temp file of an unpredictable name is created with ``O_EXCL | O_NOFOLLOW``
  in the target folder, then renamed over the target name; ``rename`` replaces a link
  found there, it never writes through one.
- What a source makes of a file or folder it does not read (the Maildir folders, the mbox
  archives and the vdir calendar alike): a quarantine entry with the reason and no bytes
  (:func:`unreadable`), once for a whole folder or archive (:func:`skipped_once`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncd.connectors.base import too_large
from syncd.connectors.reasons import describe
from syncd.items import Batch, Cursor, MailItem, Quarantined

# a file is opened without following a link, without waiting (a FIFO), and never becomes
# the controlling terminal (a tty device)
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class NotRegularFile(OSError):
    """A directory entry that is no regular file: a symbolic link, a FIFO, a device..."""


class TooLarge(Exception):
    """A file over ``limits.message_bytes``: never read."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(too_large(size, limit))


def kind(mode: int) -> str:
    """What a file mode (``st_mode``) is, for a reason: "a symbolic link", "a FIFO"..."""
    for test, what in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def read_regular(name: str | Path, limit: int, dir_fd: int | None = None) -> bytes:
    """A file's bytes, only if it is a regular file of at most ``limit`` bytes. A symbolic
    link is never followed (it could point anywhere, such as syncd's own key), a FIFO is
    never waited on, and a file over the limit is never read: its size is the open file's
    (fstat), and a file that grows while it is read stops at the limit. ``name`` is relative
    to ``dir_fd`` when given, so it is always inside the directory syncd opened."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile("a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(kind(st.st_mode))
        if st.st_size > limit:
            raise TooLarge(st.st_size, limit)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise TooLarge(total, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Odd(Exception):
    """A folder, or an mbox file, that is not read at all: the reason says why."""


def open_dir(name: str | Path, dir_fd: int | None = None, follow: bool = False) -> int:
    """A directory opened for listing; a symbolic link (unless ``follow``) or anything
    else is :class:`Odd`; a missing one raises FileNotFoundError."""
    try:
        return os.open(name, DIR_FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=dir_fd)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link (O_NOFOLLOW), or no directory
            try:
                mode = os.lstat(name, dir_fd=dir_fd).st_mode
            except OSError:
                mode = 0
            raise Odd(f"is {kind(mode)}" if mode else "is not a directory") from None
        raise Odd(f"cannot be read ({exc.strerror})") from None


def mbox_starts(fd: int, size: int) -> array[int]:
    """The offsets of the messages of an mbox: of every line that starts with ``From ``
    (as Python's ``mailbox.mbox`` reads it). Read by blocks, so a file without a newline
    never becomes one huge line in memory."""
    starts = array("q")
    block = 1 << 20
    carry = b""
    pos = 0
    while pos < size:
        data = os.pread(fd, min(block, size - pos), pos)
        if not data:
            break
        text = carry + data
        base = pos - len(carry)
        if base == 0 and text.startswith(b"From "):
            starts.append(0)
        i = text.find(b"\nFrom ")
        while i >= 0:
            starts.append(base + i + 1)
            i = text.find(b"\nFrom ", i + 1)
        carry = text[-5:]  # a match needs 6 bytes: none lies wholly inside the carry
        pos += len(data)
    return starts


def _temp(folder: int) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        name = f".syncd-{secrets.token_hex(12)}.tmp"
        try:
            return os.open(name, flags, 0o666, dir_fd=folder), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp name", ".syncd-*.tmp")


def write_replacing(folder_path: str | Path, name: str, data: bytes) -> None:
    """Write ``data`` as ``name`` in the folder, atomically (a reader never sees half of
    it), through a new temp file there; a link at ``name`` is replaced, never followed."""
    folder = os.open(folder_path, DIR_FLAGS)
    try:
        fd, temp = _temp(folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=folder)
            raise
    finally:
        os.close(folder)


# --- what a source makes of what it does not read -------------------------------------------


def file_time(ns: int) -> datetime:
    """A file time (``st_mtime_ns``) in UTC: a message's date when it has none of its own."""
    return datetime.fromtimestamp(ns / 1e9, UTC)


def unreadable(provider_id: str, exc: Exception) -> Quarantined:
    """A file that is not read: its reason, never its path as the OS spells it (which may
    hold what is not UTF-8) nor anything read from it."""
    if isinstance(exc, TooLarge):
        reason = str(exc)
    elif isinstance(exc, NotRegularFile):
        reason = f"{exc}, not a regular file: not read (syncd reads only regular files)"
    else:
        reason = "cannot read the file"
        if isinstance(exc, OSError) and exc.strerror:
            reason += f": {exc.strerror}"
        else:
            reason += f": {describe(exc)}"
    return Quarantined(provider_id, reason)


def skipped_once(state: dict[str, Any], reason: str, provider_id: str) -> Batch[MailItem] | None:
    """The batch that quarantines a folder or file not read, once: its cursor keeps what
    the source had read (``c``/``n`` or ``count``) and remembers the reason; the source
    reads on from there once the entry is fixed."""
    if state.get("skipped") == reason:
        return None
    kept = {**state, "skipped": reason, "d": None, "size": -1, "mtime": -1}
    return Batch((), Cursor(json.dumps(kept)), quarantined=(Quarantined(provider_id, reason),))


def mail_batch(results: list[MailItem | Quarantined], cursor: Cursor) -> Batch[MailItem]:
    """A batch of the messages read and the entries quarantined, in one list."""
    return Batch(
        items=tuple(r for r in results if isinstance(r, MailItem)),
        cursor=cursor,
        quarantined=tuple(r for r in results if isinstance(r, Quarantined)),
    )
