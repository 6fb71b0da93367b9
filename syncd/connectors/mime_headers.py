"""A message's header fields as syncd reads them: text (RFC 2047 encoded words), addresses,
Message-IDs and dates, read the lenient way where the standard library's strict parser
fails on real-world mail; and the rules every mail connector shares for a message's
identity (key, thread, related keys) and its bulk-mail signals, whether the headers came as
raw bytes (local, IMAP, Gmail raw) or from a provider's API (Graph).

Parsing a header with ``policy.default`` costs about 6 us and 600 bytes a character, so a
header longer than :data:`POLICY_PARSE_CHARS` is read by the light parsers only
(``getaddresses``, ``decode_header``), and parsed headers are memoised (:data:`MEMO_POLICY`).
The values whose parse is known without it (plain ASCII or simply encoded text, plain
address lists) are read by :mod:`.mime_fast` first; ``fast=False`` reads every value the
full way (the reference the fast path is tested against).

The readers take a message's :data:`Fields` (:func:`fields_of` an ``EmailMessage``, or
those the fast path split without one), so that each field is looked up by name once.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, TypedDict

from syncd.connectors.mime_fast import POLICY_PARSE_CHARS as POLICY_PARSE_CHARS
from syncd.connectors.mime_fast import fast_addresses, fast_text
from syncd.items import EARLIEST, Participant, ParticipantRole, latest
from syncd.matching.addresses import normalize_address, normalize_message_id

# References kept: the root and the latest ones (clients trim them too, RFC 5322 3.6.4)
REFERENCES_KEPT = 100

_ADDRESS_HEADERS: tuple[tuple[str, ParticipantRole], ...] = (
    ("from", "from"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
)
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response-suppress")
_MSGID_RE = re.compile(r"<([^<>\s]+)>")
# an address read the lenient way must still look like one: no spaces, brackets or quotes
_PLAUSIBLE = re.compile(r"[^\s<>()\[\]\\,;:@\"]+@[^\s<>()\[\]\\,;:@\"]+")


# every value of every header field as it came, unparsed, in order, by lower-case name
Fields = Mapping[str, list[str]]
# the fields read from raw_headers: the rest are never unfolded (DKIM signatures, Received)
_RAW_READ = (
    "message-id",
    "in-reply-to",
    "references",
    "date",
    "content-type",
    "list-id",
    "list-unsubscribe",
    "precedence",
    "auto-submitted",
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
    "sensitivity",
    "x-gmail-labels",
)


def fields_of(msg: EmailMessage) -> dict[str, list[str]]:
    """A parsed message's :data:`Fields`."""
    fields: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        fields.setdefault(name.lower(), []).append(str(value))
    return fields


@functools.lru_cache(maxsize=2048)
def _memo_header(name: str, value: str) -> Any:
    return policy.default.header_fetch_parse(name, value)


def parsed_header(name: str, value: str) -> Any:
    """``policy.default``'s parse of one header, memoised when it is short."""
    if len(value) > POLICY_PARSE_CHARS:  # the cache would keep it: 2,048 of these
        return policy.default.header_fetch_parse(name, value)
    return _memo_header(name, value)


class _MemoPolicy(EmailPolicy):
    """``policy.default``, with parsed headers memoised: the parser and ``get_content`` ask
    for Content-Type several times a message and the header registry parses it anew each
    time; the same (name, value) always parses to the same read-only header object."""

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if hasattr(value, "name"):
            return value
        return parsed_header(name, value)


MEMO_POLICY = _MemoPolicy()


def clean(text: str) -> str:
    """Raw 8-bit bytes in a header come back as surrogates: read them as the UTF-8 they
    almost always are (else U+FFFD), and drop NULs, so the text can be stored anywhere."""
    if text.isascii():
        return text.replace("\x00", "")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def unfold(value: Any) -> str:
    """A header value on one line, its white space runs folded to one space, cleaned."""
    return clean(" ".join(str(value).split()))


