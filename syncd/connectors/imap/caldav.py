"""CalDAV calendars (the ``caldav`` library): meetings in, follow-up tasks out.

Each calendar of the user is a source. It is read incrementally with sync-collection
(RFC 6578); where a server has no sync tokens the library falls back to comparing ETags,
which syncd sees the same way. Follow-up tasks are written as VTODO with a stable UID into
the first calendar that accepts VTODO, else as a short VEVENT; writing again replaces the
same resource, so a retry never duplicates. syncd's own tasks, read back, are task states
(a task the user completes is done in the CRM), never meetings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from caldav.davclient import DAVClient
from caldav.lib import error as caldav_error

from syncd.connectors.base import AuthError, ConnectorError, MailboxSpec, too_large
from syncd.connectors.ical import (
    UnreadableCalendar,
    describe,
    quarantined,
    read_calendar,
    task_to_ical,
)
from syncd.connectors.imap import ImapSettings
from syncd.connectors.kind import typed
from syncd.connectors.transport import check_url, mask_secret, mask_urls, split_credentials
from syncd.items import Batch, Cursor, MeetingItem, Quarantined, TaskItem, TaskState

log = logging.getLogger("syncd.caldav")


def _path(url: Any) -> str:
    return urlparse(str(url)).path


class CalDavAccount:
    """The CalDAV side of a mailbox: settings ``caldav_url``, ``caldav_login`` (default the
    IMAP login), the mailbox's secret as password.

    The URL is https, or http to this machine only (:func:`check_url`). A login or password
    in it (a row of an older syncd, or edited by hand) is never sent in the URL nor shown:
    it is taken out and ignored: CalDAV logs in with ``caldav_login`` and the mailbox's
    encrypted secret, as it always did."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = typed(spec.settings, ImapSettings)
        self.url = split_credentials(str(s.caldav_url))[0]
        check_url(self.url, f"mailbox {spec.name!r}: --caldav")
        if spec.secret is None:
            raise AuthError(
                f"mailbox {spec.name!r}: no CalDAV password stored; "
                f"run 'syncd mailbox reauth {spec.name}'"
            )
        self.client = DAVClient(
            url=self.url,
            username=s.caldav_login or s.login or spec.user_email,
            password=spec.secret.reveal(),
            timeout=int(s.timeout),
            enable_rfc6764=False,
            require_tls=False,
        )
        self._calendars: list[Any] | None = None

    def _where(self) -> str:
        return f"mailbox {self.spec.name!r}: CalDAV {self.url}"

    def masked(self, exc: BaseException) -> str:
        """An error as it may be shown: the password masked in any form, and any URL's."""
        secret = self.spec.secret.reveal() if self.spec.secret else ""
        return mask_urls(mask_secret(str(exc), secret))

    def calendars(self) -> list[Any]:
        if self._calendars is None:
            try:
                found = list(self.client.principal().calendars())
            except caldav_error.AuthorizationError:
                raise AuthError(
                    f"{self._where()} refused the login; set the right password with "
                    f"'syncd mailbox reauth {self.spec.name}'"
                ) from None
            except (caldav_error.DAVError, OSError) as exc:
                raise ConnectorError(f"{self._where()}: {self.masked(exc)}") from exc
            wanted = typed(self.spec.settings, ImapSettings).calendars
            if wanted:
                found = [c for c in found if c.get_display_name() in wanted]
            self._calendars = found
        return self._calendars

    def sources(self) -> list[CalDavCalendar]:
        s = typed(self.spec.settings, ImapSettings)
        return [
            CalDavCalendar(
                self,
                cal,
                s.calendar_past_days,
                s.calendar_future_days,
                self.spec.batch_size,
            )
            for cal in self.calendars()
        ]

    def close(self) -> None:
        """Close the HTTP connections (a daemon opens an account every pass)."""
        try:
            self.client.close()
        except Exception as exc:  # closing a broken connection: nothing left to do
            log.debug("%s: close failed: %s", self._where(), exc)

    def task_writer(self) -> CalDavTaskWriter | None:
        calendars = self.calendars()
        if not calendars:
            return None
        for cal in calendars:
            try:
                if "VTODO" in cal.get_supported_components():
                    return CalDavTaskWriter(cal, as_event=False)
            except (caldav_error.DAVError, KeyError):
                continue
        return CalDavTaskWriter(calendars[0], as_event=True)


