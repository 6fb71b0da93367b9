"""Forwards to the dropbox mailbox unpacked (``syncd.connectors.forwards``, issue 15): the
note, and each forwarded original as bytes that ``parse_message`` reads with its own
sender, recipients, date and subject, for every client's style (plain and HTML), attached
messages, nested forwards, replies that are no forwards, and hostile input (unit tests, no
database).

The samples are written here after the shape each client gives a forward (the marker line,
the order and spelling of the header fields, the date format, the HTML around them) as seen
in forwards these clients send; the names, addresses and text are made up.
"""

from __future__ import annotations

import base64
import contextlib
import html
import time
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from syncd.config import LimitSettings
from syncd.connectors.forward_fields import address_list, forwarded_date
from syncd.connectors.forward_text import html_text
from syncd.connectors.forwards import MAX_ORIGINALS, Unpacked, UnreadableForward, unpack
from syncd.connectors.mime import MessageOverLimit, UnreadableMessage, parse_message
from syncd.items import MailItem

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
CARLA_SENT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)  # Mon 3 Mar 2025 10:00 at +01:00
CET = timezone(timedelta(hours=1))


def forward(
    body: str,
    *,
    subject: str = "Fwd: Pricing for Q3",
    content_type: str = 'text/plain; charset="UTF-8"',
    date: str | None = "Tue, 4 Mar 2025 09:12:33 +0100",
) -> bytes:
    """A message Ana sent the dropbox, with ``body`` as its only part."""
    lines = [
        "From: Ana Ruiz <ana@northwind.test>",
        "To: crm-dropbox@northwind.test",
        f"Subject: {subject}",
        *([f"Date: {date}"] if date else []),
        "Message-ID: <fwd-1@mail.northwind.test>",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
        "Content-Transfer-Encoding: 8bit",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()


def alternative(plain: str, html: str, **kwargs: Any) -> bytes:
    """A multipart/alternative forward, as Gmail, Apple Mail and Thunderbird send them."""
    body = (
        "--alt\n"
        'Content-Type: text/plain; charset="UTF-8"\n\n'
        f"{plain}\n"
        "--alt\n"
        'Content-Type: text/html; charset="UTF-8"\n\n'
        f"{html}\n"
        "--alt--\n"
    )
    return forward(body, content_type='multipart/alternative; boundary="alt"', **kwargs)


def parsed(data: bytes) -> MailItem:
    return parse_message(data, "dropbox/1", NOW)


def people(item: MailItem, role: str) -> list[tuple[str, str]]:
    return [(p.name, p.address) for p in item.participants if p.role == role]


def only(unpacked: Unpacked) -> MailItem:
    assert len(unpacked.originals) == 1, unpacked
    return parsed(unpacked.originals[0])


def assert_carla_to_ana(item: MailItem) -> None:
    """The original every sample forwards: Carla's pricing mail to Ana."""
    assert item.sender is not None
    assert (item.sender.name, item.sender.address) == ("Carla Gomez", "carla@acme.test")
    assert ("Ana Ruiz", "ana@northwind.test") in people(item, "to")
    assert item.sent_at == CARLA_SENT
    assert item.subject == "Pricing for Q3"
    assert "Here is the pricing." in item.body


# -- Gmail -------------------------------------------------------------------------------------
# Gmail's forward: a dashed line, From (the name in bold, *Name*, in the plain part), Date in
# the forwarder's zone without one ("Mon, Mar 3, 2025 at 10:00 AM", a narrow no-break space
# before AM since 2023), Subject, To, Cc; two blank lines, then the text.

GMAIL_PLAIN = """[OPP-12] please log this one

---------- Forwarded message ---------
From: *Carla Gomez* <carla@acme.test>
Date: Mon, Mar 3, 2025 at 10:00\u202fAM
Subject: Pricing for Q3
To: Ana Ruiz <ana@northwind.test>, "Okafor, Ben" <ben@northwind.test>
Cc: <ops@acme.test>


Hi Ana,

Here is the pricing.

Carla
"""

GMAIL_HTML = (
    '<div dir="ltr">[OPP-12] please log this one<br><br><div class="gmail_quote">'
    '<div dir="ltr" class="gmail_attr">---------- Forwarded message ---------<br>From: '
    '<strong class="gmail_sendername" dir="auto">Carla Gomez</strong> <span dir="auto">'
    '&lt;<a href="mailto:carla@acme.test">carla@acme.test</a>&gt;</span><br>'
    "Date: Mon, Mar 3, 2025 at 10:00\u202fAM<br>Subject: Pricing for Q3<br>"
    'To: Ana Ruiz &lt;<a href="mailto:ana@northwind.test">ana@northwind.test</a>&gt;, '
    '"Okafor, Ben" &lt;<a href="mailto:ben@northwind.test">ben@northwind.test</a>&gt;<br>'
    'Cc: &lt;<a href="mailto:ops@acme.test">ops@acme.test</a>&gt;<br></div><br><br>'
    '<div dir="ltr">Hi Ana,<div><br></div><div>Here is the pricing.</div><div><br></div>'
    "<div>Carla</div></div>\n</div></div>\n"
)


@pytest.mark.parametrize(
    "data",
    [
        forward(GMAIL_PLAIN),
        forward(GMAIL_HTML, content_type='text/html; charset="UTF-8"'),
        alternative(GMAIL_PLAIN, GMAIL_HTML),
    ],
    ids=["plain", "html", "alternative"],
)
def test_a_gmail_forward_gives_the_note_and_the_original(data: bytes):
    unpacked = unpack(data)
    assert unpacked.note == "[OPP-12] please log this one"
    assert unpacked.problems == ()
    item = only(unpacked)
    assert_carla_to_ana(item)
    assert people(item, "to") == [
        ("Ana Ruiz", "ana@northwind.test"),
        ("Okafor, Ben", "ben@northwind.test"),
    ]
    assert people(item, "cc") == [("", "ops@acme.test")]
    assert item.body.replace("\r\n", "\n").startswith("Hi Ana,\n\nHere is the pricing.")
    assert item.message_id is None and item.key.startswith("hash:")


def test_the_same_inline_forward_twice_is_one_activity():
    once = only(unpack(forward(GMAIL_PLAIN)))
    again = only(unpack(forward(GMAIL_PLAIN, date="Fri, 7 Mar 2025 16:00:00 +0100")))
    assert once.key == again.key


# -- Outlook -----------------------------------------------------------------------------------
# Outlook on the web and new Outlook: a line of 32 underscores, From, Sent (in the
# forwarder's zone, without one: "Monday, March 3, 2025 10:00 AM"), To (";" between
# recipients, "Last, First" names unquoted), Cc, Subject. Outlook for Windows writes the same
# block under a top border (no line in the text), older versions under "-----Original
# Message-----" with "Name [mailto:a@b]". Outlook mostly sends HTML.

OUTLOOK_PLAIN = """Logging this, [OPP-7]

Ana Ruiz | Account Executive

________________________________
From: Gomez, Carla <carla@acme.test>
Sent: Monday, March 3, 2025 10:00 AM
To: Ruiz, Ana <ana@northwind.test>; Okafor, Ben <ben@northwind.test>; Smith, Dan
<dan@northwind.test>; Novak, Eva <eva@northwind.test>
Cc: ops@acme.test
Subject: Pricing for Q3

Hi Ana,

Here is the pricing.
"""

OUTLOOK_CLASSIC = """Please log.

-----Original Message-----
From: Carla Gomez [mailto:carla@acme.test]
Sent: Monday, March 03, 2025 10:00 AM
To: 'Ana Ruiz' <ana@northwind.test>
Subject: Pricing for Q3

Hi Ana,
Here is the pricing.
"""

OUTLOOK_WINDOWS_HTML = """<html xmlns:v="urn:schemas-microsoft-com:vml" \
xmlns:o="urn:schemas-microsoft-com:office:office" xmlns="http://www.w3.org/TR/REC-html40">
<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<meta name="Generator" content="Microsoft Word 15 (filtered medium)">
<style><!--
p.MsoNormal, li.MsoNormal, div.MsoNormal
	{margin:0in;
	font-size:11.0pt;
	font-family:"Calibri",sans-serif;}
--></style><!--[if gte mso 9]><xml>
<o:shapedefaults v:ext="edit" spidmax="1026" />
</xml><![endif]--></head>
<body lang="EN-US" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">
<div class="WordSection1">
<p class="MsoNormal">Logging this, [OPP-7]<o:p></o:p></p>
<p class="MsoNormal"><o:p>&nbsp;</o:p></p>
<div>
<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in">
<p class="MsoNormal"><b>From:</b> Gomez, Carla &lt;carla@acme.test&gt; <br>
<b>Sent:</b> Monday, March 3, 2025 10:00 AM<br>
<b>To:</b> Ruiz, Ana &lt;ana@northwind.test&gt;; Okafor, Ben &lt;ben@northwind.test&gt;; \
Smith, Dan &lt;dan@northwind.test&gt;; Novak, Eva &lt;eva@northwind.test&gt;<br>
<b>Cc:</b> ops@acme.test<br>
<b>Subject:</b> Pricing for Q3<o:p></o:p></p>
</div>
</div>
<p class="MsoNormal"><o:p>&nbsp;</o:p></p>
<p class="MsoNormal">Hi Ana,<o:p></o:p></p>
<p class="MsoNormal"><o:p>&nbsp;</o:p></p>
<p class="MsoNormal">Here is the pricing.<o:p></o:p></p>
</div>
</body>
</html>
"""

OUTLOOK_WEB_HTML = (
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
    '<style type="text/css" style="display:none;"> P {margin-top:0;margin-bottom:0;} '
    '</style></head><body dir="ltr"><div class="elementToProof" style="font-family: Aptos, '
    'Calibri, Helvetica, sans-serif; font-size: 12pt; color: rgb(0, 0, 0);">Logging this, '
    '[OPP-7]</div><div id="appendonsend"></div><hr style="display:inline-block;width:98%" '
    'tabindex="-1"><div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" '
    'style="font-size:11pt" color="#000000"><b>From:</b> Gomez, Carla &lt;carla@acme.test&gt;'
    "<br><b>Sent:</b> Monday, March 3, 2025 10:00 AM<br><b>To:</b> Ruiz, Ana "
    "&lt;ana@northwind.test&gt;; Okafor, Ben &lt;ben@northwind.test&gt;; Smith, Dan "
    "&lt;dan@northwind.test&gt;; Novak, Eva &lt;eva@northwind.test&gt;<br><b>Cc:</b> "
    "ops@acme.test &lt;ops@acme.test&gt;<br><b>Subject:</b> Pricing for Q3</font><div>&nbsp;"
    '</div></div><div dir="ltr"><div>Hi Ana,</div><div><br></div><div>Here is the pricing.'
    "</div></div></body></html>"
)


@pytest.mark.parametrize(
    "data",
    [
        forward(OUTLOOK_PLAIN, subject="FW: Pricing for Q3"),
        forward(OUTLOOK_WINDOWS_HTML, subject="FW: Pricing for Q3", content_type="text/html"),
        forward(OUTLOOK_WEB_HTML, subject="FW: Pricing for Q3", content_type="text/html"),
    ],
    ids=["plain", "windows-html", "web-html"],
)
def test_an_outlook_forward_reads_last_first_names_and_semicolons(data: bytes):
    unpacked = unpack(data)
    assert unpacked.note.startswith("Logging this, [OPP-7]")
    assert unpacked.problems == ()
    item = only(unpacked)
    assert item.sender is not None
    assert (item.sender.name, item.sender.address) == ("Gomez, Carla", "carla@acme.test")
    assert people(item, "to") == [
        ("Ruiz, Ana", "ana@northwind.test"),
        ("Okafor, Ben", "ben@northwind.test"),
        ("Smith, Dan", "dan@northwind.test"),
        ("Novak, Eva", "eva@northwind.test"),
    ]
    assert [address for _, address in people(item, "cc")] == ["ops@acme.test"]
    assert item.sent_at == CARLA_SENT  # in the zone of the forward's own Date
    assert item.subject == "Pricing for Q3"
    assert item.body.replace("\r\n", "\n").strip().endswith("Here is the pricing.")


def test_an_older_outlook_forward_reads_mailto_and_quoted_names():
    item = only(unpack(forward(OUTLOOK_CLASSIC, subject="FW: Pricing for Q3")))
    assert_carla_to_ana(item)
    assert people(item, "to") == [("Ana Ruiz", "ana@northwind.test")]


@pytest.mark.parametrize(
    "sender",
    [
        "carla@acme.test",
        "Carla Gomez\n[mailto:carla@acme.test]",
        "Carla Gomez <carla@acme.test<mailto:carla@acme.test>>",
        '"Carla Gomez" <carla@acme.test>',
    ],
)
def test_the_sender_is_read_in_every_form_outlook_writes_it(sender: str):
    body = OUTLOOK_CLASSIC.replace("Carla Gomez [mailto:carla@acme.test]", sender)
    item = only(unpack(forward(body, subject="FW: Pricing for Q3")))
    assert item.sender is not None and item.sender.address == "carla@acme.test"
    assert item.sender.name == ("" if sender == "carla@acme.test" else "Carla Gomez")


def test_recipients_without_an_address_are_a_problem_not_a_failure():
    # Outlook shows colleagues from the company directory by name only
    body = OUTLOOK_CLASSIC.replace("'Ana Ruiz' <ana@northwind.test>", "Ana Ruiz; Ben Okafor")
    unpacked = unpack(forward(body, subject="FW: Pricing for Q3"))
    item = only(unpacked)
    assert item.sender is not None and item.sender.address == "carla@acme.test"
    assert people(item, "to") == []
    assert unpacked.problems == (
        'forwarded message from carla@acme.test ("Pricing for Q3"): its To has no address: '
        "'Ana Ruiz; Ben Okafor'",
    )


def test_a_forward_quoted_line_by_line_with_folded_fields_is_read():
    # Outlook's "Prefix each line of the original message" option quotes the forward
    body = """FYI

> -----Original Message-----
> From: Carla Gomez <carla@acme.test>
> Sent: Monday, March 3, 2025 10:00 AM
> To: Ana Ruiz <ana@northwind.test>;
>     Okafor, Ben <ben@northwind.test>
> Subject: Pricing for Q3
>\x20
> Hi Ana,
> Here is the pricing.
"""
    item = only(unpack(forward(body, subject="FW: Pricing for Q3")))
    assert_carla_to_ana(item)
    assert people(item, "to")[1] == ("Okafor, Ben", "ben@northwind.test")
    assert item.body.replace("\r\n", "\n") == "Hi Ana,\nHere is the pricing.\n"


def test_a_sender_shown_by_name_only_is_a_problem_and_the_rest_is_kept():
    # Outlook shows a sender from the company directory without an address
    body = OUTLOOK_CLASSIC.replace("Carla Gomez [mailto:carla@acme.test]", "Carla Gomez")
    unpacked = unpack(forward(body, subject="FW: Pricing for Q3"))
    item = only(unpacked)
    assert item.sender is None and people(item, "to") == [("Ana Ruiz", "ana@northwind.test")]
    assert unpacked.problems == (
        'forwarded message from Carla Gomez ("Pricing for Q3"): its From has no address: '
        "'Carla Gomez'",
    )


def test_a_quoted_message_id_and_reply_to_are_kept():
    body = THUNDERBIRD_PLAIN.replace(
        "To: \t", "Reply-To: \tSales <sales@acme.test>\nMessage-ID: \t<q3@mail.acme.test>\nTo: \t"
    )
    item = only(unpack(forward(body)))
    assert item.key == "mid:q3@mail.acme.test"
    assert [(p.name, p.address) for p in item.reply_to] == [("Sales", "sales@acme.test")]


def test_a_forward_in_another_language_is_not_read_as_one():
    # field names are read in English only: a German Outlook's block stays text
    body = OUTLOOK_PLAIN.replace("From:", "Von:").replace("Sent:", "Gesendet:")
    body = body.replace("To:", "An:").replace("Subject:", "Betreff:")
    unpacked = unpack(forward(body, subject="WG: Pricing for Q3"))
    assert unpacked.originals == () and "Von: Gomez, Carla" in unpacked.note


# -- Apple Mail --------------------------------------------------------------------------------
# Apple Mail: "Begin forwarded message:", a blank line, From, Subject, Date with its zone
# ("March 3, 2025 at 10:00:00 AM GMT+1"), To, Cc; the forwarded part in a
# <blockquote type="cite">, which its plain-text part quotes with "> ".

APPLE_PLAIN = """FYI, logging.

> Begin forwarded message:
>\x20
> From: Carla Gomez <carla@acme.test>
> Subject: Pricing for Q3
> Date: March 3, 2025 at 10:00:00\u202fAM GMT+1
> To: Ana Ruiz <ana@northwind.test>
> Cc: Ben Okafor <ben@northwind.test>
>\x20
> Hi Ana,
>\x20
> Here is the pricing.
>> An older quote stays quoted.

Ana
"""

APPLE_HTML = (
    '<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head>'
    '<body style="overflow-wrap: break-word; -webkit-nbsp-mode: space; line-break: '
    'after-white-space;">FYI, logging.<br id="lineBreakAtBeginningOfMessage"><div><br>'
    '<blockquote type="cite"><div>Begin forwarded message:</div><br class="Apple-interchange-'
    'newline"><div style="margin-top: 0px; margin-right: 0px; margin-bottom: 0px; margin-left:'
    ' 0px;"><span style="font-family: -webkit-system-font, Helvetica Neue, Helvetica, '
    'sans-serif; color:rgba(0, 0, 0, 1.0);"><b>From: </b></span><span style="font-family: '
    '-webkit-system-font, Helvetica Neue, Helvetica, sans-serif;">Carla Gomez &lt;'
    'carla@acme.test&gt;<br></span></div><div style="margin-top: 0px; margin-right: 0px; '
    'margin-bottom: 0px; margin-left: 0px;"><span style="font-family: -webkit-system-font, '
    'Helvetica Neue, Helvetica, sans-serif; color:rgba(0, 0, 0, 1.0);"><b>Subject: </b></span>'
    '<span style="font-family: -webkit-system-font, Helvetica Neue, Helvetica, sans-serif;">'
    '<b>Pricing for Q3</b><br></span></div><div style="margin-top: 0px; margin-right: 0px; '
    'margin-bottom: 0px; margin-left: 0px;"><span style="font-family: -webkit-system-font, '
    'Helvetica Neue, Helvetica, sans-serif; color:rgba(0, 0, 0, 1.0);"><b>Date: </b></span>'
    '<span style="font-family: -webkit-system-font, Helvetica Neue, Helvetica, sans-serif;">'
    'March 3, 2025 at 10:00:00\u202fAM GMT+1<br></span></div><div style="margin-top: 0px; '
    'margin-right: 0px; margin-bottom: 0px; margin-left: 0px;"><span style="font-family: '
    '-webkit-system-font, Helvetica Neue, Helvetica, sans-serif; color:rgba(0, 0, 0, 1.0);">'
    '<b>To: </b></span><span style="font-family: -webkit-system-font, Helvetica Neue, '
    'Helvetica, sans-serif;">Ana Ruiz &lt;ana@northwind.test&gt;<br></span></div><div '
    'style="margin-top: 0px; margin-right: 0px; margin-bottom: 0px; margin-left: 0px;"><span '
    'style="font-family: -webkit-system-font, Helvetica Neue, Helvetica, sans-serif; '
    'color:rgba(0, 0, 0, 1.0);"><b>Cc: </b></span><span style="font-family: '
    '-webkit-system-font, Helvetica Neue, Helvetica, sans-serif;">Ben Okafor &lt;'
    "ben@northwind.test&gt;<br></span></div><br><div><div>Hi Ana,</div><div><br></div><div>"
    "Here is the pricing.</div></div></blockquote></div><br><div>Ana</div></body></html>"
)


@pytest.mark.parametrize(
    "data",
    [
        forward(APPLE_PLAIN, date="Tue, 4 Mar 2025 09:12:33 -0800"),
        forward(APPLE_PLAIN.replace("> ", "").replace(">", ""), date=None),
        forward(APPLE_HTML, content_type='text/html; charset="utf-8"'),
        alternative(APPLE_PLAIN, APPLE_HTML),
    ],
    ids=["quoted-plain", "plain", "html", "alternative"],
)
def test_an_apple_mail_forward_reads_its_own_time_zone(data: bytes):
    unpacked = unpack(data)
    assert unpacked.note.startswith("FYI, logging.")
    assert unpacked.problems == ()
    item = only(unpacked)
    assert_carla_to_ana(item)  # GMT+1 given: the forward's own zone plays no part
    assert people(item, "cc") == [("Ben Okafor", "ben@northwind.test")]


def test_a_quoted_forward_ends_where_the_quote_ends():
    unpacked = unpack(forward(APPLE_PLAIN))
    assert unpacked.note == "FYI, logging.\n\nAna"  # the text after the quote is the note's
    body = only(unpacked).body.replace("\r\n", "\n")
    assert body == "Hi Ana,\n\nHere is the pricing.\n> An older quote stays quoted.\n"


# -- Thunderbird -------------------------------------------------------------------------------
# Thunderbird: "-------- Forwarded Message --------", then Subject, Date (RFC 5322), From,
# To, each name followed by a tab; in HTML a table of class moz-email-headers-table, and a
# forwarded plain-text message in <pre class="moz-quote-pre">.

THUNDERBIRD_PLAIN = """Logging the pricing thread.


-------- Forwarded Message --------
Subject: \tPricing for Q3
Date: \tMon, 3 Mar 2025 10:00:00 +0100
From: \tCarla Gomez <carla@acme.test>
To: \tAna Ruiz <ana@northwind.test>, Ben Okafor <ben@northwind.test>



Hi Ana,

Here is the pricing.
"""

THUNDERBIRD_HTML = """<!DOCTYPE html>
<html>
  <head>
    <meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
  </head>
  <body>
    <p>Logging the pricing thread.<br>
    </p>
    <div class="moz-forward-container"><br>
      <br>
      -------- Forwarded Message --------
      <table class="moz-email-headers-table" cellspacing="0" cellpadding="0" border="0">
        <tbody>
          <tr>
            <th valign="BASELINE" nowrap="nowrap" align="RIGHT">Subject: </th>
            <td>Pricing for Q3</td>
          </tr>
          <tr>
            <th valign="BASELINE" nowrap="nowrap" align="RIGHT">Date: </th>
            <td>Mon, 3 Mar 2025 10:00:00 +0100</td>
          </tr>
          <tr>
            <th valign="BASELINE" nowrap="nowrap" align="RIGHT">From: </th>
            <td>Carla Gomez <a class="moz-txt-link-rfc2396E"
                href="mailto:carla@acme.test">&lt;carla@acme.test&gt;</a></td>
          </tr>
          <tr>
            <th valign="BASELINE" nowrap="nowrap" align="RIGHT">To: </th>
            <td>Ana Ruiz <a class="moz-txt-link-rfc2396E"
                href="mailto:ana@northwind.test">&lt;ana@northwind.test&gt;</a>, <a
                href="mailto:ben@northwind.test">Ben Okafor</a></td>
          </tr>
        </tbody>
      </table>
      <br>
      <br>
      <pre class="moz-quote-pre" wrap="">Hi Ana,

Here is the pricing.
</pre>
    </div>
  </body>
</html>
"""


@pytest.mark.parametrize(
    "data",
    [
        forward(THUNDERBIRD_PLAIN, date=None),
        forward(THUNDERBIRD_HTML, content_type="text/html; charset=UTF-8"),
        alternative(THUNDERBIRD_PLAIN, THUNDERBIRD_HTML),
    ],
    ids=["plain", "html", "alternative"],
)
def test_a_thunderbird_forward_reads_its_header_table(data: bytes):
    unpacked = unpack(data)
    assert unpacked.note == "Logging the pricing thread."
    assert unpacked.problems == ()
    item = only(unpacked)
    assert_carla_to_ana(item)
    assert people(item, "to") == [
        ("Ana Ruiz", "ana@northwind.test"),
        ("Ben Okafor", "ben@northwind.test"),
    ]
    assert item.body.replace("\r\n", "\n") == "Hi Ana,\n\nHere is the pricing.\n"


def test_format_flowed_text_is_unwrapped_before_it_is_read():
    # Thunderbird sends plain text as format=flowed: a line ending in a space goes on
    body = THUNDERBIRD_PLAIN.replace("Logging the pricing thread.", "Logging the \npricing thread.")
    body = body.replace("Here is the pricing.", "Here is \nthe pricing.")
    unpacked = unpack(forward(body, content_type="text/plain; charset=UTF-8; format=flowed"))
    assert unpacked.note == "Logging the pricing thread."
    assert_carla_to_ana(only(unpacked))


# -- attached forwards -------------------------------------------------------------------------

ORIGINAL = (
    b"Return-Path: <carla@acme.test>\r\n"
    b"From: Carla Gomez <carla@acme.test>\r\n"
    b"To: Ana Ruiz <ana@northwind.test>\r\n"
    b"Subject: Pricing for Q3\r\n"
    b"Date: Mon, 03 Mar 2025 10:00:00 +0100\r\n"
    b"Message-ID: <pricing-1@mail.acme.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hi Ana,\r\n\r\nHere is the pricing. Se\xc3\xb1or Ruiz will sign.\r\n"
)


def earlier(data: bytes, message_id: str, date: str) -> bytes:
    return data.replace(b"pricing-1@", message_id.encode() + b"@").replace(
        b"Mon, 03 Mar 2025 10:00:00 +0100", date.encode()
    )


def with_attachments(note: str, *parts: tuple[str, bytes], boundary: str = "mixed") -> bytes:
    """A forward as attachment, as Thunderbird and Outlook send it: a note, then each
    message as a part of its own."""
    line = f"--------------{boundary}".encode()
    body = (
        b"This is a multi-part message in MIME format.\r\n" + line + b"\r\n"
        b"Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n" + note.encode() + b"\r\n"
    )
    for head, data in parts:
        body += line + b"\r\n" + head.encode() + b"\r\n\r\n" + data + b"\r\n"
    body += line + b"--\r\n"
    top = forward("", content_type=f'multipart/mixed; boundary="------------{boundary}"')
    return top.rstrip(b"\r\n") + b"\r\n\r\n" + body


RFC822 = (
    'Content-Type: message/rfc822; name="Pricing for Q3.eml"\r\nContent-Disposition: attachment'
)


def test_an_attached_message_is_passed_on_as_it_is():
    unpacked = unpack(with_attachments("Please log this, [OPP-3]", (RFC822, ORIGINAL)))
    assert unpacked.note == "Please log this, [OPP-3]"
    assert unpacked.originals == (ORIGINAL,)
    item = only(unpacked)
    assert item.key == "mid:pricing-1@mail.acme.test"  # the original's own activity
    assert_carla_to_ana(item)
    assert "Señor Ruiz" in item.body


def test_attached_messages_come_oldest_first_however_they_are_attached():
    first = earlier(ORIGINAL, "pricing-0", "Fri, 28 Feb 2025 17:30:00 +0100")
    data = with_attachments(
        "Two for the deal",
        (RFC822, ORIGINAL),
        (
            # Outlook's attachment of a whole .eml file, and an encoding RFC 2046 forbids
            'Content-Type: application/octet-stream; name="older.eml"\r\n'
            'Content-Disposition: attachment; filename="older.eml"\r\n'
            "Content-Transfer-Encoding: base64",
            base64.encodebytes(first),
        ),
    )
    keys = [parsed(o).key for o in unpack(data).originals]
    assert keys == ["mid:pricing-0@mail.acme.test", "mid:pricing-1@mail.acme.test"]


def test_a_base64_message_part_is_decoded():
    head = RFC822 + "\r\nContent-Transfer-Encoding: base64"
    unpacked = unpack(with_attachments("log", (head, base64.encodebytes(ORIGINAL))))
    assert unpacked.originals == (ORIGINAL,)


def test_a_message_attached_inside_an_attached_one_belongs_to_it():
    inner = with_attachments("inner", (RFC822, ORIGINAL), boundary="inner").replace(
        b"fwd-1@mail.northwind.test", b"inner@mail.northwind.test"
    )
    unpacked = unpack(with_attachments("outer", (RFC822, inner)))
    assert [parsed(o).key for o in unpacked.originals] == ["mid:inner@mail.northwind.test"]


def test_an_empty_attached_message_is_a_problem():
    unpacked = unpack(with_attachments("log", (RFC822, b"")))
    assert unpacked.originals == ()
    assert unpacked.problems == ("an attached message is empty: left out",)


# -- forwards of forwards ----------------------------------------------------------------------

GMAIL_NESTED = """Can we log both?

---------- Forwarded message ---------
From: Ben Okafor <ben@northwind.test>
Date: Tue, Mar 4, 2025 at 8:45 AM
Subject: Fwd: Pricing for Q3
To: Ana Ruiz <ana@northwind.test>


Ana, can you take this one?

---------- Forwarded message ---------
From: Carla Gomez <carla@acme.test>
Date: Mon, Mar 3, 2025 at 10:00 AM
Subject: Pricing for Q3
To: Ana Ruiz <ana@northwind.test>, Ben Okafor <ben@northwind.test>


Hi Ana,

Here is the pricing.
"""


def test_a_forward_of_a_forward_gives_each_original_oldest_first():
    unpacked = unpack(forward(GMAIL_NESTED, subject="Fwd: Fwd: Pricing for Q3"))
    assert unpacked.note == "Can we log both?"
    carla, ben = (parsed(o) for o in unpacked.originals)
    assert_carla_to_ana(carla)
    assert ben.sender is not None and ben.sender.address == "ben@northwind.test"
    assert ben.sent_at == datetime(2025, 3, 4, 7, 45, tzinfo=UTC)
    assert ben.subject == "Fwd: Pricing for Q3"
    assert ben.body.strip() == "Ana, can you take this one?"  # its own text, not Carla's


def test_without_dates_nested_forwards_are_innermost_first():
    body = GMAIL_NESTED.replace("Date: Tue, Mar 4, 2025 at 8:45 AM\n", "")
    senders = [parsed(o).sender for o in unpack(forward(body)).originals]
    assert [s.address for s in senders if s] == ["carla@acme.test", "ben@northwind.test"]


APPLE_NESTED = """Note here

> Begin forwarded message:
>
> From: Ben Okafor <ben@northwind.test>
> Subject: Fwd: Pricing for Q3
> Date: March 4, 2025 at 8:45:00 AM GMT+1
> To: Ana Ruiz <ana@northwind.test>
>
> Ana, can you take this?
>
>> Begin forwarded message:
>>
>> From: Carla Gomez <carla@acme.test>
>> Subject: Pricing for Q3
>> Date: March 3, 2025 at 10:00:00 AM GMT+1
>> To: Ana Ruiz <ana@northwind.test>
>>
>> Hi Ana,
>> Here is the pricing.
>> > an older quote
>>
> Ben's last line
Ana
"""


def test_quoted_nested_forwards_each_keep_their_own_lines():
    unpacked = unpack(forward(APPLE_NESTED))
    assert unpacked.note == "Note here\n\nAna"
    carla, ben = (parsed(o) for o in unpacked.originals)
    assert_carla_to_ana(carla)
    assert carla.body.replace("\r\n", "\n") == "Hi Ana,\nHere is the pricing.\n> an older quote\n"
    assert ben.body.replace("\r\n", "\n") == "Ana, can you take this?\n\nBen's last line\n"


def test_outlook_nested_forwards_each_give_an_original():
    body = (
        "Log both please\n\n________________________________\n"
        "From: Ben Okafor <ben@northwind.test>\nSent: Tuesday, March 4, 2025 8:45 AM\n"
        "To: Ana Ruiz <ana@northwind.test>\nSubject: FW: Pricing for Q3\n\nFor you.\n\n"
        + OUTLOOK_PLAIN.split("\n\n", 2)[2]
    )
    unpacked = unpack(forward(body, subject="FW: FW: Pricing for Q3"))
    assert [parsed(o).subject for o in unpacked.originals] == [
        "Pricing for Q3",
        "FW: Pricing for Q3",
    ]


def test_gmail_forward_all_sorts_the_thread_by_date():
    # "Forward all" lists the thread oldest first, each message under its own line
    reply = GMAIL_PLAIN.split("\n\n", 1)[1].replace("10:00\u202fAM", "2:15\u202fPM")
    reply = reply.replace("*Carla Gomez* <carla@acme.test>", "Ben Okafor <ben@northwind.test>")
    unpacked = unpack(forward(GMAIL_PLAIN + "\n" + reply))
    dates = [parsed(o).sent_at for o in unpacked.originals]
    assert dates == [CARLA_SENT, datetime(2025, 3, 3, 13, 15, tzinfo=UTC)]


def test_more_than_the_cap_of_originals_is_said_and_the_rest_stays_text():
    block = (
        "---------- Forwarded message ---------\nFrom: P{n} <p{n}@acme.test>\n"
        "Date: Mon, 3 Mar 2025 10:{n:02d}:00 +0000\nSubject: Fwd: n{n}\nTo: ana@northwind.test"
        "\n\nforwarded {n}\n\n"
    )
    body = "".join(block.format(n=n) for n in range(MAX_ORIGINALS + 5))
    unpacked = unpack(forward(body))
    assert len(unpacked.originals) == MAX_ORIGINALS
    assert "more than 20 forwarded messages" in unpacked.problems[0]
    last = parsed(unpacked.originals[-1])
    assert last.subject == f"Fwd: n{MAX_ORIGINALS - 1}" and "p24@acme.test" in last.body


# -- what is no forward ------------------------------------------------------------------------


def test_a_message_without_a_forward_is_all_note():
    text = "Met Carla today, she wants a demo. #nocrm\n\nAna"
    assert unpack(forward(text, subject="Acme call")) == Unpacked(text, ())


def test_a_bcc_reply_quoting_outlooks_block_is_no_forward():
    body = OUTLOOK_PLAIN.replace("Logging this, [OPP-7]", "Sounds good, Carla.")
    unpacked = unpack(forward(body, subject="RE: Pricing for Q3"))
    assert unpacked.originals == ()
    assert unpacked.note.startswith("Sounds good, Carla.") and "From: Gomez, Carla" in unpacked.note


def test_a_forwarded_reply_keeps_the_thread_below_it_in_its_body():
    history = "\n\nFrom: Ana Ruiz <ana@northwind.test>\nSent: Friday, February 28, 2025 5:00 PM\n"
    history += "To: Gomez, Carla <carla@acme.test>\nSubject: Pricing for Q3\n\nCan you send it?\n"
    body = OUTLOOK_PLAIN.replace("Subject: Pricing for Q3", "Subject: RE: Pricing for Q3")
    item = only(unpack(forward(body + history, subject="FW: RE: Pricing for Q3")))
    assert item.subject == "RE: Pricing for Q3"
    assert item.body.replace("\r\n", "\n").strip().endswith("Can you send it?")


def test_a_from_line_in_the_text_alone_is_no_forward():
    text = "From: the team at Acme\nTo: whoever reads this\n\nplease log"
    assert unpack(forward(text, subject="notes")).originals == ()


# -- dates -------------------------------------------------------------------------------------


def test_an_unreadable_date_is_left_out_and_said():
    body = GMAIL_PLAIN.replace("Mon, Mar 3, 2025 at 10:00\u202fAM", "sometime last week")
    unpacked = unpack(forward(body))
    (original,) = unpacked.originals
    assert b"\r\nDate:" not in original.split(b"\r\n\r\n")[0]
    assert unpacked.problems == (
        'forwarded message from carla@acme.test ("Pricing for Q3"): its date '
        "'sometime last week' cannot be read: left out",
    )
    assert parse_message(original, "p", NOW).sent_at == NOW  # the caller's fallback


def test_a_date_without_a_zone_in_a_forward_without_a_date_is_read_as_utc_and_said():
    unpacked = unpack(forward(GMAIL_PLAIN, date=None))
    assert parsed(unpacked.originals[0]).sent_at == datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
    assert unpacked.problems[0].endswith("has no time zone, nor the forward's: read as UTC")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mon, Mar 3, 2025 at 10:00 AM", datetime(2025, 3, 3, 10, 0, tzinfo=CET)),  # Gmail
        ("Mon, Mar 3, 2025 at 2:05\u202fPM", datetime(2025, 3, 3, 14, 5, tzinfo=CET)),
        ("Monday, March 3, 2025 10:00 AM", datetime(2025, 3, 3, 10, 0, tzinfo=CET)),  # Outlook
        ("Monday, 3 March 2025 10:00", datetime(2025, 3, 3, 10, 0, tzinfo=CET)),  # Outlook UK
        ("Mon 3/3/2025 12:30 AM", datetime(2025, 3, 3, 0, 30, tzinfo=CET)),
        ("3/13/2025 9:00 PM", datetime(2025, 3, 13, 21, 0, tzinfo=CET)),
        ("13/03/2025 21:00", datetime(2025, 3, 13, 21, 0, tzinfo=CET)),
        ("04/03/2025 21:00", datetime(2025, 3, 4, 21, 0, tzinfo=CET)),  # 24 h: day first
        ("2025-03-03 10:00", datetime(2025, 3, 3, 10, 0, tzinfo=CET)),
        ("March 3, 2025 at 10:00:00 AM GMT+1", datetime(2025, 3, 3, 9, 0, tzinfo=UTC)),  # Apple
        ("3 March 2025 at 10:00:00 GMT", datetime(2025, 3, 3, 10, 0, tzinfo=UTC)),
        ("March 3, 2025 at 10:00:00 AM PST", datetime(2025, 3, 3, 18, 0, tzinfo=UTC)),
        ("March 3, 2025 at 10:00:00 AM GMT+5:30", datetime(2025, 3, 3, 4, 30, tzinfo=UTC)),
        ("Mon, 3 Mar 2025 10:00:00 +0100", datetime(2025, 3, 3, 9, 0, tzinfo=UTC)),
        ("Mon, 3 Mar 2025 10:00:00 -0800 (PST)", datetime(2025, 3, 3, 18, 0, tzinfo=UTC)),
        ("Thursday, March 6th, 2025 at 4:30 p.m.", datetime(2025, 3, 6, 16, 30, tzinfo=CET)),
    ],
)
def test_the_dates_english_clients_write_are_read(text: str, expected: datetime):
    read = forwarded_date(text, CET)
    assert read is not None and read[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "March 3, 2025",  # no time
        "Feb 30, 2025 at 10:00 AM",
        "Mon, Mar 3, 2025 at 13:00 PM",
        "Mon, 3 Mar 2025 10:00:00 +9999",
        "Fri, 31 Dec 9999 23:00:00 +0000",
        "Mon, 1 Jan 1900 10:00:00 +0000",
        "lundi 3 mars 2025 10:00",
        "3 " * 100,
    ],
)
def test_what_is_no_date_is_none(text: str):
    assert forwarded_date(text, UTC) is None


