"""Graph mail: messages in the well-known folders, seeded as a mail server would hold them.

- Bodies: ``body`` is HTML unless ``Prefer: outlook.body-content-type="text"`` (echoed in
  ``Preference-Applied``); ``bodyPreview`` is the first 255 characters of the text body.
- Item ids: each message has a REST id that changes when it moves to another folder and an
  immutable id that does not; answers carry the immutable one only to requests that send
  ``Prefer: IdType="ImmutableId"``.
- A message has no ``sensitivity``: it is served only as the MAPI property PidTagSensitivity
  through ``$expand=singleValueExtendedProperties``.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import secrets
import uuid
from typing import Any

from ..http import Response
from .odata import check_query, expanded, property_key, selected
from .state import GraphCall, GraphState, Record, User, item_not_found

WELL_KNOWN_FOLDERS = ("inbox", "sentitems", "drafts", "deleteditems", "archive")
# PidTagSensitivity: identifier 0x0036, PT_LONG (an "Integer" extended property), values
# SENSITIVITY_NONE, _PERSONAL, _PRIVATE, _COMPANY_CONFIDENTIAL (MicrosoftDocs/
# office-developer-client-docs docs/outlook/mapi/pidtagsensitivity-canonical-property.md);
# read through Graph as "{type} {proptag}" [MGD resources/extended-properties-overview.md]
SENSITIVITY_TAG = 0x36
SENSITIVITIES = {"normal": 0, "personal": 1, "private": 2, "confidential": 3}
PREVIEW_CHARS = 255  # bodyPreview: "The first 255 characters of the message body. It is in
# text format." [MGD api-reference/v1.0/resources/message.md]


def body_fields(text: str) -> dict[str, Any]:
    """A message body written as ``text``: served as HTML by default, as the text itself with
    ``Prefer: outlook.body-content-type="text"`` [MGD api-reference/v1.0/api/message-get.md],
    and its first 255 characters as ``bodyPreview`` [resources/message.md]."""
    markup = html.escape(text).replace("\n", "<br>\r\n")
    return {
        "body": {
            "contentType": "html",
            "content": f'<html>\r\n<head>\r\n<meta http-equiv="Content-Type" '
            f'content="text/html; charset=utf-8">\r\n</head>\r\n<body>\r\n{markup}\r\n'
            "</body>\r\n</html>\r\n",
        },
        "_text": text,
        "bodyPreview": text[:PREVIEW_CHARS],
    }


def sensitivity_property(level: str | int) -> dict[str, str]:
    """PidTagSensitivity as a single-value extended property: the value is a string, as Graph
    sends every extended property's value [resources/singlevaluelegacyextendedproperty.md]."""
    number = SENSITIVITIES[level.lower()] if isinstance(level, str) else int(level)
    if number not in SENSITIVITIES.values():
        raise ValueError(f"PidTagSensitivity is 0-3, not {level!r}")
    return {"id": f"Integer 0x{SENSITIVITY_TAG:04x}", "value": str(number)}


def body_applied(prefer: dict[str, str], applied: dict[str, str]) -> dict[str, str]:
    """Echo ``Prefer: outlook.body-content-type`` in ``Preference-Applied`` ("A
    Preference-Applied header is returned as confirmation if this Prefer header is
    specified", [MGD api-reference/v1.0/api/message-get.md])."""
    kind = prefer.get("outlook.body-content-type")
    if kind in ("text", "html"):
        done = [applied["Preference-Applied"]] if applied.get("Preference-Applied") else []
        applied["Preference-Applied"] = ", ".join([*done, f'outlook.body-content-type="{kind}"'])
    return applied


