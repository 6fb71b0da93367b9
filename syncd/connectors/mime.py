"""RFC 5322 / MIME bytes -> :class:`MailItem` (standard library ``email``, ``policy.default``).

Shared by every connector that sees raw messages (local Maildir and mbox, IMAP, Gmail raw).
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict

from syncd.connectors.ical import invitations_from_ical
from syncd.items import MailItem, Participant, ParticipantRole
from syncd.matching.addresses import (
    normalize_address,
    normalize_message_id,
    parse_address_list,
)


@functools.lru_cache(maxsize=2048)
def _parsed_header(name: str, value: str) -> Any:
    return policy.default.header_fetch_parse(name, value)


class _MemoPolicy(EmailPolicy):
    """``policy.default``, with parsed headers memoised: the parser and ``get_content`` ask
    for Content-Type several times a message and the header registry parses it anew each
    time; the same (name, value) always parses to the same read-only header object."""

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if hasattr(value, "name"):
            return value
        return _parsed_header(name, value)


_PARSER = BytesParser(policy=_MemoPolicy())
_ADDRESS_HEADERS: tuple[tuple[str, ParticipantRole], ...] = (
    ("from", "from"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
)
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response-suppress")
_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_WS_RE = re.compile(r"\s+")
SNIPPET_CHARS = 280


class UnreadableMessage(ValueError):
    """The bytes are not an email message syncd can log; the reason says why."""


def clean(text: str) -> str:
    """Raw 8-bit bytes in a header come back as surrogates: read them as the UTF-8 they
    almost always are (else U+FFFD), and drop NULs, so the text can be stored anywhere."""
    if text.isascii():
        return text.replace("\x00", "")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def _header(msg: EmailMessage, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:  # a header the policy cannot parse is as good as absent
        return None
    if value is None:
        return None
    return clean(str(value)).strip()


def _raw_headers(msg: EmailMessage) -> dict[str, str]:
    """The first value of every header, unfolded, without the policy's (costly) parsing:
    enough for headers that are tokens or Message-IDs rather than encoded text."""
    raw: dict[str, str] = {}
    for name, value in msg.raw_items():
        raw.setdefault(name.lower(), clean(" ".join(str(value).split())))
    return raw


def _addresses(msg: EmailMessage, name: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for raw in msg.get_all(name, failobj=[]) or []:
        try:
            parsed = [
                (clean(a.display_name), normalize_address(clean(f"{a.username}@{a.domain}")))
                for a in getattr(raw, "addresses", ())
                if a.username and a.domain
            ]
        except Exception:  # a malformed address header: read it the lenient way below
            parsed = []
        found.extend((n, a) for n, a in parsed if a)
        if not parsed:
            found.extend(parse_address_list(clean(str(raw))))
    return found


def message_ids(value: str | None) -> list[str]:
    if not value:
        return []
    ids = _MSGID_RE.findall(value)
    if not ids and value.strip():
        ids = [value.strip()]
    return [normalize_message_id(i) for i in ids if normalize_message_id(i)]


def _date(value: str | None, fallback: datetime) -> datetime:
    if value:
        try:
            dt = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            dt = None
        if dt is not None:
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return fallback


def _text_body(msg: EmailMessage, content_type: str) -> str:
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
        text = re.sub(r"<[^>]+>", " ", text)
    return clean(text)


def _calendar_parts(msg: EmailMessage) -> list[bytes]:
    parts = []
    for part in msg.walk():
        if part.get_content_type() == "text/calendar" or part.get_filename("").endswith(".ics"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes) and payload.strip():
                parts.append(payload)
    return parts


def stable_key(parts: list[str]) -> str:
    """A key for a message with no Message-ID: the same headers give the same key anywhere."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()
    return f"hash:{digest[:40]}"


class BulkSignals(TypedDict):
    list_id: str | None
    precedence: str | None
    auto_submitted: str | None
    autoreply_header: str | None


