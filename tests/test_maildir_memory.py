"""A Maildir folder read in windows (issue 14, flat memory): whatever the window size, the
same items in the same order; ties on ctime at a window's edge neither split nor dropped;
files renamed or added during the pass never lost; the cursor resumes between windows;
what a read holds is bounded by the window, not by the folder; the read of one chunk runs
from picklable arguments (for a worker process). Real files, links, FIFOs and renames."""

from __future__ import annotations

import os
import pickle
import time
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from syncd.config import LimitSettings
from syncd.connectors.base import ConnectorError
from syncd.connectors.local.maildir import (
    Chunk,
    EmlFolder,
    MaildirFolder,
    listing,
    read_chunk,
    read_entries,
    windows,
)
from syncd.demo import make_maildir
from syncd.items import Batch, Cursor, MailItem

NOW = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
LIMITS = LimitSettings(message_bytes=64 * 1024)
RAW = (
    "From: Carla <carla@acme.test>\r\nTo: ana@northwind.test\r\n"
    "Subject: {subject}\r\nMessage-ID: <{subject}@acme.test>\r\n"
    "Date: Mon, 06 May 2024 10:00:00 +0000\r\n\r\nHello\r\n"
)


def raw(subject: str) -> bytes:
    return RAW.format(subject=subject).encode()


def new_maildir(root: Path) -> Path:
    return make_maildir(root, folders=())


def put(maildir: Path, unique: str, subject: str, sub: str = "cur") -> Path:
    path = maildir / sub / (f"{unique}:2,S" if sub == "cur" else unique)
    path.write_bytes(raw(subject))
    return path


def hostile_folder(root: Path) -> Path:
    """Messages in new/ and cur/, a group of hard links sharing one ctime (one inode), a
    link, a FIFO, a subdirectory and a file over the size limit."""
    maildir = new_maildir(root)
    for i in range(12):
        put(maildir, f"{1000 + i}.M{i}.host", f"m{i}", "new" if i % 3 == 0 else "cur")
    first = put(maildir, "2000.tie0.host", "tie")
    for i in range(1, 6):  # one inode: the same ctime for every name
        sub = "new" if i % 2 else "cur"
        os.link(first, maildir / sub / (f"2000.tie{i}.host" + (":2,S" if sub == "cur" else "")))
    os.link(first, maildir / "new" / "2000.tie0.host")  # the same unique in new/ and cur/
    os.symlink("/dev/zero", maildir / "new" / "3000.zero.host")
    os.mkfifo(maildir / "new" / "3001.fifo.host")
    (maildir / "cur" / "3002.dir.host").mkdir()
    (maildir / "cur" / "3003.big.host:2,S").write_bytes(raw("big") + b"x" * 70_000)
    for i in range(12, 20):
        put(maildir, f"{4000 + i}.M{i}.host", f"m{i}", "new" if i % 2 else "cur")
    return maildir


def read_all(
    folder: MaildirFolder, cursor: Cursor | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[Cursor]]:
    """(provider id, subject) of the messages, (provider id, reason) of the entries
    quarantined, each in the order read, and the cursors given."""
    items: list[tuple[str, str]] = []
    quarantined: list[tuple[str, str]] = []
    cursors: list[Cursor] = []
    for batch in folder.changes(cursor):
        items += [(i.provider_id, i.subject) for i in batch.items]
        quarantined += [(q.provider_id, q.reason) for q in batch.quarantined]
        cursors.append(batch.cursor)
    return items, quarantined, cursors


def once(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(items))


def folder(maildir: Path, window: int, batch_size: int = 2) -> MaildirFolder:
    return MaildirFolder("maildir:INBOX", maildir, batch_size, LIMITS, window=window)


def test_a_folder_read_in_windows_gives_the_same_items_in_the_same_order(tmp_path):
    maildir = hostile_folder(tmp_path / "m")
    time.sleep(1.1)  # settled: the last cursor holds the directories' stamps
    whole_items, whole_quarantined, whole_cursors = read_all(folder(maildir, 10_000))
    assert '"d": [' in whole_cursors[-1].value
    assert len(whole_items) == 27 and len(whole_quarantined) == 4
    for window in (1, 2, 3, 5, 7, 26, 30, 31):
        items, quarantined, cursors = read_all(folder(maildir, window))
        assert items == whole_items, window
        assert quarantined == whole_quarantined, window
        assert cursors[-1] == whole_cursors[-1], window
    reasons = dict(whole_quarantined)
    assert "a symbolic link" in reasons["maildir:INBOX/3000.zero.host"]
    assert "a FIFO" in reasons["maildir:INBOX/3001.fifo.host"]
    assert "a directory" in reasons["maildir:INBOX/3002.dir.host"]
    assert "limits.message_bytes" in reasons["maildir:INBOX/3003.big.host"]


def test_ties_on_ctime_at_a_window_edge_are_neither_split_nor_dropped(tmp_path):
    maildir = hostile_folder(tmp_path / "m")
    fds = folder(maildir, 1)._open()
    try:
        whole = sorted(listing(fds))
        ties = [e for e in whole if e.unique.startswith("2000.tie")]
        assert len(ties) == 7 and len({e.ctime_ns for e in ties}) == 1
        for size in (1, 2, 3, 4):  # every edge falls inside the group somewhere
            cut = list(windows(fds, (0, ""), size))
            assert [e for w in cut for e in w] == whole, size
            assert all(len(w) == size for w in cut[:-1])
        # after a cursor on the tie: the rest of the group, never the names before it
        after = (ties[2].ctime_ns, ties[2].unique)
        rest = [e for w in windows(fds, after, 2) for e in w]
        assert rest == [e for e in whole if (e.ctime_ns, e.unique) > after]
    finally:
        for fd in fds.values():
            os.close(fd)


