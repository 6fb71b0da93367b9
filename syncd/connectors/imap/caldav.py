"""CalDAV calendars (the ``caldav`` library): meetings in, follow-up tasks out.

:class:`CalDavClient` is the mailbox's CalDAV session; each calendar of the user is a source
(:class:`CalDavCalendar`), read incrementally with sync-collection (RFC 6578); where a
server has no sync tokens the library falls back to comparing ETags, which syncd sees the
same way. The objects a report sends are read by :class:`~.parse.CalendarDelta`. Follow-up
tasks (:class:`CalDavTaskWriter`) are written as VTODO with a stable UID into the first
calendar that accepts VTODO, else as a short VEVENT; writing again replaces the same
resource, so a retry never duplicates. syncd's own tasks, read back, are task states (a task
the user completes is done in the CRM), never meetings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from caldav.davclient import DAVClient
from caldav.lib import error as caldav_error

from syncd.batching import with_cursor_on_last
from syncd.connectors.base import AuthError, ConnectorError, MailboxSpec, refused
from syncd.connectors.ical import task_to_ical
from syncd.connectors.imap import ImapSettings
from syncd.connectors.imap.parse import CalendarDelta
from syncd.connectors.kind import typed
from syncd.connectors.transport import check_url, mask_secret, mask_urls, split_credentials
from syncd.items import Batch, Cursor, MeetingItem, TaskItem

log = logging.getLogger("syncd.caldav")


def _path(url: Any) -> str:
    return urlparse(str(url)).path


class CalDavClient:
    """The CalDAV side of a mailbox: settings ``caldav_url``, ``caldav_login`` (default the
    IMAP login), the mailbox's secret as password.

    The URL is https, or http to this machine only (:func:`check_url`). A login or password
    in it (a row of an older syncd, or edited by hand) is never sent in the URL nor shown:
    it is taken out and ignored: CalDAV logs in with ``caldav_login`` and the mailbox's
    encrypted secret, as it always did."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = self.settings = typed(spec.settings, ImapSettings)
        self.url = split_credentials(str(s.caldav_url))[0]
        check_url(self.url, f"mailbox {spec.name!r}: --caldav")
        if spec.secret is None:
            raise refused(spec.name, f"mailbox {spec.name!r}: no CalDAV password stored")
        self.dav = DAVClient(
            url=self.url,
            username=s.caldav_login or s.login or spec.user_email,
            password=spec.secret.reveal(),
            timeout=int(s.timeout),
            enable_rfc6764=False,
            require_tls=False,
        )
        self._calendars: list[Any] | None = None

    def where(self) -> str:
        return f"mailbox {self.spec.name!r}: CalDAV {self.url}"

    def masked(self, exc: BaseException) -> str:
        """An error as it may be shown: the password masked in any form, and any URL's."""
        secret = self.spec.secret.reveal() if self.spec.secret else ""
        return mask_urls(mask_secret(str(exc), secret))

    def calendars(self) -> list[Any]:
        """The user's calendars (those named in ``calendars``, when it names any)."""
        if self._calendars is None:
            found = self._principal_calendars()
            wanted = self.settings.calendars
            if wanted:
                found = [c for c in found if c.get_display_name() in wanted]
            self._calendars = found
        return self._calendars

    def _principal_calendars(self) -> list[Any]:
        try:
            return list(self.dav.principal().calendars())
        except caldav_error.AuthorizationError:
            raise refused(
                self.spec.name, f"{self.where()} refused the login", "set the right password"
            ) from None
        except (caldav_error.DAVError, OSError) as exc:
            raise ConnectorError(f"{self.where()}: {self.masked(exc)}") from exc

    def sources(self) -> list[CalDavCalendar]:
        s = self.settings
        return [
            CalDavCalendar(
                self, cal, s.calendar_past_days, s.calendar_future_days, self.spec.batch_size
            )
            for cal in self.calendars()
        ]

    def close(self) -> None:
        """Close the HTTP connections (a daemon opens a client every pass)."""
        try:
            self.dav.close()
        except Exception as exc:  # closing a broken connection: nothing left to do
            log.debug("%s: close failed: %s", self.where(), exc)

    def task_writer(self) -> CalDavTaskWriter | None:
        """A writer into the first calendar that takes VTODO, else into the first one, with
        tasks as events; None without a calendar."""
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


