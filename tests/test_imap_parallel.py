"""IMAP folders read by the parse pool's workers, against a real Dovecot: the same batches as a
read in one process, nothing lost or repeated when a worker is killed, a folder rebuilt under
the workers, connections within ``sync.imap_connections``; and only what the body policy
needs is asked (BODYSTRUCTURE only where the first answer cannot rule out an invitation)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from syncd.config import LimitSettings
from syncd.connectors import parsepool
from syncd.connectors.base import CursorExpired, Digests, MailboxSpec
from syncd.connectors.imap import ImapSettings, fetch, folder
from syncd.connectors.imap.connector import ImapConnector
from syncd.connectors.imap.folder import ImapFolder
from syncd.crm.models import Activity
from syncd.demo import email_bytes, event_ics
from syncd.harvest.collect import MailDigest
from syncd.harvest.people import People
from syncd.items import Batch, MailItem
from syncd.secrets import Secret

from .helpers import sync
from .servers import Dovecot, TcpProxy
from .test_concurrency import SessionCounter
from .test_imap import NOW, add_imap_mailbox, append, imap, msg, subjects

WORKERS = 2


def pid_of(_n: int) -> int:
    """A pool task: the worker's process id."""
    return os.getpid()


def spec(server: Dovecot, login: str, port: int | None = None, **kw: object) -> MailboxSpec:
    values: dict[str, object] = {
        "body_policy": "snippet",
        "secret": Secret(Dovecot.PASSWORD),
        "parse_processes": WORKERS,
        "batch_size": 2,
        **kw,
    }
    settings = ImapSettings(host=server.host, port=port or server.port, tls="none", login=login)
    return MailboxSpec("ana", "imap", "ana@northwind.test", settings, **values)  # type: ignore[arg-type]


def read(box: MailboxSpec, name: str = "Deals") -> list[Batch[MailItem]]:
    connector = ImapConnector(box)
    try:
        return list(ImapFolder(connector.session, name, box).changes(None))
    finally:
        connector.close()


def invite(i: int, body: str = "") -> bytes:
    start = (NOW + timedelta(days=i)).replace(hour=10, minute=0, second=0)
    return email_bytes(
        sender="Carla <carla@acme.test>",
        to=["ana@northwind.test"],
        subject=f"Invitation: review {i}",
        when=NOW - timedelta(days=i),
        message_id=f"inv-{i}@acme.test",
        body=body,
        calendar=event_ics(
            f"review-{i}@acme.test",
            f"Review {i}",
            start,
            60,
            ("carla@acme.test", "Carla"),
            [("ana@northwind.test", "Ana")],
            "REQUEST",
        ),
    )


def html_mail(i: int) -> bytes:
    """A multipart/alternative message without any invitation."""
    from email.message import EmailMessage

    m = EmailMessage()
    m["From"], m["To"] = "Carla <carla@acme.test>", "ana@northwind.test"
    m["Subject"], m["Message-ID"] = f"html {i}", f"<html-{i}@acme.test>"
    m.set_content(f"plain {i}")
    m.add_alternative(f"<p>html {i}</p>", subtype="html")
    return m.as_bytes()


def new_folder(server: Dovecot, name: str, *messages: bytes) -> str:
    login = server.login("ana")
    client = imap(server, login)
    client.create_folder(name)
    client.logout()
    append(server, login, name, *messages)
    return login


