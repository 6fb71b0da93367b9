"""A message's MIME content: ``GET /users/{id}/messages/{id}/$value``, and messages seeded
from MIME bytes.

- "To get the MIME content of the specified message": ``GET /me/messages/{id}/$value``,
  ``GET /users/{id | userPrincipalName}/messages/{id}/$value``, and the same under
  ``/mailFolders/{id}``; "Specifying the ``$value`` parameter returns the message content in
  MIME format, and not a message resource", answered ``200 OK`` with ``Content-type:
  text/plain`` [MGD api-reference/v1.0/api/message-get.md, "HTTP request", "Response",
  example 4]. An id the mailbox does not have is 404 ``ErrorItemNotFound`` in Graph's error
  shape, as for the message itself.
- "Even though Outlook does not save messages in MIME format", ``$value`` gives "an Outlook
  message body in MIME format" [MGD concepts/outlook-get-mime-message.md]: Exchange renders
  the stored item as MIME. A message seeded as JSON (:meth:`Mail.deliver`) is rendered here
  from its properties (From, To, Cc, Bcc, Subject, Date as ``sentDateTime``, Message-ID as
  ``internetMessageId``, its internet headers, and its body as text and HTML), the way the
  documented example reads ("The MIME content begins with the MIME-Version header" of the
  body's parts, after the message's own headers). PidTagSensitivity becomes the
  ``Sensitivity:`` header it corresponds to ("This field corresponds to the Sensitivity:
  mail header", Exchange's urn:schemas:mailheader:sensitivity, learn.microsoft.com/
  previous-versions/office/developer/exchange-server-2007/aa564493; values as RFC 2156).
  A message seeded from MIME (:meth:`MimeContent.deliver_mime`) is served with the bytes it
  arrived with.
- Permissions: Mail.Read or Mail.ReadWrite. Mail.ReadBasic reads "the signed-in user's
  mailbox except body, previewBody, attachments and any extended properties" [MGD
  concepts/permissions-reference.md, Mail.ReadBasic], and MIME content is all of those.

:meth:`MimeContent.deliver_mime` seeds a message from RFC 5322 bytes: its header fields
become the JSON properties message delta serves (``from``, ``sender``, ``toRecipients``,
``ccRecipients``, ``bccRecipients``, ``subject``, ``sentDateTime`` from Date,
``internetMessageId``, ``internetMessageHeaders`` for mail that came from outside,
``hasAttachments``), its text body ``body`` and ``bodyPreview``, its ``Sensitivity:``
header PidTagSensitivity.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import uuid
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, parsedate_to_datetime
from typing import Any

from ..http import Response
from .mail import SENSITIVITY_TAG, Mail, body_fields, sensitivity_property
from .odata import property_key
from .state import GraphCall, item_not_found

MIME_TYPE = "text/plain"  # [message-get.md, example 4: "Content-type: text/plain"]
_VALUE = re.compile(r"^(?:/mailFolders/(?P<folder>[^/]+))?/messages/(?P<id>[^/]+)/\$value$")
_TAG = re.compile(r"<[^<>]*>")
# the Sensitivity header's values (RFC 2156) and PidTagSensitivity's (0 normal .. 3)
HEADER_SENSITIVITY = {"personal": 1, "private": 2, "company-confidential": 3}
SENSITIVITY_HEADER = {n: v.title() for v, n in HEADER_SENSITIVITY.items()}
# fields the rendering writes from the message's properties, never from its headers
_RENDERED = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _recipients(msg: EmailMessage, name: str) -> list[dict[str, Any]]:
    """A header's addresses as Graph recipients (``{"emailAddress": {name, address}}``)."""
    values = [str(v) for v in msg.get_all(name, [])]
    return [
        {"emailAddress": {"name": display or address, "address": address}}
        for display, address in getaddresses(values)
        if address
    ]


def _text_of(msg: EmailMessage) -> str:
    """The text a reader sees: the text/plain body, else the HTML one without its markup."""
    try:
        part = msg.get_body(("plain", "html"))
        content = part.get_content() if part is not None else ""
    except (KeyError, LookupError, ValueError):
        return ""
    if part is not None and part.get_content_subtype() == "html":
        content = html.unescape(_TAG.sub(" ", content))
    return str(content).replace("\r\n", "\n")


