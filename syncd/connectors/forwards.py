"""A message a salesperson forwarded to the dropbox mailbox, unpacked (issue 15): their own
note, and each message they forwarded as RFC 5322 bytes that
:func:`syncd.connectors.mime.parse_message` reads like any other mail, with its own
participants and date. Pure: bytes in, text and bytes out; no I/O, no provider.

A forwarded message comes one of two ways:

- attached: a ``message/rfc822`` (or ``message/global``) part, or an ``.eml`` file (Outlook,
  Thunderbird, Gmail and Apple Mail "forward as attachment"). Its bytes are passed on as
  they are (line breaks as the forward's), so it keeps its own Message-ID and is the same
  activity as the original when another connected mailbox saw it.
- inline: the forwarded message's header block quoted as text, most often below a client's
  line (Gmail ``---------- Forwarded message ---------``, Thunderbird ``-------- Forwarded
  Message --------``, Apple Mail ``Begin forwarded message:``, Outlook a line of underscores
  or ``-----Original Message-----``; Outlook's HTML has no line at all). Its From, To, Cc,
  Reply-To, Date or Sent, Subject and Message-ID become real header fields and the text
  below it the body (``text/plain``, UTF-8) of a message made up here. It has no
  Message-ID unless the block quoted one, so ``parse_message`` keys it by a hash of its
  headers: the same forward forwarded twice is one activity.

How the text is read (:mod:`syncd.connectors.forward_text`): the ``text/plain`` body, else
the HTML one as text with its line breaks kept, which the header blocks need;
``format=flowed`` is unwrapped. Lines quoted with ``>`` are read at their depth: a quoted
forward is found like any other, its body is what follows at that depth or deeper,
unquoted by that depth.

Which header blocks are forwards: a block of ``Field: value`` lines (English field names;
values folded over several lines are joined) with a From and at least a Date, Subject, To
or Cc, below a client's line; or, without a line, starting with From and with a Date (or
Sent) and a To or Subject. None inside a reply: Outlook quotes the message replied to with
the same block it uses for forwards, so in a message or forwarded message whose Subject
starts as a reply's (``Re:``, ``AW:``, ``SV:`` ...) no block is a forward (a salesperson who
BCCs the dropbox on a reply logs the reply; a forwarded thread logs its newest message,
with the older ones quoted in its body). A forward of a forward: each one is an original,
with as body its own text up to the next forward.

Order: oldest first. By their dates when every original has one; else the inline ones
innermost (oldest) first, then the attached ones in the order they are attached.

Dates in a header block: RFC 5322 (Thunderbird), and the English forms of Gmail, Outlook
and Apple Mail (:mod:`syncd.connectors.forward_fields` reads them, and the other fields).
Gmail and Outlook give no time zone: such a date is read in the zone of the forward's own
Date (the forwarder's), else as UTC with a problem said. A date that cannot be read is left
out of the original (``parse_message`` then falls back as it does for any message without
one) and said in :attr:`Unpacked.problems`.

Bounds: the forward is held to the ``[limits]`` as ``parse_message`` holds a message
(:class:`~syncd.connectors.mime.MessageOverLimit`) and unpacked under ``parse_seconds``; at
most :data:`MAX_ORIGINALS` originals are taken (the rest stay text, with a problem said), the
scan is one pass with no recursion and no regular expression that can backtrack over more
than one tag or line. Anything wrong with the input raises :class:`UnreadableForward` (a
``ValueError``) with the reason, and nothing else.
"""

from __future__ import annotations

import binascii
import functools
import io
import quopri
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from email import policy
from email.generator import BytesGenerator
from email.message import Message
from email.utils import parsedate_to_datetime

from syncd.config import LimitSettings
from syncd.connectors.forward_fields import ADDRESS_FIELDS, synthesised, zone_of
from syncd.connectors.forward_text import body_text
from syncd.connectors.mime import MessageOverLimit, UnreadableMessage
from syncd.connectors.mime_headers import fields_of, raw_headers, text_header
from syncd.connectors.mime_limits import check_message, read_mime
from syncd.connectors.reasons import describe
from syncd.items import EARLIEST, latest
from syncd.limits import OverLimit, limits_or_default, run_bounded

# originals taken from one forward; a forward nests no deeper than this either
MAX_ORIGINALS = 20


class UnreadableForward(UnreadableMessage):
    """The bytes are no forward syncd can unpack; the reason says why."""