@pytest.fixture
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any read goes to the pool, in tasks of 5 UIDs (batches of 2): several tasks run."""
    monkeypatch.setattr(folder, "PARALLEL_MIN", 1)
    monkeypatch.setattr(folder, "TASK_UIDS", 5)


@pytest.fixture
def frozen_workers() -> Iterator[list[int]]:
    """The pool up, its workers stopped (SIGSTOP): a task given to them waits."""
    list(parsepool.ordered(pid_of, range(4), processes=WORKERS, in_flight=2, rescue=pid_of_main))
    pids = parsepool.worker_pids()
    assert pids and os.getpid() not in pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def pid_of_main(n: int, reason: str) -> int:
    return os.getpid()


MIXED = [
    *(msg(i) for i in range(8)),
    invite(1),
    b"Subject: nobody sent this\r\n\r\nno addresses\r\n",
    msg(20, body="B" * 70_000),  # over the size limit below: quarantined unread
    html_mail(1),
    *(msg(i) for i in range(30, 34)),
]
LIMITS = LimitSettings(message_bytes=64 * 1024)


@pytest.mark.usefixtures("small_tasks")
def test_a_folder_read_by_workers_gives_the_batches_a_read_in_one_process_gives(imap_server):
    login = new_folder(imap_server, "Deals", *MIXED)
    alone = read(spec(imap_server, login, parse_processes=1, limits=LIMITS))
    proxy = TcpProxy(imap_server.port)
    try:
        pooled = read(spec(imap_server, login, port=proxy.port, limits=LIMITS))
    finally:
        proxy.close()
    assert pooled == alone
    assert sum(len(b.items) for b in alone) == 14 and sum(len(b.quarantined) for b in alone) == 2
    assert [i.invitations[0].uid for b in alone for i in b.items if i.invitations] == [
        "review-1@acme.test"
    ]
    # the main connection, and the workers': 6 tasks (16 UIDs, tasks of 4, then smaller
    # ones at the end), each worker's connection kept for its next task but the last two
    assert 1 + WORKERS <= proxy.commands.count("LOGIN") <= 1 + 2 * WORKERS


@pytest.mark.usefixtures("small_tasks")
def test_a_worker_killed_mid_read_loses_nothing_and_repeats_nothing(
    imap_server, frozen_workers, caplog
):
    login = new_folder(imap_server, "Deals", *(msg(i) for i in range(23)))
    alone = read(spec(imap_server, login, parse_processes=1))
    # the read's first tasks go to the frozen workers, which are killed while they hold them
    killer = threading.Timer(1.0, kill_all, (frozen_workers,))
    killer.start()
    try:
        caplog.set_level(logging.WARNING)
        pooled = read(spec(imap_server, login))
    finally:
        killer.join()
    assert pooled == alone
    keys = [i.key for b in pooled for i in b.items]
    assert len(keys) == len(set(keys)) == 23
    assert "its worker process stopped" in caplog.text  # read again by the main process
    assert "Traceback" not in caplog.text
    assert not set(parsepool.worker_pids()) & set(frozen_workers)  # a new pool took over


@pytest.mark.usefixtures("small_tasks")
def test_a_folder_rebuilt_between_the_main_process_and_its_workers_expires_the_cursor(
    imap_server, frozen_workers
):
    login = new_folder(imap_server, "Deals", *(msg(i) for i in range(12)))

    def rebuild() -> None:  # new UIDVALIDITY, while the workers hold their tasks
        client = imap(imap_server, login)
        client.delete_folder("Deals")
        client.create_folder("Deals")
        client.append("Deals", msg(99))
        client.logout()
        for pid in frozen_workers:
            os.kill(pid, signal.SIGCONT)

    rebuilder = threading.Timer(1.0, rebuild)
    rebuilder.start()
    try:
        with pytest.raises(CursorExpired, match="UIDVALIDITY of 'Deals' changed"):
            read(spec(imap_server, login))
    finally:
        rebuilder.join()


@pytest.mark.usefixtures("small_tasks")
def test_workers_connections_stay_within_the_server_cap(imap_server):
    login = new_folder(imap_server, "Deals", *(msg(i) for i in range(20)))
    alone = read(spec(imap_server, login, parse_processes=1))
    for cap, most in ((1, 1), (2, 2)):  # 1: no slot for a worker, the main process reads
        proxy = SessionCounter(imap_server.port)
        try:
            pooled = read(spec(imap_server, login, port=proxy.port, server_connections=cap))
        finally:
            proxy.close()
        assert pooled == alone
        assert proxy.peak == most, f"cap {cap}: {proxy.peak} sessions at once"


@pytest.mark.usefixtures("small_tasks")
def test_workers_keep_a_connection_between_tasks_within_the_cap_and_close_it_after(imap_server):
    login = new_folder(imap_server, "Deals", *(msg(i) for i in range(20)))
    alone = read(spec(imap_server, login, parse_processes=1))
    proxy = SessionCounter(imap_server.port)
    try:
        box = spec(imap_server, login, port=proxy.port, server_connections=1 + WORKERS)
        pooled = read(box)
        logins = proxy.commands.count("LOGIN")
        # at once a second read of the folder: the first one's slots come back only once
        # the connections its workers kept are closed
        again = read(box)
        deadline = time.monotonic() + 10
        while proxy.open and time.monotonic() < deadline:
            time.sleep(0.02)
        still_open = proxy.open
    finally:
        proxy.close()
    assert pooled == alone and again == alone
    assert still_open == 0  # what the workers kept is closed once the reads have ended
    # the passes' connection and one a worker, never more, over both reads
    assert proxy.peak <= 1 + WORKERS
    # 7 tasks (20 UIDs in tasks of 4, smaller at the end): fewer connections than tasks
    assert 1 + 1 <= logins <= 1 + 2 * WORKERS


def test_a_kept_connection_serves_only_its_own_read_of_its_own_account_and_folder():
    box = MailboxSpec(
        "ana", "imap", "ana@northwind.test",
        ImapSettings(host="127.0.0.1", port=1143, tls="none", login="ana"),
        secret=Secret("x"),
    )  # fmt: skip
    group = fetch.Group(box, "Deals", 7, (1, 2), keep=True, read="read-1")
    other_login = replace(box, settings=replace_settings(box, login="ben"))
    others = [
        replace(group, read="read-2"),  # a later read of the same folder
        replace(group, folder="Sent"),
        replace(group, uidvalidity=8),
        replace(group, spec=other_login),
        replace(group, spec=replace(box, settings=replace_settings(box, port=1993))),
    ]
    assert len({fetch._key(g) for g in [group, *others]}) == 1 + len(others)
    kept = fetch._Kept()
    session = fetch.ImapSession(box, counted=False)  # never connected: nothing to close
    for other in others:
        kept.put(fetch._key(group), session)
        assert kept.take(fetch._key(other)) is None  # and the kept one is dropped
        assert kept.take(fetch._key(group)) is None
    kept.put(fetch._key(group), session)
    assert kept.take(fetch._key(group)) is session


def replace_settings(box: MailboxSpec, **changes: object) -> ImapSettings:
    settings = box.settings
    assert isinstance(settings, ImapSettings)
    return settings.model_copy(update=changes)


def test_a_header_over_the_header_limit_is_quarantined_by_a_header_only_read(imap_server):
    huge = ", ".join(f"Person {n} <p{n}@acme.test>" for n in range(3000)).encode()
    login = new_folder(
        imap_server,
        "Deals",
        msg(1),
        b"From: Carla <carla@acme.test>\r\nTo: " + huge + b"\r\n"
        b"Date: Mon, 2 Mar 2026 12:00:00 +0000\r\nSubject: huge\r\n\r\nhello\r\n",
        msg(3),
    )
    box = spec(
        imap_server, login, body_policy="metadata", parse_processes=1,
        limits=LimitSettings(header_bytes=50_000),
    )  # fmt: skip
    proxy = RecordingProxy(imap_server.port)
    connector = ImapConnector(replace(box, settings=replace_settings(box, port=proxy.port)))
    digest = MailDigest("ana", frozenset({"ana@northwind.test"}))
    try:
        batches = list(ImapFolder(connector.session, "Deals", box).digested(None, digest))
    finally:
        connector.close()
        proxy.close()
    (quarantined,) = [q for b in batches for q in b.quarantined]
    assert quarantined.reason.startswith("over limits.header_bytes"), quarantined.reason
    # its header fetched up to the limit and a byte, never whole
    assert b"BODY.PEEK[HEADER]<0.50001>" in bytes(proxy.sent)
    assert proxy.asked(b"BODY.PEEK[HEADER])") == set()


class RecordingProxy(TcpProxy):
    """A TcpProxy that keeps every command line the client sends."""

    def __init__(self, target_port: int) -> None:
        self.sent = bytearray()
        super().__init__(target_port)

    def _count(self, data: bytes) -> None:
        super()._count(data)
        self.sent += data

    def structure_uids(self) -> set[int]:
        """The UIDs whose BODYSTRUCTURE was asked."""
        return self.asked(b"BODYSTRUCTURE")

    def asked(self, item: bytes) -> set[int]:
        """The UIDs a FETCH asked ``item`` of."""
        uids: set[int] = set()
        for line in bytes(self.sent).split(b"\r\n"):
            if b" FETCH " in line and item in line:
                for part in line.split(b" FETCH ")[1].split(b" ")[0].split(b","):
                    first, _, last = part.partition(b":")
                    uids.update(range(int(first), int(last or first) + 1))
        return uids


@pytest.mark.parametrize(
    ("policy", "asked"),
    [("metadata", {1, 2, 3}), ("snippet", {2}), ("full", set())],
)
def test_bodystructure_is_asked_only_where_the_headers_leave_an_invitation_open(
    imap_server, policy, asked
):
    long_text = "we discussed the rollout plan and the next steps. " * 400  # > the snippet
    invites = [invite(1), invite(2, body=long_text), html_mail(3)]
    login = new_folder(imap_server, "Invites", *invites)
    client = imap(imap_server, login)
    client.create_folder("Deals")
    client.logout()
    append(imap_server, login, "Deals", *(msg(i) for i in range(4)))
    found: dict[str, list[str]] = {}
    for name in ("Deals", "Invites"):
        proxy = RecordingProxy(imap_server.port)
        try:
            batches = read(spec(imap_server, login, port=proxy.port, body_policy=policy), name)
        finally:
            proxy.close()
        found[name] = [i.invitations[0].uid for b in batches for i in b.items if i.invitations]
        # plain messages: their headers rule an invitation out; the others, as the policy says
        assert proxy.structure_uids() == (asked if name == "Invites" else set())
    assert found == {"Deals": [], "Invites": ["review-1@acme.test", "review-2@acme.test"]}


@pytest.mark.usefixtures("small_tasks")
def test_a_mailbox_synced_through_the_pool_logs_each_message_once(
    sessions, settings, company, imap_server
):
    login = imap_server.login("ana")
    append(imap_server, login, "INBOX", *(msg(i) for i in range(12)), invite(1))
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    first = sync(sessions, settings, "ana")
    assert first.new_activities == 13
    append(imap_server, login, "INBOX", *(msg(i) for i in range(40, 47)))
    assert sync(sessions, settings, "ana").new_activities == 7
    assert sync(sessions, settings, "ana").new_activities == 0
    expected = sorted([f"deal note {i}" for i in (*range(12), *range(40, 47))] + ["Review 1"])
    assert subjects(sessions) == expected
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 20


def long_header(i: int) -> bytes:
    """A message whose header is longer than the first FETCH's cut, its Cc past the cut."""
    trace = b"".join(
        b"Received: from relay%d.acme.test by mx.northwind.test; Mon, 2 Mar 2026 10:00:00 +0000\r\n"
        % n
        for n in range(500)
    )
    assert len(trace) > fetch.HEADER_BYTES
    return (
        b"From: Carla <carla@acme.test>\r\nTo: ana@northwind.test\r\n"
        + trace
        + b"Cc: Dan <dan@acme.test>\r\nSubject: long trace %d\r\n"
        b"Message-ID: <long-%d@acme.test>\r\n"
        b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\nthe text\r\n" % (i, i)
    )


