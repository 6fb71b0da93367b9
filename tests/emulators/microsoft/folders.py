"""Graph reads of a mailbox's containers, what ``syncd doctor`` and ``syncd audit`` ask:

- ``GET /mailFolders/{id}``: a well-known folder as a ``mailFolder`` (``displayName``,
  ``totalItemCount``, ``unreadItemCount``, ``childFolderCount``) [MGD
  api-reference/v1.0/api/mailfolder-get.md, resources/mailfolder.md];
- ``GET /mailFolders/{id}/messages``: its messages, ``$select``, ``$top`` (default 10),
  ``$filter`` on ``receivedDateTime`` (``ge``/``gt``/``le``/``lt`` terms joined by ``and``),
  paged by ``@odata.nextLink`` with ``$skip`` [MGD api-reference/v1.0/api/user-list-messages.md,
  "Using query parameters"];
- ``GET /calendar``: the user's primary calendar as a ``calendar`` (``canEdit``: "true if
  the user can write to the calendar, false otherwise") [MGD api-reference/v1.0/api/
  calendar-get.md, resources/calendar.md]; :attr:`User.calendar_can_edit` makes it
  read-only, as a calendar shared with the user for reading is.

Every property named is checked against msgraph-sdk's generated models (:mod:`.schema`), as
the other routes do. Permissions: the folder reads need Mail.ReadBasic, Mail.Read or
Mail.ReadWrite; the calendar Calendars.ReadBasic, Calendars.Read or Calendars.ReadWrite
(the "Permissions" tables of those pages)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import quote, urlencode

from ..http import Response
from .calendar import Calendar
from .mail import WELL_KNOWN_FOLDERS, Mail
from .odata import check_query, selected
from .state import GraphCall, GraphError, Record, User, item_not_found

MAIL_READ = ("Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite")
CALENDAR_READ = ("Calendars.ReadBasic", "Calendars.Read", "Calendars.ReadWrite")
DEFAULT_TOP, MOST_TOP = 10, 1000  # [user-list-messages.md: $top, page sizes]
FOLDER_NAMES = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
}
_TERM = re.compile(r"\s*receivedDateTime\s+(ge|gt|le|lt)\s+(\S+)\s*", re.IGNORECASE)
_COMPARE = {
    "ge": lambda a, b: a >= b,
    "gt": lambda a, b: a > b,
    "le": lambda a, b: a <= b,
    "lt": lambda a, b: a < b,
}


def _when(value: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _received_filter(flt: str | None) -> list[tuple[str, dt.datetime]]:
    """``receivedDateTime op value`` terms joined by ``and``; anything else is refused (the
    emulator evaluates no other $filter)."""
    if not flt:
        return []
    terms = []
    for term in re.split(r"\s+and\s+", flt.strip(), flags=re.IGNORECASE):
        m = _TERM.fullmatch(term)
        if not m:
            raise GraphError(
                501, "NotImplemented", "The emulator evaluates only receivedDateTime terms."
            )
        try:
            terms.append((m.group(1).lower(), _when(m.group(2))))
        except ValueError:
            raise GraphError(
                400, "BadRequest", f"Invalid filter clause: '{m.group(2)}' is not a date."
            ) from None
    return terms


class Folders(Mail, Calendar):
    def _folders_route(self, call: GraphCall) -> Response | None:
        if call.method != "GET":
            return None
        if call.rest == "/calendar":
            call.need(*CALENDAR_READ)
            check_query(call.params, {"$select"}, "calendar")
            return Response(200, self._calendar(call.box, call.params))
        m = re.match(r"^/mailFolders/(?P<folder>[^/]+)(?P<messages>/messages)?$", call.rest)
        if not m:
            return None
        call.need(*MAIL_READ)
        folder = m.group("folder").lower()
        if folder not in WELL_KNOWN_FOLDERS:
            raise item_not_found()
        with self.lock:
            records = [r for r in call.box.collection(folder).values() if not r.removed]
            if m.group("messages"):
                check_query(call.params, {"$select", "$filter", "$top", "$skip"}, "message")
                return Response(200, self._listing(call, folder, records))
            check_query(call.params, {"$select"}, "mailFolder")
            return Response(200, self._folder(folder, records, call.params))

    def _folder(self, folder: str, records: list[Record], query: dict[str, str]) -> dict[str, Any]:
        resource = {
            "id": "AAMkAGI2" + folder,
            "displayName": FOLDER_NAMES[folder],
            "parentFolderId": "AAMkAGI2root",
            "childFolderCount": 0,
            "unreadItemCount": sum(1 for r in records if not r.resource.get("isRead")),
            "totalItemCount": len(records),
            "isHidden": False,
        }
        return {k: resource[k] for k in ["id", *selected("mailFolder", resource, query)]}

    def _listing(self, call: GraphCall, folder: str, records: list[Record]) -> dict[str, Any]:
        terms = _received_filter(call.params.get("$filter"))
        found = sorted(
            (
                r
                for r in records
                if all(
                    _COMPARE[op](_when(r.resource["receivedDateTime"]), when) for op, when in terms
                )
            ),
            key=lambda r: (r.resource["receivedDateTime"], r.seq),
            reverse=True,  # newest first, Outlook's default order
        )
        top = min(int(call.params.get("$top", DEFAULT_TOP)), MOST_TOP)
        skip = int(call.params.get("$skip", 0))
        page: dict[str, Any] = {
            "value": [self._message(r, call.params, call.prefer) for r in found[skip : skip + top]]
        }
        if skip + top < len(found):
            query = {k: v for k, v in call.params.items() if k != "$skip"}
            query["$skip"] = str(skip + top)
            page["@odata.nextLink"] = (
                f"{self.base}/v1.0/users/{quote(call.box.address)}/mailFolders/{folder}/messages?"
                + urlencode(query)
            )
        return page

    @staticmethod
    def _calendar(box: User, query: dict[str, str]) -> dict[str, Any]:
        resource = {
            "id": "AAMkAGI2cal" + box.object_id,
            "name": "Calendar",
            "color": "auto",
            "isDefaultCalendar": True,
            "canEdit": box.calendar_can_edit,
            "canShare": box.calendar_can_edit,
            "canViewPrivateItems": True,
            "owner": {"name": box.address.split("@")[0].title(), "address": box.address},
        }
        return {k: resource[k] for k in ["id", *selected("calendar", resource, query)]}