@dataclass(frozen=True)
class Unpacked:
    """A forward unpacked: the forwarder's ``note`` (stripped text above the first forward),
    the ``originals`` (RFC 5322 bytes, oldest first), and what could not be read of them."""

    note: str
    originals: tuple[bytes, ...]
    problems: tuple[str, ...] = ()


def unpack(raw: bytes, *, limits: LimitSettings | None = None) -> Unpacked:
    """Unpack a forwarded message (see the module's docstring). A message that forwards
    nothing gives ``originals=()`` and its whole text as the note. Raises
    :class:`UnreadableForward` (:class:`~syncd.connectors.mime.MessageOverLimit` over a
    limit), a ``ValueError``, and nothing else."""
    lim = limits_or_default(limits)
    try:
        check_message(raw, lim)
        if not raw or raw.isspace():
            raise UnreadableForward("empty message")
        return run_bounded(lim.parse_seconds, _guarded, raw, lim)
    except OverLimit as exc:
        raise MessageOverLimit(exc) from None


def _guarded(raw: bytes, limits: LimitSettings) -> Unpacked:
    try:
        return _unpack(raw, limits)
    except (OverLimit, UnreadableMessage):
        raise
    except RecursionError:
        raise UnreadableForward("MIME parts nested too deeply to read") from None
    except Exception as exc:  # whatever the standard library raises on hostile input
        raise UnreadableForward(f"forward cannot be unpacked: {describe(exc)}") from exc


def _unpack(raw: bytes, limits: LimitSettings) -> Unpacked:
    msg = read_mime(raw, limits)
    if not msg.keys():
        raise UnreadableForward("no header fields: not an RFC 5322 message")
    fields = fields_of(msg)
    zone = zone_of(raw_headers(fields).get("date"))
    problems: list[str] = []
    note, inline = _inline(body_text(msg), text_header(fields, "subject") or "", zone, problems)
    linesep = "\r\n" if b"\r\n" in raw[:65536] else "\n"
    attached = _attached(msg, linesep, MAX_ORIGINALS - len(inline), problems)
    found = [*reversed(inline), *attached]
    if all(when is not None for _, when in found):
        found.sort(key=lambda original: original[1] or EARLIEST)
    return Unpacked(note, tuple(data for data, _ in found), tuple(problems))


# --- inline forwards ----------------------------------------------------------------------------

# a line that may start a header block: a client's line or a From field, at any quote depth
_CANDIDATE = re.compile(
    r"^(?:[ \t]*>)*[ \t]*(?:\*{0,2}from\*{0,2}[ \t]*:|begin forwarded message|---|_{10})",
    re.IGNORECASE | re.MULTILINE,
)
_QUOTE = re.compile(r"(?:[ \t]*>)+ ?")  # each '>' ends a repeat: no two ways to match
# field name (lower case, as written) -> the header field it becomes (None: read, not kept)
_FIELDS: dict[str, str | None] = {
    "from": "from",
    "sent": "date",
    "date": "date",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "reply-to": "reply-to",
    "reply to": "reply-to",
    "message-id": "message-id",
    "importance": None,
    "priority": None,
    "sensitivity": None,
    "attachments": None,
    "organization": None,
    "newsgroups": None,
}
# a subject that answers: Re, and Outlook's translations of it (AW, SV, Antw, RIF, Odp, Res)
_REPLY = re.compile(r"\s*(?:re|aw|sv|antw|rif|odp|res)\s*(?:\[\d{1,4}\])?\s*:", re.IGNORECASE)
MAX_BLOCK_LINES = 1000  # a header block's lines (a long To wraps over many)

_Field = tuple[str | None, str]  # the header field a line becomes (None: read, not kept), value


@dataclass
class _Forward:
    """One message in the text: the forward itself (the root) or one it forwarded, with
    the pieces of the text that are its own."""

    depth: int  # its lines' quote depth
    fields: dict[str, str]
    pieces: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.fields.get("subject", "")

    def text(self) -> str:
        """Its text, without the quote marks of its depth."""
        text = "".join(self.pieces)
        return _unquoter(self.depth).sub("", text) if self.depth else text


@functools.lru_cache(maxsize=32)
def _unquoter(depth: int) -> re.Pattern[str]:
    """A line's first ``depth`` quote marks; a line with fewer is blank: all of it."""
    return re.compile(rf"^(?:(?:[ \t]*>){{{depth}}} ?|[ \t>]*$)", re.MULTILINE)


@functools.lru_cache(maxsize=32)
def _shallower(depth: int) -> re.Pattern[str]:
    """The start of a line that is not blank and quoted less than ``depth`` deep."""
    return re.compile(rf"^(?!(?:[ \t]*>){{{depth}}})(?![ \t>]*$)", re.MULTILINE)


