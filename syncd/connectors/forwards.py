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

How the text is read: the ``text/plain`` body, else the HTML one as text (:func:`html_text`:
block elements and ``<br>`` are line breaks, which the header blocks need, where the
MIME parser's tag stripping keeps none). ``format=flowed`` is unwrapped. Lines quoted with
``>`` are read at their depth: a quoted forward is found like any other, its body is what
follows at that depth or deeper, unquoted by that depth.

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

Dates in a header block: RFC 5322 (Thunderbird), and the English forms of Gmail (``Mon, Mar
3, 2025 at 10:00 AM``), Outlook (``Monday, March 3, 2025 10:00 AM``, ``Mon 3/3/2025 10:00
AM``, ``03 March 2025 10:00``) and Apple Mail (``March 3, 2025 at 10:00:00 AM GMT+1``).
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
import html
import io
import quopri
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email import policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import unquote

from syncd.config import LimitSettings
from syncd.connectors.mime import MessageOverLimit, UnreadableMessage, clean
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
    zone = _zone_of(raw_headers(fields).get("date"))
    problems: list[str] = []
    note, inline = _inline(_body_text(msg), text_header(fields, "subject") or "", zone, problems)
    linesep = "\r\n" if b"\r\n" in raw[:65536] else "\n"
    attached = _attached(msg, linesep, MAX_ORIGINALS - len(inline), problems)
    found = [*reversed(inline), *attached]
    if all(when is not None for _, when in found):
        found.sort(key=lambda original: original[1] or EARLIEST)
    return Unpacked(note, tuple(data for data, _ in found), tuple(problems))


# --- the text of the forward --------------------------------------------------------------------


def _body_text(msg: EmailMessage) -> str:
    """The forward's text: its plain body, else its HTML one as text; "" when it has none."""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except Exception:
        part = None
    if part is None:
        return ""
    try:
        text = part.get_content()
    except Exception:  # an unknown charset or a broken transfer encoding: read it leniently
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(text, str):
        return ""
    if part.get_content_subtype() == "html":
        return html_text(clean(text))
    if str(part.get_param("format", "")).lower() == "flowed":
        return _unflowed(clean(text), str(part.get_param("delsp", "")).lower() == "yes")
    return clean(text)


def _unflowed(text: str, delsp: bool) -> str:
    """``format=flowed`` text (RFC 3676) with its soft line breaks joined."""
    out: list[str] = []
    parts: list[str] = []
    depth = -1
    for line in text.splitlines():
        quote = len(line) - len(line.lstrip(">"))
        content = line[quote:]
        content = content[1:] if content.startswith(" ") else content  # space-stuffing
        if parts and quote != depth:
            out.append(_quoted(depth, "".join(parts)))
            parts = []
        depth = quote
        if content.endswith(" ") and content != "-- ":
            parts.append(content[:-1] if delsp else content)
        else:
            out.append(_quoted(depth, "".join([*parts, content])))
            parts = []
    if parts:
        out.append(_quoted(depth, "".join(parts)))
    return "\n".join(out)


def _quoted(depth: int, text: str) -> str:
    return "> " * depth + text if depth > 0 else text


# HTML -> text, in passes of regular expressions that each match within one tag, entity or
# line, never across the text: linear in the markup whatever it holds
_TAG = re.compile(r"<[^<>]*>")  # never [^>]+: quadratic on "<<<<..." (as in mime.py)
_HIDDEN = re.compile(r"<!--|<(style|script|title)\b[^<>]*>", re.IGNORECASE)
_HIDDEN_END = {
    name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in ("style", "script", "title")
}
_PRE = re.compile(r"<pre\b[^<>]*>", re.IGNORECASE)
_PRE_END = re.compile(r"</pre\s*>", re.IGNORECASE)
# a link and its text up to </a> (or the next link): each '<' in it starts a repeat
_LINK = re.compile(r"<a\b([^<>]*)>([^<]*(?:<(?!/?a\b)[^<]*)*)", re.IGNORECASE)
_MAILTO = re.compile(r"""href\s*=\s*["']?mailto:([^"'\s<>?]+)""", re.IGNORECASE)
_BLANKS = re.compile(r"\s+")
_LINE_BREAK = re.compile(r"<br\b[^<>]*>", re.IGNORECASE)
_BLOCK = re.compile(
    r"</?(?:p|div|tr|li|ul|ol|dl|dt|dd|table|tbody|thead|blockquote|hr|h[1-6]|pre|center|"
    r"address|section|article|header|footer|form)\b[^<>]*>",
    re.IGNORECASE,
)
_CELL_END = re.compile(r"</t[dh]\b[^<>]*>", re.IGNORECASE)
_SOFT = "\x01"  # a block's edge: a line break unless the text is at a line's start already
_SOFT_AT_LINE_START = re.compile(r"(\A|\n) *(?:\x01 *)+")
_SOFT_RUN = re.compile(r"(?:\x01 *)+")
_ENTITY = re.compile(
    r"&(?!amp;)(?:#[0-9]{1,8};?|#[xX][0-9a-fA-F]{1,8};?|[A-Za-z][A-Za-z0-9]{1,31};?)"
)
_BLANK_LINES = re.compile(r"\n{3,}")


def html_text(markup: str) -> str:
    """An HTML body as the text a reader sees, one line per line: ``<br>`` a line break,
    block elements (paragraphs, divisions, table rows) on lines of their own, table cells
    side by side, entities decoded, ``<pre>`` kept as it is, styles, scripts and comments
    left out, and a ``mailto:`` link's address beside its text when the text does not show
    it (``<a href="mailto:carla@acme.test">Carla</a>``: ``Carla <carla@acme.test>``).
    Linear in the markup, whatever it holds."""
    markup = _without_hidden(markup)
    markup = _pre_kept(markup)
    if "mailto:" in markup:
        markup = _LINK.sub(_link_address, markup)
    markup = _BLANKS.sub(" ", markup)
    markup = _LINE_BREAK.sub("\n", markup)
    markup = _BLOCK.sub(_SOFT, markup)
    markup = _CELL_END.sub(" ", markup)
    text = _TAG.sub("", markup)
    text = _SOFT_RUN.sub("\n", _SOFT_AT_LINE_START.sub(r"\1", text))
    text = _unescaped(text)
    text = "\n".join(line.strip() for line in text.replace("\xa0", " ").split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _without_hidden(markup: str) -> str:
    """The markup without comments and the content of styles, scripts and the title."""
    out: list[str] = []
    pos = 0
    unclosed: set[str] = set()  # an element without its end tag: not looked for again
    while (found := _HIDDEN.search(markup, pos)) is not None:
        out.append(markup[pos : found.start()])
        name = found.group(1)
        if name is None:  # a comment
            close = markup.find("-->", found.end())
            pos = len(markup) if close < 0 else close + 3
            continue
        name = name.lower()
        end = None if name in unclosed else _HIDDEN_END[name].search(markup, found.end())
        if end is None:
            unclosed.add(name)
        pos = end.end() if end else (found.end() if name == "title" else len(markup))
    out.append(markup[pos:])
    return "".join(out)


def _pre_kept(markup: str) -> str:
    """The markup with the line breaks and blanks of ``<pre>`` kept (as markup the later
    passes keep: ``<br>`` and character references)."""
    out: list[str] = []
    pos = 0
    while (found := _PRE.search(markup, pos)) is not None:
        end = _PRE_END.search(markup, found.end())
        stop = end.start() if end else len(markup)
        text = markup[found.end() : stop].replace("\r\n", "\n").replace("\r", "\n")
        text = text.replace("\n", "<br>").replace(" ", "&#32;").replace("\t", "&#9;")
        out += [markup[pos : found.start()], "<p>", text, "<p>"]
        pos = end.end() if end else len(markup)
    out.append(markup[pos:])
    return "".join(out)


def _link_address(link: re.Match[str]) -> str:
    """A ``mailto:`` link with its address after it when its text does not show it."""
    mailto = _MAILTO.search(link.group(1))
    if mailto is None:
        return link.group()
    address = unquote(_unescaped(mailto.group(1)))
    shown = _unescaped(_TAG.sub("", link.group(2)))
    if address.lower() in shown.lower():
        return link.group()
    return f"{link.group()} &lt;{html.escape(address)}&gt;"


def _unescaped(text: str) -> str:
    """Character references decoded, each read on its own (``html.unescape`` on all of a
    text converts ``&#`` followed by any number of digits)."""
    if "&" not in text:
        return text
    return _ENTITY.sub(_entity, text).replace("&amp;", "&")


def _entity(match: re.Match[str]) -> str:
    return html.unescape(match.group())


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
_ADDRESS_FIELDS = ("from", "to", "cc", "bcc", "reply-to")
# a subject that answers: Re, and Outlook's translations of it (AW, SV, Antw, RIF, Odp, Res)
_REPLY = re.compile(r"\s*(?:re|aw|sv|antw|rif|odp|res)\s*(?:\[\d{1,4}\])?\s*:", re.IGNORECASE)
MAX_BLOCK_LINES = 1000  # a header block's lines (a long To wraps over many)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")

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
    originals = [_synthesised(f, zone, problems) for f in found[1:]]
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
            address = "@" in content and current_name in _ADDRESS_FIELDS
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


# --- a forwarded message made up from its header block -----------------------------------------

_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_LIST_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|<[^<>]*>?|\[[^\[\]]*\]?|\([^()]*\)?|[,;]|[^",;<\[(]+')
_ADDRESS_SPLIT = re.compile(r"""[\s<>()\[\]",;]+""")
_PLAUSIBLE = re.compile(r"[^\s<>()\[\]\\,;:@\"\x00-\x1f\x7f]+@[^\s<>()\[\]\\,;:@\"\x00-\x1f\x7f]+")
_SPECIALS = frozenset('()<>[]:;@\\,."')
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_LONG_LINE = re.compile(rb"(?:\A|\n)[^\n]{991}")  # tried at line starts only: linear


def _synthesised(
    forward: _Forward, zone: tzinfo | None, problems: list[str]
) -> tuple[bytes, datetime | None]:
    """The RFC 5322 message of an inline forward, and its date (None if it has none)."""
    fields = forward.fields
    subject = _CONTROLS.sub(" ", fields.get("subject", "")).strip()
    sender = address_list(fields["from"])
    who = f"forwarded message from {sender[0][1] if sender else _short(fields['from'])}"
    if subject:
        who += f' ("{_short(subject)}")'
    head: list[str] = []
    for name in _ADDRESS_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        mailboxes = sender if name == "from" else address_list(value)
        if mailboxes:
            head.append(_folded(_header_name(name), [_mailbox(*m) for m in mailboxes]))
        elif value:
            problems.append(f"{who}: its {_header_name(name)} has no address: {_short(value)!r}")
    when = None
    if "date" in fields:
        read = forwarded_date(fields["date"], zone or UTC)
        if read is None:
            problems.append(f"{who}: its date {_short(fields['date'])!r} cannot be read: left out")
        else:
            when, zoned = read
            head.append(f"Date: {format_datetime(when)}")
            if not zoned and zone is None:
                problems.append(f"{who}: its date has no time zone, nor the forward's: read as UTC")
    if subject:
        head.append(f"Subject: {subject}")
    message_id = _MESSAGE_ID.search(fields.get("message-id", ""))
    if message_id:
        head.append(f"Message-ID: {message_id.group()}")
    body = _LEADING_BLANK_LINES.sub("", forward.text()).rstrip()
    data = body.encode("utf-8", "replace") + b"\n"
    if _LONG_LINE.search(data):  # RFC 5322 2.1.1: 998 at most
        data, encoding = quopri.encodestring(data), "quoted-printable"
    else:
        encoding = "7bit" if data.isascii() else "8bit"
    data = data.replace(b"\n", b"\r\n")
    head += [
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        f"Content-Transfer-Encoding: {encoding}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "replace") + data, when


def _header_name(name: str) -> str:
    return {"cc": "Cc", "bcc": "Bcc", "reply-to": "Reply-To"}.get(name, name.capitalize())


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


def address_list(value: str) -> list[tuple[str, str]]:
    """(display name, address) of each address in a quoted header block's address field:
    ``Name <a@b>``, ``"Gomez, Carla" <a@b>``, ``Gomez, Carla <a@b>`` (Outlook), ``Name
    [mailto:a@b]``, ``a@b``, ``Name <a@b<mailto:a@b>>`` (Outlook's text of a link),
    separated by ``,`` or ``;``. A name without an address is left out. Linear."""
    pieces: list[tuple[str, str]] = []  # (the separator before it, the piece)
    separator, current = "", list[str]()
    for token in _LIST_TOKEN.findall(value):
        if token in (",", ";"):
            pieces.append((separator, "".join(current)))
            separator, current = token, []
        else:
            current.append(token)
    pieces.append((separator, "".join(current)))
    found: list[tuple[str, str]] = []
    names: list[str] = []  # a name cut by an Outlook comma ("Gomez, Carla <a@b>")
    for before, piece in pieces:
        if before == ";":
            names = []
        name, address = _one_address(piece)
        if address:
            found.append((", ".join([*names, name]) if names and name else name, address))
            names = []
        elif piece.strip():
            names.append(_name(piece))
    return found


def _one_address(piece: str) -> tuple[str, str]:
    """(name, address) of one list element; the address is "" when it has none."""
    address = ""
    for token in _ADDRESS_SPLIT.split(piece):
        if token[:7].lower() == "mailto:":
            token = token[7:]
        token = token.strip("'").rstrip(".")  # Outlook's 'a@b' <a@b>; a sentence's end
        if "@" in token and _PLAUSIBLE.fullmatch(token):
            address = token
            break
    if not address:
        return "", ""
    cut = min((i for i in (piece.find("<"), piece.find("[")) if i >= 0), default=-1)
    name = piece[:cut] if cut >= 0 else piece.replace(address, "", 1)
    name = _name(name)
    return ("" if name.lower() == address.lower() else name), address


def _name(text: str) -> str:
    """A display name as a header block shows it: Gmail's *bold* and the quotes around it
    dropped, ``"O'Neil \\"Pat\\""`` unescaped, ``(Carla)`` after a bare address unwrapped."""
    text = " ".join(_CONTROLS.sub(" ", text).split()).strip("* ")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    elif text[:1] == "(" and text[-1:] == ")" and text.count("(") == 1:
        text = text[1:-1]
    return text.strip()


def _mailbox(name: str, address: str) -> str:
    """``Name <address>``, the name quoted when it must be (RFC 5322 3.4); a name or
    address that is not ASCII is written as UTF-8 (RFC 6532), which syncd reads."""
    if not name:
        return address
    if any(c in _SPECIALS for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _folded(name: str, mailboxes: list[str]) -> str:
    """An address field, folded between its addresses (RFC 5322 2.2.3)."""
    lines, line = [], f"{name}: {mailboxes[0]}"
    for mailbox in mailboxes[1:]:
        if len(line) + len(mailbox) + 2 > 76:
            lines.append(line + ",")
            line = f" {mailbox}"
        else:
            line += f", {mailbox}"
    return "\r\n".join([*lines, line])


# --- dates --------------------------------------------------------------------------------------

_MONTH_WORDS = (
    "jan january|feb february|mar march|apr april|may|jun june|jul july|aug august|"
    "sep sept september|oct october|nov november|dec december"
)
_MONTHS = {
    name: number
    for number, names in enumerate(_MONTH_WORDS.split("|"), start=1)
    for name in names.split()
}
_WEEKDAY_WORDS = (
    "mon monday tue tues tuesday wed weds wednesday thu thur thurs thursday fri friday "
    "sat saturday sun sunday"
)
_WEEKDAYS = frozenset(_WEEKDAY_WORDS.split())
# hours from UTC of the zone names English clients write
_ZONE_WORDS = (
    "gmt=0 utc=0 ut=0 z=0 wet=0 bst=1 west=1 cet=1 cest=2 eet=2 eest=3 est=-5 edt=-4 "
    "cst=-6 cdt=-5 mst=-7 mdt=-6 pst=-8 pdt=-7 akst=-9 akdt=-8 hst=-10"
)
_ZONE_NAMES = {
    name: int(hours) for name, _, hours in (word.partition("=") for word in _ZONE_WORDS.split())
}
_TIME = re.compile(r"(\d{1,2})[:.](\d{2})(?::(\d{2}))?(am|pm)?", re.ASCII)
_OFFSET = re.compile(r"(?:gmt|utc|ut)?([+-])(\d{1,2})(?::?(\d{2}))?", re.ASCII)
_DAY = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?", re.ASCII)
_NUMERIC = re.compile(r"(\d{1,4})([/.-])(\d{1,2})\2(\d{2,4})", re.ASCII)


def forwarded_date(value: str, zone: tzinfo) -> tuple[datetime, bool] | None:
    """A date as a header block shows it (see the module's docstring), and whether it gave
    its time zone; without one it is read in ``zone``. None when it cannot be read or is
    not between 1970 and five years from now."""
    text = value.lower().replace(",", " ").replace("a.m.", "am").replace("p.m.", "pm")
    if len(text) > 120:
        return None
    tokens = [t.strip("()").rstrip(".") for t in text.split()]
    meridiem = "pm" in tokens or "am" in tokens or any(t.endswith(("am", "pm")) for t in tokens)
    year = month = day = None
    clock: tuple[int, int, int] | None = None
    offset: timedelta | None = None
    named: timedelta | None = None
    pm = am = False
    for token in tokens:
        if not token or token in _WEEKDAYS or token == "at":
            continue
        if token in ("am", "pm"):
            pm, am = token == "pm", token == "am"
        elif token in _MONTHS and month is None:
            month = _MONTHS[token]
        elif (time := _TIME.fullmatch(token)) and clock is None:
            clock = (int(time[1]), int(time[2]), int(time[3] or 0))
            pm, am = pm or time[4] == "pm", am or time[4] == "am"
        elif token in _ZONE_NAMES:
            named = named if named is not None else timedelta(hours=_ZONE_NAMES[token])
        elif (zone_offset := _OFFSET.fullmatch(token)) and offset is None:
            minutes = int(zone_offset[2]) * 60 + int(zone_offset[3] or 0)
            offset = timedelta(minutes=-minutes if zone_offset[1] == "-" else minutes)
        elif (numeric := _NUMERIC.fullmatch(token)) and day is None:
            year, month, day = _numeric_date(numeric, meridiem)
        elif token.isascii() and token.isdigit() and len(token) == 4 and year is None:
            year = int(token)
        elif (ordinal := _DAY.fullmatch(token)) and day is None:
            day = int(ordinal[1])
        else:
            return None
    if year is None or month is None or day is None or clock is None:
        return None
    hour, minute, second = clock
    if am or pm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if pm else 0)
    given = offset if offset is not None else named
    if given is not None and abs(given) > timedelta(hours=14):
        return None
    try:
        when = datetime(
            year, month, day, hour, minute, min(second, 59),
            tzinfo=timezone(given) if given is not None else zone,
        )  # fmt: skip
    except ValueError:
        return None
    return (when, given is not None) if EARLIEST <= when <= latest() else None


def _numeric_date(match: re.Match[str], meridiem: bool) -> tuple[int, int, int]:
    """(year, month, day) of ``2025-03-03``, ``3/13/2025`` or ``13/3/2025``: day first
    when the first number is over 12, month first when the second is; else month first
    with a 12-hour clock (US), day first with a 24-hour one."""
    first, _, second, third = match.groups()
    if len(first) == 4:
        return int(first), int(second), int(third)
    a, b, year = int(first), int(second), int(third)
    if len(third) == 2:
        year += 2000 if year < 50 else 1900  # RFC 5322 4.3
    if a > 12 or (b <= 12 and not meridiem):
        return year, b, a
    return year, a, b


def _zone_of(date: str | None) -> tzinfo | None:
    """The time zone of the forward's own Date: the forwarder's, in which Gmail and
    Outlook show the forwarded message's date."""
    if not date:
        return None
    try:
        when = parsedate_to_datetime(date)
    except Exception:
        return None
    if when.tzinfo is None or abs(when.utcoffset() or timedelta()) > timedelta(hours=14):
        return None
    return when.tzinfo


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
