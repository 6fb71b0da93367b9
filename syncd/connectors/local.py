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
"""

from __future__ import annotations

import hashlib
import json
import mailbox
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncd.connectors.base import (
    CalendarSource,
    ConnectorError,
    CursorExpired,
    MailboxSpec,
    MailSource,
    TaskWriter,
)
from syncd.connectors.ical import UnreadableCalendar, read_calendar, task_to_ical
from syncd.connectors.mime import UnreadableMessage, parse_message
from syncd.items import Batch, Cursor, MailItem, MeetingItem, Quarantined, TaskItem, TaskState

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._@-]")


def _mtime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _read_mail(data: bytes, provider_id: str, fallback: datetime) -> MailItem | Quarantined:
    try:
        return parse_message(data, provider_id, fallback)
    except UnreadableMessage as exc:
        return Quarantined(provider_id, str(exc))


def _batch(results: list[MailItem | Quarantined], cursor: Cursor) -> Batch[MailItem]:
    return Batch(
        items=tuple(r for r in results if isinstance(r, MailItem)),
        cursor=cursor,
        quarantined=tuple(r for r in results if isinstance(r, Quarantined)),
    )


class MaildirFolder:
    """One Maildir folder (``cur/`` + ``new/``) as a mail source."""

    def __init__(self, name: str, path: Path, batch_size: int) -> None:
        self.name = name
        self.path = path
        self.batch_size = batch_size

    def _listing(self) -> list[tuple[int, str, str, int]]:
        """(ctime_ns, unique name, path, mtime_ns) of every message, in ctime order."""
        entries = []
        for sub in ("new", "cur"):
            try:
                with os.scandir(self.path / sub) as it:
                    for entry in it:
                        if entry.name.startswith("."):
                            continue
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            continue  # moved or deleted while we looked
                        unique = entry.name.split(":", 1)[0]
                        entries.append((st.st_ctime_ns, unique, entry.path, st.st_mtime_ns))
            except FileNotFoundError:
                raise ConnectorError(
                    f"Maildir folder {str(self.path)!r} has no {sub}/ directory; "
                    "check the path given to --maildir"
                ) from None
        entries.sort()
        return entries

    def _read(self, path: str, unique: str, moved: dict[str, str]) -> bytes | None:
        """The message's bytes; ``moved`` is filled, once a scan, by the first file that a
        mail client renamed (new/ -> cur/, flags) since the listing."""
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            pass
        if not moved:
            moved.update({u: p for _, u, p, _ in self._listing()} or {"": ""})
        try:
            return Path(moved[unique]).read_bytes() if unique in moved else None
        except FileNotFoundError:
            return None  # deleted since the listing: nothing to log

    def _stamps(self) -> list[int]:
        """The mtimes of new/ and cur/: any delivery, rename or deletion changes one."""
        try:
            return [os.stat(self.path / sub).st_mtime_ns for sub in ("new", "cur")]
        except FileNotFoundError:
            raise ConnectorError(
                f"Maildir folder {str(self.path)!r} has no new/ or cur/ directory; "
                "check the path given to --maildir"
            ) from None

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        after, quiet = (0, ""), None
        if cursor is not None:
            state = json.loads(cursor.value)
            after, quiet = (int(state["c"]), str(state["n"])), state.get("d")
        settled = time.time_ns() - 1_000_000_000
        stamps = self._stamps()
        if quiet is not None and quiet == stamps:
            return  # nothing delivered, renamed or deleted since a settled scan: no listing
        # directory stamps are trusted next time only once they are a second old
        trusted = stamps if max(stamps) < settled else None
        pending = [e for e in self._listing() if (e[0], e[1]) > after]
        if not pending:
            if trusted != quiet:
                yield _batch([], self._cursor(after, trusted))
            return
        moved: dict[str, str] = {}
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            results: list[MailItem | Quarantined] = []
            for _ctime, unique, path, mtime_ns in chunk:
                data = self._read(path, unique, moved)
                if data is not None:
                    results.append(_read_mail(data, f"{self.name}/{unique}", _mtime(mtime_ns)))
            newest = (chunk[-1][0], chunk[-1][1])
            last = max(after, min(newest, (settled, "")))
            final = start + self.batch_size >= len(pending) and last == newest
            yield _batch(results, self._cursor(last, trusted if final else None))

    @staticmethod
    def _cursor(last: tuple[int, str], stamps: list[int] | None) -> Cursor:
        return Cursor(json.dumps({"c": last[0], "n": last[1], "d": stamps}))


class MboxArchive:
    """An mbox file, read in order and resumed by message count."""

    HEAD = 65536

    def __init__(self, name: str, path: Path, batch_size: int) -> None:
        self.name = name
        self.path = path
        self.batch_size = batch_size

    def _fingerprint(self) -> tuple[str, int, int]:
        try:
            st = self.path.stat()
            with self.path.open("rb") as fh:
                head = hashlib.sha256(fh.read(self.HEAD)).hexdigest()[:32]
        except FileNotFoundError:
            raise ConnectorError(
                f"mbox file {str(self.path)!r} does not exist; check the path given to --mbox"
            ) from None
        return head, st.st_size, st.st_mtime_ns

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        head, size, mtime_ns = self._fingerprint()
        done = 0
        if cursor is not None:
            state = json.loads(cursor.value)
            if state["size"] == size and state["mtime"] == mtime_ns:
                return  # unchanged since the last sync: no scan of a large archive
            if size < state["size"] or (state["size"] >= self.HEAD and state["head"] != head):
                raise CursorExpired(f"mbox {str(self.path)!r} was rewritten, not appended to")
            done = int(state["count"])
        box = mailbox.mbox(self.path, create=False)
        try:
            keys = box.keys()
            fallback = _mtime(mtime_ns)
            for start in range(done, len(keys), self.batch_size):
                chunk = keys[start : start + self.batch_size]
                results = [
                    _read_mail(box.get_bytes(k), f"{self.name}/{start + i}", fallback)
                    for i, k in enumerate(chunk)
                ]
                count = start + len(chunk)
                final = count == len(keys)
                state = {
                    "count": count,
                    "head": head,
                    # the size is only a promise of "nothing new" once everything is read
                    "size": size if final else -1,
                    "mtime": mtime_ns if final else -1,
                }
                yield _batch(results, Cursor(json.dumps(state)))
        finally:
            box.close()


@dataclass
class _FileState:
    etag: str
    uids: list[str]
    recurring: bool


class VdirCalendar:
    """A vdir: one calendar as a folder of ``.ics`` files."""

    name = "calendar"

    def __init__(
        self,
        path: Path,
        batch_size: int,
        past_days: int,
        future_days: int,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.past = timedelta(days=past_days)
        self.future = timedelta(days=future_days)

    def _etags(self) -> dict[str, str]:
        if not self.path.is_dir():
            raise ConnectorError(
                f"calendar folder {str(self.path)!r} does not exist; check --calendar"
            )
        found = {}
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.name.endswith(".ics") and not entry.name.startswith("."):
                    st = entry.stat()
                    found[entry.name] = f"{st.st_mtime_ns}:{st.st_size}"
        return found

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        now = datetime.now(UTC)
        window = (now - self.past, now + self.future)
        today = now.date().isoformat()
        known: dict[str, _FileState] = {}
        day = ""
        if cursor is not None:
            state = json.loads(cursor.value)
            known = {k: _FileState(*v) for k, v in state["files"].items()}
            day = state["day"]
        current = self._etags()
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

        for start in range(0, max(len(todo), 1), self.batch_size):
            meetings: list[MeetingItem] = []
            states: list[TaskState] = []
            quarantined: list[Quarantined] = []
            for name in todo[start : start + self.batch_size]:
                try:
                    data = (self.path / name).read_bytes()
                    found, task_states, uids = read_calendar(data, name, window)
                except FileNotFoundError:
                    continue
                except UnreadableCalendar as exc:
                    quarantined.append(Quarantined(f"calendar/{name}", str(exc)))
                    files[name] = _FileState(current[name], [], False)
                    continue
                meetings.extend(found)
                states.extend(task_states)
                recurring = b"RRULE" in data or b"RDATE" in data
                files[name] = _FileState(current[name], sorted(uids), recurring)
            last = start + self.batch_size >= len(todo)
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
                quarantined=tuple(quarantined),
                removed=tuple(u for u in removed if not u.startswith("syncd-")),
                task_states=tuple(states),
            )


class VdirTaskWriter:
    """Writes follow-up tasks as VTODO files into the vdir, one file per task uid."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def put(self, task: TaskItem) -> str:
        name = _SAFE_NAME.sub("_", task.uid) + ".ics"
        tmp = self.path / f".{name}.tmp"
        tmp.write_bytes(task_to_ical(task))
        os.replace(tmp, self.path / name)  # atomic: a reader never sees half a task
        return name


