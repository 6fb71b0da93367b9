"""RFC 5322 / MIME bytes -> :class:`MailItem` (standard library ``email``, ``policy.default``).

Shared by every connector that sees raw messages (local Maildir and mbox, IMAP, Gmail raw).

The ``[limits]`` (:mod:`syncd.limits`) are checked before ``email`` sees the bytes: the
message's size, then its header block (scanned up to the first line that is no header
field: its size, its number of fields, the encoded words of each field), all at the speed
of ``re`` and ``bytes.count``. The MIME parts and their nesting are counted while the
parser reads them (:class:`_BoundedParser`), which stops at the limit, long before the
standard library's recursion could; the headers of every part are held to the same limits.
The whole parse runs under the ``parse_seconds`` bound.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import re
from datetime import UTC, datetime
from email import policy
from email.feedparser import FeedParser
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, TypedDict

from syncd.config import LimitSettings
from syncd.connectors.base import Reread, RereadContext
from syncd.connectors.ical import describe, invitations_from_ical, quarantined
from syncd.items import (
    EARLIEST,
    MailItem,
    MeetingItem,
    Participant,
    ParticipantRole,
    Quarantined,
    latest,
)
from syncd.limits import OverLimit, check, limits_or_default, run_bounded
from syncd.matching.addresses import (
    normalize_address,
    normalize_message_id,
)

log = logging.getLogger("syncd.mime")

# the standard library's header parser spends about 6 us and 600 bytes a character of a
# long header (a 250 KB To: 1.5 s and 150 MB); beyond this, the light parsers read it
# (``getaddresses``, ``decode_header``), and only headers this short are memoised
POLICY_PARSE_CHARS = 8192
# References kept: the root and the latest ones (clients trim them too, RFC 5322 3.6.4)
REFERENCES_KEPT = 100


@functools.lru_cache(maxsize=2048)
def _memo_header(name: str, value: str) -> Any:
    return policy.default.header_fetch_parse(name, value)


def _parsed_header(name: str, value: str) -> Any:
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
        return _parsed_header(name, value)


_POLICY = _MemoPolicy()
_ADDRESS_HEADERS: tuple[tuple[str, ParticipantRole], ...] = (
    ("from", "from"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
)
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response-suppress")
_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_WS_RE = re.compile(r"\s+")
# an address read the lenient way must still look like one: no spaces, brackets or quotes
_PLAUSIBLE = re.compile(r"[^\s<>()\[\]\\,;:@\"]+@[^\s<>()\[\]\\,;:@\"]+")
# a header line of the obsolete syntax (RFC 5322 4.5): blanks between the name and the colon
_HEADER_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# the header block as the standard library's parser reads it: lines that are a header field,
# a continuation or a Unix From line, up to the first that is none of these (a blank line)
_HEADER_LINE_RE = rb"(?:From |[\x21-\x39\x3b-\x7e]*:|[ \t])[^\n]*(?:\n|\Z)"
_HEADER_RUN = re.compile(rb"(?:" + _HEADER_LINE_RE + rb")*")
_ONE_HEADER_LINE = re.compile(_HEADER_LINE_RE)
_FIELD_START = re.compile(rb"(?m)^[^ \t]")
_FIELD_SPLIT = re.compile(rb"\n(?=[^ \t])")
# the start of an RFC 2047 encoded word as the lenient decoders find it (=?charset?Q?)
_ENCODED_WORD = re.compile(rb"=\?[^?]*\?[bBqQ]\?")
_ENCODED_WORD_STR = re.compile(r"=\?[^?]*\?[bBqQ]\?")
_TAG_RE = re.compile(r"<[^<>]*>")  # never [^>]+: quadratic on a body of "<<<<..."


class UnreadableMessage(ValueError):
    """The bytes are not an email message syncd can log; the reason says why."""


class MessageOverLimit(UnreadableMessage):
    """A message over one of the ``[limits]``; ``limit`` names it."""

    def __init__(self, over: OverLimit) -> None:
        super().__init__(str(over))
        self.limit = over.limit


def clean(text: str) -> str:
    """Raw 8-bit bytes in a header come back as surrogates: read them as the UTF-8 they
    almost always are (else U+FFFD), and drop NULs, so the text can be stored anywhere."""
    if text.isascii():
        return text.replace("\x00", "")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def _unfold(value: Any) -> str:
    return clean(" ".join(str(value).split()))


def _decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded, the lenient way; the text as it is when they cannot be."""
    if "=?" not in text:
        return text
    try:
        return clean(str(make_header(decode_header(text))))
    except Exception:
        return text


