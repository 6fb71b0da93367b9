"""The text of a forward to the dropbox mailbox (:mod:`syncd.connectors.forwards`), as the
lines its reader sees: the ``text/plain`` body, else the HTML one as text
(:func:`html_text`: block elements and ``<br>`` are line breaks, which the forwarded header
blocks need, where the MIME parser's tag stripping keeps none), ``format=flowed`` (RFC 3676)
unwrapped with its quote depths kept. Pure: text in, text out.
"""

from __future__ import annotations

import html
import re
from email.message import EmailMessage
from urllib.parse import unquote

from syncd.connectors.mime import clean


def body_text(msg: EmailMessage) -> str:
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