# -- the pieces --------------------------------------------------------------------------------


def test_address_lists_are_read_in_the_forms_forwards_show_them():
    value = (
        'Gomez, Carla <carla@acme.test>; "Okafor, Ben" <ben@northwind.test>, '
        "dan@northwind.test; Eva Novak [mailto:eva@northwind.test]; Directory Name; "
        'Fay <fay@acme.test<mailto:fay@acme.test>>, "O\'Neil \\"Pat\\"" <pat@acme.test>'
    )
    assert address_list(value) == [
        ("Gomez, Carla", "carla@acme.test"),
        ("Okafor, Ben", "ben@northwind.test"),
        ("", "dan@northwind.test"),
        ("Eva Novak", "eva@northwind.test"),
        ("Fay", "fay@acme.test"),
        ('O\'Neil "Pat"', "pat@acme.test"),
    ]


def test_names_that_need_quotes_are_quoted_in_the_original():
    body = OUTLOOK_CLASSIC.replace(
        "'Ana Ruiz' <ana@northwind.test>", "Ruiz, Ana (Sales) <ana@northwind.test>; Zoë <z@x.test>"
    )
    original = unpack(forward(body, subject="FW: x")).originals[0]
    assert b'To: "Ruiz, Ana (Sales)" <ana@northwind.test>, Zo\xc3\xab <z@x.test>' in original
    assert people(parsed(original), "to") == [
        ("Ruiz, Ana (Sales)", "ana@northwind.test"),
        ("Zoë", "z@x.test"),
    ]