def test_the_cursor_resumes_between_windows(tmp_path):
    maildir = hostile_folder(tmp_path / "m")
    time.sleep(1.1)  # past the cursor's one-second settling margin
    whole, _, _ = read_all(folder(maildir, 10_000))
    seen: list[tuple[str, str]] = []
    cursor: Cursor | None = None
    passes = 0
    while True:  # every pass stops after its second batch, as a stopped pass would
        passes += 1
        batches = folder(maildir, 5).changes(cursor)
        taken = [b for _, b in zip(range(2), batches, strict=False)]
        batches.close()  # type: ignore[attr-defined]
        if not taken:
            break
        seen += [(i.provider_id, i.subject) for b in taken for i in b.items]
        cursor = taken[-1].cursor
    assert passes > 5
    # every message once; the same unique name in new/ and cur/ is one message, read
    # once or twice (its second copy is skipped when a pass stops between the two)
    assert once(seen) == once(whole) and len(seen) - len(once(seen)) <= 1
    assert read_all(folder(maildir, 5), cursor)[0] == []  # and the last cursor is settled


def test_files_renamed_or_added_during_the_pass_are_not_lost(tmp_path):
    maildir = new_maildir(tmp_path / "m")
    for i in range(20):
        put(maildir, f"{1000 + i}.M{i}.host", f"m{i}", "new")
    time.sleep(1.1)  # settled: only what happens during the pass goes past the cursor's cap
    batches = folder(maildir, 5).changes(None)
    first = next(batches)
    assert [i.subject for i in first.items] == ["m0", "m1"]
    # a mail client reads two messages: one in the window in hand, one in a later one
    for i in (3, 12):
        os.rename(
            maildir / "new" / f"{1000 + i}.M{i}.host", maildir / "cur" / f"{1000 + i}.M{i}.host:2,S"
        )
    put(maildir, "5000.late.host", "late", "new")  # delivered meanwhile
    (maildir / "new" / "1007.M7.host").unlink()  # deleted meanwhile: nothing to read
    rest = list(batches)
    subjects = [i.subject for b in [first, *rest] for i in b.items]
    # the window in hand is read whole: the renamed one found under its new name
    assert subjects[:5] == ["m0", "m1", "m2", "m3", "m4"]
    expected = {f"m{i}" for i in range(20)} - {"m7"} | {"late"}
    assert set(subjects) == expected  # nothing lost
    # read once, but a renamed one: at most once more, by its new name (the same key)
    assert all(subjects.count(s) == 1 for s in expected - {"m3", "m12"})
    assert subjects.count("m3") <= 2 and subjects.count("m12") <= 2
    assert all(not b.quarantined for b in rest)
    # the next pass reads again only what changed during this one: no-ops by their key
    again, _, _ = read_all(folder(maildir, 5), rest[-1].cursor)
    assert {s for _, s in again} <= {"m3", "m12", "late"}


def test_a_chunk_is_read_alike_from_picklable_arguments(tmp_path):
    maildir = hostile_folder(tmp_path / "m")
    source = folder(maildir, 10_000)
    fds = source._open()
    try:
        entries = sorted(listing(fds))
        here = read_entries(fds, source.name, entries, LIMITS)
    finally:
        for fd in fds.values():
            os.close(fd)
    chunk = Chunk(
        str(maildir), source.SUBS, source.follow, source.OPTION, source.name, (*entries,), LIMITS
    )
    there = read_chunk(pickle.loads(pickle.dumps(chunk)))
    assert there == here and len(here) == 31
    eml = tmp_path / "eml"
    eml.mkdir()
    (eml / "a.eml").write_bytes(raw("saved"))
    fds = EmlFolder("eml:eml", eml, 10)._open()
    try:
        entries = list(listing(fds))
    finally:
        for fd in fds.values():
            os.close(fd)
    (item,) = read_chunk(
        Chunk(str(eml), EmlFolder.SUBS, True, EmlFolder.OPTION, "eml:eml", (*entries,), LIMITS)
    )
    assert isinstance(item, MailItem) and item.subject == "saved"
    # the folder swapped for a link meanwhile: the chunk is not read, and the error says why
    (tmp_path / "m").rename(tmp_path / "elsewhere")
    (tmp_path / "m").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConnectorError, match="maildir:INBOX: the folder is a symbolic link"):
        read_chunk(replace(chunk, follow=False))


def _peak(maildir: Path, window: int) -> int:
    """The most memory traced while the folder is read and each batch dropped."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    count = 0
    batch: Batch[MailItem] | None = None
    for batch in folder(maildir, window, batch_size=20).changes(None):
        count += len(batch.items)
    del batch
    return tracemalloc.get_traced_memory()[1] - before


def test_reading_a_folder_holds_a_window_of_entries_not_the_folder(tmp_path):
    small, large = new_maildir(tmp_path / "small"), new_maildir(tmp_path / "large")
    for maildir, count in ((small, 200), (large, 2000)):
        for i in range(count):
            name = f"{1000 + i}.M{i}P{i}.some-host-name.example"
            (maildir / "cur" / f"{name}:2,S").write_bytes(raw(f"m{i}"))
    tracemalloc.start()
    try:
        _peak(small, 50)  # warmed up: imports, caches
        small_peak = _peak(small, 50)
        large_peak = _peak(large, 50)
        fds = folder(large, 50)._open()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            entries = list(listing(fds))
            held = tracemalloc.get_traced_memory()[0] - before  # the whole listing
            del entries
        finally:
            for fd in fds.values():
                os.close(fd)
    finally:
        tracemalloc.stop()
    # ten times the messages: the peak grows by much less than the listing would hold
    assert large_peak - small_peak < held / 4, (small_peak, large_peak, held)