def bulk_signals(headers: dict[str, str]) -> BulkSignals:
    """The MailItem fields that mark bulk mail and auto-replies, from lower-cased headers."""
    return {
        "list_id": headers.get("list-id"),
        "precedence": headers.get("precedence", "").lower() or None,
        "auto_submitted": headers.get("auto-submitted", "").lower() or None,
        "autoreply_header": next((h for h in _AUTOREPLY_HEADERS if h in headers), None),
    }


def identity(
    message_id: str | None,
    in_reply_to: list[str],
    references: list[str],
    participants: list[Participant],
    date_text: str,
    subject: str,
) -> tuple[str, str, tuple[str, ...]]:
    """(key, thread key, related keys) of a message, by the same rules for every connector:
    the key is its Message-ID (else a stable hash of its headers); the thread is the root of
    its References (else In-Reply-To, else itself)."""
    if message_id:
        key = f"mid:{message_id}"
    else:
        addrs = ",".join(sorted(f"{p.role}:{p.address}" for p in participants))
        key = stable_key([addrs, date_text, subject, ",".join(in_reply_to)])
    related = tuple(dict.fromkeys(f"mid:{m}" for m in [*references, *in_reply_to]))
    root = references[0] if references else (in_reply_to[0] if in_reply_to else None)
    return key, f"mid:{root}" if root else key, related


def parse_message(data: bytes, provider_id: str, fallback_time: datetime) -> MailItem:
    """Parse one message. Raises :class:`UnreadableMessage` when it cannot be logged at all."""
    if not data.strip():
        raise UnreadableMessage("empty message")
    try:
        msg = _PARSER.parsebytes(data)
    except Exception as exc:  # the parser is lenient; this is truly broken input
        raise UnreadableMessage(f"MIME parser failed: {exc}") from exc
    assert isinstance(msg, EmailMessage)
    if not msg.keys():
        raise UnreadableMessage("no header fields: not an RFC 5322 message")

    participants: list[Participant] = []
    seen: set[tuple[str, str]] = set()
    for header, role in _ADDRESS_HEADERS:
        for name, address in _addresses(msg, header):
            if (address, role) not in seen:
                seen.add((address, role))
                participants.append(Participant(address=address, name=name, role=role))
    if not participants:
        raise UnreadableMessage("no From, To, Cc or Bcc address that can be read")

    raw = _raw_headers(msg)
    subject = _WS_RE.sub(" ", _header(msg, "subject") or "").strip()
    sent_at = _date(raw.get("date"), fallback_time)
    own_ids = message_ids(raw.get("message-id"))
    message_id = own_ids[0] if own_ids else None
    in_reply_to = message_ids(raw.get("in-reply-to"))
    references = message_ids(raw.get("references"))
    key, thread_key, related = identity(
        message_id, in_reply_to, references, participants, raw.get("date", ""), subject
    )

    content_type = raw.get("content-type", "").lower()
    body = _text_body(msg, content_type)
    snippet = _WS_RE.sub(" ", body).strip()[:SNIPPET_CHARS]
    sensitivity = raw.get("sensitivity", "").lower()
    labels = tuple(
        label.strip() for label in raw.get("x-gmail-labels", "").split(",") if label.strip()
    )

    invitations = []
    if "multipart" in content_type or "calendar" in content_type:
        for payload in _calendar_parts(msg):
            invitations.extend(invitations_from_ical(payload, provider_id))

    return MailItem(
        key=key,
        provider_id=provider_id,
        message_id=message_id,
        subject=subject,
        sent_at=sent_at.astimezone(UTC),
        participants=tuple(participants),
        thread_key=thread_key,
        related_keys=related,
        snippet=snippet,
        body=body,
        **bulk_signals(raw),
        private=sensitivity in ("private", "company-confidential", "confidential"),
        labels=labels,
        invitations=tuple(invitations),
    )