def test_a_body_with_long_lines_is_quoted_printable_and_reads_back_the_same():
    long = "Señor " * 400
    body = GMAIL_PLAIN.replace("Here is the pricing.", "Here is the pricing. " + long)
    original = unpack(forward(body)).originals[0]
    assert b"Content-Transfer-Encoding: quoted-printable" in original
    assert max(len(line) for line in original.split(b"\r\n")) <= 998
    assert long.strip() in parsed(original).body


def test_a_long_recipient_list_is_folded_and_read_back_whole():
    to = "; ".join(f"User {i} <u{i}@northwind.test>" for i in range(300))
    body = OUTLOOK_CLASSIC.replace("'Ana Ruiz' <ana@northwind.test>", to)
    original = unpack(forward(body, subject="FW: x")).originals[0]
    assert max(len(line) for line in original.split(b"\r\n\r\n")[0].split(b"\r\n")) <= 78
    assert len(people(parsed(original), "to")) == 300


def test_html_is_read_as_the_lines_a_reader_sees():
    markup = (
        "<html><head><title>t</title><style>p {x}</style><script>alert(1)</script></head>"
        "<body><!-- hidden --><p>One &amp; <b>two</b></p><p>&nbsp;</p><div>Three<br>Four</div>"
        '<table><tr><td>a</td><td>b</td></tr></table><a href="mailto:carla%40acme.test">Carla'
        "</a> &#8212; 1 &lt; 2 <pre>  kept\n  lines</pre></body></html>"
    )
    assert (
        html_text(markup)
        == "One & two\n\nThree\nFour\na b\nCarla <carla@acme.test> — 1 < 2\nkept\nlines"
    )


