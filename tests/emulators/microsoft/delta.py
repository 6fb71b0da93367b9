"""Graph delta queries: message delta per mail folder (``$select``, ``$expand``,
``$orderby=receivedDateTime desc``, ``Prefer: odata.maxpagesize``,
``@odata.nextLink``/``@odata.deltaLink``, ``@removed``, 410 ``syncStateNotFound`` for a token
it no longer knows, pages in no particular order) and ``calendarView/delta`` (400 without a
window). A round's state (user, collection, the changes it covers, the page it is at) is kept
under the opaque token of each link."""

from __future__ import annotations

import datetime as dt
import random
import re
import secrets
from typing import Any
from urllib.parse import quote, urlencode

from ..http import Response
from .calendar import Calendar, parse_graph_time
from .mail import WELL_KNOWN_FOLDERS, Mail, body_applied
from .odata import check_query
from .state import GraphCall, GraphError, Record, User, item_not_found

DEFAULT_PAGE = 10  # delta's default page size [message-delta]
DELTA_QUERY = {
    "$select",
    "$top",
    "$filter",
    "$orderby",
    "$expand",
    "changeType",
    "$deltatoken",
    "$skiptoken",
}


def _sync_state_not_found() -> GraphError:
    return GraphError(
        410, "syncStateNotFound", "The sync state generation is not found. Resync required."
    )


