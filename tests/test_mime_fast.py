"""The MIME fast path (``syncd.connectors.mime_fast``) gives the item the full parse gives:
hostile generated messages (raw 8-bit headers, encoded words, folded lines, groups, odd
charsets and encodings) and the real mail corpus read the same through both paths, and the
fast readers agree with ``policy.default`` on every value they accept."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from syncd.config import LimitSettings
from syncd.connectors.mime import parse_message
from syncd.connectors.mime_fast import fast_addresses, fast_text, split_plain
from syncd.connectors.mime_headers import clean
from syncd.items import MailItem
from syncd.matching.addresses import normalize_address

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
CORPUS = Path(__file__).parent / "corpus"
# more examples on demand: SYNCD_FAST_EXAMPLES=20000 pytest tests/test_mime_fast.py
EXAMPLES = int(os.environ.get("SYNCD_FAST_EXAMPLES", "300"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def outcome(
    data: bytes, *, fast: bool, limits: LimitSettings | None = None
) -> MailItem | tuple[str, str]:
    """The item, or the class and message of what parse_message raised (the quarantine
    reason)."""
    try:
        return parse_message(data, "p/1", NOW, fast=fast, limits=limits)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def assert_same(data: bytes, limits: LimitSettings | None = None) -> MailItem | tuple[str, str]:
    full = outcome(data, fast=False, limits=limits)
    assert outcome(data, fast=True, limits=limits) == full, data
    return full


# --- the pieces of hostile header values -------------------------------------------------------

ATEXT = "abcxyzABZ019!#$%&'*+/=?^_`{|}~-"
words = st.text(ATEXT + ".", min_size=1, max_size=8)
blanks = st.sampled_from([" ", "  ", "\t", " \t "])
folds = st.sampled_from(["\r\n ", "\r\n\t", "\n ", "\n\t", "\r\n  "])
charsets = st.sampled_from(
    ["utf-8", "UTF-8", "iso-8859-1", "windows-1252", "us-ascii", "koi8-r", "x-unknown", "utf-8*en",
     "unicode_escape", "utf-16", ""]
)  # fmt: skip
raw_8bit = st.one_of(
    st.text(min_size=1, max_size=6).map(lambda t: t.encode("utf-8")),
    st.text(st.characters(min_codepoint=0xA0, max_codepoint=0xFF), min_size=1, max_size=6).map(
        lambda t: t.encode("latin-1")
    ),
    st.binary(min_size=1, max_size=6),
)


@st.composite
def encoded_word(draw: st.DrawFn) -> str:
    """An RFC 2047 encoded word: mostly well formed, in a charset the text fits or not."""
    text = draw(st.text(max_size=8))
    charset = draw(st.one_of(st.sampled_from(["utf-8", "UTF-8", "iso-8859-1"]), charsets))
    try:
        raw = text.encode(charset.partition("*")[0] or "utf-8")
    except (LookupError, UnicodeEncodeError):
        raw = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        encoded = base64.b64encode(raw).decode()
        broken = [encoded.rstrip("="), encoded + "!", encoded[:-1], "=" + encoded]
        cte = draw(st.sampled_from("Bb"))
    else:
        safe = draw(st.sampled_from(["", "-!*+/", "_=?.()"]))  # '=?' and '?' break a word
        encoded = "".join(
            chr(b)
            if b < 128 and (chr(b).isalnum() or chr(b) in safe)
            else "_"
            if b == 32
            else f"={b:02x}"
            for b in raw
        )
        broken = [encoded + "=", "=" + encoded, encoded + "?", "=4"]
        cte = draw(st.sampled_from("Qq"))
    encoded = draw(st.one_of(st.just(encoded), st.sampled_from(broken)))
    word = f"=?{charset}?{cte}?{encoded}?="
    return draw(
        st.one_of(st.just(word), st.sampled_from([word[:-2], word + "x", "x" + word, word + "?="]))
    )


def joined(draw: st.DrawFn, parts: list[str]) -> str:
    """Parts joined by blanks, some of them folded."""
    out = parts[0] if parts else ""
    for part in parts[1:]:
        out += draw(st.one_of(blanks, folds, st.just(""))) + part
    return out


@st.composite
def plain_encoded_word(draw: st.DrawFn) -> str:
    """A well-formed encoded word in a common charset (the fast reader's kind)."""
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "windows-1252", "us-ascii"]))
    if charset == "us-ascii":
        text = draw(st.text(st.characters(max_codepoint=0x7F), min_size=1, max_size=8))
    else:
        text = draw(st.text(st.characters(max_codepoint=0xFF), min_size=1, max_size=8))
    raw = text.encode(charset, "replace")
    if draw(st.booleans()):
        return f"=?{charset}?{draw(st.sampled_from('Bb'))}?{base64.b64encode(raw).decode()}?="
    encoded = "".join(
        chr(b) if b < 128 and chr(b).isalnum() else "_" if b == 32 else f"={b:02X}" for b in raw
    )
    return f"=?{charset}?{draw(st.sampled_from('Qq'))}?{encoded}?="