# -- hostile input -----------------------------------------------------------------------------


def test_what_is_no_message_raises_a_value_error_with_the_reason():
    with pytest.raises(UnreadableForward, match="empty message"):
        unpack(b"")
    with pytest.raises(UnreadableForward, match="no header fields"):
        unpack(b"\r\n\r\njust text")
    with pytest.raises(MessageOverLimit, match=r"^over limits\.message_bytes: ") as caught:
        unpack(forward("x" * 70_000), limits=LimitSettings(message_bytes=65_536))
    assert isinstance(caught.value, ValueError) and caught.value.limit == "message_bytes"


HTML, PLAIN = "text/html", "text/plain"
QUOTED_FORWARD = "{q}---- Forwarded ----\n{q}From: a@b\n{q}To: c@d\n{q}\n{q}text\n"
BOMBS = {
    "angle brackets": ("<" * 300_000, HTML),
    "unclosed tags": ("<title><a href=mailto:x@y>" * 30_000, HTML),
    "unclosed comment": ("<!--" + "<p>" * 100_000, HTML),
    "entities": ("&#" + "9" * 200_000 + ";" + "&amp" * 50_000, HTML),
    "href": ("<a " + "href=" * 60_000 + ">", HTML),
    "mailto": ('<a href="mailto:a@b">&#' + "9" * 100_000 + "</a>" * 1000, HTML),
    "pre": ("<pre>" * 50_000 + " \n" * 50_000, HTML),
    "cells": ("<td>" + "</td>" * 100_000 + "<br>" * 1000, HTML),
    "from lines": ("From: x\n" * 60_000, PLAIN),
    "markers": ("-----Original Message-----\n" * 30_000, PLAIN),
    "dashes": ("---\n" * 100_000, PLAIN),
    "quotes": ((">" * 200 + " From: a@b\n") * 3_000, PLAIN),
    "deep quotes": ("".join("> " * n + "Begin forwarded message:\n" for n in range(400)), PLAIN),
    "deep forwards": ("".join(QUOTED_FORWARD.format(q="> " * n) for n in range(300)), PLAIN),
    "many forwards": (QUOTED_FORWARD.format(q="") * 20_000, PLAIN),
    "long value": ("--- Forwarded ---\nFrom: " + "a@b, " * 60_000 + "\nDate: x\n\nb", PLAIN),
    "spaces": (" " * 300_000 + "\n" + "\t" * 300_000, PLAIN),
    "to list": ("-----Original Message-----\nFrom: a@b\nTo: " + '"' * 100_000 + "\n\nx", PLAIN),
}