def _raw_values(msg: EmailMessage, name: str) -> list[str]:
    """Every value of header ``name`` as it came, unparsed."""
    return [str(v) for k, v in msg.raw_items() if k.lower() == name]


def _header(msg: EmailMessage, name: str) -> str | None:
    """A text header (Subject) decoded; read the lenient way when the policy cannot parse it."""
    values = _raw_values(msg, name)
    if not values:
        return None
    if len(values[0]) <= POLICY_PARSE_CHARS:
        try:
            return clean(str(_parsed_header(name, values[0]))).strip()
        except Exception:
            pass
    return _decode_words(_unfold(values[0])).strip()


def _raw_headers(msg: EmailMessage) -> dict[str, str]:
    """The first value of every header, unfolded, without the policy's (costly) parsing:
    enough for headers that are tokens or Message-IDs rather than encoded text."""
    raw: dict[str, str] = {}
    for name, value in msg.raw_items():
        raw.setdefault(name.lower(), _unfold(value))
    return raw


def _lenient_addresses(value: str) -> list[tuple[str, str]]:
    """An address header the policy cannot parse (a malformed group, stray brackets or
    quotes), read as ``email.utils.getaddresses`` reads it; only what looks like an address."""
    text = _unfold(value)
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


def _addresses(msg: EmailMessage, name: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for value in _raw_values(msg, name):
        if len(value) > POLICY_PARSE_CHARS:  # a long list: the light parser reads it
            found.extend(_lenient_addresses(value))
            continue
        try:
            header = _parsed_header(name, value)
            parsed = [
                (clean(a.display_name), normalize_address(clean(f"{a.username}@{a.domain}")))
                for a in header.addresses
                if a.username and a.domain
            ]
        except Exception:  # the stdlib's parser fails on some real-world address lists
            parsed = []
        parsed = [(n, a) for n, a in parsed if a]
        found.extend(parsed or _lenient_addresses(value))
    return found


def message_ids(value: str | None) -> list[str]:
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


def _sent_at(msg: EmailMessage, date: str | None, fallback: datetime) -> datetime:
    """The Date; else the date the first (topmost, nearest) server that took it wrote into
    Received; else the provider's time (file time, INTERNALDATE); else now."""
    now = datetime.now(UTC)
    found = mail_date(date, now)
    if found is None:
        for received in _raw_values(msg, "received")[:5]:
            found = mail_date(_unfold(received).rpartition(";")[2], now)
            if found is not None:
                break
    if found is None:
        try:
            found = (fallback if fallback.tzinfo else fallback.replace(tzinfo=UTC)).astimezone(UTC)
        except (OverflowError, ValueError):
            found = now
        if not EARLIEST <= found <= latest(now):
            found = now
    return found


def _text_body(msg: EmailMessage, content_type: str) -> str:
    try:
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


def _repaired(data: bytes) -> bytes | None:
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


def read_message(
    data: bytes,
    provider_id: str,
    fallback_time: datetime,
    *,
    limits: LimitSettings | None = None,
) -> MailItem | Quarantined:
    """:func:`parse_message` that never raises: a message that cannot be read, or is over a
    limit, is a quarantine entry with its reason and (up to 10 MB) its bytes, format
    ``rfc822``."""
    try:
        return parse_message(data, provider_id, fallback_time, limits=limits)
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
) -> MailItem:
    """Parse one message. Raises :class:`UnreadableMessage` when it cannot be logged at all,
    and nothing else: whatever the standard library raises on malformed input is read the
    lenient way (addresses by ``getaddresses``, a mended header block) or becomes the reason.

    ``limits`` (None: the defaults) are checked before the parser sees the data, and the
    parse stops after ``parse_seconds``: an item over a limit raises
    :class:`MessageOverLimit`, naming the limit."""
    lim = limits_or_default(limits)
    try:
        check_message(data, lim)
        if not data or data.isspace():
            raise UnreadableMessage("empty message")
        return run_bounded(
            lim.parse_seconds, _parse_leniently, data, provider_id, fallback_time, lim
        )
    except OverLimit as exc:
        raise MessageOverLimit(exc) from None


