"""A vdir calendar (a folder of ``.ics`` files, as khal and vdirsyncer keep them) as a
calendar source of meetings, and syncd's follow-up tasks written into it as VTODO files
named after their UID.

The cursor holds, for every file read, its etag (mtime and size), the UIDs it held and
whether it recurs, and the day of the scan: a changed file is read again, a removed one
removes its meetings (and dismisses the syncd task it held), and a recurring one is read
again each day, as the window moves on.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncd.batching import by_size
from syncd.config import LimitSettings
from syncd.connectors.base import ConnectorError
from syncd.connectors.ical import (
    UnreadableCalendar,
    describe,
    quarantined,
    read_calendar,
    task_to_ical,
)
from syncd.connectors.local.files import (
    DIR_FLAGS,
    NotRegularFile,
    TooLarge,
    kind,
    read_regular,
    unreadable,
    write_replacing,
)
from syncd.connectors.mime import clean
from syncd.connectors.taskevents import is_task_uid
from syncd.items import Batch, Cursor, MeetingItem, Quarantined, TaskItem, TaskState

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._@-]")


@dataclass
class _FileState:
    etag: str
    uids: list[str]
    recurring: bool


@dataclass(frozen=True)
class _Listed:
    etag: str  # "mtime_ns:size", of the entry itself (lstat)
    size: int
    mode: int


@dataclass
class _Read:
    """What the files of one batch gave."""

    meetings: list[MeetingItem] = field(default_factory=list)
    states: list[TaskState] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)


def _known(cursor: Cursor | None) -> tuple[dict[str, _FileState], str]:
    """The files read before, and the day they were read on."""
    if cursor is None:
        return {}, ""
    state = json.loads(cursor.value)
    return {k: _FileState(*v) for k, v in state["files"].items()}, state["day"]


def _cursor(day: str, files: dict[str, _FileState]) -> Cursor:
    kept = {k: [v.etag, v.uids, v.recurring] for k, v in sorted(files.items())}
    return Cursor(json.dumps({"day": day, "files": kept}))


def _to_read(listed: dict[str, _Listed], known: dict[str, _FileState], new_day: bool) -> list[str]:
    """The files to read: new ones, changed ones, and, on a new day, recurring ones (the
    window moved on)."""
    return sorted(
        name
        for name, entry in listed.items()
        if name not in known
        or known[name].etag != entry.etag
        or (known[name].recurring and new_day)
    )


def _forget(gone: list[str], files: dict[str, _FileState], read: _Read) -> list[str]:
    """Drop the files removed since from ``files``: the UIDs of the meetings they held
    (removed), and syncd's tasks among them dismissed (the user deleted the task's file)."""
    removed: list[str] = []
    for name in gone:
        state = files.pop(name)
        removed.extend(u for u in state.uids if not is_task_uid(u))
        read.states.extend(TaskState(uid, "cancelled") for uid in state.uids if is_task_uid(uid))
    return removed


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

    def _listing(self, folder: int) -> dict[str, _Listed]:
        """Every ``.ics`` entry, by its own metadata."""
        found = {}
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".ics") and not entry.name.startswith("."):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we looked
                    etag = f"{st.st_mtime_ns}:{st.st_size}"
                    found[entry.name] = _Listed(etag, st.st_size, st.st_mode)
        return found

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        folder = self._open()
        try:
            yield from self._changes(folder, cursor)
        finally:
            os.close(folder)

    def _changes(self, folder: int, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        now = datetime.now(UTC)
        window = (now - self.past, now + self.future)
        today = now.date().isoformat()
        known, day = _known(cursor)
        listed = self._listing(folder)
        todo = _to_read(listed, known, day != today)
        gone = sorted(set(known) - set(listed))
        if not todo and not gone and cursor is not None:
            return
        files = dict(known)
        runs = list(by_size(self._sizes(listed, todo), self.batch_size, self.limits.batch_bytes))
        for start, end in runs or [(0, 0)]:
            read = _Read()
            for name in todo[start:end]:
                state = self._read_file(folder, name, listed[name], window, read)
                if state is not None:
                    files[name] = state
            removed = _forget(gone, files, read) if end == len(todo) else []
            yield Batch(
                items=tuple(read.meetings),
                cursor=_cursor(today, files),
                quarantined=tuple(read.quarantine),
                removed=tuple(removed),
                task_states=tuple(read.states),
            )

    def _sizes(self, listed: dict[str, _Listed], names: list[str]) -> list[int]:
        """The bytes each file adds to a batch: none for one that is never read."""
        limit = self.limits.message_bytes
        entries = [listed[n] for n in names]
        return [e.size if e.size <= limit and stat.S_ISREG(e.mode) else 0 for e in entries]

    def _read_file(
        self,
        folder: int,
        name: str,
        entry: _Listed,
        window: tuple[datetime, datetime],
        read: _Read,
    ) -> _FileState | None:
        """Read one file into ``read``; what the cursor keeps of it (None: it is gone)."""
        provider_id = clean(name)
        where = f"calendar/{provider_id}"
        try:
            if not stat.S_ISREG(entry.mode):  # never opened: a link, a FIFO, a directory
                raise NotRegularFile(kind(entry.mode))
            data = read_regular(name, self.limits.message_bytes, dir_fd=folder)
        except FileNotFoundError:
            return None
        except (OSError, TooLarge) as exc:  # this entry only
            read.quarantine.append(unreadable(where, exc))
            return _FileState(entry.etag, [], False)
        try:
            found = read_calendar(data, provider_id, window, limits=self.limits)
        except Exception as exc:  # UnreadableCalendar, or whatever a parser raised
            reason = str(exc) if isinstance(exc, UnreadableCalendar) else describe(exc)
            read.quarantine.append(quarantined(where, reason, data, "ical"))
            return _FileState(entry.etag, [], False)
        if found.problems:  # the events that could be read are logged all the same
            read.quarantine.append(quarantined(where, "; ".join(found.problems), data, "ical"))
        read.meetings.extend(found.meetings)
        read.states.extend(found.task_states)
        recurring = b"RRULE" in data or b"RDATE" in data
        return _FileState(entry.etag, sorted(found.uids), recurring)


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