@pytest.mark.parametrize("name", BOMBS)
def test_hostile_bodies_are_unpacked_in_linear_time(name: str):
    body, kind = BOMBS[name]
    start = time.monotonic()
    unpacked = unpack(forward(body, content_type=kind))
    assert time.monotonic() - start < 2.0, name
    for original in unpacked.originals:
        with contextlib.suppress(UnreadableMessage):  # the caller quarantines it
            parsed(original)


# pieces of forwards, and of what looks like them
LINES = st.sampled_from(
    [
        "---------- Forwarded message ---------",
        "-------- Forwarded Message --------",
        "-----Original Message-----",
        "________________________________",
        "Begin forwarded message:",
        "From: Carla Gomez <carla@acme.test>",
        "From: Gomez, Carla",
        "From: <<<@>>>",
        "Sent: Monday, March 3, 2025 10:00 AM",
        "Date: Mon, Mar 3, 2025 at 10:00 AM",
        "Date: 31/31/2025 99:99",
        "Date: Mon, 3 Mar 2025 10:00:00 +99999999999999999999",
        'To: Ana <ana@northwind.test>; Ben; "x, y" <b@c>',
        'Cc: "unclosed <a@b',
        "Subject: Re: x",
        "Subject: =?utf-8?q?=C3=A9?=",
        "  continued <d@e>",
        "[mailto:z@acme.test]",
        "Message-ID: <m1@acme.test>",
        "",
        "> ",
        ">>",
        "<b>From:</b> a@b<br>",
        "<div>Sent: Monday</div>",
        "&lt;x@y&gt;",
        "<!--",
        "<pre>",
        "<style>",
    ]
)


