"""The local mailbox, syncd's embedded default: a Maildir, mbox archives and a vdir calendar.

- Maildir (``cur/``, ``new/``) with Maildir++ subfolders (``.Sent``, ``.Archive``): each
  folder is a source. Its cursor is the (ctime, unique name) of the last message stored.
  ctime, unlike mtime, cannot be set back: a message copied or moved into the folder with
  its old date (as Dovecot does for INTERNALDATE) still sorts after the cursor. A rename
  (``new/`` -> ``cur/``, a flag) re-reads a message once; its key makes that a no-op. The
  cursor never passes the last second before a scan, so a file renamed in during the scan
  is read on the next one. A poll of an unchanged folder stats two directories and lists
  nothing (``new/`` and ``cur/`` keep their mtimes until something is added, renamed or
  removed).
- mbox (the format of a Google Takeout export): append-only; the cursor is the number of
  messages read plus a fingerprint of the file's head, so a rewritten file is read again.
- vdir calendar (a folder of ``.ics`` files, as khal and vdirsyncer keep them): meetings,
  and syncd's follow-up tasks, written as VTODO files named after their UID.

Anyone who can write into these folders is not trusted (:mod:`syncd.connectors.local.files`):
only regular files are read, never through a symbolic link and never over
``limits.message_bytes``; anything else is quarantined with its reason (no bytes) and the
source reads on. Batches are cut to hold at most ``limits.batch_bytes`` of raw data.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from syncd.batching import by_size
from syncd.config import LimitSettings
from syncd.connectors.base import (
    CalendarSource,
    ConnectorError,
    CursorExpired,
    MailboxSpec,
    MailSource,
    TaskWriter,
    too_large,
)
from syncd.connectors.ical import (
    UnreadableCalendar,
    describe,
    quarantined,
    read_calendar,
    task_to_ical,
)
from syncd.connectors.kind import typed
from syncd.connectors.local import LocalSettings
from syncd.connectors.local.files import (
    DIR_FLAGS,
    READ_FLAGS,
    NotRegularFile,
    Odd,
    TooLarge,
    kind,
    mbox_starts,
    open_dir,
    read_regular,
    write_replacing,
)
from syncd.connectors.mime import clean, read_message
from syncd.items import Batch, Cursor, MailItem, MeetingItem, Quarantined, TaskItem, TaskState

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._@-]")


def _mtime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _unreadable(provider_id: str, exc: Exception) -> Quarantined:
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


def _once(state: dict[str, Any], reason: str, provider_id: str) -> Batch[MailItem] | None:
    """The batch that quarantines a folder or file not read, once: its cursor keeps what
    the source had read (``c``/``n`` or ``count``) and remembers the reason; the source
    reads on from there once the entry is fixed."""
    if state.get("skipped") == reason:
        return None
    kept = {**state, "skipped": reason, "d": None, "size": -1, "mtime": -1}
    return Batch((), Cursor(json.dumps(kept)), quarantined=(Quarantined(provider_id, reason),))


def _batch(results: list[MailItem | Quarantined], cursor: Cursor) -> Batch[MailItem]:
    return Batch(
        items=tuple(r for r in results if isinstance(r, MailItem)),
        cursor=cursor,
        quarantined=tuple(r for r in results if isinstance(r, Quarantined)),
    )


def _message(
    data: bytes, provider_id: str, when: datetime, limits: LimitSettings
) -> MailItem | Quarantined:
    return read_message(data, provider_id, when, limits=limits)


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
                f"Maildir folder {str(self.path)!r} does not exist; check the path given "
                "to --maildir"
            ) from None
        except Odd as odd:
            raise Odd(f"the folder {odd}: not read") from None
        fds: dict[str, int] = {}
        try:
            for sub in ("new", "cur"):
                try:
                    fds[sub] = open_dir(sub, dir_fd=folder)
                except FileNotFoundError:
                    raise ConnectorError(
                        f"Maildir folder {str(self.path)!r} has no {sub}/ directory; "
                        "check the path given to --maildir"
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

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state: dict[str, Any] = json.loads(cursor.value) if cursor is not None else {}
        # a cursor of a folder once quarantined has only what had been read before
        after, quiet = (int(state.get("c", 0)), str(state.get("n", ""))), state.get("d")
        settled = time.time_ns() - 1_000_000_000
        try:
            fds = self._open()
        except Odd as odd:
            skipped = _once(state, f"Maildir folder {self.name}: {odd}", self.name)
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
        stamps = [os.fstat(fds[sub]).st_mtime_ns for sub in ("new", "cur")]
        if quiet is not None and quiet == stamps:
            return  # nothing delivered, renamed or deleted since a settled scan: no listing
        # directory stamps are trusted next time only once they are a second old
        trusted = stamps if max(stamps) < settled else None
        pending = [e for e in self._listing(fds) if (e.ctime_ns, e.unique) > after]
        if not pending:
            if trusted != quiet:
                yield _batch([], self._cursor(after, trusted))
            return
        limit = self.limits.message_bytes
        moved: dict[str, _Entry] = {}
        sizes = [e.size if e.size <= limit and stat.S_ISREG(e.mode) else 0 for e in pending]
        for start, end in by_size(sizes, self.batch_size, self.limits.batch_bytes):
            chunk = pending[start:end]
            results: list[MailItem | Quarantined] = []
            for entry in chunk:
                provider_id = f"{self.name}/{clean(entry.unique)}"
                try:
                    if not stat.S_ISREG(entry.mode):  # never opened: a link, a FIFO, ...
                        raise NotRegularFile(kind(entry.mode))
                    data = self._read(entry, fds, moved)
                except (OSError, TooLarge) as exc:  # this entry only
                    results.append(_unreadable(provider_id, exc))
                    continue
                if data is not None:
                    results.append(_message(data, provider_id, _mtime(entry.mtime_ns), self.limits))
            newest = (chunk[-1].ctime_ns, chunk[-1].unique)
            last = max(after, min(newest, (settled, "")))
            final = end == len(pending) and last == newest
            yield _batch(results, self._cursor(last, trusted if final else None))

    @staticmethod
    def _cursor(last: tuple[int, str], stamps: list[int] | None) -> Cursor:
        return Cursor(json.dumps({"c": last[0], "n": last[1], "d": stamps}))


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
            skipped = _once(state, str(odd), self.name)
            if skipped is not None:
                yield skipped
            return
        try:
            yield from self._changes(fd, state)
        finally:
            os.close(fd)

    def _changes(self, fd: int, state: dict[str, Any]) -> Iterator[Batch[MailItem]]:
        st = os.fstat(fd)
        size, mtime_ns = st.st_size, st.st_mtime_ns
        head = hashlib.sha256(os.pread(fd, self.HEAD, 0)).hexdigest()[:32]
        done = 0
        if "count" in state:
            old_size = int(state["size"])
            if old_size == size and state["mtime"] == mtime_ns:
                return  # unchanged since the last sync: no scan of a large archive
            if 0 <= size < old_size or (old_size >= self.HEAD and state["head"] != head):
                raise CursorExpired(f"mbox {str(self.path)!r} was rewritten, not appended to")
            done = int(state["count"])
        starts = mbox_starts(fd, size)
        ends = starts[1:]
        ends.append(size)
        limit = self.limits.message_bytes
        todo = range(done, len(starts))
        sizes = [n if (n := ends[i] - starts[i]) <= limit else 0 for i in todo]
        fallback = _mtime(mtime_ns)
        for first, end in by_size(sizes, self.batch_size, self.limits.batch_bytes):
            results: list[MailItem | Quarantined] = []
            for i in todo[first:end]:
                provider_id = f"{self.name}/{i}"
                length = ends[i] - starts[i]
                if length > limit:
                    results.append(Quarantined(provider_id, too_large(length, limit)))
                    continue
                data = os.pread(fd, length, starts[i])
                if data.endswith(b"\n\n"):
                    data = data[:-1]  # the blank line before the next From_ line
                data = data.partition(b"\n")[2]  # the From_ line is the mbox's, not the message's
                results.append(_message(data, provider_id, fallback, self.limits))
            count = done + end
            final = count == len(starts)
            cursor = {
                "count": count,
                "head": head,
                # the size is only a promise of "nothing new" once everything is read
                "size": size if final else -1,
                "mtime": mtime_ns if final else -1,
            }
            yield _batch(results, Cursor(json.dumps(cursor)))


@dataclass
class _FileState:
    etag: str
    uids: list[str]
    recurring: bool


class VdirCalendar:
    """A vdir: one calendar as a folder of ``.ics`` files.

    Every ``.ics`` entry is listed by its own metadata (lstat) and read relative to the
    folder, without following a link: a link, a FIFO, a device or a directory is
    quarantined with its reason and never opened, and a file over
    ``limits.message_bytes`` is quarantined by its size without being read."""

    name = "calendar"

    def __init__(
        self,
        path: Path,
        batch_size: int,
        past_days: int,
        future_days: int,
        limits: LimitSettings | None = None,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.past = timedelta(days=past_days)
        self.future = timedelta(days=future_days)
        self.limits = limits or LimitSettings()

    def _open(self) -> int:
        try:
            return os.open(self.path, DIR_FLAGS)
        except FileNotFoundError:
            raise ConnectorError(
                f"calendar folder {str(self.path)!r} does not exist; check --calendar"
            ) from None
        except NotADirectoryError:
            raise ConnectorError(
                f"calendar folder {str(self.path)!r} is not a directory; check --calendar"
            ) from None

    def _etags(self, folder: int) -> dict[str, tuple[str, int, int]]:
        """name -> (etag, size, mode) of every ``.ics`` entry."""
        found = {}
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".ics") and not entry.name.startswith("."):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we looked
                    etag = f"{st.st_mtime_ns}:{st.st_size}"
                    found[entry.name] = (etag, st.st_size, st.st_mode)
        return found

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        folder = self._open()
        try:
            yield from self._changes(folder, cursor)
        finally:
            os.close(folder)

    def _read(self, folder: int, name: str, mode: int) -> bytes:
        if not stat.S_ISREG(mode):  # never opened: a link, a FIFO, a device, a directory
            raise NotRegularFile(kind(mode))
        return read_regular(name, self.limits.message_bytes, dir_fd=folder)

    def _changes(self, folder: int, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        now = datetime.now(UTC)
        window = (now - self.past, now + self.future)
        today = now.date().isoformat()
        known: dict[str, _FileState] = {}
        day = ""
        if cursor is not None:
            state = json.loads(cursor.value)
            known = {k: _FileState(*v) for k, v in state["files"].items()}
            day = state["day"]
        listed = self._etags(folder)
        current = {name: etag for name, (etag, _, _) in listed.items()}
        todo = sorted(
            name
            for name, etag in current.items()
            if name not in known
            or known[name].etag != etag
            or (known[name].recurring and day != today)  # the window moved on
        )
        gone = sorted(set(known) - set(current))
        if not todo and not gone and cursor is not None:
            return
        files = dict(known)

        def cursor_now() -> Cursor:
            return Cursor(
                json.dumps(
                    {
                        "day": today,
                        "files": {
                            k: [v.etag, v.uids, v.recurring] for k, v in sorted(files.items())
                        },
                    }
                )
            )

        limit = self.limits.message_bytes
        sizes = [
            listed[n][1] if listed[n][1] <= limit and stat.S_ISREG(listed[n][2]) else 0
            for n in todo
        ]
        runs = list(by_size(sizes, self.batch_size, self.limits.batch_bytes)) or [(0, 0)]
        for start, end in runs:
            meetings: list[MeetingItem] = []
            states: list[TaskState] = []
            quarantine: list[Quarantined] = []
            for name in todo[start:end]:
                provider_id = clean(name)
                try:
                    data = self._read(folder, name, listed[name][2])
                except FileNotFoundError:
                    continue
                except (OSError, TooLarge) as exc:  # this entry only
                    quarantine.append(_unreadable(f"calendar/{provider_id}", exc))
                    files[name] = _FileState(current[name], [], False)
                    continue
                try:
                    read = read_calendar(data, provider_id, window, limits=self.limits)
                except Exception as exc:  # UnreadableCalendar, or whatever a parser raised
                    reason = str(exc) if isinstance(exc, UnreadableCalendar) else describe(exc)
                    quarantine.append(quarantined(f"calendar/{provider_id}", reason, data, "ical"))
                    files[name] = _FileState(current[name], [], False)
                    continue
                if read.problems:  # the events that could be read are logged all the same
                    reason = "; ".join(read.problems)
                    quarantine.append(quarantined(f"calendar/{provider_id}", reason, data, "ical"))
                meetings.extend(read.meetings)
                states.extend(read.task_states)
                recurring = b"RRULE" in data or b"RDATE" in data
                files[name] = _FileState(current[name], sorted(read.uids), recurring)
            last = end == len(todo)
            removed: list[str] = []
            if last:
                for name in gone:
                    state = files.pop(name)
                    removed.extend(state.uids)
                    # a syncd task whose file the user deleted is dismissed
                    states.extend(
                        TaskState(uid, "cancelled")
                        for uid in state.uids
                        if uid.startswith("syncd-")
                    )
            yield Batch(
                items=tuple(meetings),
                cursor=cursor_now(),
                quarantined=tuple(quarantine),
                removed=tuple(u for u in removed if not u.startswith("syncd-")),
                task_states=tuple(states),
            )


class VdirTaskWriter:
    """Writes follow-up tasks as VTODO files into the vdir, one file per task uid.

    Each file is written to a new temp file of an unpredictable name, created with
    ``O_EXCL | O_NOFOLLOW`` inside the folder (never through a link planted there), then
    renamed over the task's name: a reader never sees half a task, and a link planted at
    the task's own name is replaced, never written through."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, task: TaskItem) -> str:
        name = _SAFE_NAME.sub("_", task.uid) + ".ics"
        write_replacing(self.path, name, task_to_ical(task))
        return name


