"""The local mailbox, syncd's embedded default: a Maildir, mbox archives and a vdir calendar.

:class:`LocalConnector` names the sources: each Maildir folder (:mod:`.maildir`, the
Maildir itself as INBOX and each Maildir++ subfolder not excluded), each mbox archive
(:mod:`.mbox`), and the vdir calendar with its task writer (:mod:`.vdir`).

Anyone who can write into these folders is not trusted (:mod:`syncd.connectors.local.files`):
only regular files are read, never through a symbolic link and never over
``limits.message_bytes``; anything else is quarantined with its reason (no bytes) and the
source reads on. Batches are cut to hold at most ``limits.batch_bytes`` of raw data.
"""

from __future__ import annotations

import os
from pathlib import Path

from syncd.connectors.base import (
    CalendarSource,
    ConnectorError,
    MailboxSpec,
    MailSource,
    TaskWriter,
)
from syncd.connectors.kind import typed
from syncd.connectors.local import LocalSettings
from syncd.connectors.local.maildir import EmlFolder, MaildirFolder
from syncd.connectors.local.mbox import MboxArchive
from syncd.connectors.local.vdir import VdirCalendar, VdirTaskWriter
from syncd.connectors.mime import clean


class LocalConnector:
    """``kind = "local"``: settings ``maildir``, ``mbox`` and ``eml`` (lists), ``calendar``."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = typed(spec.settings, LocalSettings)
        self.maildir = s.maildir.expanduser() if s.maildir else None
        self.calendar = s.calendar.expanduser() if s.calendar else None
        self.mboxes = [p.expanduser() for p in s.mbox]
        self.emls = [p.expanduser() for p in s.eml]
        self.excluded_folders = {f.lower() for f in s.excluded_folders}

    def mail_sources(self) -> list[MailSource]:
        sources: list[MailSource] = []
        if self.maildir is not None:
            sources.extend(self._maildir_folders(self.maildir))
        for path in self.mboxes:
            sources.append(
                MboxArchive(
                    f"mbox:{clean(path.name)}", path, self.spec.batch_size, self.spec.limits
                )
            )
        for path in self.emls:
            sources.append(
                EmlFolder(
                    f"eml:{clean(path.name)}",
                    path,
                    self.spec.batch_size,
                    self.spec.limits,
                    processes=self.spec.parse_processes,
                )
            )
        return sources

    def _maildir_folders(self, maildir: Path) -> list[MaildirFolder]:
        """The Maildir as INBOX, then its Maildir++ subfolders by name, but the excluded."""
        if not (maildir / "cur").is_dir():
            raise ConnectorError(
                f"mailbox {self.spec.name!r}: {str(maildir)!r} is not a Maildir "
                "(no cur/ inside); point --maildir at the folder holding cur/, new/ and tmp/"
            )
        limits, size = self.spec.limits, self.spec.batch_size
        processes = self.spec.parse_processes
        folders = [MaildirFolder("maildir:INBOX", maildir, size, limits, processes=processes)]
        with os.scandir(maildir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            folder = clean(entry.name[1:])  # a name that is not UTF-8 is stored readable
            if (
                entry.name.startswith(".")
                # a link is listed too (by where it points, a stat only): the folder
                # quarantines it, never reads through it
                and os.path.isdir(os.path.join(entry.path, "cur"))
                and not self._excluded(folder)
            ):
                path = Path(entry.path)
                folders.append(
                    MaildirFolder(
                        f"maildir:{folder}", path, size, limits, follow=False, processes=processes
                    )
                )
        return folders

    def _excluded(self, folder: str) -> bool:
        """An excluded folder, by its whole name or its last part (``Archive.Spam``)."""
        return (
            folder.lower() in self.excluded_folders
            or folder.rsplit(".", 1)[-1].lower() in self.excluded_folders
        )

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