def _object_bytes(obj: Any) -> bytes | bytearray | None:
    data = obj.data
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data


def _stored(cursor: Cursor | None) -> dict[str, Any]:
    """A calendar's stored cursor; before the first read, no token, no objects, no day."""
    return json.loads(cursor.value) if cursor else {"token": None, "uids": {}, "day": ""}


def _sync_token(result: Any) -> str | None:
    return str(result.sync_token) if result.sync_token else None


def _forget(delta: CalendarDelta, result: Any, objects: Iterable[Any], *, full: bool) -> None:
    """What a report says is gone: the objects it names deleted and, after a full read of a
    calendar read before (``full``), every object it did not send."""
    for url in getattr(result, "deleted_urls", set()):
        delta.deleted(_path(url))
    if full:
        delta.missing(_path(o.url) for o in objects)


class CalDavCalendar:
    """One calendar as a source. Its cursor is JSON ``{"token": the sync token, "uids":
    {href: the UIDs it holds}, "day": the day of the last read}``. On a new day the window
    has moved, so every object is read again (item keys keep anything from being logged
    twice), as it is from a server that gave no sync token; after such a full read, an
    object not sent again was deleted."""

    def __init__(
        self,
        client: CalDavClient,
        calendar: Any,
        past_days: int,
        future_days: int,
        batch_size: int,
    ) -> None:
        self.client = client
        self.calendar = calendar
        self.name = f"caldav:{_path(calendar.url)}"
        self.past = timedelta(days=past_days)
        self.future = timedelta(days=future_days)
        self.batch_size = batch_size

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        before = _stored(cursor)
        now = datetime.now(UTC)
        today = now.date().isoformat()
        # on a new day the window has moved on: read every object again (keys dedupe)
        token = before["token"] if before.get("day") == today else None
        result = self._sync(token)
        objects = [o for o in result if o.url is not None]
        delta = self._read(objects, (now - self.past, now + self.future), dict(before["uids"]))
        _forget(delta, result, objects, full=token is None and cursor is not None)
        after = {"token": _sync_token(result), "uids": delta.uids, "day": today}
        if after == before and delta.empty:
            return  # nothing changed: no write either
        yield from with_cursor_on_last(
            delta.meetings,
            self.batch_size,
            Cursor(json.dumps(before)),
            Cursor(json.dumps(after)),
            quarantined=delta.quarantined,
            removed=delta.removed,
            task_states=delta.task_states,
        )

    def _sync(self, token: str | None) -> Any:
        """A sync-collection report from ``token`` (None: every object), objects loaded."""
        try:
            return self.calendar.get_objects_by_sync_token(sync_token=token, load_objects=True)
        except caldav_error.AuthorizationError:
            raise AuthError(f"{self.client.where()} refused access to {self.name}") from None
        except (caldav_error.DAVError, OSError) as exc:
            raise ConnectorError(f"{self.client.where()}: {self.client.masked(exc)}") from exc

    def _read(
        self, objects: Iterable[Any], window: tuple[datetime, datetime], uids: dict[str, list[str]]
    ) -> CalendarDelta:
        delta = CalendarDelta(uids, window, self.client.spec.limits)
        for obj in objects:
            href = _path(obj.url)
            try:
                raw = _object_bytes(obj)
            except Exception as exc:  # the library could not load this one object
                delta.unloadable(href, exc)
                continue
            delta.read(href, raw)
        return delta


class CalDavTaskWriter:
    """Writes follow-up tasks into one calendar, as VTODOs or (``as_event``) short events."""

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