@st.composite
def text_value(draw: st.DrawFn) -> bytes:
    """A Subject: ASCII words, encoded words, raw 8-bit bytes, folds, odd blanks."""
    if draw(st.booleans()):  # the fast reader's kind: words and well-formed encoded words
        plain = st.lists(st.one_of(words, plain_encoded_word()), min_size=1, max_size=5)
        return joined(draw, draw(plain)).encode("ascii")
    parts = draw(
        st.lists(
            st.one_of(
                words,
                encoded_word(),
                st.text(st.characters(max_codepoint=0x7F), max_size=6),
                st.sampled_from(["=?", "?=", "Re:", "[OPP-101]", "\x00", "\x0b", "(x)", '"q"']),
            ),
            max_size=6,
        )
    )
    value = joined(draw, parts).encode("ascii", "surrogateescape")
    if draw(st.integers(0, 3)) == 0:
        value += b" " + draw(raw_8bit)
    return draw(st.sampled_from([b"", b" ", b"  "])) + value


@st.composite
def plain_mailbox(draw: st.DrawFn) -> str:
    """A mailbox of the forms the fast reader takes: odd characters, dots, blanks, quotes."""
    atom = st.text(ATEXT, min_size=1, max_size=5)
    dot_atom = st.lists(atom, min_size=1, max_size=3).map(".".join)
    addr = draw(dot_atom) + "@" + draw(dot_atom)
    blank = st.text(" \t", max_size=2)
    phrase = st.lists(st.text(ATEXT + ".", min_size=1, max_size=5), min_size=1, max_size=3)
    name = draw(
        st.one_of(
            phrase.map(lambda w: " ".join(w)),
            phrase.map(lambda w: " \t ".join(w)),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
                    max_size=12).map(lambda t: f'"{t}"'),
        )
    )  # fmt: skip
    form = draw(st.sampled_from([addr, f"<{addr}>", f"{name} <{addr}>", f"{name}<{addr}>"]))
    return draw(blank) + form + draw(blank)


@st.composite
def mailbox(draw: st.DrawFn) -> str:
    """A mailbox of any form: comments, encoded or 8-bit names, spaced brackets, bad parts."""
    local = draw(st.sampled_from(["ana", "Ben.Okafor", "a+tag", "x..y", ".z", "o'brien", "q"]))
    domain = draw(st.sampled_from(["acme.test", "ACME.Test", "b.c.d", "x.", "[1.2.3.4]", "x_y"]))
    addr = f"{local}@{domain}"
    name = draw(
        st.one_of(
            st.just(""),
            st.lists(words, min_size=1, max_size=3).map(" ".join),
            st.text(ATEXT + ' ,;:<>@."\\()', max_size=10).map(lambda t: f'"{t}"'),
            st.sampled_from(
                ['"Doe, John"', '"a\\"b"', "J. Smith", ". x", "Dr. J. Smith, Jr.", '""']
            ),
            encoded_word(),
            st.sampled_from(["Bj\udcc3\udcb6rn", "Ren\udce9"]),
        )
    )
    form = draw(st.sampled_from(["bare", "angle", "named", "comment", "spaced"]))
    if form == "bare" or (form == "named" and not name):
        return addr
    if form == "angle":
        return f"<{addr}>"
    if form == "comment":
        return f"{addr} ({name or 'c'})"
    if form == "spaced":
        return f"{name} < {local} @ {domain} >"
    return draw(st.sampled_from([f"{name} <{addr}>", f"{name}<{addr}>", f"  {name}\t<{addr}> "]))


