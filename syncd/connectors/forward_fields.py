"""What the fields of a header block quoted in a forward become (the blocks are found by
:mod:`syncd.connectors.forwards`): its address fields as (name, address) pairs
(:func:`address_list`, in the forms Gmail, Outlook, Apple Mail and Thunderbird quote them),
its date (:func:`forwarded_date`), and the RFC 5322 message made of them and of the text
below the block (:func:`synthesised`), which :func:`syncd.connectors.mime.parse_message`
reads like any other mail. Pure: text in, bytes out.

Dates: RFC 5322 (Thunderbird), and the English forms of Gmail (``Mon, Mar 3, 2025 at 10:00
AM``), Outlook (``Monday, March 3, 2025 10:00 AM``, ``Mon 3/3/2025 10:00 AM``, ``03 March
2025 10:00``) and Apple Mail (``March 3, 2025 at 10:00:00 AM GMT+1``). Gmail and Outlook give
no time zone: such a date is read in the zone of the forward's own Date (:func:`zone_of`,
the forwarder's), else as UTC with a problem said.
"""

from __future__ import annotations

import quopri
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import format_datetime, parsedate_to_datetime

from syncd.items import EARLIEST, latest

# the fields of a header block that hold addresses
ADDRESS_FIELDS = ("from", "to", "cc", "bcc", "reply-to")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")

# --- a forwarded message made up from its header block -----------------------------------------

_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_LIST_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|<[^<>]*>?|\[[^\[\]]*\]?|\([^()]*\)?|[,;]|[^",;<\[(]+')
_ADDRESS_SPLIT = re.compile(r"""[\s<>()\[\]",;]+""")
_PLAUSIBLE = re.compile(r"[^\s<>()\[\]\\,;:@\"\x00-\x1f\x7f]+@[^\s<>()\[\]\\,;:@\"\x00-\x1f\x7f]+")
_SPECIALS = frozenset('()<>[]:;@\\,."')
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_LONG_LINE = re.compile(rb"(?:\A|\n)[^\n]{991}")  # tried at line starts only: linear


def synthesised(
    fields: dict[str, str], text: str, zone: tzinfo | None, problems: list[str]
) -> tuple[bytes, datetime | None]:
    """The RFC 5322 message of an inline forward's fields and text, and its date (or None)."""
    subject = _CONTROLS.sub(" ", fields.get("subject", "")).strip()
    sender = address_list(fields["from"])
    who = f"forwarded message from {sender[0][1] if sender else _short(fields['from'])}"
    if subject:
        who += f' ("{_short(subject)}")'
    head: list[str] = []
    for name in ADDRESS_FIELDS:
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
    body = _LEADING_BLANK_LINES.sub("", text).rstrip()
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


def zone_of(date: str | None) -> tzinfo | None:
    """The forwarder's time zone, of the forward's own Date: Gmail and Outlook show dates in it."""
    if not date:
        return None
    try:
        when = parsedate_to_datetime(date)
    except Exception:
        return None
    if when.tzinfo is None or abs(when.utcoffset() or timedelta()) > timedelta(hours=14):
        return None
    return when.tzinfo