def check_message(data: bytes, limits: LimitSettings) -> None:
    """The limits a message's bytes can be held to before any parser sees them: its size,
    and its header block's size, number of fields and encoded words per field. Raises
    :class:`OverLimit`. Costs a few regular-expression scans of the header block."""
    check("message_bytes", len(data), limits.message_bytes, "the message is {size}")
    run = _HEADER_RUN.match(data, 0, limits.header_bytes + 1)
    end = run.end() if run else 0
    if end <= limits.header_bytes:
        cut = _ONE_HEADER_LINE.match(data, end)  # a line the scan's end cut in two
        end = cut.end() if cut else end
    if end > limits.header_bytes:  # over: measure it all, for the reason (a scan, no parse)
        whole = _HEADER_RUN.match(data)
        end = whole.end() if whole else end
    check(
        "header_bytes",
        end,
        limits.header_bytes,
        "the header block is {size}",
    )
    block = data[:end]
    check(
        "headers",
        len(_FIELD_START.findall(block)),
        limits.headers,
        "the message has {n} header fields",
    )
    if len(_ENCODED_WORD.findall(block)) <= limits.encoded_words:
        return  # no field can have more than all of them
    for field in _FIELD_SPLIT.split(block):
        name = _field_name(field.partition(b":")[0].decode("latin-1"))
        check(
            "encoded_words",
            len(_ENCODED_WORD.findall(field)),
            limits.encoded_words,
            f"{name} has {{n}} encoded words",
        )


def _field_name(name: str) -> str:
    name = "".join(c for c in name.strip() if c.isprintable())[:60]
    return name or "a header field"


def _check_fields(lines: list[str], limits: LimitSettings, where: str) -> None:
    """The header limits on one header block as the parser collected it (every MIME part's,
    and the message's again when it was mended)."""
    check(
        "header_bytes",
        sum(map(len, lines)),
        limits.header_bytes,
        f"{where}'s header block is {{size}}",
    )
    check(
        "headers",
        sum(1 for line in lines if line[:1] not in (" ", "\t")),
        limits.headers,
        f"{where} has {{n}} header fields",
    )
    name, words = "", 0
    for line in lines:
        if line[:1] not in (" ", "\t"):
            name, words = line.partition(":")[0], 0
        if "=?" in line:
            words += len(_ENCODED_WORD_STR.findall(line))
            if words > limits.encoded_words:
                check(
                    "encoded_words",
                    words,
                    limits.encoded_words,
                    f"{_field_name(name)} of {where} has {{n}} encoded words or more",
                )


class _BoundedParser(FeedParser):
    """The standard library's parser, counting the MIME parts and their nesting as it
    creates them and checking every header block: it stops with :class:`OverLimit` at the
    first part over a limit, so neither the count of parts nor the depth of its recursion
    can grow past the limits."""

    def __init__(self, limits: LimitSettings) -> None:
        super().__init__(policy=_POLICY)
        self.limits = limits
        self.parts = 0

    def _new_message(self) -> None:
        limits = self.limits
        self.parts += 1
        check(
            "mime_parts",
            self.parts,
            limits.mime_parts,
            f"the message has more than {limits.mime_parts} MIME parts",
        )
        check(
            "mime_depth",
            len(self._msgstack) + 1,  # type: ignore[attr-defined]
            limits.mime_depth,
            f"its MIME parts are nested more than {limits.mime_depth} deep",
        )
        super()._new_message()  # type: ignore[misc]

    def _parse_headers(self, lines: list[str]) -> None:
        _check_fields(lines, self.limits, "a MIME part" if self.parts > 1 else "the message")
        super()._parse_headers(lines)  # type: ignore[misc]