UNDATED = b"From: carla@acme.test\r\nTo: ana@northwind.test\r\nSubject: no date\r\n\r\nhello\r\n"


def without_text(items: list[MailItem]) -> list[MailItem]:
    return [replace(i, body="") for i in items]


@pytest.mark.parametrize("policy", ["metadata", "snippet"])
def test_a_header_past_the_first_cut_and_a_message_without_a_date_are_read_as_in_full(
    imap_server, policy
):
    login = new_folder(imap_server, "Deals", msg(1), long_header(2), msg(3))
    client = imap(imap_server, login)
    arrived = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    client.append("Deals", UNDATED, flags=(b"\\Seen",), msg_time=arrived)
    client.logout()
    full = [i for b in read(spec(imap_server, login, body_policy="full")) for i in b.items]
    proxy = RecordingProxy(imap_server.port)
    try:
        batches = read(spec(imap_server, login, port=proxy.port, body_policy=policy))
    finally:
        proxy.close()
    items = [i for b in batches for i in b.items]
    assert without_text(items) == without_text(full)
    long = next(i for i in items if i.subject == "long trace 2")
    assert "dan@acme.test" in {p.address for p in long.participants}  # after the cut
    assert items[-1].sent_at == arrived  # the server's INTERNALDATE: no date of its own
    sent = bytes(proxy.sent)
    # INTERNALDATE asked for the undated message alone, the whole header for the long one
    assert [line.split(b" FETCH ")[1].split(b" ")[0] for line in sent.split(b"\r\n")
            if b"INTERNALDATE" in line] == [b"4"]  # fmt: skip
    sized = [line for line in sent.split(b"\r\n") if b"RFC822.SIZE" in line]
    assert sized and all(b"BODY.PEEK[HEADER]<0." in line for line in sized)  # one FETCH
    assert sent.count(b"BODY.PEEK[HEADER])") == 1  # the long header, whole