class LocalConnector:
    """``kind = "local"``: settings ``maildir`` (required), ``calendar``, ``mbox`` (a list)."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = spec.settings
        self.maildir = Path(s["maildir"]).expanduser() if s.get("maildir") else None
        self.calendar = Path(s["calendar"]).expanduser() if s.get("calendar") else None
        self.mboxes = [Path(p).expanduser() for p in s.get("mbox", [])]
        self.excluded_folders = {f.lower() for f in s.get("excluded_folders", [])}

    def mail_sources(self) -> list[MailSource]:
        sources: list[MailSource] = []
        if self.maildir is not None:
            if not (self.maildir / "cur").is_dir():
                raise ConnectorError(
                    f"mailbox {self.spec.name!r}: {str(self.maildir)!r} is not a Maildir "
                    "(no cur/ inside); point --maildir at the folder holding cur/, new/ and tmp/"
                )
            sources.append(MaildirFolder("maildir:INBOX", self.maildir, self.spec.batch_size))
            for entry in sorted(self.maildir.iterdir()):
                folder = entry.name[1:]
                if (
                    entry.name.startswith(".")
                    and (entry / "cur").is_dir()
                    and folder.lower() not in self.excluded_folders
                    and folder.rsplit(".", 1)[-1].lower() not in self.excluded_folders
                ):
                    sources.append(MaildirFolder(f"maildir:{folder}", entry, self.spec.batch_size))
        for path in self.mboxes:
            sources.append(MboxArchive(f"mbox:{path.name}", path, self.spec.batch_size))
        return sources

    def calendar_sources(self) -> list[CalendarSource]:
        if self.calendar is None:
            return []
        s = self.spec.settings
        return [
            VdirCalendar(
                self.calendar,
                self.spec.batch_size,
                int(s.get("calendar_past_days", 90)),
                int(s.get("calendar_future_days", 30)),
            )
        ]

    def task_writer(self) -> TaskWriter | None:
        return VdirTaskWriter(self.calendar) if self.calendar is not None else None

    def close(self) -> None:
        pass