def _read_mime(data: bytes, limits: LimitSettings) -> EmailMessage:
    """``BytesParser(policy).parsebytes(data)``, within the limits."""
    parser = _BoundedParser(limits)
    text = io.StringIO(data.decode("ascii", "surrogateescape"))
    while chunk := text.read(8192):  # as email.parser.Parser feeds it
        parser.feed(chunk)
    msg = parser.close()
    assert isinstance(msg, EmailMessage)
    return msg


def _parse_leniently(
    data: bytes, provider_id: str, fallback_time: datetime, limits: LimitSettings
) -> MailItem:
    try:
        return _parse(data, provider_id, fallback_time, limits)
    except OverLimit:
        raise
    except UnreadableMessage as first:
        mended = _repaired(data)
        if mended is None:
            raise
        try:
            return _parse(mended, provider_id, fallback_time, limits)
        except OverLimit:
            raise
        except Exception:
            raise first from None
    except RecursionError:
        raise UnreadableMessage("MIME parts nested too deeply to read") from None
    except Exception as exc:
        raise UnreadableMessage(f"cannot be parsed: {describe(exc)}") from exc


def _parse(
    data: bytes, provider_id: str, fallback_time: datetime, limits: LimitSettings
) -> MailItem:
    try:
        msg = _read_mime(data, limits)
    except OverLimit:
        raise
    except Exception as exc:  # the parser is lenient; this is truly broken input
        raise UnreadableMessage(f"MIME parser failed: {describe(exc)}") from exc
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
    sent_at = _sent_at(msg, raw.get("date"), fallback_time)
    own_ids = message_ids(raw.get("message-id"))
    message_id = own_ids[0] if own_ids else None
    in_reply_to = message_ids(raw.get("in-reply-to"))
    references = message_ids(raw.get("references"))
    key, thread_key, related = identity(
        message_id, in_reply_to, references, participants, raw.get("date", ""), subject
    )

    content_type = raw.get("content-type", "").lower()
    body = _text_body(msg, content_type)
    sensitivity = raw.get("sensitivity", "").lower()
    labels = tuple(
        label.strip() for label in raw.get("x-gmail-labels", "").split(",") if label.strip()
    )

    invitations: list[MeetingItem] = []
    if "multipart" in content_type or "calendar" in content_type:
        # an invitation over a limit, or slower than half the bound, is left out: the mail
        # around it is still an email
        for payload in _calendar_parts(msg):
            try:
                invitations.extend(
                    run_bounded(
                        limits.parse_seconds / 2,
                        invitations_from_ical,
                        payload,
                        provider_id,
                        limits=limits,
                    )
                )
            except OverLimit as exc:  # parse_seconds
                log.warning(
                    "%s: its invitation is left out, the mail is logged: %s", provider_id, exc
                )
                continue

    return MailItem(
        key=key,
        provider_id=provider_id,
        message_id=message_id,
        subject=subject,
        sent_at=sent_at,
        participants=tuple(participants),
        thread_key=thread_key,
        related_keys=related,
        body=body,
        **bulk_signals(raw),
        private=sensitivity in ("private", "company-confidential", "confidential"),
        labels=labels,
        invitations=tuple(invitations),
    )


def reread(data: bytes, ctx: RereadContext) -> Reread:
    """The ``rfc822`` re-parser (``syncd quarantine retry``): a kept message read again."""
    item = parse_message(data, ctx.provider_id, ctx.received, limits=ctx.limits)
    return Reread((item,))