class Mail(GraphState):
    def deliver(
        self,
        user: str,
        folder: str = "inbox",
        *,
        subject: str,
        sender: tuple[str, str],
        to: list[tuple[str, str]],
        cc: list[tuple[str, str]] = (),  # type: ignore[assignment]
        message_id: str | None = None,
        conversation_id: str | None = None,
        sent: dt.datetime | None = None,
        body: str = "",
        sensitivity: str | int | None = None,
        categories: list[str] = (),  # type: ignore[assignment]
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        is_draft: bool = False,
    ) -> str:
        """A message in ``folder``; returns its immutable id. Internet headers exist only on
        messages that came from outside (not in Sent Items), as in Exchange Online. ``body`` is
        the text the sender wrote (served as HTML, or as text on request). ``sensitivity``
        (normal, personal, private, confidential, or 0-3) is set as the MAPI property
        PidTagSensitivity, never as a property of the message; None leaves it unset."""
        with self.lock:
            box = self.add_user(user)
            when = (sent or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
            iso = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            mid = message_id or f"<{uuid.uuid4().hex}@emulator.test>"

            def recipient(pair: tuple[str, str]) -> dict[str, Any]:
                return {"emailAddress": {"name": pair[0], "address": pair[1]}}

            resource: dict[str, Any] = {
                "createdDateTime": iso,
                "lastModifiedDateTime": iso,
                "receivedDateTime": iso,
                "sentDateTime": iso,
                "hasAttachments": False,
                "internetMessageId": mid,
                "subject": subject,
                **body_fields(body),
                "importance": "normal",
                "conversationId": conversation_id or "AAQk" + uuid.uuid4().hex,
                "isRead": False,
                "isDraft": is_draft,
                "categories": list(categories),
                "sender": recipient(sender),
                "from": recipient(sender),
                "toRecipients": [recipient(p) for p in to],
                "ccRecipients": [recipient(p) for p in cc],
                "bccRecipients": [],
            }
            if folder != "sentitems":
                resource["internetMessageHeaders"] = [
                    {"name": "Message-ID", "value": mid},
                    {"name": "Subject", "value": subject},
                    {"name": "From", "value": f'"{sender[0]}" <{sender[1]}>'},
                    *({"name": n, "value": v} for n, v in headers),
                ]
            if sensitivity is not None:
                resource["_extended"] = [sensitivity_property(sensitivity)]
            return self._store(box, folder, resource)

    def _store(self, box: User, folder: str, resource: dict[str, Any]) -> str:
        """A new message in ``folder`` with a new immutable id and REST id; returns the first."""
        with self.lock:
            immutable = "AAkAL" + secrets.token_urlsafe(24)
            rest = "AAMkA" + secrets.token_urlsafe(24)
            box.collection(folder)[immutable] = Record(immutable, rest, resource, self._next())
            return immutable

    def move(self, user: str, immutable_id: str, to_folder: str) -> None:
        """Move a message: the old folder reports it removed, the new one has it with a new
        REST id (the immutable id stays)."""
        with self.lock:
            box = self.users[user]
            for name, coll in box.collections.items():
                record = coll.get(immutable_id)
                if record and not record.removed and name in WELL_KNOWN_FOLDERS:
                    record.removed, record.seq = True, self._next()
                    box.collection(to_folder)[immutable_id] = Record(
                        immutable_id,
                        "AAMkA" + secrets.token_urlsafe(24),
                        dict(record.resource),
                        self._next(),
                    )
                    return
            raise KeyError(immutable_id)

    def update_message(self, user: str, immutable_id: str, **changes: Any) -> None:
        """Change a message's properties (``body`` as text, ``sensitivity`` as for
        :meth:`deliver`, None to unset it)."""
        if "body" in changes and isinstance(changes["body"], str):
            changes.update(body_fields(changes.pop("body")))
        with self.lock:
            for coll in self.users[user].collections.values():
                record = coll.get(immutable_id)
                if record and not record.removed:
                    if "sensitivity" in changes:
                        level = changes.pop("sensitivity")
                        others = [
                            p
                            for p in record.resource.get("_extended") or []
                            if property_key(p["id"]) != ("integer", str(SENSITIVITY_TAG))
                        ]
                        if level is not None:
                            others.append(sensitivity_property(level))
                        record.resource["_extended"] = others
                    record.resource.update(changes)
                    record.seq = self._next()

    def delete_message(self, user: str, immutable_id: str) -> None:
        with self.lock:
            for coll in self.users[user].collections.values():
                record = coll.get(immutable_id)
                if record and not record.removed:
                    record.removed, record.seq = True, self._next()

    def _find_message(self, box: User, some_id: str) -> Record:
        for coll_name, coll in box.collections.items():
            if coll_name == "calendar":
                continue
            for record in coll.values():
                if not record.removed and some_id in (record.immutable_id, record.rest_id):
                    return record
        raise item_not_found()

    @staticmethod
    def _id(record: Record, prefer: dict[str, str]) -> str:
        return record.immutable_id if prefer.get("idtype") == "ImmutableId" else record.rest_id

    def _message(
        self, record: Record, query: dict[str, str], prefer: dict[str, str]
    ) -> dict[str, Any]:
        resource = record.resource
        out: dict[str, Any] = {}
        for key in selected("message", resource, query):
            if key == "body" and prefer.get("outlook.body-content-type") == "text":
                out[key] = {"contentType": "text", "content": resource.get("_text", "")}
            elif key in resource:
                out[key] = resource[key]
        out.update(expanded("message", record, query.get("$expand")))
        return {"@odata.etag": f'W/"{record.seq}"', "id": self._id(record, prefer), **out}

    def _mail_route(self, call: GraphCall) -> Response | None:
        m = re.match(r"^/messages/(?P<id>[^/]+)$", call.rest)
        if not m or call.method != "GET":
            return None
        call.need("Mail.Read", "Mail.ReadWrite")
        check_query(call.params, {"$select", "$expand"}, "message")
        record = self._find_message(call.box, m.group("id"))
        answer = self._message(record, call.params, call.prefer)
        return Response(200, answer, body_applied(call.prefer, {}))