@pytest.mark.parametrize("policy", ["metadata", "snippet"])
def test_an_invitation_whose_content_type_lies_past_the_cut_is_read(imap_server, policy):
    trace = b"".join(
        b"Received: from relay%d.acme.test by mx.northwind.test; Mon, 2 Mar 2026 10:00:00 +0000\r\n"
        % n
        for n in range(500)
    )
    login = new_folder(imap_server, "Deals", trace + invite(7))
    (item,) = [i for b in read(spec(imap_server, login, body_policy=policy)) for i in b.items]
    assert [m.uid for m in item.invitations] == ["review-7@acme.test"]


def test_metadata_batches_are_cut_by_what_is_fetched_not_by_the_messages_size(imap_server):
    login = new_folder(imap_server, "Deals", *(msg(i, body="b" * 300 * 1024) for i in range(7)))
    limits = LimitSettings(batch_bytes=1024 * 1024)
    box = spec(imap_server, login, body_policy="metadata", batch_size=10, limits=limits)
    assert [len(b.items) for b in read(box)] == [7]  # their headers: a few KB
    full = spec(imap_server, login, body_policy="full", batch_size=10, limits=limits)
    assert max(len(b.items) for b in read(full)) <= 3  # 3 x 300 KB < 1 MB


def subjects_of(items: list[MailItem]) -> tuple[int, tuple[str, ...]]:
    """A digest: how many items, and their subjects (a top-level function: picklable)."""
    return len(items), tuple(i.subject for i in items)


