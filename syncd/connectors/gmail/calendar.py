"""The source ``gcal:primary`` and the task writer: the user's primary Google Calendar.

The calendar is read by sync token, bounded to ``calendar_past_days`` ..
``calendar_future_days`` around now like the other calendars. Google refuses
``timeMin``/``timeMax`` with a sync token, so the window is applied to what comes back, and
the strips the window has moved over since the last pass (a meeting 45 days ahead enters a
30-day window 15 days later without changing) are listed by time.

Follow-up tasks are written as short events stamped with the task's uid, under an event id
chosen before the write (:func:`~syncd.connectors.gmail.parse.event_id`), so a retry never
duplicates one; the user deleting one or ticking it off by its title comes back as the
task's state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from googleapiclient.errors import HttpError

from syncd.batching import with_cursor_on_last
from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.gmail.client import UNITS, GmailClient, expiring
from syncd.connectors.gmail.parse import (
    event_id,
    is_tombstone,
    meeting_item,
    reason,
    rfc3339,
    task_event,
    task_state,
    task_uid,
)
from syncd.items import Batch, Cursor, MeetingItem, Quarantined, TaskItem, TaskState

STRIP_EVERY = timedelta(hours=1)  # how far the window moves before its new edge is listed
PAGE = 2500  # events a page of events.list holds, at most

Window = tuple[datetime, datetime]


@dataclasses.dataclass
class _Read:
    """What one pass of the calendar found."""

    window: Window
    meetings: dict[str, MeetingItem] = dataclasses.field(default_factory=dict)  # by key
    states: list[TaskState] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    quarantined: list[Quarantined] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.meetings or self.states or self.removed or self.quarantined)

    def tombstone(self, event: dict[str, Any]) -> None:
        """A deleted event carries its id only: a meeting gone, or one of syncd's tasks."""
        self.removed.append(event.get("iCalUID") or event["id"])
        self.states.append(TaskState("", "cancelled", ref=event["id"]))

    def meeting(self, event: dict[str, Any]) -> None:
        """A meeting within the window; one cancelled outside it is removed (an activity
        logged earlier is cancelled too); one that cannot be read is quarantined."""
        try:
            item = meeting_item(event)
        except Exception as exc:  # one bad event never stops the calendar
            self.quarantined.append(Quarantined(str(event.get("id", "?")), reason(exc)))
            return
        if item is None:
            return
        if item.end > self.window[0] and item.start < self.window[1]:
            self.meetings[item.key] = item
        elif item.cancelled:
            self.removed.append(item.provider_id)


class GoogleCalendar:
    """The user's primary calendar, incrementally by sync token (410 -> read again), within
    [now - calendar_past_days, now + calendar_future_days] like the other calendars.

    The cursor holds the sync token and the stretch of time already listed (``from`` ..
    ``until``). A sync token returns changed events at any date, so the window is applied
    after reading; and an event that does not change never comes back by sync token, so the
    strips the window has moved onto since (``until`` .. now + future, and now - past ..
    ``from`` when the setting grew) are listed by time, without the token."""

    name = "gcal:primary"

    def __init__(self, client: GmailClient, spec: MailboxSpec) -> None:
        self.client = client
        # the config's sync.calendar_*_days, unless the mailbox sets its own (mailbox_spec)
        self.past = timedelta(days=spec.settings.calendar_past_days)
        self.future = timedelta(days=spec.settings.calendar_future_days)
        self.batch_size = spec.batch_size

    def _list(self, found: _Read, tasks: bool, **query: str) -> str | None:
        """Every page of one events.list; returns the nextSyncToken of the last page.
        ``tasks``: whether syncd's own task events are read (by sync token only)."""
        pages = self.client.pages(
            UNITS["calendar"],
            self.client.calendar.events().list,
            calendarId="primary",
            singleEvents=True,
            maxResults=PAGE,
            **query,
        )
        response: dict[str, Any] = {}
        for _page, response in expiring(pages, 410, "Google Calendar sync token expired"):
            for event in response.get("items", []):
                self._take(event, found, tasks)
        token = response.get("nextSyncToken")
        return str(token) if token else None

    @staticmethod
    def _take(event: dict[str, Any], found: _Read, tasks: bool) -> None:
        if task_uid(event):  # syncd's own task: never a meeting
            state = task_state(event) if tasks else None  # listed by time: by token later
            if state is not None:
                found.states.append(state)
        elif is_tombstone(event):
            found.tombstone(event)
        else:
            found.meeting(event)

    def _strip(self, found: _Read, since: datetime, until: datetime) -> None:
        """The events of [since, until) by time (no sync token; timeMin must be before
        timeMax [events.list in calendar.v3.json]); syncd's own tasks come by sync token."""
        if since < until:
            self._list(found, False, timeMin=rfc3339(since), timeMax=rfc3339(until))

    def _catch_up(self, found: _Read, state: dict[str, Any]) -> Window:
        """List the strips the window has moved onto since the stretch ``state`` listed;
        returns the stretch listed now (a cursor from before the stretch was kept counts as
        having read the whole window)."""
        window = found.window
        since = datetime.fromisoformat(state["from"]) if "from" in state else window[0]
        until = datetime.fromisoformat(state["until"]) if "until" in state else window[1]
        if window[1] - until >= STRIP_EVERY:  # the window moved on
            self._strip(found, max(until, window[0]), window[1])
            until = window[1]
        if since - window[0] >= STRIP_EVERY:  # calendar_past_days grew
            self._strip(found, window[0], min(since, window[1]))
            since = window[0]
        return since, until

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        state = json.loads(cursor.value) if cursor else {}
        now = datetime.now(UTC)
        found = _Read((now - self.past, now + self.future))
        if state.get("token"):
            # timeMin/timeMax cannot go with a sync token (HTTP 400): the window is _Read's
            token = self._list(found, True, syncToken=state["token"])
            listed = self._catch_up(found, state)
        else:
            token = self._list(found, True, timeMin=rfc3339(found.window[0]))
            listed = found.window
        after = {"token": token, "from": listed[0].isoformat(), "until": listed[1].isoformat()}
        if state.get("token") and after == state and not found:
            return
        yield from with_cursor_on_last(
            list(found.meetings.values()),
            self.batch_size,
            Cursor(json.dumps(state)),
            Cursor(json.dumps(after)),
            quarantined=found.quarantined,
            removed=found.removed,
            task_states=found.states,
        )


class GoogleTaskWriter:
    """Follow-up tasks as short events on the user's calendar, stamped with the task's uid
    in a private extended property; an existing one (409 on insert) is patched."""

    def __init__(self, client: GmailClient) -> None:
        self.client = client

    def put(self, task: TaskItem) -> str:
        events = self.client.calendar.events()
        body = task_event(task)
        eid = event_id(task.uid)
        try:
            self.client.execute(
                UNITS["calendar"],
                partial(events.insert, calendarId="primary", body={**body, "id": eid}),
            )
        except HttpError as exc:
            if exc.resp.status != 409:
                raise ConnectorError(f"cannot write task {task.uid}: {exc}") from exc
            self.client.execute(
                UNITS["calendar"],
                partial(events.patch, calendarId="primary", eventId=eid, body=body),
            )
        return eid
