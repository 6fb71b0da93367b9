"""The fast path of MIME parsing: header values, and whole plain messages, read without the
standard library's header parser where that provably gives the same result.

``policy.default`` parses a header into a token tree (about 6 us a character); for the
values most mail carries (an ASCII or simply encoded Subject, a list of plain addresses)
the result is known without the tree. Each reader here takes only the values whose reading
it can prove to be the policy's own and answers None for anything else, which the full
parse (:mod:`.mime_headers`) then reads: the fast path never decides on its own what a value
means. :func:`split_plain` does the same for a whole message: a single-part ``text/plain``
message with a plain header block is split into its fields and text as the ``email`` parser
and ``get_content`` would, without building an ``EmailMessage``.

``tests/test_mime_fast.py`` proves the equality: hostile generated messages and the real
mail corpus give the same :class:`~syncd.items.MailItem` through both paths.
"""

from __future__ import annotations

import base64
import binascii
import functools
import quopri
import re
from dataclasses import dataclass

from syncd.matching.addresses import normalize_address

# the standard library's header parser spends about 6 us and 600 bytes a character of a
# long header (a 250 KB To: 1.5 s and 150 MB); beyond this, the light parsers read it
# (``getaddresses``, ``decode_header``: mime_headers), and only headers this short are
# memoised or read here
POLICY_PARSE_CHARS = 8192
MEMO_CHARS = 1024  # address values up to this long are memoised (4,096 of them at most)

# --- unstructured text (Subject) --------------------------------------------------------------

# printable ASCII and blanks only: the tokens the policy's unstructured parser splits on
_PRINTABLE = re.compile(r"[\x20-\x7e\t]*")
_BLANKS = re.compile(r"([ \t]+)")
# an encoded word the policy decodes exactly as written: a plain charset, Q or B, and text
# with no '?' that does not start with '=' (where the policy's scan for '?=' goes astray)
_ENCODED_WORD = re.compile(r"=\?([A-Za-z0-9_-]+)\?([QqBb])\?([^?=\s][^?\s]*)\?=")
# the charsets whose decoding cannot give a string the policy's sanitising step refuses
_CHARSETS = frozenset(
    {
        "utf-8",
        "utf8",
        "us-ascii",
        "ascii",
        "iso-8859-1",
        "latin1",
        "latin-1",
        "iso-8859-2",
        "iso-8859-15",
        "windows-1250",
        "windows-1252",
        "cp1252",
    }
)
_Q_BYTE = re.compile(rb"=([a-fA-F0-9]{2})")


def _q_byte(match: re.Match[bytes]) -> bytes:
    return bytes.fromhex(match.group(1).decode())


def _decoded_word(match: re.Match[str]) -> str | None:
    """An encoded word's text, or None when the policy would read it any other way than a
    strict decoding (unknown charset, bytes the charset refuses, base64 that needs mending)."""
    charset, encoding, text = match.groups()
    if charset.lower() not in _CHARSETS:
        return None
    raw = text.encode("ascii")
    if encoding in "Qq":
        data = _Q_BYTE.sub(_q_byte, raw.replace(b"_", b" "))
    else:
        if len(raw) % 4:
            return None
        try:
            data = base64.b64decode(raw, validate=True)
        except binascii.Error:
            return None
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return None


def fast_text(value: str) -> str | None:
    """``str(policy.default.header_fetch_parse(name, value))`` for an unstructured header
    (Subject), or None when this reader cannot prove it gives the same.

    Without ``=?`` the policy's text is the value without its line breaks (raw 8-bit bytes
    read as UTF-8, else U+FFFD); with encoded words, only printable ASCII whose every
    ``=?`` opens a whole, strictly decodable word between blanks is read here, with the
    blanks between two adjacent encoded words dropped (RFC 2047 6.2)."""
    if len(value) > POLICY_PARSE_CHARS:
        return None
    value = value.replace("\r", "").replace("\n", "")
    if "=?" not in value:
        if value.isascii():
            return value
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if not _PRINTABLE.fullmatch(value):
        return None
    out: list[str] = []
    after_word = False  # the last token was an encoded word (blanks after it are pending)
    blank = ""
    for token in _BLANKS.split(value):
        if not token:
            continue
        if token[0] in " \t":
            blank = token
            continue
        match = _ENCODED_WORD.fullmatch(token)
        if match:
            text = _decoded_word(match)
            if text is None:
                return None
            out.append(text if after_word else blank + text)
            after_word = True
        elif "=?" in token:
            return None
        else:
            out.append(blank + token)
            after_word = False
        blank = ""
    out.append(blank)
    return "".join(out)


# --- address lists ----------------------------------------------------------------------------

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_ADDR = rf"{_DOT_ATOM}@{_DOT_ATOM}"
# a display name of plain words (dots allowed after the first character, as in 'J. Smith'),
# or one quoted string with no escapes: both read back exactly as below
_PHRASE = (
    rf"{_ATEXT}[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]*(?:[ \t]+[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]+)*"
)
_MAILBOX = re.compile(
    rf'[ \t]*(?:(?P<bare>{_ADDR})|(?:(?P<phrase>{_PHRASE})|"(?P<quoted>[^"\\]*)")?'
    rf"[ \t]*<(?P<angle>{_ADDR})>)[ \t]*(?:,|\Z)"
)
_PRINTABLE_NO_CONTROLS = re.compile(r"[\x20-\x7e\t]+")