@st.composite
def forward_bodies(draw: Any) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 40))):
        line = draw(st.one_of(LINES, LINES, st.text(max_size=30)))
        lines.append(draw(st.sampled_from(["", "> ", ">> ", " "])) + line)
    kind = draw(
        st.sampled_from(["text/plain", "text/html", "text/plain; format=flowed; delsp=yes", "x/y"])
    )
    subject = draw(st.sampled_from(["Fwd: x", "RE: x", "", "FW: RE: y", "=?bogus?q?x?="]))
    data = forward(
        "\n".join(lines),
        content_type=kind,
        subject=subject,
        date=draw(st.sampled_from([None, "Mon, 3 Mar 2025 10:00:00 +0100", "junk"])),
    )
    if draw(st.booleans()):
        data = (
            with_attachments("n", (RFC822, data))
            if draw(st.booleans())
            else data[: draw(st.integers(0, len(data)))]
        )
    return data


def check(data: bytes) -> None:
    start = time.monotonic()
    try:
        unpacked = unpack(data)
    except ValueError as exc:  # UnreadableForward, MessageOverLimit: the only ones
        assert isinstance(exc, UnreadableMessage) and str(exc).strip()
        return
    assert time.monotonic() - start < 2.0
    assert isinstance(unpacked.note, str) and len(unpacked.originals) <= MAX_ORIGINALS
    unpacked.note.encode("utf-8")  # storable: no lone surrogates
    for original in unpacked.originals:
        with contextlib.suppress(UnreadableMessage):  # the caller quarantines it
            parsed(original)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forward_bodies())
