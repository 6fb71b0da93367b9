"""RFC 5322 / MIME parsing into MailItems (unit tests, no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.connectors.mime import UnreadableMessage, parse_message
from syncd.demo import email_bytes, event_ics

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def parse(data: bytes):
    return parse_message(data, "p1", T0)


def test_addresses_names_and_encoded_words_are_decoded():
    raw = (
        b"From: =?utf-8?q?Carla_D=C3=ADaz?= <Carla@ACME.test>\r\n"
        b'To: ana@northwind.test, "Okafor, Ben" <BEN@northwind.test>\r\n'
        b"Cc: ops@b\xc3\xbccher.example\r\n"
        b"Subject: =?utf-8?b?UHLDqXNlbnRhdGlvbg==?=\r\n"
        b"Date: Mon, 02 Nov 2026 10:00:00 +0100\r\n"
        b"Message-ID: <ABC-1@Acme.test>\r\n\r\nbody\r\n"
    )
    item = parse(raw)
    assert [(p.address, p.name, p.role) for p in item.participants] == [
        ("carla@acme.test", "Carla Díaz", "from"),
        ("ana@northwind.test", "", "to"),
        ("ben@northwind.test", "Okafor, Ben", "to"),
        ("ops@xn--bcher-kva.example", "", "cc"),
    ]
    assert item.subject == "Présentation"
    assert item.sent_at == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert item.key == "mid:abc-1@acme.test" and item.thread_key == item.key


def test_replies_carry_their_thread_root_and_related_keys():
    item = parse(
        email_bytes(
            sender="a@x.test",
            to=["b@y.test"],
            subject="Re: x",
            when=T0,
            message_id="c@x.test",
            in_reply_to="b@x.test",
            references=["a@x.test", "b@x.test"],
        )
    )
    assert item.thread_key == "mid:a@x.test"
    assert item.related_keys == ("mid:a@x.test", "mid:b@x.test")


def test_a_message_without_date_or_message_id_gets_a_stable_key():
    raw = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: no ids\r\n\r\nhello\r\n"
    one, two = parse(raw), parse_message(raw, "other-mailbox", datetime.now(UTC))
    assert one.key == two.key and one.key.startswith("hash:")
    assert one.sent_at == T0  # the provider's time stands in for the missing Date


def test_bulk_auto_reply_and_private_headers_are_read():
    item = parse(
        email_bytes(
            sender="a@x.test",
            to=["b@y.test"],
            subject="s",
            when=T0,
            message_id="m@x",
            headers={
                "List-Id": "<list.x.test>",
                "Precedence": "Bulk",
                "Auto-Submitted": "auto-replied",
                "X-Autoreply": "yes",
                "Sensitivity": "Company-Confidential",
                "X-Gmail-Labels": "Inbox,Spam",
            },
        )
    )
    assert item.list_id == "<list.x.test>" and item.precedence == "bulk"
    assert item.auto_submitted == "auto-replied" and item.autoreply_header == "x-autoreply"
    assert item.private and item.labels == ("Inbox", "Spam")


@pytest.mark.parametrize("method", ["REQUEST", "CANCEL", "REPLY"])
def test_calendar_parts_become_invitations(method):
    ics = event_ics(
        "qbr@acme.test",
        "QBR",
        T0,
        60,
        ("carla@acme.test", "Carla"),
        [("ana@northwind.test", "Ana")],
        method,
    )
    item = parse(
        email_bytes(
            sender="carla@acme.test",
            to=["ana@northwind.test"],
            subject="Invitation",
            when=T0,
            message_id="inv@acme.test",
            calendar=ics,
        )
    )
    (invite,) = item.invitations
    assert invite.key == "ical:qbr@acme.test" and invite.method == method
    assert invite.cancelled == (method == "CANCEL")
    assert invite.organizer and invite.organizer.address == "carla@acme.test"
    assert (invite.start, invite.end.hour) == (T0, 10)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty message"),
        (b"\x00\x01\x02", "no header fields"),
        (b"Subject: only a subject\r\n\r\nbody", "no From, To, Cc or Bcc"),
    ],
)
def test_unreadable_messages_say_why(raw, reason):
    with pytest.raises(UnreadableMessage, match=reason):
        parse(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_an_item_or_a_reason_never_a_crash(data):
    try:
        item = parse(data)
    except UnreadableMessage as exc:
        assert str(exc)
    else:
        assert item.key and item.participants
        item.subject.encode("utf-8")  # always storable
