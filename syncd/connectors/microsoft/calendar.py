"""The calendar source of the Microsoft kind: ``graph:calendar``, the primary calendar read by
``calendarView/delta`` over the configured window (``calendar_past_days`` back,
``calendar_future_days`` ahead of the first sync).

A delta page brings meetings, removals (only an id: a meeting gone, or one of syncd's task
events) and syncd's own task events (``transactionId`` ``syncd-…``, written by
:class:`~syncd.connectors.microsoft.tasks.EventTasks`): those are never meetings, their
state (cancelled, or marked done in the title) is read back as a task state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from syncd.config import LimitSettings
from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.microsoft.client import GraphClient
from syncd.connectors.microsoft.parse import meeting_item, quarantined
from syncd.connectors.taskevents import is_task_uid, read_back
from syncd.items import Batch, Cursor, MeetingItem, Quarantined, TaskState

WINDOW_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class _Page:
    """What one delta page gave, as a batch takes it."""

    meetings: list[MeetingItem] = field(default_factory=list)
    states: list[TaskState] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    held: list[Quarantined] = field(default_factory=list)

    def add(self, event: Any, limits: LimitSettings) -> None:
        if not isinstance(event, dict):
            self.held.append(quarantined(event, "not a Graph event", "graph-event"))
        elif "@removed" in event:
            if event.get("id"):  # a meeting gone, or one of our tasks
                self.removed.append(str(event["id"]))
                self.states.append(TaskState("", "cancelled", ref=str(event["id"])))
        elif is_task_uid(str(event.get("transactionId") or "")):
            self._task(event)  # syncd's own task: never a meeting
        else:
            try:
                self.meetings.append(meeting_item(event, limits=limits))
            except ValueError as exc:
                self.held.append(quarantined(event, str(exc), "graph-event"))

    def _task(self, event: dict[str, Any]) -> None:
        uid, title = str(event["transactionId"]), str(event.get("subject") or "")
        state = read_back(uid, title, cancelled=bool(event.get("isCancelled")))
        if state is not None:
            self.states.append(state)

    def changed(self) -> bool:
        return bool(self.meetings or self.states or self.removed or self.held)

    def batch(self, link: str) -> Batch[MeetingItem]:
        return Batch(
            tuple(self.meetings),
            Cursor(json.dumps({"link": link})),
            tuple(self.held),
            removed=tuple(self.removed),
            task_states=tuple(self.states),
        )


class GraphCalendar:
    """The primary calendar by calendarView delta over [now - past, now + future]."""

    name = "graph:calendar"

    def __init__(self, client: GraphClient, spec: MailboxSpec) -> None:
        self.client = client
        self.limits = spec.limits
        self.past = timedelta(days=spec.settings.calendar_past_days)
        self.future = timedelta(days=spec.settings.calendar_future_days)
        self.batch_size = spec.batch_size

    def _first_link(self) -> str:
        now = datetime.now(UTC)
        window = {
            "startDateTime": (now - self.past).strftime(WINDOW_FORMAT),
            "endDateTime": (now + self.future).strftime(WINDOW_FORMAT),
        }
        return self.client.user_url(f"/calendarView/delta?{urlencode(window)}")

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        stored = json.loads(cursor.value).get("link") if cursor else None
        link: str | None = stored or self._first_link()
        headers = {"Prefer": f"odata.maxpagesize={min(self.batch_size, 1000)}"}
        while link:
            _, page = self.client.request("GET", link, headers=headers)
            read = _Page()
            for event in page.get("value", []):
                read.add(event, self.limits)
            after = self._after(page)
            link = page.get("@odata.nextLink")
            # a quiet poll (an empty last page of a stored delta) stores nothing
            if read.changed() or link or not stored:
                yield read.batch(after)

    def _after(self, page: dict[str, Any]) -> str:
        """The cursor's link after a page: the next page's, else the new delta link."""
        after = page.get("@odata.nextLink") or page.get("@odata.deltaLink")
        if not after:
            raise ConnectorError(f"{self.client.where()}: a delta page without a link")
        return str(after)