class CalDavCalendar:
    def __init__(
        self,
        account: CalDavAccount,
        calendar: Any,
        past_days: int,
        future_days: int,
        batch_size: int,
    ) -> None:
        self.account = account
        self.calendar = calendar
        self.name = f"caldav:{_path(calendar.url)}"
        self.past = timedelta(days=past_days)
        self.future = timedelta(days=future_days)
        self.batch_size = batch_size

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        state = json.loads(cursor.value) if cursor else {"token": None, "uids": {}, "day": ""}
        now = datetime.now(UTC)
        window = (now - self.past, now + self.future)
        token = state["token"]
        if state.get("day") != now.date().isoformat():
            token = None  # the window moved on: read every object again (keys dedupe)
        try:
            result = self.calendar.get_objects_by_sync_token(sync_token=token, load_objects=True)
        except caldav_error.AuthorizationError:
            raise AuthError(f"{self.account._where()} refused access to {self.name}") from None
        except (caldav_error.DAVError, OSError) as exc:
            raise ConnectorError(f"{self.account._where()}: {self.account.masked(exc)}") from exc
        uids: dict[str, list[str]] = dict(state["uids"])
        objects = [o for o in result if o.url is not None]
        meetings: list[MeetingItem] = []
        states: list[TaskState] = []
        quarantine: list[Quarantined] = []
        for obj in objects:
            href = _path(obj.url)
            try:
                data = obj.data
                raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
            except Exception as exc:  # the library could not load this one object
                quarantine.append(Quarantined(href, f"cannot read the object: {describe(exc)}"))
                continue
            if not raw:
                continue
            limit = self.account.spec.limits.message_bytes
            if len(raw) > limit:  # the library has it in memory already; nothing keeps it
                quarantine.append(Quarantined(href, too_large(len(raw), limit)))
                continue
            try:
                read = read_calendar(bytes(raw), href, window, limits=self.account.spec.limits)
            except Exception as exc:  # UnreadableCalendar, or whatever a parser raised
                reason = str(exc) if isinstance(exc, UnreadableCalendar) else describe(exc)
                quarantine.append(quarantined(href, reason, bytes(raw), "ical"))
                continue
            if read.problems:  # the events that could be read are logged all the same
                quarantine.append(quarantined(href, "; ".join(read.problems), bytes(raw), "ical"))
            meetings.extend(read.meetings)
            states.extend(read.task_states)
            uids[href] = sorted(read.uids)
        removed: list[str] = []
        for url in getattr(result, "deleted_urls", set()):
            for uid in uids.pop(_path(url), []):
                if uid.startswith("syncd-"):
                    states.append(TaskState(uid, "cancelled"))
                else:
                    removed.append(uid)
        if token is None and cursor is not None:  # a full read: what is gone was deleted
            seen = {_path(o.url) for o in objects}
            for href in [h for h in uids if h not in seen]:
                removed.extend(u for u in uids.pop(href) if not u.startswith("syncd-"))
        new_state = {
            "token": str(result.sync_token) if result.sync_token else None,
            "uids": uids,
            "day": now.date().isoformat(),
        }
        if new_state == state and not (meetings or states or removed or quarantine):
            return  # nothing changed: no write either
        for start in range(0, max(len(meetings), 1), self.batch_size):
            last = start + self.batch_size >= len(meetings)
            yield Batch(
                items=tuple(meetings[start : start + self.batch_size]),
                cursor=Cursor(json.dumps(new_state if last else state)),
                quarantined=tuple(quarantine) if last else (),
                removed=tuple(removed) if last else (),
                task_states=tuple(states) if last else (),
            )


class CalDavTaskWriter:
    def __init__(self, calendar: Any, as_event: bool) -> None:
        self.calendar = calendar
        self.as_event = as_event

    def put(self, task: TaskItem) -> str:
        ical = task_to_ical(task, as_event=self.as_event).decode()
        add = self.calendar.add_event if self.as_event else self.calendar.add_todo
        try:
            obj = add(ical)  # the resource is named after the UID: a rewrite replaces it
        except (caldav_error.DAVError, OSError) as exc:
            raise ConnectorError(
                f"cannot write task {task.uid} to {self.calendar.url}: {exc}"
            ) from exc
        return _path(obj.url)
