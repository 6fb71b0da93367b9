"""Google Calendar API v3, the primary calendar of each user: events.list (sync tokens, paging,
410, privateExtendedProperty, timeMin/timeMax, and the 400 for parameters a sync token
forbids), insert with a client-chosen id (409 duplicate, even after a delete), import by
iCalUID, get, patch, delete."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from .state import Call, GmailError, GoogleState, Mailbox

# RFC 3339 with its mandatory offset [timeMin/timeMax in calendar.v3.json events.list]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")  # base32hex [calendar events.insert]
# "cannot be specified together with nextSyncToken" [syncToken in calendar.v3.json events.list]
_NOT_WITH_SYNC_TOKEN = {
    "iCalUID",
    "orderBy",
    "q",
    "timeMin",
    "timeMax",
    "updatedMin",
    "privateExtendedProperty",
    "sharedExtendedProperty",
}


def _error(status: int, reason: str, message: str) -> GmailError:
    return GmailError(status, reason, message, "calendar")


def _duplicate() -> GmailError:
    return _error(409, "duplicate", "The requested identifier already exists.")


class Calendar(GoogleState):
    def add_event(self, user: str, event: dict[str, Any]) -> dict[str, Any]:
        """Seed an event as another client would have created it."""
        with self.lock:
            box = self.add_user(user)
            return self._store_event(box, {"id": secrets.token_hex(10), **event})

    def expire_sync_tokens(self) -> None:
        with self.lock:
            for box in self.mailboxes.values():
                box.oldest_sync = box.event_seq

    def _store_event(self, box: Mailbox, event: dict[str, Any]) -> dict[str, Any]:
        box.event_seq += 1
        event.setdefault("status", "confirmed")
        event.setdefault("iCalUID", event["id"] + "@google.com")
        event["sequence_no"] = box.event_seq
        event["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        box.events[event["id"]] = event
        return self._public(event)

    @staticmethod
    def _public(event: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "calendar#event", **{k: v for k, v in event.items() if k != "sequence_no"}}

    def _events_list(self, call: Call) -> dict[str, Any]:
        box, params = call.box, call.params
        token = params.get("syncToken", [None])[0]
        if token is not None:
            # showDeleted may not be False either [syncToken in calendar.v3.json events.list]
            banned = _NOT_WITH_SYNC_TOKEN & set(params)
            if params.get("showDeleted") == ["false"]:
                banned.add("showDeleted")
            if banned:
                raise _error(400, "invalid", f"{sorted(banned)[0]} cannot be used with syncToken")
            if not token.isdigit() or int(token) < box.oldest_sync:
                raise _error(
                    410,
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                )
            since = int(token)
            found = [e for e in box.events.values() if e["sequence_no"] > since]
        else:
            show_deleted = params.get("showDeleted", ["false"])[0] == "true"
            found = [e for e in box.events.values() if show_deleted or e["status"] != "cancelled"]
            for prop in params.get("privateExtendedProperty", []):
                key, _, value = prop.partition("=")
                found = [
                    e
                    for e in found
                    if e.get("extendedProperties", {}).get("private", {}).get(key) == value
                ]
            found = self._between(found, params)
        found.sort(key=lambda e: e["sequence_no"])
        page, next_token = call.page(found, 250, 2500)
        out: dict[str, Any] = {
            "kind": "calendar#events",
            "items": [
                {"id": e["id"], "status": "cancelled"}
                if e["status"] == "cancelled" and token
                else self._public(e)
                for e in page
            ],
        }
        if next_token:
            out["nextPageToken"] = next_token
        else:  # nextSyncToken only on the last page
            out["nextSyncToken"] = str(box.event_seq)
        return out

    @staticmethod
    def _between(found: list[dict[str, Any]], params: dict[str, list[str]]) -> list[dict[str, Any]]:
        """timeMin: "Lower bound (exclusive) for an event's end time"; timeMax: "Upper bound
        (exclusive) for an event's start time"; both RFC 3339 with an offset, timeMin before
        timeMax [events.list in calendar.v3.json]."""
        bounds: dict[str, float] = {}
        for name in ("timeMin", "timeMax"):
            if name in params:
                value = params[name][0]
                if not _RFC3339.match(value):
                    raise _error(400, "badRequest", "Bad Request")
                bounds[name] = _epoch(value)
        if "timeMin" in bounds and "timeMax" in bounds and bounds["timeMin"] >= bounds["timeMax"]:
            raise _error(400, "timeRangeEmpty", "The specified time range is empty.")
        return [
            e
            for e in found
            if _event_epoch(e, "end") > bounds.get("timeMin", float("-inf"))
            and _event_epoch(e, "start") < bounds.get("timeMax", float("inf"))
        ]

    def _events_insert(self, call: Call) -> dict[str, Any]:
        event_id = call.body.get("id") or secrets.token_hex(10)
        if not _EVENT_ID.match(event_id):
            raise _error(400, "invalid", "Invalid resource id value.")
        if event_id in call.box.events:  # even a deleted one keeps its id
            raise _duplicate()
        return self._store_event(call.box, {**call.body, "id": event_id})

    def _events_import(self, call: Call) -> dict[str, Any]:
        """A private copy of an existing event, by iCalUID; importing one again is a
        duplicate, not an upsert (insanum/gcalcli#784)."""
        uid = call.body.get("iCalUID")
        if not uid:
            raise _error(400, "required", "Missing iCalUID.")
        if any(e.get("iCalUID") == uid for e in call.box.events.values()):
            raise _duplicate()
        return self._store_event(call.box, {**call.body, "id": secrets.token_hex(10)})

    @staticmethod
    def _existing_event(call: Call) -> dict[str, Any]:
        event = call.box.events.get(call.path["eventId"])
        if event is None:
            raise _error(404, "notFound", "Not Found")
        return event

    def _events_get(self, call: Call) -> dict[str, Any]:
        return self._public(self._existing_event(call))

    def _events_patch(self, call: Call) -> dict[str, Any]:
        event = self._existing_event(call)
        return self._store_event(call.box, {**event, **call.body, "id": event["id"]})

    def _events_delete(self, call: Call) -> dict[str, Any]:
        event = self._existing_event(call)
        if event["status"] == "cancelled":
            raise _error(410, "deleted", "Resource has been deleted")
        self._store_event(call.box, {**event, "status": "cancelled"})
        return {}


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _event_epoch(event: dict[str, Any], edge: str) -> float:
    """An event's start or end: a dateTime, or an all-day date (taken at UTC midnight)."""
    when = event.get(edge, {})
    if "dateTime" in when:
        return _epoch(when["dateTime"])
    if "date" in when:
        return datetime.fromisoformat(when["date"]).replace(tzinfo=UTC).timestamp()
    return 0.0