def _decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded, the lenient way; the text as it is when they cannot be."""
    if "=?" not in text:
        return text
    try:
        return clean(str(make_header(decode_header(text))))
    except Exception:
        return text


def text_header(fields: Fields, name: str, *, fast: bool = True) -> str | None:
    """A text header (Subject) decoded; read the lenient way when the policy cannot parse it."""
    values = fields.get(name)
    if not values:
        return None
    if fast and (text := fast_text(values[0])) is not None:
        return clean(text).strip()
    if len(values[0]) <= POLICY_PARSE_CHARS:
        try:
            return clean(str(parsed_header(name, values[0]))).strip()
        except Exception:
            pass
    return _decode_words(unfold(values[0])).strip()


def raw_headers(fields: Fields) -> dict[str, str]:
    """The first value of each header syncd reads this way (Message-IDs, Date, bulk-mail
    signals: tokens rather than encoded text), unfolded, without the policy's (costly)
    parsing."""
    return {name: unfold(fields[name][0]) for name in _RAW_READ if name in fields}


def _lenient_addresses(value: str) -> list[tuple[str, str]]:
    """An address header the policy cannot parse (a malformed group, stray brackets or
    quotes), read as ``email.utils.getaddresses`` reads it; only what looks like an address."""
    text = unfold(value)
    try:
        pairs = getaddresses([text])
    except Exception:
        pairs = []
    found = []
    for name, address in pairs:
        norm = normalize_address(clean(address))
        if norm and _PLAUSIBLE.fullmatch(norm):
            found.append((_decode_words(clean(name)).strip(), norm))
    return found


def _strict_addresses(name: str, value: str) -> list[tuple[str, str]]:
    """An address header as the policy parses it; [] when it cannot."""
    try:
        header = parsed_header(name, value)
        parsed = [
            (clean(a.display_name), normalize_address(clean(f"{a.username}@{a.domain}")))
            for a in header.addresses
            if a.username and a.domain
        ]
    except Exception:  # the stdlib's parser fails on some real-world address lists
        return []
    return [(n, a) for n, a in parsed if a]


def addresses(fields: Fields, name: str, *, fast: bool = True) -> list[tuple[str, str]]:
    """(display name, normalised address) of every address in every ``name`` header."""
    found: list[tuple[str, str]] = []
    for value in fields.get(name, ()):
        if fast and (pairs := fast_addresses(value)) is not None:
            found.extend(pairs)
        elif len(value) > POLICY_PARSE_CHARS:  # a long list: the light parser reads it
            found.extend(_lenient_addresses(value))
        else:
            found.extend(_strict_addresses(name, value) or _lenient_addresses(value))
    return found


def participants(fields: Fields, *, fast: bool = True) -> list[Participant]:
    """From, To, Cc and Bcc: each address once a role, in the order of the headers."""
    found: list[Participant] = []
    seen: set[tuple[str, str]] = set()
    for header, role in _ADDRESS_HEADERS:
        for name, address in addresses(fields, header, fast=fast):
            if (address, role) not in seen:
                seen.add((address, role))
                found.append(Participant(address=address, name=name, role=role))
    return found


def message_ids(value: str | None) -> list[str]:
    """The Message-IDs of a Message-ID, In-Reply-To or References value, normalised (a
    value without angle brackets is read as one id)."""
    if not value:
        return []
    ids = _MSGID_RE.findall(value)
    if not ids and value.strip():
        ids = [value.strip()]
    return [normalize_message_id(i) for i in ids if normalize_message_id(i)]


def mail_date(value: str | None, now: datetime | None = None) -> datetime | None:
    """A Date (or Received) date in UTC; None when it cannot be read or is not between 1970
    and five years from now (a hostile ``+99999999999999999999`` zone, the year 9999)."""
    if not value:
        return None
    try:
        dt = parsedate_to_datetime(value)
        dt = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)
    except Exception:  # TypeError, ValueError, IndexError, OverflowError: not a date
        return None
    return dt if EARLIEST <= dt <= latest(now) else None


def sent_at(fields: Fields, date: str | None, fallback: datetime) -> datetime:
    """The Date; else the date the first (topmost, nearest) server that took it wrote into
    Received; else the provider's time (file time, INTERNALDATE); else now."""
    now = datetime.now(UTC)
    found = mail_date(date, now)
    if found is None:
        for received in fields.get("received", [])[:5]:
            found = mail_date(unfold(received).rpartition(";")[2], now)
            if found is not None:
                return found
        found = _provider_time(fallback, now)
    return found


def _provider_time(fallback: datetime, now: datetime) -> datetime:
    try:
        found = (fallback if fallback.tzinfo else fallback.replace(tzinfo=UTC)).astimezone(UTC)
    except (OverflowError, ValueError):
        return now
    return found if EARLIEST <= found <= latest(now) else now


def stable_key(parts: list[str]) -> str:
    """A key for a message with no Message-ID: the same headers give the same key anywhere."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()
    return f"hash:{digest[:40]}"


class BulkSignals(TypedDict):
    list_id: str | None
    list_unsubscribe: bool
    precedence: str | None
    auto_submitted: str | None
    autoreply_header: str | None


def bulk_signals(headers: dict[str, str]) -> BulkSignals:
    """The MailItem fields that mark bulk mail and auto-replies, from lower-cased headers."""
    return {
        "list_id": headers.get("list-id"),
        "list_unsubscribe": "list-unsubscribe" in headers,
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
    if len(references) > REFERENCES_KEPT + 1:  # the root and the latest ones
        references = [references[0], *references[-REFERENCES_KEPT:]]
    if message_id:
        key = f"mid:{message_id}"
    else:
        addrs = ",".join(sorted(f"{p.role}:{p.address}" for p in participants))
        key = stable_key([addrs, date_text, subject, ",".join(in_reply_to)])
    related = tuple(dict.fromkeys(f"mid:{m}" for m in [*references, *in_reply_to]))
    root = references[0] if references else (in_reply_to[0] if in_reply_to else None)
    return key, f"mid:{root}" if root else key, related