@pytest.mark.usefixtures("small_tasks")
@pytest.mark.parametrize("processes", [1, WORKERS])
def test_a_digested_read_gives_the_digest_of_each_batch_with_the_same_cursors(
    imap_server, processes
):
    login = new_folder(imap_server, "Deals", *MIXED)
    box = spec(imap_server, login, parse_processes=processes, limits=LIMITS)
    plain = read(box)
    connector = ImapConnector(box)
    try:
        source = ImapFolder(connector.session, "Deals", box)
        assert isinstance(source, Digests)
        digested = list(source.digested(None, subjects_of))
    finally:
        connector.close()
    assert [b.cursor for b in digested] == [b.cursor for b in plain]
    assert [b.quarantined for b in digested] == [b.quarantined for b in plain]
    assert all(not b.items for b in digested)
    assert [b.digest for b in digested] == [subjects_of(list(b.items)) for b in plain]


def envelope_mail() -> list[bytes]:
    """What the import's digest must read as a plain read does: plain mail, a sent one,
    bulk mail, an auto-reply, a To past the cut, one dated by its Received field only, and
    one with no date at all (its INTERNALDATE)."""
    many = ", ".join(f"Person {n} <p{n}@acme.test>" for n in range(1500)).encode()
    assert len(many) > fetch.HEADER_BYTES
    received = (
        b"Received: from mx.acme.test by mx.northwind.test; Tue, 3 Mar 2026 09:00:00 +0000\r\n"
    )
    return [
        *(msg(i) for i in range(6)),
        msg(7, sender="ana@northwind.test", to="Eva <eva@globex.test>"),
        b"From: News <news@acme.test>\r\nTo: ana@northwind.test\r\nList-Id: <news.acme.test>\r\n"
        b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nSubject: news\r\n\r\nhello\r\n",
        b"From: Dan <dan@acme.test>\r\nTo: ana@northwind.test\r\nAuto-Submitted: auto-replied\r\n"
        b"Date: Mon, 2 Mar 2026 11:00:00 +0000\r\nSubject: away\r\n\r\naway\r\n",
        b"From: Carla <carla@acme.test>\r\nTo: " + many + b"\r\nCc: Zoe <zoe@acme.test>\r\n"
        b"Date: Mon, 2 Mar 2026 12:00:00 +0000\r\nSubject: many\r\n\r\nhello\r\n",
        received + b"From: Fay <fay@acme.test>\r\nTo: ana@northwind.test\r\n\r\nhi\r\n",
        UNDATED,
    ]