class Delta(Mail, Calendar):
    def expire_delta_tokens(self, maintenance: bool = False) -> None:
        """Forget every sync state: stored delta links now answer 410 syncStateNotFound, or
        with ``maintenance`` 410 with a ``Location`` header (an empty $deltatoken: start
        over), as during a mailbox's maintenance."""
        with self.lock:
            self.delta_tokens.clear()
            self.maintenance = maintenance

    def _delta_route(self, call: GraphCall) -> Response | None:
        applied: dict[str, str] = {}
        m = re.match(r"^/mailFolders/(?P<folder>[^/]+)/messages/delta$", call.rest)
        if m and call.method == "GET":
            call.need("Mail.Read", "Mail.ReadBasic.All", "Mail.ReadWrite")
            check_query(call.params, DELTA_QUERY, "message")
            self._delta_limits(call.params)
            folder = m.group("folder").lower()
            if folder not in WELL_KNOWN_FOLDERS:
                raise item_not_found()
            page = self._delta(call.box, folder, call.params, call.prefer, applied)
            return Response(200, page, applied)
        if call.rest == "/calendarView/delta" and call.method == "GET":
            call.need("Calendars.Read", "Calendars.ReadWrite")
            # [event-delta]: no $select, $filter, $orderby, $expand or $search
            check_query(call.params, {"startDateTime", "endDateTime", "$deltatoken", "$skiptoken"})
            page = self._delta(call.box, "calendar", call.params, call.prefer, applied)
            return Response(200, page, applied)
        return None

    @staticmethod
    def _delta_limits(params: dict[str, str]) -> None:
        """Message delta's own limits: "The only supported $filter expressions are
        receivedDateTime ge|gt {value}"; "the only supported $orderby expression is
        receivedDateTime desc" [MGD api-reference/v1.0/api/message-delta.md,
        concepts/delta-query-messages.md]."""
        flt = params.get("$filter")
        if flt and not re.fullmatch(r"\s*receivedDateTime (ge|gt) \S+\s*", flt):
            raise GraphError(
                400, "ErrorInvalidProperty", "The property is not supported in a delta $filter."
            )
        order = params.get("$orderby")
        if order and not re.fullmatch(r"\s*receivedDateTime desc\s*", order):
            raise GraphError(
                400, "ErrorInvalidProperty", "The property is not supported in a delta $orderby."
            )

    def _delta_link(self, box: User, coll: str) -> str:
        return f"{self.base}/v1.0/users/{quote(box.address)}" + (
            f"/mailFolders/{coll}/messages/delta" if coll != "calendar" else "/calendarView/delta"
        )

    def _round(self, box: User, coll: str, params: dict[str, str]) -> dict[str, Any]:
        """The state of the round a request asks for: a new one, the next round after a
        deltaLink, or the next page of a round (a nextLink)."""
        if "$deltatoken" in params:
            state = self.delta_tokens.get(params["$deltatoken"])
            if state is None or state["user"] != box.address or state["coll"] != coll:
                if self.maintenance:
                    here = self._delta_link(box, coll) + "?$deltatoken="
                    raise GraphError(410, "resyncRequired", "Resync required.", {"Location": here})
                raise _sync_state_not_found()
            return {
                **state,
                "since": state["upto"],
                "upto": self.seq,
                "offset": 0,
                "empty": self.empty_pages,
            }
        if "$skiptoken" in params:
            state = self.delta_tokens.get(params["$skiptoken"])
            if state is None or state["user"] != box.address:
                raise _sync_state_not_found()
            return state
        state = {
            "user": box.address,
            "coll": coll,
            "since": None,
            "upto": self.seq,
            "offset": 0,
            "empty": self.empty_pages,
        }
        if coll == "calendar":
            if "startDateTime" not in params or "endDateTime" not in params:
                raise GraphError(
                    400,
                    "ErrorInvalidParameter",
                    "This request requires a time window specified by the query "
                    "string parameters StartDateTime and EndDateTime.",
                )
            state["window"] = (params["startDateTime"], params["endDateTime"])
        else:  # the query options are kept in the links' tokens [message-delta]
            state["query"] = {
                k: v
                for k, v in params.items()
                if k in ("$select", "$expand", "$filter", "$orderby")
            }
        return state

    def _delta(
        self,
        box: User,
        coll: str,
        params: dict[str, str],
        prefer: dict[str, str],
        applied: dict[str, str],
    ) -> dict[str, Any]:
        with self.lock:
            state = self._round(box, coll, params)
            size = int(prefer.get("odata.maxpagesize", DEFAULT_PAGE))
            applied["Preference-Applied"] = f"odata.maxpagesize={size}"
            if coll != "calendar":
                body_applied(prefer, applied)
            link = self._delta_link(box, coll)
            if state.get("empty"):  # an empty page that still carries a nextLink
                token = secrets.token_urlsafe(24)
                self.delta_tokens[token] = {**state, "empty": False}
                return {
                    "value": [],
                    "@odata.nextLink": f"{link}?{urlencode({'$skiptoken': token})}",
                }
            changes = self._changes(box, coll, state)
            page = changes[state["offset"] : state["offset"] + size]
            token = secrets.token_urlsafe(24)
            out: dict[str, Any] = {"@odata.context": f"{link}"}
            if state["offset"] + size < len(changes):
                self.delta_tokens[token] = {**state, "offset": state["offset"] + size}
                out["@odata.nextLink"] = f"{link}?{urlencode({'$skiptoken': token})}"
            else:
                self.delta_tokens[token] = {**state, "offset": 0}
                out["@odata.deltaLink"] = f"{link}?{urlencode({'$deltatoken': token})}"
            out["value"] = [self._delta_entry(r, coll, state, prefer) for r in page]
            return out

    def _in_window(self, record: Record, state: dict[str, Any]) -> bool:
        start, end = (dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in state["window"])
        if start.tzinfo is None:
            start, end = start.replace(tzinfo=dt.UTC), end.replace(tzinfo=dt.UTC)
        return (
            parse_graph_time(record.resource["start"]) < end
            and parse_graph_time(record.resource["end"]) > start
        )

    def _changes(self, box: User, coll: str, state: dict[str, Any]) -> list[Record]:
        records = sorted(box.collection(coll).values(), key=lambda r: r.seq)
        since, upto = state["since"], state["upto"]
        query = state.get("query") or {}
        flt = query.get("$filter") or ""
        m = re.match(r"receivedDateTime (ge|gt) (\S+)", flt)
        floor = m.group(2) if m else None
        if since is None:
            found = [r for r in records if not r.removed and r.seq <= upto]
            if floor:
                found = [r for r in found if r.resource["receivedDateTime"] >= floor]
                found = found[-5000:]  # [message-delta: $filter caps the results at 5,000]
        else:
            found = [r for r in records if since < r.seq <= upto]
            if self.replays:  # order is not guaranteed and changes may come again
                found = [r for r in records if r.seq <= since][-2:] + found
        if coll == "calendar":
            return [r for r in found if r.removed or self._in_window(r, state)]
        if query.get("$orderby"):  # receivedDateTime desc, the only order delta supports
            return sorted(
                found, key=lambda r: r.resource.get("receivedDateTime") or "", reverse=True
            )
        return self._shuffled(found, f"{box.address}:{coll}:{since}:{upto}")

    def _shuffled(self, records: list[Record], round_key: str) -> list[Record]:
        """A delta round's messages in no particular order: "If you don't include an $orderby
        expression, the return order isn't guaranteed" [MGD concepts/delta-query-messages.md,
        api-reference/v1.0/api/message-delta.md]. The order is drawn from ``shuffle_seed`` and
        the round (so every page of a round agrees, and runs repeat), and is never oldest
        first."""
        if self.shuffle_seed is None or len(records) < 2:
            return records
        out = list(records)
        random.Random(f"{self.shuffle_seed}:{round_key}").shuffle(out)

        def age(r: Record) -> tuple[str, int]:
            return (r.resource.get("receivedDateTime") or "", r.seq)

        if out == sorted(out, key=age):  # drawn oldest first after all: rotate it
            out = out[1:] + out[:1]
        return out

    def _delta_entry(
        self, record: Record, coll: str, state: dict[str, Any], prefer: dict[str, str]
    ) -> dict[str, Any]:
        if record.removed:
            rid = record.immutable_id if coll == "calendar" else self._id(record, prefer)
            return {"id": rid, "@removed": {"reason": "deleted"}}
        if coll == "calendar":
            return self._event(record, prefer)
        return self._message(record, state.get("query") or {}, prefer)