def resource_from_mime(data: bytes, folder: str, received: dt.datetime) -> dict[str, Any]:
    """The message resource of RFC 5322 bytes, as Exchange stores a message delivered to
    ``folder`` at ``received`` (see the module's docstring)."""
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    try:
        sent = parsedate_to_datetime(str(msg["Date"])) if msg["Date"] else received
    except (TypeError, ValueError):
        sent = received
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=dt.UTC)
    sender = _recipients(msg, "From")
    mid = str(msg["Message-ID"] or "").strip() or f"<{uuid.uuid4().hex}@emulator.test>"
    resource: dict[str, Any] = {
        "createdDateTime": _iso(received),
        "lastModifiedDateTime": _iso(received),
        "receivedDateTime": _iso(received),
        "sentDateTime": _iso(sent),
        "hasAttachments": any(True for _ in msg.iter_attachments()),
        "internetMessageId": mid,
        "subject": str(msg["Subject"] or ""),
        **body_fields(_text_of(msg)),
        "importance": "normal",
        "isRead": False,
        "isDraft": False,
        "categories": [],
        "sender": next(iter(_recipients(msg, "Sender") or sender), None),
        "from": next(iter(sender), None),
        "toRecipients": _recipients(msg, "To"),
        "ccRecipients": _recipients(msg, "Cc"),
        "bccRecipients": _recipients(msg, "Bcc"),
        "_mime": bytes(data),
    }
    if folder != "sentitems":  # internet headers only on mail that came from outside
        resource["internetMessageHeaders"] = [
            {"name": name, "value": str(value)} for name, value in msg.items()
        ]
    level = HEADER_SENSITIVITY.get(" ".join(str(msg["Sensitivity"] or "").split()).lower())
    if level is not None:
        resource["_extended"] = [sensitivity_property(level)]
    return resource


def _address(recipient: dict[str, Any] | None) -> str | Address | None:
    info = (recipient or {}).get("emailAddress") or {}
    address, name = str(info.get("address") or ""), str(info.get("name") or "")
    if not address:
        return None
    try:
        return Address(display_name="" if name == address else name, addr_spec=address)
    except (ValueError, IndexError):
        return address


def render_mime(resource: dict[str, Any]) -> bytes:
    """A MIME rendering of a message resource seeded as JSON (see the module's docstring)."""
    msg = EmailMessage(policy=policy.SMTP)
    sender = _address(resource.get("from"))
    if sender is not None:
        msg["From"] = sender
    for field, key in (("To", "toRecipients"), ("Cc", "ccRecipients"), ("Bcc", "bccRecipients")):
        people = [a for a in (_address(r) for r in resource.get(key) or []) if a is not None]
        if people:
            msg[field] = people
    msg["Subject"] = str(resource.get("subject") or "")
    sent = str(resource.get("sentDateTime") or resource.get("receivedDateTime") or "")
    if sent:
        msg["Date"] = format_datetime(dt.datetime.fromisoformat(sent.replace("Z", "+00:00")))
    if resource.get("internetMessageId"):
        msg["Message-ID"] = str(resource["internetMessageId"])
    seen: set[str] = set()
    for header in resource.get("internetMessageHeaders") or []:
        name = str(header.get("name", ""))
        if name and name.lower() not in _RENDERED and name.lower() not in seen:
            seen.add(name.lower())
            msg[name] = str(header.get("value", ""))
    for prop in resource.get("_extended") or []:
        if property_key(prop["id"]) == ("integer", str(SENSITIVITY_TAG)):
            word = SENSITIVITY_HEADER.get(int(prop["value"]))
            if word and "sensitivity" not in seen:
                msg["Sensitivity"] = word
    text = str(resource.get("_text") or "")
    msg.set_content(text)
    msg.add_alternative(str((resource.get("body") or {}).get("content") or ""), subtype="html")
    return msg.as_bytes()


class MimeContent(Mail):
    def deliver_mime(
        self,
        user: str,
        data: bytes,
        folder: str = "inbox",
        *,
        received: dt.datetime | None = None,
        conversation_id: str | None = None,
        categories: list[str] = (),  # type: ignore[assignment]
    ) -> str:
        """A message delivered from RFC 5322 bytes into ``folder`` at ``received`` (default
        now); returns its immutable id. Its JSON properties are read from the bytes (see the
        module's docstring); ``$value`` serves the bytes themselves."""
        with self.lock:
            box = self.add_user(user)
            when = (received or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
            resource = resource_from_mime(data, folder, when)
            resource["conversationId"] = conversation_id or "AAQk" + uuid.uuid4().hex
            resource["categories"] = list(categories)
            return self._store(box, folder, resource)

    def _mime_route(self, call: GraphCall) -> Response | None:
        """``GET …/messages/{id}/$value`` (and under ``/mailFolders/{id}``)."""
        m = _VALUE.match(call.rest)
        if not m or call.method != "GET":
            return None
        call.need("Mail.Read", "Mail.ReadWrite")
        record = self._find_message(call.box, m.group("id"))
        folder = m.group("folder")
        if folder is not None:  # the message must be in that folder
            held = call.box.collections.get(folder.lower(), {}).get(record.immutable_id)
            if held is None or held.removed:
                raise item_not_found()
        data = record.resource.get("_mime") or render_mime(record.resource)
        return Response(200, bytes(data), content_type=MIME_TYPE)