class LocalConnector:
    """``kind = "local"``: settings ``maildir`` (required), ``calendar``, ``mbox`` (a list)."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = typed(spec.settings, LocalSettings)
        self.maildir = s.maildir.expanduser() if s.maildir else None
        self.calendar = s.calendar.expanduser() if s.calendar else None
        self.mboxes = [p.expanduser() for p in s.mbox]
        self.excluded_folders = {f.lower() for f in s.excluded_folders}

    def mail_sources(self) -> list[MailSource]:
        sources: list[MailSource] = []
        if self.maildir is not None:
            if not (self.maildir / "cur").is_dir():
                raise ConnectorError(
                    f"mailbox {self.spec.name!r}: {str(self.maildir)!r} is not a Maildir "
                    "(no cur/ inside); point --maildir at the folder holding cur/, new/ and tmp/"
                )
            limits, size = self.spec.limits, self.spec.batch_size
            sources.append(MaildirFolder("maildir:INBOX", self.maildir, size, limits))
            with os.scandir(self.maildir) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                folder = clean(entry.name[1:])  # a name that is not UTF-8 is stored readable
                if (
                    entry.name.startswith(".")
                    # a link is listed too (by where it points, a stat only): the folder
                    # quarantines it, never reads through it
                    and os.path.isdir(os.path.join(entry.path, "cur"))
                    and folder.lower() not in self.excluded_folders
                    and folder.rsplit(".", 1)[-1].lower() not in self.excluded_folders
                ):
                    path = Path(entry.path)
                    sources.append(
                        MaildirFolder(f"maildir:{folder}", path, size, limits, follow=False)
                    )
        for path in self.mboxes:
            sources.append(
                MboxArchive(
                    f"mbox:{clean(path.name)}", path, self.spec.batch_size, self.spec.limits
                )
            )
        return sources

    def calendar_sources(self) -> list[CalendarSource]:
        if self.calendar is None:
            return []
        s = typed(self.spec.settings, LocalSettings)
        return [
            VdirCalendar(
                self.calendar,
                self.spec.batch_size,
                s.calendar_past_days,
                s.calendar_future_days,
                self.spec.limits,
            )
        ]

    def task_writer(self) -> TaskWriter | None:
        return VdirTaskWriter(self.calendar) if self.calendar is not None else None

    def close(self) -> None:
        pass
