"""The ``[limits]`` (:mod:`syncd.limits`) a message is held to, and the parser that keeps
to them.

Before ``email`` sees the bytes (:func:`check_message`): the message's size, then its
header block (scanned up to the first line that is no header field: its size, its number
of fields, the encoded words of each field), all at the speed of ``re`` and
``bytes.count``. While the parser reads it (:func:`read_mime`): the MIME parts and their
nesting are counted as the parser creates them, and it stops at the limit, long before the
standard library's recursion could; the headers of every part are held to the same limits.
Anything over a limit raises :class:`OverLimit`.
"""

from __future__ import annotations

import io
import re
from email.feedparser import FeedParser
from email.message import EmailMessage

from syncd.config import LimitSettings
from syncd.connectors.mime_headers import MEMO_POLICY
from syncd.limits import check

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


def _header_block_end(data: bytes, limits: LimitSettings) -> int:
    """Where the header block ends, scanning no further than the limit allows (and all of
    it when it is over, to say by how much: a scan, no parse)."""
    run = _HEADER_RUN.match(data, 0, limits.header_bytes + 1)
    end = run.end() if run else 0
    if end <= limits.header_bytes:
        cut = _ONE_HEADER_LINE.match(data, end)  # a line the scan's end cut in two
        end = cut.end() if cut else end
    if end > limits.header_bytes:
        whole = _HEADER_RUN.match(data)
        end = whole.end() if whole else end
    return end


def check_message(data: bytes, limits: LimitSettings) -> None:
    """The limits a message's bytes can be held to before any parser sees them: its size,
    and its header block's size, number of fields and encoded words per field. Raises
    :class:`OverLimit`. Costs a few regular-expression scans of the header block."""
    check("message_bytes", len(data), limits.message_bytes, "the message is {size}")
    end = _header_block_end(data, limits)
    check("header_bytes", end, limits.header_bytes, "the header block is {size}")
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
        name = field_name(field.partition(b":")[0].decode("latin-1"))
        check(
            "encoded_words",
            len(_ENCODED_WORD.findall(field)),
            limits.encoded_words,
            f"{name} has {{n}} encoded words",
        )


def field_name(name: str) -> str:
    """A header field's name fit for a reason: printable, at most 60 characters."""
    name = "".join(c for c in name.strip() if c.isprintable())[:60]
    return name or "a header field"


def check_fields(lines: list[str], limits: LimitSettings, where: str) -> None:
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
                    f"{field_name(name)} of {where} has {{n}} encoded words or more",
                )


class _BoundedParser(FeedParser):
    """The standard library's parser, counting the MIME parts and their nesting as it
    creates them and checking every header block: it stops with :class:`OverLimit` at the
    first part over a limit, so neither the count of parts nor the depth of its recursion
    can grow past the limits."""

    def __init__(self, limits: LimitSettings) -> None:
        super().__init__(policy=MEMO_POLICY)
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
        check_fields(lines, self.limits, "a MIME part" if self.parts > 1 else "the message")
        super()._parse_headers(lines)  # type: ignore[misc]


def read_mime(data: bytes, limits: LimitSettings) -> EmailMessage:
    """``BytesParser(policy).parsebytes(data)``, within the limits (else :class:`OverLimit`)."""
    parser = _BoundedParser(limits)
    text = io.StringIO(data.decode("ascii", "surrogateescape"))
    while chunk := text.read(8192):  # as email.parser.Parser feeds it
        parser.feed(chunk)
    msg = parser.close()
    assert isinstance(msg, EmailMessage)
    return msg
