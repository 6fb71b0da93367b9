"""Graph calendar: the primary calendar's events, their times in Windows or IANA zones, and
events created through Graph (``POST`` idempotent by ``transactionId``, ``PATCH``, ``GET`` with
``$expand=singleValueExtendedProperties``). Every event is a single instance: no
recurring-series expansion."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from ..http import Response
from .odata import check_body, check_query, expanded, selected
from .state import GraphCall, GraphError, GraphState, Record, User, item_not_found

# Windows zone names Graph accepts beside IANA ones (a few; enough for the tests)
WINDOWS_ZONES = {
    "UTC": "UTC",
    "Pacific Standard Time": "America/Los_Angeles",
    "Eastern Standard Time": "America/New_York",
    "W. Europe Standard Time": "Europe/Berlin",
    "GMT Standard Time": "Europe/London",
}


def windows_or_iana(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(WINDOWS_ZONES.get(name, name))
    except Exception:
        raise GraphError(
            400,
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. "
            f"The following TimeZone value is not supported: '{name}'.",
        ) from None


def parse_graph_time(value: dict[str, str]) -> dt.datetime:
    zone = windows_or_iana(value.get("timeZone", "UTC"))
    stamp = dt.datetime.fromisoformat(value["dateTime"][:26].rstrip("Z"))
    return stamp.replace(tzinfo=zone) if stamp.tzinfo is None else stamp


def graph_time(when: dt.datetime, zone: str) -> dict[str, str]:
    local = when.astimezone(windows_or_iana(zone))
    return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone}


class Calendar(GraphState):
    def add_event(
        self,
        user: str,
        *,
        subject: str,
        start: dt.datetime,
        end: dt.datetime,
        organizer: tuple[str, str],
        attendees: list[tuple[str, str]],
        uid: str | None = None,
        zone: str = "UTC",
        sensitivity: str = "normal",
        categories: list[str] = (),  # type: ignore[assignment]
        cancelled: bool = False,
    ) -> str:
        """An event on ``user``'s primary calendar (times kept in ``zone``); returns its id."""
        return self._store_event(
            user,
            {
                "subject": subject,
                "iCalUId": uid,
                "organizer": {"emailAddress": {"name": organizer[0], "address": organizer[1]}},
                "attendees": [
                    {
                        "type": "required",
                        "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
                        "emailAddress": {"name": n, "address": a},
                    }
                    for n, a in attendees
                ],
                "start": graph_time(start, zone),
                "end": graph_time(end, zone),
                "isCancelled": cancelled,
                "sensitivity": sensitivity,
                "categories": list(categories),
            },
        )

    def _store_event(self, user: str, event: dict[str, Any]) -> str:
        with self.lock:
            box = self.add_user(user)
            eid = "AAMkAE" + secrets.token_urlsafe(24)
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
            resource = {
                "createdDateTime": now,
                "lastModifiedDateTime": now,
                "type": "singleInstance",
                "showAs": "busy",
                "isAllDay": False,
                "isCancelled": False,
                "isOrganizer": True,
                "sensitivity": "normal",
                "categories": [],
                "attendees": [],
                "bodyPreview": "",
                "location": {"displayName": ""},
                "transactionId": None,
                **event,
            }
            resource["iCalUId"] = resource.get("iCalUId") or (
                "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex.upper()
            )
            box.collection("calendar")[eid] = Record(eid, eid, resource, self._next())
            return eid

    def update_event(self, user: str, event_id: str, **changes: Any) -> None:
        with self.lock:
            record = self.users[user].collection("calendar")[event_id]
            record.resource.update(changes)
            record.seq = self._next()

    def delete_event(self, user: str, event_id: str) -> None:
        with self.lock:
            record = self.users[user].collection("calendar")[event_id]
            record.removed, record.seq = True, self._next()

    def events(self, user: str) -> list[dict[str, Any]]:
        """The user's calendar as Outlook shows it (no deleted events)."""
        with self.lock:
            return [
                {"id": r.immutable_id, **r.resource}
                for r in self.users[user].collection("calendar").values()
                if not r.removed
            ]

    def _event(
        self, record: Record, prefer: dict[str, str], query: dict[str, str] | None = None
    ) -> dict[str, Any]:
        query = query or {}
        resource = {
            k: record.resource[k]
            for k in selected("event", record.resource, query)
            if k in record.resource
        }
        zone = prefer.get("outlook.timezone")
        if zone:
            for key in ("start", "end"):
                if key in resource:
                    resource[key] = graph_time(parse_graph_time(resource[key]), zone)
        resource.update(expanded("event", record, query.get("$expand")))
        return {"@odata.etag": f'W/"{record.seq}"', "id": record.immutable_id, **resource}

    @staticmethod
    def _event_fields(payload: dict[str, Any]) -> dict[str, Any]:
        fields = {
            k: v for k, v in payload.items() if k not in ("id", "singleValueExtendedProperties")
        }
        for key in ("start", "end"):
            if key in fields:
                parse_graph_time(fields[key])  # refuse an unknown zone as Graph does
        if "singleValueExtendedProperties" in payload:
            fields["_extended"] = payload["singleValueExtendedProperties"] or []
        return fields

    def _create_event(
        self, box: User, payload: dict[str, Any], prefer: dict[str, str]
    ) -> dict[str, Any]:
        for key in ("start", "end"):
            if key not in payload:
                raise GraphError(
                    400,
                    "ErrorInvalidRequest",
                    f"Your request can't be completed. The '{key}' property is required.",
                )
        with self.lock:
            transaction = payload.get("transactionId")
            if transaction and transaction in box.transactions:  # a client's retry
                record = box.collection("calendar")[box.transactions[transaction]]
                return self._event(record, prefer)
            eid = self._store_event(box.address, self._event_fields(payload))
            if transaction:
                box.transactions[transaction] = eid
            return self._event(box.collection("calendar")[eid], prefer)

    def _calendar_route(self, call: GraphCall) -> Response | None:
        if call.rest == "/events" and call.method == "POST":
            call.need("Calendars.ReadWrite")
            check_body("event", call.payload)
            return Response(201, self._create_event(call.box, call.payload, call.prefer))
        m = re.match(r"^/events/(?P<id>[^/]+)$", call.rest)
        if not m or call.method not in ("GET", "PATCH", "DELETE"):
            return None
        call.need(
            "Calendars.ReadWrite" if call.method != "GET" else "Calendars.Read",
            "Calendars.ReadWrite",
        )
        if call.method == "GET":
            check_query(call.params, {"$select", "$expand"}, "event")
        event = call.box.collection("calendar").get(m.group("id"))
        if event is None or event.removed:
            raise item_not_found()
        if call.method == "DELETE":
            event.removed, event.seq = True, self._next()
            return Response(204)
        if call.method == "PATCH":
            check_body("event", call.payload)
            with self.lock:
                event.resource.update(self._event_fields(call.payload))
                event.seq = self._next()
        return Response(200, self._event(event, call.prefer, call.params))
