"""Follow-up tasks of the Microsoft kind, written into the user's Microsoft 365: To Do tasks
(``tasks = "todo"``, the default; also the ``graph:todo`` source that reads back the tasks
the user completed) or short free calendar events (``tasks = "events"``).

Both are idempotent by the task's uid: a To Do task carries it in a linked resource
(``externalId``), an event as its ``transactionId`` (a retried POST returns the first
event) and a single-value extended property.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, timedelta
from typing import Any

from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.kind import typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.client import GraphClient
from syncd.connectors.microsoft.parse import error_text
from syncd.connectors.taskevents import EVENT_MINUTES, event_title
from syncd.items import Batch, Cursor, MeetingItem, TaskItem, TaskState

TASK_PROPERTY = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name syncdTask"
LISTS = "/todo/lists"
FIRST_TASKS = "/todo/lists/{}/tasks?$expand=linkedResources&$top=100"


def _uids(task: dict[str, Any]) -> list[str]:
    """The task uids a To Do task was written for (its syncd linked resources' ids)."""
    return [
        str(resource["externalId"])
        for resource in task.get("linkedResources") or []
        if resource.get("applicationName") == "syncd" and resource.get("externalId")
    ]


class TodoTasks:
    """Follow-up tasks in a To Do list of the user's, each linked to its task uid (a linked
    resource with ``externalId``), so a retry or a second pass updates instead of adding.
    As a source (``graph:todo``) it reads back the tasks the user completed."""

    name = "graph:todo"

    def __init__(self, client: GraphClient, spec: MailboxSpec) -> None:
        self.client = client
        self.list_name = typed(spec.settings, MicrosoftSettings).todo_list
        self._list_id: str | None = None
        self._known: dict[str, dict[str, Any]] | None = None

    def find_list(self, create: bool) -> str | None:
        """The id of syncd's To Do list (made on first write, never just to read)."""
        if self._list_id is None:
            _, lists = self.client.request("GET", self.client.user_url(LISTS))
            found = next(
                (x["id"] for x in lists.get("value", []) if x.get("displayName") == self.list_name),
                None,
            )
            if found is None and create:
                _, made = self.client.request(
                    "POST", self.client.user_url(LISTS), {"displayName": self.list_name}
                )
                found = made["id"]
            self._list_id = str(found) if found else None
        return self._list_id

    def list_id(self) -> str:
        found = self.find_list(create=True)
        assert found is not None
        return found

    def known(self) -> dict[str, dict[str, Any]]:
        """syncd's tasks in the list, by task uid."""
        if self._known is None:
            found: dict[str, dict[str, Any]] = {}
            link: str | None = self.client.user_url(FIRST_TASKS.format(self.list_id()))
            while link:
                status, page = self.client.request("GET", link, ok=(200, 404))
                if status == 404:  # the user deleted the list: start a new one
                    self._list_id, found = None, {}
                    link = self.client.user_url(FIRST_TASKS.format(self.list_id()))
                    continue
                for task in page.get("value", []):
                    found.update((uid, task) for uid in _uids(task))
                link = page.get("@odata.nextLink")
            self._known = found
        return self._known

    def _call(self, task: TaskItem) -> dict[str, Any] | None:
        """The Graph call that brings To Do in line with ``task`` (None: nothing to do)."""
        base = f"{self.client.root}/todo/lists/{self.list_id()}/tasks"
        existing = self.known().get(task.uid)
        due = task.due.astimezone(UTC)
        fields: dict[str, Any] = {
            "title": task.title,
            "body": {"content": task.description, "contentType": "text"},
            "dueDateTime": {
                "dateTime": due.strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                "timeZone": "UTC",
            },
            "status": "completed" if task.status != "open" else "notStarted",
            "categories": list(task.categories),
        }
        if existing is None:
            if task.status != "open":
                return None
            fields["linkedResources"] = [
                {"applicationName": "syncd", "externalId": task.uid, "displayName": "CRM follow-up"}
            ]
            return {"id": task.uid, "method": "POST", "url": base, "body": fields}
        if task.status == "cancelled":
            return {"id": task.uid, "method": "DELETE", "url": f"{base}/{existing['id']}"}
        if existing.get("status") == "completed" and task.status == "open":
            fields["status"] = "completed"  # the user's tick wins until the CRM reads it back
        return {
            "id": task.uid,
            "method": "PATCH",
            "url": f"{base}/{existing['id']}",
            "body": fields,
        }

    def put(self, task: TaskItem) -> str:
        return self.put_many([task])[0]

    def put_many(self, tasks: Sequence[TaskItem]) -> list[str]:
        """Write several tasks in as few requests as ``$batch`` allows; returns their ids."""
        calls = [c for c in (self._call(t) for t in tasks) if c is not None]
        results = self.client.batch(calls) if calls else {}
        return [self._written(task, *results.get(task.uid, (200, None))) for task in tasks]

    def _written(self, task: TaskItem, status: int, body: Any) -> str:
        """Note the answer to a task's call; the task's id in To Do ("" when it has none)."""
        if status == 404:  # the user deleted it meanwhile: nothing left to update
            self.known().pop(task.uid, None)
        elif status >= 400:
            code, text = error_text(body or {})
            raise ConnectorError(f"cannot write task {task.uid} to To Do: {status} {code} {text}")
        if isinstance(body, dict) and body.get("id"):
            self.known()[task.uid] = body
        return str(self.known().get(task.uid, {}).get("id", ""))

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        """The tasks the user completed; the cursor keeps the list's id (one request a poll)
        and a digest of what was reported, so an unchanged list reports nothing."""
        state = json.loads(cursor.value) if cursor else {}
        self._list_id = self._list_id or state.get("list")
        self._known = None
        if self.find_list(create=False) is None:
            return  # nothing written yet
        done = sorted(uid for uid, t in self.known().items() if t.get("status") == "completed")
        digest = hashlib.sha256("\n".join(done).encode()).hexdigest()[:32]
        if state == {"list": self._list_id, "done": digest}:
            return
        yield Batch(
            (),
            Cursor(json.dumps({"list": self._list_id, "done": digest})),
            task_states=tuple(TaskState(uid, "done") for uid in done),
        )


class EventTasks:
    """Follow-up tasks as short free events: ``transactionId`` is the task uid (a retried POST
    returns the first event) and a single-value extended property carries it too."""

    def __init__(self, client: GraphClient) -> None:
        self.client = client

    def put(self, task: TaskItem) -> str:
        due = task.due.astimezone(UTC)
        title = event_title(task)
        fields = {
            "subject": title,
            "body": {"contentType": "text", "content": task.description},
            "start": {"dateTime": due.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (due + timedelta(minutes=EVENT_MINUTES)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
            "showAs": "free",
            "isReminderOn": task.status == "open",
            "categories": list(task.categories),
        }
        _, event = self.client.request(
            "POST",
            self.client.user_url("/events"),
            {
                **fields,
                # the task's uid (syncd-…): a retried POST returns the event made before
                "transactionId": task.uid,
                "singleValueExtendedProperties": [{"id": TASK_PROPERTY, "value": task.uid}],
            },
        )
        url = self.client.user_url(f"/events/{event['id']}")
        if task.status == "cancelled":
            self.client.request("DELETE", url, ok=(204, 404))
        elif event.get("subject") != title or event.get("isReminderOn") != fields["isReminderOn"]:
            self.client.request("PATCH", url, fields)
        return str(event["id"])