@pytest.mark.usefixtures("small_tasks")
@pytest.mark.parametrize("processes", [1, WORKERS])
def test_the_import_digest_fetches_the_header_only_and_learns_what_a_plain_read_teaches(
    imap_server, processes
):
    login = new_folder(imap_server, "Deals", *envelope_mail())
    client = imap(imap_server, login)
    arrived = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    client.append("Deals", UNDATED, flags=(b"\\Seen",), msg_time=arrived)
    client.logout()
    digest = MailDigest("ana", frozenset({"ana@northwind.test"}))
    plain = read(spec(imap_server, login, body_policy="metadata", parse_processes=processes))
    proxy = RecordingProxy(imap_server.port)
    box = spec(
        imap_server, login, port=proxy.port, body_policy="metadata", parse_processes=processes
    )
    connector = ImapConnector(box)
    try:
        digested = list(ImapFolder(connector.session, "Deals", box).digested(None, digest))
    finally:
        connector.close()
        proxy.close()
    assert [b.cursor for b in digested] == [b.cursor for b in plain]
    assert [b.quarantined for b in digested] == [b.quarantined for b in plain] == [()] * len(plain)

    def learnt(digests: list[tuple[People, int]]) -> dict[str, dict[str, Any]]:
        everyone = People()
        for people, _count in digests:
            everyone.merge(people)
        return {p.key: vars(p) for p in everyone}

    expected = learnt([digest(list(b.items)) for b in plain])
    assert learnt([b.digest for b in digested]) == expected
    assert {"p1499@acme.test", "zoe@acme.test", "news@acme.test", "dan@acme.test"} <= set(expected)
    assert expected["fay@acme.test"]["first_seen"] == datetime(2026, 3, 3, 9, tzinfo=UTC)
    # the start of each header, nothing else: no size, no structure, no text
    assert proxy.asked(b"BODY.PEEK[HEADER]<0.") == set(range(1, 14))
    assert not proxy.asked(b"RFC822.SIZE") and not proxy.structure_uids()
    assert not proxy.asked(b"BODY.PEEK[TEXT]")
    # the rest of the header only for the To past the cut (up to the header limit and a
    # byte: without a size, a longer one is not fetched whole); INTERNALDATE for those
    # with no date
    whole = b"BODY.PEEK[HEADER]<0.%d>" % (LimitSettings().header_bytes + 1)
    assert proxy.asked(whole) == {10}
    assert proxy.asked(b"BODY.PEEK[HEADER])") == set()
    assert proxy.asked(b"INTERNALDATE") == {12, 13}