def _line(text: str, pos: int) -> tuple[int, str, int]:
    """The line at ``pos``: its quote depth, its content without quote marks, where the
    next line starts."""
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    line = text[pos:end]
    quote = _QUOTE.match(line) if ">" in line[:200] else None
    if quote is None:
        return 0, line, end + 1
    return quote.group().count(">"), line[quote.end() :], end + 1


def _field(content: str) -> _Field | None:
    """(the header field it becomes, its value) of a line that is a header block's field;
    None for any other line."""
    colon = content.find(":", 0, 40)
    if colon <= 0 or content[0] in " \t":
        return None
    name = content[:colon].strip().strip("*").strip().lower()
    if name in _FIELDS:
        return _FIELDS[name], content[colon + 1 :].lstrip("*").strip()
    if name.replace("-", "").isalpha() and name.isascii():
        return None, content[colon + 1 :].strip()  # a field read, not kept
    return None


def _is_marker(content: str) -> bool:
    """Whether the line is a client's line above a forwarded header block."""
    line = content.strip()
    if len(line) > 80:
        return False
    if line.lower().startswith("begin forwarded message"):  # Apple Mail
        return True
    if len(line) >= 10 and not line.strip("_"):  # Outlook
        return True
    # Gmail, Thunderbird, Yahoo, and Outlook's -----Original Message-----
    return line.startswith("---") and line.endswith("---") and bool(line.strip("-").strip())


def _inline(
    text: str, subject: str, zone: tzinfo | None, problems: list[str]
) -> tuple[str, list[tuple[bytes, datetime | None]]]:
    """The note and the inline forwards of a text, in the order they appear (outermost
    first), each as (message bytes, its date). One pass: the text between the lines that
    may start a header block is found by regular expressions and copied whole."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    root = _Forward(depth=0, fields={"subject": subject})
    stack, found = [root], [root]
    ends: dict[int, int] = {}  # id of a quoted forward -> where its quote ends
    pos = search = 0  # where the text not yet given out starts; where to look for a block
    capped = False
    while True:
        top = stack[-1]
        end = len(text)
        if top.depth:
            if id(top) not in ends:
                shallower = _shallower(top.depth).search(text, pos)
                ends[id(top)] = shallower.start() if shallower else len(text)
            end = ends[id(top)]
        candidate = None
        if not capped and not _REPLY.match(top.subject):
            candidate = _CANDIDATE.search(text, max(search, pos), end)
        if candidate is None:  # the rest, up to where its quote ends, is this one's
            top.pieces.append(text[pos:end])
            pos = search = end
            if len(stack) == 1:
                break
            stack.pop()
            continue
        start = candidate.start()
        depth, content, after = _line(text, start)
        block = _block_start(text, start, depth, content, after)
        search = after
        if block is None:
            continue
        fields, block_end, scanned = _block(text, block, depth)
        search = max(scanned, after)
        if not _is_forward(fields, marker=block != start):
            continue
        if len(found) > MAX_ORIGINALS:
            capped = True
            continue
        top.pieces.append(text[pos:start])
        original = _Forward(depth, fields)
        found.append(original)
        stack.append(original)
        pos = search = block_end
    if capped:
        problems.append(
            f"the forward holds more than {MAX_ORIGINALS} forwarded messages: the first "
            f"{MAX_ORIGINALS} are read, the rest are left as text"
        )
    originals = [synthesised(f.fields, f.text(), zone, problems) for f in found[1:]]
    return root.text().strip(), originals


def _block_start(text: str, start: int, depth: int, content: str, after: int) -> int | None:
    """Where a header block starts at the line at ``start`` (``after``: the next line's):
    below a client's line (after at most three blank lines), or at a From line without one."""
    if not _is_marker(content):
        found = _field(content)
        return start if found and found[0] == "from" else None
    pos = after
    for _ in range(4):
        if pos >= len(text):
            return None
        line_depth, line, following = _line(text, pos)
        if line.strip():
            return pos if line_depth == depth and _field(line) else None
        pos = following
    return None


def _block(text: str, start: int, depth: int) -> tuple[dict[str, str], int, int]:
    """The fields of the header block at ``start`` (first value of each, continuation lines
    joined), where the block ends, and where its scan stopped (a blank line, another depth,
    a client's line). A line that is no field continues the field above it when a field
    follows it, or when it is indented or carries an address (``[mailto:a@b]``)."""
    lines: list[tuple[str, _Field | None, int]] = []  # content, field, where the next starts
    last = 0  # the last line that is a field kept
    pos = start
    while pos < len(text) and len(lines) < MAX_BLOCK_LINES:
        line_depth, content, following = _line(text, pos)
        if not content.strip() or line_depth != depth or _is_marker(content):
            break
        found = _field(content)
        if found and found[0]:
            last = len(lines)
        lines.append((content, found, following))
        pos = following
    values: dict[str, list[str]] = {}
    current: list[str] | None = None  # the value being read; None: a field not kept
    current_name: str | None = None
    end = start
    for i, (content, found, following) in enumerate(lines):
        if i > last:  # past the last field: only what plainly continues it
            indented = content[:1] in (" ", "\t")
            address = "@" in content and current_name in ADDRESS_FIELDS
            if found or current is None or not (indented or address):
                break
            current.append(content.strip())
        elif found:
            name, value = found
            first = name is not None and name not in values
            current = values.setdefault(name, [value]) if first and name else None
            current_name = name if first else None
        elif current is not None:
            current.append(content.strip())
        end = following
    fields = {name: " ".join(" ".join(parts).split()) for name, parts in values.items()}
    return fields, min(end, len(text)), min(pos, len(text))


def _is_forward(fields: dict[str, str], marker: bool) -> bool:
    if not fields.get("from"):
        return False
    if marker:
        return bool({"date", "subject", "to", "cc"} & fields.keys())
    return "date" in fields and bool({"to", "subject"} & fields.keys())


# --- attached forwards --------------------------------------------------------------------------

_KEPT = policy.default.clone(refold_source="none")  # header fields written back as they came
_DATE_LINE = re.compile(rb"(?im)^date:[ \t]*([^\r\n]*)")


def _attached(
    msg: Message, linesep: str, room: int, problems: list[str]
) -> list[tuple[bytes, datetime | None]]:
    """The messages attached to the forward, in the order they are attached, each with its
    date; not those attached inside them (they belong to the message they came in)."""
    found: list[tuple[bytes, datetime | None]] = []
    stack = _children(msg)
    left_out = 0
    while stack:
        part = stack.pop()
        data: bytes | None = None
        if part.get_content_type() in ("message/rfc822", "message/global"):
            data = _message_bytes(part, linesep)
            if data is None:
                problems.append("an attached message is empty: left out")
        elif part.is_multipart():
            stack.extend(_children(part))
        elif _is_eml(part):
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) and payload.strip() else None
        if data is not None and len(found) < room:
            found.append((data, _date_in(data)))
        elif data is not None:
            left_out += 1
    if left_out:
        problems.append(
            f"the forward holds more than {MAX_ORIGINALS} forwarded messages: "
            f"{left_out} attached ones are left out"
        )
    return found