@st.composite
def address_value(draw: st.DrawFn) -> bytes:
    """An address list: plain mailboxes, hostile ones, groups, empty elements, stray
    brackets and quotes, folded."""
    items = draw(
        st.lists(
            st.one_of(
                plain_mailbox(),
                plain_mailbox(),
                mailbox(),
                st.lists(mailbox(), max_size=2).map(lambda m: f"Team: {', '.join(m)};"),
                st.sampled_from(["undisclosed-recipients:;", "", "<>", "@", '"', "<a@b", "a@b>"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    separators = [
        draw(st.sampled_from([",", ",", ", ", " ,", ",\r\n ", ",\n\t", ";"])) for _ in items
    ]
    value = "".join(
        s + i if n else i for n, (s, i) in enumerate(zip(separators, items, strict=True))
    )
    return value.encode("ascii", "surrogateescape")


DATES = [
    b"Mon, 02 Nov 2026 10:00:00 +0100",
    b"2 Nov 2026 10:00 GMT",
    b"Mon, 02 Nov 2026 10:00:00 +99999999999999999999",
    b"31 Dec 9999 23:59:59 +0000",
    b"yesterday",
    b"",
]
CONTENT = [
    (b"", b""),
    (b"Content-Type: text/plain; charset=utf-8\r\n", b"8bit"),
    (b'Content-Type: text/plain;\r\n\tcharset="iso-8859-1"; format=flowed\r\n', b"8bit"),
    (b"Content-Type: TEXT/PLAIN; charset=windows-1252\r\n", b"quoted-printable"),
    (b"Content-Type: text/plain; charset=x-unknown\r\n", b"7bit"),
    (b"Content-Type: text/plain; charset=unicode_escape\r\n", b"8bit"),
    (b"Content-Type: text/plain; charset=utf-16\r\n", b"binary"),
    (b"Content-Type: text/plain; charset=base64\r\n", b"8bit"),
    (b"Content-Type: text/plain; charset=idna\r\n", b"8bit"),
    (b'Content-Type: text/plain; charset="utf-8"; format=flowed; delsp=yes\r\n', b""),
    (b"Content-Type: text/plain; charset=utf-8; charset=latin-1\r\n", b""),
    (b"Content-Type: text/plain; charset=utf-8\r\n", b"base64"),
    (b"Content-Type: text/plain; charset=utf-8\r\n", b"Quoted-Printable "),
    (b"Content-Type: text/plain; name=invite.calendar\r\n", b""),
    (b"Content-Type: text/plain (comment); charset=utf-8\r\n", b""),
    (b"Content-Type: text/html; charset=utf-8\r\n", b""),
    (b"Content-Type: text/calendar; method=REQUEST\r\n", b""),
    (b'Content-Type: multipart/alternative; boundary="b"\r\n', b""),
]
BODIES = [
    b"Hello =C3=A9 [OPP-101]\r\nsoft=\r\nbreak\r\n",
    b"caf\xc3\xa9 caf\xe9 \x00 <b>x</b>\r\n",
    b"SGVsbG8gd29ybGQ=\r\n",
    b"--b\r\nContent-Type: text/plain\r\n\r\nplain part\r\n--b\r\n"
    b"Content-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n--b--\r\n",
    b"\\ud800 \\x \\N{x} \xff\xfe\x00d\r\n",
    b"",
]


@st.composite
def message(draw: st.DrawFn) -> bytes:
    """A whole message of hostile header fields in any order, folded, CRLF or LF."""
    fields: list[bytes] = []
    for name, value in (
        (b"From", address_value()),
        (b"To", address_value()),
        (b"Cc", address_value()),
        (b"Reply-To", address_value()),
        (b"Subject", text_value()),
    ):
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
            fields.append(name + b": " + draw(value))
    fields.append(b"Date: " + draw(st.sampled_from(DATES)))
    mid = draw(st.sampled_from([b"<a@x.test>", b"<" + b"L" * 900 + b"@x>", b"no-brackets", b""]))
    fields.append(b"Message-ID: " + mid)
    refs = draw(st.lists(st.sampled_from([b"<r1@x>", b"<R2@X>", b"<r3@x>"]), max_size=120))
    if refs:
        fields.append(b"References: " + b"\r\n ".join(refs))
    fields.extend(draw(st.lists(st.sampled_from([
        b"List-Id: <news.vendor.test>", b"Precedence: Bulk", b"Auto-Submitted: auto-replied",
        b"X-Autoreply: yes", b"Sensitivity: Private", b"X-Gmail-Labels: Inbox, Important,",
        b"Received: from x by y; Mon, 02 Nov 2026 10:00:00 +0000", b"MIME-Version: 1.0",
        b"From  : obsolete@syntax.test", b"not a header line", b" leading continuation",
        b"From somebody Mon Nov  2 10:00:00 2026", b"X-Empty:", b":no-name",
    ]), max_size=3)))  # fmt: skip
    head, encoding = draw(st.sampled_from(CONTENT))
    order = draw(st.permutations(fields))
    if head:
        order.append(head.rstrip(b"\r\n"))
    if encoding:
        order.append(b"Content-Transfer-Encoding: " + encoding)
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    block = newline.join(order).replace(b"\r\n", newline)
    return block + newline + draw(st.sampled_from([newline, b""])) + draw(st.sampled_from(BODIES))


# --- the properties ---------------------------------------------------------------------------


@SETTINGS
@given(message())
@example(b"From: Ana <ana@acme.test>\r\nSubject: Hello\r\n\r\nHi\r\n")
@example(b"From: a@b.test\nSubject: =?utf-8?q?caf=C3=A9?= =?utf-8?b?w6k=?=\n\nx\n")
@example(b"From: undisclosed-recipients:;\r\nTo: a@b.test\r\n\r\n")
@example(b"To: Team: a@x.test, b@y.test;\r\nSubject: x\r\n\r\n")
@example(b"From: a@b.test\r\nContent-Type: text/plain\r\n\r\n\xff\xfe")
def test_the_fast_path_and_the_full_parse_give_the_same_item(data: bytes):
    assert_same(data)


TIGHT = LimitSettings(header_bytes=4096, headers=50, encoded_words=10)


@settings(SETTINGS, max_examples=max(EXAMPLES // 3, 50))
@given(message())
@example(b"From: a@b.test\r\nSubject: x\r\n" + b"X-Many: y\r\n" * 60 + b"\r\nbody\r\n")
def test_both_paths_hold_a_message_to_the_same_limits(data: bytes):
    assert_same(data, TIGHT)


@SETTINGS
@given(text_value())
@example(b"=?utf-8?q?a?= =?utf-8?q?b?=  c")
@example(b"=?utf-8?q?=41?=")
@example(b"x =?utf-16?b?AAA=?=")
def test_fast_text_is_the_policys_reading(value: bytes):
    text = value.decode("ascii", "surrogateescape")
    fast = fast_text(text)
    if fast is not None:
        assert clean(fast) == clean(str(policy.default.header_fetch_parse("subject", text)))


@SETTINGS
@given(address_value())
@example(b'"Doe, John" <j@x.test>, J. Smith <s@x.test>,a@b')
@example(b"John. <j@x>")
@example(b"0 .<0@0>, a b.<j@x>")
def test_fast_addresses_are_the_policys_reading(value: bytes):
    text = value.decode("ascii", "surrogateescape")
    fast = fast_addresses(text)
    if fast is not None:
        header = policy.default.header_fetch_parse("to", text)
        full = [
            (clean(a.display_name), normalize_address(clean(f"{a.username}@{a.domain}")))
            for a in header.addresses
        ]
        assert fast == tuple((n, a) for n, a in full if a)


def test_the_fast_path_reads_plain_mail_and_leaves_the_rest_to_the_full_parse():
    plain = (
        b'From: "Ruiz, Ana" <Ana@Northwind.test>\r\nTo: Carla <carla@acme.test>, dan@acme.test\r\n'
        b"Subject: Re: Thread 4 =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8"
        b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSee you =C3=A0 10\r\n"
    )
    split = split_plain(plain)
    assert split is not None and split.text == "See you à 10\r\n"
    assert fast_text("Re: Thread 4 =?utf-8?q?caf=C3=A9?=") == "Re: Thread 4 café"
    assert fast_addresses('"Ruiz, Ana" <Ana@Northwind.test>') == (
        ("Ruiz, Ana", "ana@northwind.test"),
    )
    item = assert_same(plain)
    assert isinstance(item, MailItem) and item.subject == "Re: Thread 4 café"
    assert item.body == "See you à 10\r\n"
    # multipart mail, base64 bodies, encoded names and groups: the full parse reads them
    assert split_plain(plain.replace(b"text/plain", b"multipart/mixed")) is None
    assert split_plain(plain.replace(b"quoted-printable", b"base64")) is None
    assert fast_addresses("=?utf-8?q?Ana?= <ana@x.test>") is None
    assert fast_addresses("undisclosed-recipients:;") is None
    assert fast_text("=?x-unknown?q?a?=") is None


MAIL = sorted(p for p in (CORPUS / "mail").rglob("*") if p.is_file())
MBOX_MESSAGES = [
    (path.name, part)
    for path in sorted((CORPUS / "mbox").iterdir())
    for part in (b"\n" + path.read_bytes()).split(b"\nFrom ")[1:]
]


@pytest.mark.parametrize("path", MAIL, ids=lambda p: p.name)
def test_every_corpus_message_reads_the_same_through_both_paths(path: Path):
    assert_same(path.read_bytes())


def test_every_corpus_mbox_message_reads_the_same_through_both_paths():
    assert MBOX_MESSAGES
    for _name, data in MBOX_MESSAGES:
        assert_same(data.partition(b"\n")[2])
