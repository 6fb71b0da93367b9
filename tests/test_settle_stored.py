"""The settling of a stored batch takes the activities it has just written as the recorder
wrote them (``BatchResult.stored``) instead of reading them back: the conversations it
builds are the ones it would have read, node for node, on SQLite and PostgreSQL. The
batch mixes what a node holds: tags that name a deal and tags that name none, contacts
and accounts, replies whose root is stored in an earlier batch, a provider's thread id,
a time in another zone, a meeting and a mail seen twice."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta, timezone
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from syncd.crm import conversations
from syncd.decide import decide
from syncd.items import MailItem, MeetingItem, Participant, conversation_keys
from syncd.matching.matcher import ThreadNode

from .test_lookups import T0, _record, company, mail


def batch() -> list[MailItem | MeetingItem]:
    root = mail(1, "ana@northwind.test", "carla@acme.test", subject="Renewal [OPP-1]")
    reply = replace(
        mail(2, "carla@acme.test", "ana@northwind.test", subject="Re: Renewal", minutes=30),
        thread_key="mid:1@x",
        related_keys=("mid:1@x",),
        sent_at=(T0 + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=-5))),
    )
    unknown_tag = mail(3, "dan@acme.test", "ana@northwind.test", subject="see [OPP-77]")
    threaded = replace(
        mail(4, "ana@northwind.test", "eve@globex.test", subject="Pilot", minutes=90),
        provider_thread_id="t-4",
    )
    again = replace(threaded, key="mid:5@x", provider_id="5", message_id="5@x")
    meeting = MeetingItem(
        key="ical:m-1",
        uid="m-1",
        recurrence_id=None,
        provider_id="m-1",
        subject="Acme sync",
        start=T0 + timedelta(hours=3),
        end=T0 + timedelta(hours=4),
        participants=(
            Participant("ana@northwind.test", "Ana", "organizer"),
            Participant("carla@acme.test", "Carla", "attendee"),
        ),
    )
    return [root, reply, unknown_tag, threaded, again, threaded, meeting]


def by_id(components: list[list[ThreadNode]]) -> list[list[ThreadNode]]:
    """Conversations as sets of nodes (settling orders them itself, by time and key)."""
    return sorted((sorted(c) for c in components), key=lambda c: c[0].id)


def test_a_stored_batch_is_settled_from_what_was_written_as_if_read_back(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    index = company(sessions, tmp_path)
    earlier = mail(0, "carla@acme.test", "ana@northwind.test", subject="Re: Renewal", minutes=45)
    earlier = replace(earlier, thread_key="mid:1@x", related_keys=("mid:1@x",))
    with sessions.begin() as session:  # a reply stored by an earlier batch
        _record(session, decide([earlier], index.load([earlier]), index.settings, Counter()))
    items = batch()
    decisions = decide(items, index.load(items), index.settings, Counter())
    assert len(decisions) == len(items)
    with sessions.begin() as session:
        result = _record(session, decisions)
        stored = result.stored
        assert set(stored.nodes) == set(result.activity_ids.values())
        assert len(stored.nodes) == 6  # the mail seen twice is stored once
        keys = {k for d in decisions for k in conversation_keys(d.item)}
        as_read = conversations.thread_components(session, keys)
        as_written = conversations.thread_components(session, keys, stored)
        assert by_id(as_written) == by_id(as_read)
        assert sum(len(c) for c in as_read) == 7  # with the reply of the earlier batch
        read_keys: dict[int, set[str]] = {}
        for activity_id, key in conversations.thread_keys_of(session, list(stored.keys)):
            read_keys.setdefault(activity_id, set()).add(key)
        assert {a: set(k) for a, k in stored.keys.items()} == read_keys