def _children(part: Message) -> list[Message]:
    """A multipart's parts in reverse order: popped one by one, they come in order."""
    payload = part.get_payload() if part.is_multipart() else None
    if not isinstance(payload, list):
        return []
    return [child for child in reversed(payload) if isinstance(child, Message)]


def _message_bytes(part: Message, linesep: str) -> bytes | None:
    """An attached message's bytes, as the parser read them."""
    payload = part.get_payload()
    if not isinstance(payload, list) or not payload or not isinstance(payload[0], Message):
        return None
    out = io.BytesIO()
    generator = BytesGenerator(out, mangle_from_=False, policy=_KEPT.clone(linesep=linesep))
    generator.flatten(payload[0])  # type: ignore[arg-type]  # any Message flattens
    data = out.getvalue()
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":  # not allowed for message/rfc822 (RFC 2046 5.2.1), but sent
        data = binascii.a2b_base64(data)
    elif encoding == "quoted-printable":
        data = quopri.decodestring(data)
    return data if data.strip() else None


def _is_eml(part: Message) -> bool:
    try:
        name = part.get_filename() or ""
    except Exception:
        return False
    return str(name).strip().lower().endswith(".eml")


def _date_in(data: bytes) -> datetime | None:
    """The Date of a message's header block (UTC when it gives no zone); None without one
    that can be read."""
    cut = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    found = _DATE_LINE.search(data, 0, min(cut) if cut else len(data))
    if found is None:
        return None
    try:
        when = parsedate_to_datetime(found.group(1).decode("ascii", "replace"))
    except Exception:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:
        return when if EARLIEST <= when <= latest() else None
    except (OverflowError, ValueError):
        return None