def fast_addresses(value: str) -> tuple[tuple[str, str], ...] | None:
    """(display name, normalised address) of every address in an address header's value,
    as the policy's parse gives them, or None when this reader cannot prove it. Memoised
    for short values: a mailbox's From and To values repeat (its user, their customers).

    Read here: printable ASCII lists of ``addr@domain``, ``<addr@domain>``, ``Name
    <addr@domain>`` and ``"Quoted, Name" <addr@domain>``, separated by commas; not read
    here: encoded words, comments, groups, escapes, empty list elements, and a list where
    no address survives normalisation (the full parse reads it the lenient way)."""
    if len(value) > MEMO_CHARS:
        return _fast_addresses(value)
    return _memo_addresses(value)


@functools.lru_cache(maxsize=4096)
def _memo_addresses(value: str) -> tuple[tuple[str, str], ...] | None:
    return _fast_addresses(value)


def _fast_addresses(value: str) -> tuple[tuple[str, str], ...] | None:
    if len(value) > POLICY_PARSE_CHARS or "=?" in value:
        return None
    value = value.replace("\r", "").replace("\n", "")
    if not _PRINTABLE_NO_CONTROLS.fullmatch(value):
        return None
    found: list[tuple[str, str]] = []
    pos, end = 0, len(value)
    while pos < end:
        match = _MAILBOX.match(value, pos)
        if match is None or match.end() == pos:
            return None
        pos = match.end()
        if value[pos - 1] == "," and pos == end:
            return None  # a trailing comma: the policy's reading is not proven here
        bare, phrase, quoted, angle = match.group("bare", "phrase", "quoted", "angle")
        if phrase and phrase[-1] == "." and match.end("phrase") + 1 == match.start("angle"):
            return None  # 'J.<j@x.test>': the policy's parser fails on it
        if bare is not None:
            name, address = "", bare
        else:
            name = quoted if quoted is not None else " ".join((phrase or "").split())
            address = angle
        normal = normalize_address(address)
        if normal:
            found.append((name, normal))
    return tuple(found) or None


# --- whole plain messages ---------------------------------------------------------------------

# a header block of field lines and their continuations, ended by a blank line, every line
# ended by LF or CRLF: exactly the lines the email parser reads as this block
_HEAD = re.compile(rb"((?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)+)\r?\n")
_FIELD_SPLIT = re.compile(r"\n(?=[^ \t])")
_LINE = re.compile(r"[^\n]*\n")  # (str.splitlines would also break at \x0b, \x1c, ...)
_TEXT_PLAIN = re.compile(
    r"(?i)text/plain((?:[ \t]*;[ \t]*[A-Za-z0-9-]+=(\"?)[A-Za-z0-9_.-]+\2)*)[ \t]*"
)
_PARAM = re.compile(r"([A-Za-z0-9-]+)=\"?([A-Za-z0-9_.-]+)")
_PLAIN_ENCODINGS = ("7bit", "8bit", "binary", "quoted-printable")


@dataclass(frozen=True, slots=True)
class PlainMessage:
    """A single-part ``text/plain`` message split as the ``email`` parser splits it."""

    lines: list[str]  # the header block's lines, as the parser collects them
    fields: dict[str, list[str]]  # every raw value by lower-case name (mime_headers.Fields)
    text: str  # the body as ``get_content`` decodes it


def _fields(block: str) -> dict[str, list[str]]:
    """The values as ``policy.default.header_source_parse`` makes them (the first line's
    blanks after the colon and the last line break dropped), by lower-case name."""
    fields: dict[str, list[str]] = {}
    for field in _FIELD_SPLIT.split(block):
        name, _, value = field.partition(":")
        fields.setdefault(name.lower(), []).append(value.lstrip(" \t").rstrip("\r\n"))
    return fields


def _values(fields: dict[str, list[str]], name: str) -> list[str]:
    """Every value of field ``name``, its line breaks removed (as the policy reads it)."""
    return [v.replace("\r", "").replace("\n", "") for v in fields.get(name, ())]


def _charset(content_type: str) -> str | None:
    """The charset ``get_content`` reads a ``text/plain`` part with; None when the
    Content-Type is another one or has parameters not proven to read the same way."""
    match = _TEXT_PLAIN.fullmatch(content_type)
    lowered = content_type.lower()
    if match is None or "calendar" in lowered or "multipart" in lowered:
        return None  # (those words send the full parse looking for an invitation)
    charsets = [v for k, v in _PARAM.findall(match.group(1)) if k.lower() == "charset"]
    if len(charsets) > 1:
        return None
    return charsets[0] if charsets else "ASCII"


def split_plain(data: bytes) -> PlainMessage | None:
    """The message as the ``email`` parser and ``get_content`` would read it, when it is a
    single-part ``text/plain`` message (no Content-Type, or one with plain parameters) in
    7bit, 8bit, binary or quoted-printable, with a plain header block ended by a blank line;
    None for every other message (multipart, calendars, base64, a header block the parser
    reads with defects), which the full parse reads."""
    head = _HEAD.match(data)
    if head is None:
        return None
    block = head.group(1).decode("ascii", "surrogateescape")
    fields = _fields(block)
    content_types = _values(fields, "content-type")
    encodings = [v.lower() for v in _values(fields, "content-transfer-encoding")]
    if len(content_types) > 1 or len(encodings) > 1:
        return None
    charset = _charset(content_types[0]) if content_types else "ASCII"
    if charset is None or (encodings and encodings[0] not in _PLAIN_ENCODINGS):
        return None
    body = data[head.end() :]
    if encodings == ["quoted-printable"]:
        body = quopri.decodestring(body)
    try:
        text = body.decode(charset, "replace")
    except Exception:  # an unknown charset: get_content fails, read as UTF-8 (mime._text_of)
        text = body.decode("utf-8", "replace")
    return PlainMessage(_LINE.findall(block), fields, text)