@example(forward("From: a@b\nDate: Mon, Mar 3, 2025 at 10:00 AM\nTo: c@d\n\nx", subject="x"))
@example(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n--b--")
def test_any_forward_is_unpacked_or_a_value_error(data: bytes):
    check(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_are_unpacked_or_a_value_error(data: bytes):
    check(b"Subject: Fwd: x\r\n\r\n" + data)
    check(data)


# generated forwards in each client's style: what the original says is what parse_message reads
WORD = st.from_regex(r"[A-Za-zéöñ][A-Za-zéöñ'.-]{0,8}", fullmatch=True)
NAME = st.one_of(
    st.lists(WORD, min_size=1, max_size=3).map(" ".join),
    st.tuples(WORD, WORD).map(", ".join),  # "Last, First", as company directories show it
)
LOCAL = st.sampled_from(["carla", "ben.okafor", "x+tag", "o'neil"])
PERSON = st.tuples(NAME, LOCAL, st.sampled_from(["acme.test", "northwind.test"])).map(
    lambda p: (p[0], f"{p[1]}@{p[2]}")
)
WHEN = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(second=0, microsecond=0, tzinfo=CET)
)
SUBJECT = st.text(alphabet="abcdefghij KLMNOP0123456789&<>:;,.!?é", min_size=1, max_size=40).map(
    lambda s: " ".join(s.split()) or "x"
)


def shown_date(style: str, when: datetime) -> str:
    hour = f"{(when.hour % 12) or 12}:{when:%M}"
    meridiem = "AM" if when.hour < 12 else "PM"
    if style == "gmail":
        return f"{when:%a, %b} {when.day}, {when.year} at {hour}\u202f{meridiem}"
    if style == "outlook":
        return f"{when:%A, %B} {when.day}, {when.year} {hour} {meridiem}"
    if style == "apple":
        return f"{when:%B} {when.day}, {when.year} at {hour}:00 {meridiem} GMT+1"
    return format_datetime(when)


def shown_person(style: str, person: tuple[str, str]) -> str:
    name, address = person
    if style == "outlook":
        return f"{name} <{address}>"  # Outlook writes names unquoted, commas and all
    quoted = '"' + name.replace('"', '\\"') + '"' if any(c in name for c in ",.'\"") else name
    return f"{quoted} <{address}>"


@st.composite
def client_forwards(draw: Any) -> tuple[bytes, tuple[str, str], list[tuple[str, str]], Any, str]:
    style = draw(st.sampled_from(["gmail", "outlook", "apple", "thunderbird"]))
    sender, recipients = draw(PERSON), draw(st.lists(PERSON, min_size=1, max_size=6))
    when, subject = draw(WHEN), draw(SUBJECT)
    separator = "; " if style == "outlook" else ", "
    fields = {
        "From": shown_person(style, sender),
        "Date" if style != "outlook" else "Sent": shown_date(style, when),
        "To": separator.join(shown_person(style, r) for r in recipients),
        "Subject": subject,
    }
    order = {
        "gmail": ["From", "Date", "Subject", "To"],
        "outlook": ["From", "Sent", "To", "Subject"],
        "apple": ["From", "Subject", "Date", "To"],
        "thunderbird": ["Subject", "Date", "From", "To"],
    }[style]
    marker = {
        "gmail": "---------- Forwarded message ---------",
        "outlook": "________________________________",
        "apple": "Begin forwarded message:\n",
        "thunderbird": "-------- Forwarded Message --------",
    }[style]
    block = "\n".join(f"{name}: {fields[name]}" for name in order)
    if draw(st.booleans()):  # the HTML the client sends
        lines = [html.escape(marker)] + [f"<b>{n}:</b> {html.escape(fields[n])}" for n in order]
        text = f"<div>Please log</div><div>{'<br>'.join(lines)}</div><br><div>Hello there</div>"
        kind = "text/html"
    else:
        text, kind = f"Please log\n\n{marker}\n{block}\n\nHello there\n", "text/plain"
    data = forward(text, content_type=f"{kind}; charset=utf-8", subject="Fwd: " + subject)
    return data, sender, recipients, when, subject


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_forwards())
def test_any_client_forward_gives_an_original_that_says_the_same(case: Any):
    data, sender, recipients, when, subject = case
    unpacked = unpack(data)
    assert unpacked.note == "Please log" and unpacked.problems == ()
    item = only(unpacked)
    assert item.sender is not None
    assert (item.sender.name, item.sender.address) == sender
    firsts = {address: name for name, address in reversed(recipients)}  # each address once
    assert people(item, "to") == [(firsts[a], a) for a in dict.fromkeys(a for _, a in recipients)]
    assert item.sent_at == when.astimezone(UTC)
    assert item.subject == subject
    assert item.body.strip() == "Hello there"
