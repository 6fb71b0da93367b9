"""Microsoft To Do through Graph: task lists (a "Tasks" list per user, ``wellknownListName``
defaultList) and their tasks with linked resources; created tasks answer 201."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from typing import Any
from urllib.parse import quote, urlencode

from ..http import Response
from . import schema
from .calendar import graph_time
from .odata import check_body, check_query
from .state import GraphCall, GraphError, GraphState

TODO_QUERY = {"$select", "$expand", "$top", "$skip", "$filter", "$orderby", "$count"}


def _not_found() -> GraphError:
    return GraphError(404, "NotFound", "The requested resource was not found.")


class Todo(GraphState):
    def todo_list(self, user: str, name: str, wellknown: str = "none") -> str:
        with self.lock:
            box = self.users[user]
            for lid, info in box.todo_lists.items():
                if info["displayName"] == name:
                    return lid
            return str(box.add_list(name, wellknown)["id"])

    def tasks(self, user: str) -> list[dict[str, Any]]:
        """Every To Do task of ``user`` with its list's name, as the To Do app shows them."""
        with self.lock:
            box = self.users[user]
            return [
                {**task, "list": box.todo_lists[lid]["displayName"]}
                for lid, tasks in box.todo_tasks.items()
                for task in tasks.values()
            ]

    def complete_task(self, user: str, task_id: str) -> None:
        """The user ticks the task off in To Do."""
        with self.lock:
            for tasks in self.users[user].todo_tasks.values():
                if task_id in tasks:
                    now = dt.datetime.now(dt.UTC)
                    tasks[task_id]["status"] = "completed"
                    tasks[task_id]["completedDateTime"] = graph_time(now, "UTC")
                    tasks[task_id]["lastModifiedDateTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
                    return
            raise KeyError(task_id)

    def _todo_route(self, call: GraphCall) -> Response | None:
        if not call.rest.startswith("/todo/"):
            return None
        call.need("Tasks.ReadWrite.All", "Tasks.ReadWrite")
        entity = "todoTaskList" if call.rest == "/todo/lists" else "todoTask"
        if call.method == "GET":
            check_query(call.params, TODO_QUERY, entity)
            if call.params.get("$filter") or call.params.get("$orderby"):  # known properties, but…
                raise GraphError(
                    501, "NotImplemented", "The emulator does not evaluate $filter or $orderby."
                )
        elif call.method in ("POST", "PATCH"):
            check_body(entity, call.payload)
        with self.lock:
            answer = self._lists(call) if call.rest == "/todo/lists" else None
            answer = answer or self._tasks(call, entity)
        if answer is None:
            raise GraphError(
                405, "MethodNotAllowed", f"{call.method} is not allowed on {call.rest}"
            )
        return answer

    @staticmethod
    def _lists(call: GraphCall) -> Response | None:
        if call.method == "GET":
            return Response(200, {"value": list(call.box.todo_lists.values())})
        if call.method == "POST":
            if not call.payload.get("displayName"):
                raise GraphError(400, "invalidRequest", "displayName is required")
            return Response(201, call.box.add_list(call.payload["displayName"]))
        return None

    def _tasks(self, call: GraphCall, entity: str) -> Response | None:
        box, method, payload = call.box, call.method, call.payload
        m = re.match(r"^/todo/lists/(?P<list>[^/]+)/tasks(?:/(?P<task>[^/]+))?$", call.rest)
        if not m or m.group("list") not in box.todo_lists:
            raise _not_found()
        tasks = box.todo_tasks[m.group("list")]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        expand = any(
            e.name == "linkedResources"
            for e in schema.check_expand(entity, call.params.get("$expand"))
        )
        if m.group("task") is None:
            if method == "GET":
                return Response(200, self._task_page(call, tasks, expand))
            if method == "POST":
                if not payload.get("title"):
                    raise GraphError(400, "invalidRequest", "title is required")
                tid = "AAkALg" + secrets.token_urlsafe(24)
                task = {
                    "importance": "normal",
                    "status": "notStarted",
                    "isReminderOn": False,
                    "categories": [],
                    "body": {"content": "", "contentType": "text"},
                    **payload,
                    "id": tid,
                    "createdDateTime": now,
                    "lastModifiedDateTime": now,
                }
                task["linkedResources"] = [
                    {"id": str(uuid.uuid4()), **r} for r in payload.get("linkedResources") or []
                ]
                tasks[tid] = task
                return Response(201, self._task(task, True))
            return None
        found = tasks.get(m.group("task"))
        if found is None:
            raise _not_found()
        if method == "GET":
            return Response(200, self._task(found, expand))
        if method == "PATCH":
            found.update({k: v for k, v in payload.items() if k != "linkedResources"})
            found["lastModifiedDateTime"] = now
            if payload.get("status") == "completed":
                found["completedDateTime"] = {"dateTime": now[:-1], "timeZone": "UTC"}
            return Response(200, self._task(found, False))
        if method == "DELETE":
            del tasks[m.group("task")]
            return Response(204)
        return None

    def _task_page(
        self, call: GraphCall, tasks: dict[str, dict[str, Any]], expand: bool
    ) -> dict[str, Any]:
        """Tasks oldest first, ``$top`` of them from ``$skip``, and a nextLink to the rest."""
        items = sorted(tasks.values(), key=lambda t: t["createdDateTime"])
        skip, top = int(call.params.get("$skip", 0)), int(call.params.get("$top", 100))
        out: dict[str, Any] = {"value": [self._task(t, expand) for t in items[skip : skip + top]]}
        if skip + top < len(items):
            query = {**call.params, "$skip": str(skip + top), "$top": str(top)}
            out["@odata.nextLink"] = (
                f"{self.base}/v1.0/users/{quote(call.box.address)}{call.rest}?{urlencode(query)}"
            )
        return out

    @staticmethod
    def _task(task: dict[str, Any], expand: bool) -> dict[str, Any]:
        return {k: v for k, v in task.items() if expand or k != "linkedResources"}
