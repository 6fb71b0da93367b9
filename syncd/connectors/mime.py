"""RFC 5322 / MIME bytes -> :class:`MailItem` (standard library ``email``, ``policy.default``).

Shared by every connector that sees raw messages (local Maildir and mbox, IMAP, Gmail raw).
The parts live beside this module: the ``[limits]`` checked before and while the parser
reads a message in :mod:`.mime_limits`, the reading of header fields and the identity rules
every mail connector shares in :mod:`.mime_headers` (``clean``, ``message_ids``,
``identity``, ``bulk_signals`` and the rest stay importable from here).

The limits are checked before ``email`` sees the bytes (size, header block), the MIME parts
and their nesting while the parser reads them, and the whole parse runs under the
``parse_seconds`` bound. A message that cannot be logged raises
:class:`UnreadableMessage`; :func:`read_message` turns it into a quarantine entry.

The fast path (:mod:`.mime_fast`) reads what it provably reads the same way without the
standard library's parsers: a single-part ``text/plain`` message without building an
``EmailMessage``, and plain Subjects and address lists without ``policy.default``'s header
parser; everything else (multipart mail, invitations, encoded or hostile headers) takes the
full parse. ``parse_message(..., fast=False)`` is the full parse alone, the reference the
fast path is tested against.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import datetime
from email.message import EmailMessage

from syncd.config import LimitSettings, ReadLimits
from syncd.connectors.base import Reread, RereadContext
from syncd.connectors.ical import invitations_from_ical
from syncd.connectors.mime_fast import PlainMessage, split_plain
from syncd.connectors.mime_headers import BulkSignals as BulkSignals
from syncd.connectors.mime_headers import (
    addresses,
    fields_of,
    participants,
    raw_headers,
    sent_at,
    text_header,
)
from syncd.connectors.mime_headers import bulk_signals as bulk_signals
from syncd.connectors.mime_headers import clean as clean
from syncd.connectors.mime_headers import identity as identity
from syncd.connectors.mime_headers import mail_date as mail_date
from syncd.connectors.mime_headers import message_ids as message_ids
from syncd.connectors.mime_headers import stable_key as stable_key
from syncd.connectors.mime_limits import check_fields, read_mime
from syncd.connectors.mime_limits import check_message as check_message
from syncd.connectors.reasons import describe, quarantined
from syncd.items import MailItem, MeetingItem, Participant, Quarantined
from syncd.limits import OverLimit, check, limits_or_default, run_bounded

log = logging.getLogger("syncd.mime")

_WS_RE = re.compile(r"\s+")
_TAG_RE = re.compile(r"<[^<>]*>")  # never [^>]+: quadratic on a body of "<<<<..."
# a header line of the obsolete syntax (RFC 5322 4.5): blanks between the name and the colon
_HEADER_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_PRIVATE_SENSITIVITY = ("private", "company-confidential", "confidential")


class UnreadableMessage(ValueError):
    """The bytes are not an email message syncd can log; the reason says why."""


class MessageOverLimit(UnreadableMessage):
    """A message over one of the ``[limits]``; ``limit`` names it."""

    def __init__(self, over: OverLimit) -> None:
        super().__init__(str(over))
        self.limit = over.limit


def read_message(
    data: bytes,
    provider_id: str,
    fallback_time: datetime,
    *,
    limits: LimitSettings | None = None,
) -> MailItem | Quarantined:
    """:func:`parse_message` that never raises: a message that cannot be read, or is over a
    limit, is a quarantine entry with its reason and (up to 10 MB) its bytes, format
    ``rfc822``. Read with ``ReadLimits(keep_raw=True)`` (a dropbox's), the item keeps the
    message's bytes: ``syncd.dropbox`` unpacks the forwards in them."""
    try:
        item = parse_message(data, provider_id, fallback_time, limits=limits)
        if isinstance(limits, ReadLimits) and limits.keep_raw:
            return dataclasses.replace(item, raw=bytes(data))
        return item
    except UnreadableMessage as exc:
        return quarantined(provider_id, str(exc), data, "rfc822")
    except Exception as exc:  # parse_message wraps everything; this is a last guard
        return quarantined(provider_id, f"cannot be parsed: {describe(exc)}", data, "rfc822")


def parse_message(
    data: bytes,
    provider_id: str,
    fallback_time: datetime,
    *,
    limits: LimitSettings | None = None,
    fast: bool = True,
) -> MailItem:
    """Parse one message. Raises :class:`UnreadableMessage` when it cannot be logged at all,
    and nothing else: whatever the standard library raises on malformed input is read the
    lenient way (addresses by ``getaddresses``, a mended header block) or becomes the reason.

    ``limits`` (None: the defaults) are checked before the parser sees the data, and the
    parse stops after ``parse_seconds``: an item over a limit raises
    :class:`MessageOverLimit`, naming the limit. ``fast=False``: the full parse alone (the
    same item, slower; the tests compare the two)."""
    lim = limits_or_default(limits)
    try:
        check_message(data, lim)
        if not data or data.isspace():
            raise UnreadableMessage("empty message")
        return run_bounded(
            lim.parse_seconds, _parse_leniently, data, provider_id, fallback_time, lim, fast
        )
    except OverLimit as exc:
        raise MessageOverLimit(exc) from None


def repaired(data: bytes) -> bytes | None:
    """The message with its header block mended the lenient way: blanks before a header's
    colon dropped (``From  : ...``, RFC 5322 4.5) and lines that are no header field dropped
    (the strict parser ends the header block at the first such line), and a leading byte
    order mark. None if nothing changed."""
    text = data.removeprefix(b"\xef\xbb\xbf")  # a byte order mark some tools write
    cut = [i for i in (text.find(b"\r\n\r\n"), text.find(b"\n\n")) if i >= 0]
    end = min(cut) if cut else len(text)
    lines = text[:end].splitlines(keepends=True)
    kept: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if kept:
                kept.append(line)
            continue
        match = _HEADER_LINE.match(line)
        if match:
            kept.append(match.group(1) + b":" + line[match.end() :])
    mended = b"".join(kept) + text[end:]
    return mended if kept and mended != data else None


def _parse_leniently(
    data: bytes, provider_id: str, fallback_time: datetime, limits: LimitSettings, fast: bool
) -> MailItem:
    """:func:`_parse`, then of the mended message when that cannot be read (with the first
    reason when neither can); anything else the parser raises becomes the reason."""
    try:
        return _parse(data, provider_id, fallback_time, limits, fast)
    except OverLimit:
        raise
    except UnreadableMessage as first:
        mended = repaired(data)
        if mended is None:
            raise
        try:
            return _parse(mended, provider_id, fallback_time, limits, fast)
        except OverLimit:
            raise
        except Exception:
            raise first from None
    except RecursionError:
        raise UnreadableMessage("MIME parts nested too deeply to read") from None
    except Exception as exc:
        raise UnreadableMessage(f"cannot be parsed: {describe(exc)}") from exc


def _message(data: bytes, limits: LimitSettings) -> EmailMessage:
    """The parsed message (within the limits); :class:`UnreadableMessage` if it is none."""
    try:
        msg = read_mime(data, limits)
    except OverLimit:
        raise
    except Exception as exc:  # the parser is lenient; this is truly broken input
        raise UnreadableMessage(f"MIME parser failed: {describe(exc)}") from exc
    if not msg.keys():
        raise UnreadableMessage("no header fields: not an RFC 5322 message")
    return msg


def _within_limits(plain: PlainMessage, limits: LimitSettings) -> PlainMessage:
    """A message the fast path split, held to the limits as :func:`read_mime` holds it."""
    mime_parts, mime_depth = limits.mime_parts, limits.mime_depth
    check("mime_parts", 1, mime_parts, f"the message has more than {mime_parts} MIME parts")
    check("mime_depth", 1, mime_depth, f"its MIME parts are nested more than {mime_depth} deep")
    check_fields(plain.lines, limits, "the message")
    return plain


def _parse(
    data: bytes, provider_id: str, fallback_time: datetime, limits: LimitSettings, fast: bool
) -> MailItem:
    plain = split_plain(data) if fast else None
    msg: EmailMessage | PlainMessage = (
        _within_limits(plain, limits) if plain else _message(data, limits)
    )
    fields = msg.fields if isinstance(msg, PlainMessage) else fields_of(msg)
    people = participants(fields, fast=fast)
    if not people:
        raise UnreadableMessage("no From, To, Cc or Bcc address that can be read")
    raw = raw_headers(fields)
    subject = _WS_RE.sub(" ", text_header(fields, "subject", fast=fast) or "").strip()
    own_ids = message_ids(raw.get("message-id"))
    message_id = own_ids[0] if own_ids else None
    key, thread_key, related = identity(
        message_id,
        message_ids(raw.get("in-reply-to")),
        message_ids(raw.get("references")),
        people,
        raw.get("date", ""),
        subject,
    )
    content_type = raw.get("content-type", "").lower()
    return MailItem(
        key=key,
        provider_id=provider_id,
        message_id=message_id,
        subject=subject,
        sent_at=sent_at(fields, raw.get("date"), fallback_time),
        participants=tuple(people),
        thread_key=thread_key,
        related_keys=related,
        body=_text_body(msg, content_type),
        **bulk_signals(raw),
        private=raw.get("sensitivity", "").lower() in _PRIVATE_SENSITIVITY,
        labels=tuple(
            label.strip() for label in raw.get("x-gmail-labels", "").split(",") if label.strip()
        ),
        invitations=tuple(_invitations(msg, content_type, provider_id, limits)),
        reply_to=tuple(
            Participant(address=address, name=name, role="reply-to")
            for name, address in addresses(fields, "reply-to", fast=fast)
        ),
    )


# --- the body and its calendar parts ----------------------------------------------------------


def _text_body(msg: EmailMessage | PlainMessage, content_type: str) -> str:
    try:
        if isinstance(msg, PlainMessage):  # split and decoded as get_content decodes it
            return clean(msg.text)
        return _text_of(msg, content_type)
    except Exception:  # a body that cannot be decoded: the message is logged without it
        return ""


def _text_of(msg: EmailMessage, content_type: str) -> str:
    part: EmailMessage | None
    if not content_type or content_type.startswith("text/plain"):
        part = msg  # a plain single-part message: no need to walk a MIME tree
    else:
        try:
            part = msg.get_body(preferencelist=("plain", "html"))  # type: ignore[assignment]
        except Exception:
            part = None
    if part is None:
        return ""
    try:
        text = part.get_content()
    except Exception:
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(text, str):
        return ""
    if part.get_content_subtype() == "html":
        text = _TAG_RE.sub(" ", text)
    return clean(text)


def _calendar_parts(msg: EmailMessage) -> list[bytes]:
    parts = []
    for part in msg.walk():
        try:
            named = (part.get_filename("") or "").endswith(".ics")
            if part.get_content_type() == "text/calendar" or named:
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes) and payload.strip():
                    parts.append(payload)
        except Exception:  # an attachment that cannot be read: the mail is still an email
            continue
    return parts


def _invitations(
    msg: EmailMessage | PlainMessage, content_type: str, provider_id: str, limits: LimitSettings
) -> list[MeetingItem]:
    """The meetings of the message's calendar parts. An invitation over a limit, or slower
    than half the bound, is left out: the mail around it is still an email."""
    if isinstance(msg, PlainMessage):  # the fast path splits only messages without one
        return []
    if "multipart" not in content_type and "calendar" not in content_type:
        return []
    found: list[MeetingItem] = []
    for payload in _calendar_parts(msg):
        try:
            found.extend(
                run_bounded(
                    limits.parse_seconds / 2,
                    invitations_from_ical,
                    payload,
                    provider_id,
                    limits=limits,
                )
            )
        except OverLimit as exc:  # parse_seconds
            log.warning("%s: its invitation is left out, the mail is logged: %s", provider_id, exc)
    return found


def reread(data: bytes, ctx: RereadContext) -> Reread:
    """The ``rfc822`` re-parser (``syncd quarantine retry``): a kept message read again."""
    item = parse_message(data, ctx.provider_id, ctx.received, limits=ctx.limits)
    return Reread((item,))
