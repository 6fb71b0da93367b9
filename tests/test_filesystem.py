"""Hostile entries in a local mailbox (issue 10, findings 5, 6 and 7, and the size limits at
read time): symbolic links, FIFOs, devices, subdirectories, unreadable files and names that
are not UTF-8 in a Maildir, an mbox path or a calendar folder; messages and calendars larger
than the limits; links planted where follow-up tasks are written. Real files, real FIFOs and
links; the CRM on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import mailbox
import os
import shutil
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import LimitSettings, Settings
from syncd.connectors.base import MailboxSpec
from syncd.connectors.local.connector import LocalConnector
from syncd.connectors.local.vdir import VdirTaskWriter
from syncd.crm import reports
from syncd.crm.models import Mailbox, QuarantineEntry, Task
from syncd.demo import add_local_mailbox, deliver, email_bytes, event_ics
from syncd.items import MailItem, TaskItem
from syncd.sync import SyncReport, sync_mailbox

S = sessionmaker[Session]
KEY = b"SECRET-KEY-SENTINEL-" + b"k" * 24  # stands for $SYNCD_HOME/secret.key
KiB = 1024


def sync(sessions: S, settings: Settings, name: str, now: datetime) -> SyncReport:
    report = sync_mailbox(sessions, settings, name, now=lambda: now)
    assert report.ok, report.error
    return report


def subjects(sessions: S) -> set[str]:
    with sessions() as session:
        return {r["subject"] for r in reports.activity_report(session)}


def quarantine(sessions: S) -> list[QuarantineEntry]:
    with sessions() as session:
        rows = list(session.scalars(select(QuarantineEntry).order_by(QuarantineEntry.id)))
        session.expunge_all()
        return rows


def mail(subject: str, now: datetime, i: int = 0, body: str = "") -> bytes:
    return email_bytes(
        sender="Carla <carla@acme.test>",
        to=["ana@northwind.test"],
        subject=subject,
        when=now - timedelta(minutes=10 + i),
        message_id=f"{subject.replace(' ', '-')}@acme.test",
        body=body,
    )


def key_file(settings: Settings) -> Path:
    settings.home.mkdir(parents=True, exist_ok=True)
    key = settings.home / "secret.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    return key


def nothing_leaked(sessions: S) -> None:
    """The key's bytes are nowhere: not in a quarantine reason, not in a kept copy, not in
    an activity."""
    for entry in quarantine(sessions):
        assert KEY.decode() not in entry.reason and KEY not in (entry.raw or b"")
    with sessions() as session:
        for row in reports.activity_report(session):
            assert KEY.decode() not in json.dumps(row, default=str)


def with_limits(settings: Settings, **limits: int) -> Settings:
    return settings.model_copy(update={"limits": LimitSettings(**limits)})


# --- findings 6 and 7: odd entries in a Maildir --------------------------------------------


def test_links_fifos_devices_and_subdirectories_in_a_maildir_are_never_read(
    sessions, settings, company, now
):
    key = key_file(settings)
    maildir = company.maildirs["ana"]
    deliver(maildir, mail("before the odd ones", now, 3), now, "1000.good1.host")
    new = maildir / "new"
    os.mkfifo(new / "1001.fifo.host")  # a FIFO: reading it would wait for ever
    os.symlink("/dev/zero", new / "1002.zero.host")  # endless: MemoryError once
    os.symlink(key, new / "1003.key.host")  # put the key in clear into the quarantine once
    (new / "1004.subdir.host").mkdir()
    (new / "1004.subdir.host" / "x").write_bytes(b"not a message")
    os.symlink("/dev/null", maildir / "cur" / "1005.null.host:2,S")
    device = False
    with contextlib.suppress(PermissionError):  # a real device node, where mknod is allowed
        os.mknod(new / "1009.device.host", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero
        device = True
    odd_name = os.fsdecode(b"1006.\xff\xfename-not-utf8.host:2,S")
    (maildir / "cur" / odd_name).write_bytes(mail("latin-1 named file", now, 2))
    deliver(maildir, mail("after the odd ones", now, 1), now, "1007.good2.host")
    add_local_mailbox(
        sessions, "ana", "ana@northwind.test", maildir=str(maildir), calendar=str(company.calendar)
    )

    started = time.monotonic()
    report = sync(sessions, settings, "ana", now)
    assert time.monotonic() - started < 30  # never waits on the FIFO, never reads /dev/zero
    assert {"before the odd ones", "after the odd ones", "latin-1 named file"} <= subjects(sessions)
    reasons = {e.provider_id: e.reason for e in quarantine(sessions)}
    assert "a FIFO, not a regular file" in reasons["maildir:INBOX/1001.fifo.host"]
    assert "a symbolic link, not a regular file" in reasons["maildir:INBOX/1002.zero.host"]
    assert "a symbolic link, not a regular file" in reasons["maildir:INBOX/1003.key.host"]
    assert "a directory, not a regular file" in reasons["maildir:INBOX/1004.subdir.host"]
    if device:
        assert "a device, not a regular file" in reasons["maildir:INBOX/1009.device.host"]
    assert report.quarantined >= 4
    for entry in quarantine(sessions):
        if ".broken.host" not in entry.provider_id:  # the demo's own broken message
            assert entry.raw is None  # nothing of an odd entry is ever kept
    nothing_leaked(sessions)
    assert key.read_bytes() == KEY
    # an odd entry is quarantined once, and the mailbox goes on: a new message is logged
    deliver(maildir, mail("delivered later", now), now, "1008.good3.host")
    sync(sessions, settings, "ana", now)
    assert "delivered later" in subjects(sessions)
    assert len(quarantine(sessions)) == len(reasons)
    with sessions() as session:
        status = {r["mailbox"]: r for r in reports.status_report(session)}
    assert status["ana"]["state"] == "ok"


def test_a_linked_maildir_folder_or_cur_dir_is_quarantined_once_not_followed(
    sessions, settings, company, now, tmp_path
):
    maildir = company.maildirs["ana"]
    outside = tmp_path / "outside"  # another user's mail, say
    for sub in ("cur", "new", "tmp"):
        (outside / sub).mkdir(parents=True)
    deliver(outside, mail("never to be read", now), now, "2000.outside.host")
    os.symlink(outside, maildir / ".Stolen")  # a Maildir++ folder that is a link
    sneaky = maildir / ".Sneaky"  # a real folder whose cur/ is a link
    (sneaky / "new").mkdir(parents=True)
    os.symlink(outside / "cur", sneaky / "cur")
    odd = maildir / os.fsdecode(b".Archiv\xe9")  # a folder name that is not UTF-8
    for sub in ("cur", "new", "tmp"):
        (odd / sub).mkdir(parents=True)
    deliver(odd, mail("in a latin-1 folder", now), now, "2001.archived.host")
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(maildir))

    sync(sessions, settings, "ana", now)
    logged = subjects(sessions)
    assert "never to be read" not in logged
    assert "in a latin-1 folder" in logged and "Renewal proposal [OPP-101]" in logged
    reasons = {e.provider_id: e.reason for e in quarantine(sessions)}
    assert "the folder is a symbolic link: not read" in reasons["maildir:Stolen"]
    assert "its cur/ is a symbolic link" in reasons["maildir:Sneaky"]
    sync(sessions, settings, "ana", now)  # reported once, not at every pass
    assert len(quarantine(sessions)) == len(reasons)
    # fixed by the admin: the folder is read from where it was
    os.unlink(maildir / ".Stolen")
    shutil.copytree(outside, maildir / ".Stolen")
    sync(sessions, settings, "ana", now)
    assert "never to be read" in subjects(sessions)


def test_an_unreadable_file_is_quarantined_and_the_folder_goes_on(tmp_path, now):
    """A file syncd may not read is this entry's problem only."""
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    deliver(maildir, mail("readable one", now, 2), now, "3000.a.host")
    locked = deliver(maildir, mail("locked one", now, 1), now, "3001.b.host")
    deliver(maildir, mail("readable two", now), now, "3002.c.host")
    locked.chmod(0)
    script = (
        "import json, sys\n"
        "from syncd.connectors.base import MailboxSpec\n"
        "from syncd.connectors.local.connector import LocalConnector\n"
        "spec = MailboxSpec('ana', 'local', 'ana@northwind.test', {'maildir': sys.argv[1]})\n"
        "(source,) = LocalConnector(spec).mail_sources()\n"
        "items, odd = [], []\n"
        "for batch in source.changes(None):\n"
        "    items += [i.subject for i in batch.items]\n"
        "    odd += [[q.provider_id, q.reason] for q in batch.quarantined]\n"
        "print(json.dumps({'items': items, 'odd': odd}))\n"
    )
    # root reads any file: without the capabilities that let it, a mode 000 file is denied
    # to it as to anyone
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    proc = subprocess.run(
        [*(drop if os.geteuid() == 0 else []), sys.executable, "-c", script, str(maildir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert sorted(found["items"]) == ["readable one", "readable two"]
    assert found["odd"] == [
        ["maildir:INBOX/3001.b.host", "cannot read the file: Permission denied"]
    ]


# --- findings 6 and 7: the calendar folder and the mbox path --------------------------------


def test_odd_entries_in_a_calendar_folder_are_quarantined_and_meetings_logged(
    sessions, settings, company, now
):
    key = key_file(settings)
    cal = company.calendar
    os.mkfifo(cal / "fifo.ics")
    os.symlink("/dev/zero", cal / "zero.ics")
    os.symlink(key, cal / "key.ics")
    (cal / "dir.ics").mkdir()
    latin = cal / os.fsdecode(b"r\xe9union.ics")
    latin.write_bytes(
        event_ics(
            "latin-name@northwind.test",
            "Latin-1 named meeting",
            now - timedelta(days=1),
            30,
            ("ana@northwind.test", "Ana"),
            [("carla@acme.test", "Carla")],
        )
    )
    add_local_mailbox(
        sessions,
        "ana",
        "ana@northwind.test",
        maildir=str(company.maildirs["ana"]),
        calendar=str(cal),
    )
    started = time.monotonic()
    sync(sessions, settings, "ana", now)
    assert time.monotonic() - started < 30
    logged = subjects(sessions)
    assert {"Acme QBR", "Latin-1 named meeting"} <= logged
    reasons = {e.provider_id: e.reason for e in quarantine(sessions)}
    assert "a FIFO" in reasons["calendar/fifo.ics"]
    assert "a symbolic link" in reasons["calendar/zero.ics"]
    assert "a symbolic link" in reasons["calendar/key.ics"]
    assert "a directory" in reasons["calendar/dir.ics"]
    nothing_leaked(sessions)
    assert key.read_bytes() == KEY
    sync(sessions, settings, "ana", now)  # unchanged entries are not reported again
    assert len(quarantine(sessions)) == len(reasons)


@pytest.mark.parametrize("odd", ["fifo", "link-to-key", "directory"])
def test_an_mbox_path_that_is_no_regular_file_is_skipped_with_its_reason(
    sessions, settings, company, now, tmp_path, odd
):
    key = key_file(settings)
    path = tmp_path / "takeout.mbox"
    box = mailbox.mbox(path)
    box.add(mail("archived", now))
    box.close()
    add_local_mailbox(
        sessions,
        "ana",
        "ana@northwind.test",
        maildir=str(company.maildirs["ana"]),
        mbox=[str(path)],
    )
    sync(sessions, settings, "ana", now)
    assert "archived" in subjects(sessions)
    path.unlink()
    if odd == "fifo":
        os.mkfifo(path)
    elif odd == "link-to-key":
        os.symlink(key, path)
    else:
        path.mkdir()
    deliver(company.maildirs["ana"], mail("still read", now), now, "4000.still.host")
    started = time.monotonic()
    sync(sessions, settings, "ana", now)
    assert time.monotonic() - started < 30
    assert "still read" in subjects(sessions)
    (entry,) = [e for e in quarantine(sessions) if e.provider_id.startswith("mbox:")]
    assert entry.provider_id == "mbox:takeout.mbox" and entry.raw is None
    expected = {"fifo": "a FIFO", "link-to-key": "a symbolic link", "directory": "a directory"}
    assert expected[odd] in entry.reason and "not read" in entry.reason
    nothing_leaked(sessions)
    before = len(quarantine(sessions))
    sync(sessions, settings, "ana", now)
    assert len(quarantine(sessions)) == before


def test_mbox_messages_are_read_as_the_standard_library_reads_them(tmp_path, now):
    path = tmp_path / "odd.mbox"
    path.write_bytes(
        b"garbage before the first From_ line\n\n"
        b"From a@x Mon Jan  1 00:00:00 2024\nFrom: a@acme.test\nTo: ana@northwind.test\n"
        b"Subject: one\n\n>From the body, escaped\n\n"
        b"From b@x Mon Jan  1 00:00:00 2024\r\nFrom: b@acme.test\r\nSubject: two\r\n\r\nbody\r\n"
        b"From c@x Mon Jan  1 00:00:00 2024\nFrom: c@acme.test\nSubject: three\n\nno newline"
    )
    box = mailbox.mbox(path)
    expected = [bytes(box.get_bytes(k)) for k in box.iterkeys()]
    seen: list[bytes] = []

    import syncd.connectors.local.mbox as local

    def capture(data: bytes, provider_id: str, *args: Any, **kw: Any) -> Any:
        seen.append(data)
        return original(data, provider_id, *args, **kw)

    original = local.read_message
    local.read_message = capture
    try:
        spec = MailboxSpec.of("ana", "local", "ana@northwind.test", {"mbox": [str(path)]})
        (source,) = LocalConnector(spec).mail_sources()
        list(source.changes(None))
    finally:
        local.read_message = original
    assert seen == expected and len(seen) == 3


# --- size limits at read time ---------------------------------------------------------------


def test_a_huge_maildir_message_is_quarantined_by_its_size_without_being_read(
    sessions, settings, company, now
):
    maildir = company.maildirs["ana"]
    deliver(maildir, mail("small before", now, 2), now, "5000.a.host")
    huge = maildir / "cur" / "5001.huge.host:2,S"
    with huge.open("wb") as fh:  # 8 GB, sparse: reading it would take minutes and all memory
        fh.write(mail("the huge one", now, 1))
        fh.truncate(8 * 1024**3)
    over = deliver(maildir, mail("just over", now, 1, body="x" * 70 * KiB), now, "5002.b.host")
    deliver(maildir, mail("small after", now), now, "5003.c.host")
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(maildir))
    limited = with_limits(settings, message_bytes=64 * KiB)

    started = time.monotonic()
    sync(sessions, limited, "ana", now)
    assert time.monotonic() - started < 30
    assert {"small before", "small after"} <= subjects(sessions)
    assert not {"the huge one", "just over"} & subjects(sessions)
    reasons = {e.provider_id: e for e in quarantine(sessions)}
    big = reasons["maildir:INBOX/5001.huge.host"]
    assert big.reason.startswith(f"{8 * 1024**3} bytes, over the limit of {64 * KiB} bytes")
    assert "limits.message_bytes" in big.reason and big.raw is None
    assert reasons["maildir:INBOX/5002.b.host"].reason.startswith(f"{over.stat().st_size} bytes")


def test_a_large_mbox_message_and_ics_file_are_quarantined_by_size(
    sessions, settings, company, now, tmp_path
):
    path = tmp_path / "takeout.mbox"
    box = mailbox.mbox(path)
    box.add(mail("mbox small one", now, 3))
    box.add(mail("mbox large one", now, 2, body="y" * 100 * KiB))
    box.add(mail("mbox small two", now, 1))
    box.close()
    big_event = event_ics(
        "big@northwind.test",
        "Big meeting",
        now - timedelta(days=1),
        30,
        ("ana@northwind.test", "Ana"),
        [("carla@acme.test", "Carla")],
    ).replace(b"END:VEVENT", b"DESCRIPTION:" + b"z" * 70 * KiB + b"\r\nEND:VEVENT")
    (company.calendar / "big.ics").write_bytes(big_event)
    add_local_mailbox(
        sessions,
        "ana",
        "ana@northwind.test",
        maildir=str(company.maildirs["ana"]),
        calendar=str(company.calendar),
        mbox=[str(path)],
    )
    sync(sessions, with_limits(settings, message_bytes=64 * KiB), "ana", now)
    logged = subjects(sessions)
    assert {"mbox small one", "mbox small two", "Acme QBR"} <= logged
    assert not {"mbox large one", "Big meeting"} & logged
    reasons = {e.provider_id: e for e in quarantine(sessions)}
    assert "over the limit of 65536 bytes" in reasons["mbox:takeout.mbox/1"].reason
    assert "over the limit of 65536 bytes" in reasons["calendar/big.ics"].reason
    assert reasons["mbox:takeout.mbox/1"].raw is None and reasons["calendar/big.ics"].raw is None


def test_local_batches_are_cut_by_bytes(sessions, settings, company, now, tmp_path):
    maildir = company.maildirs["ana"]
    sizes: dict[str, int] = {}
    for i in range(8):
        path = deliver(
            maildir, mail(f"bulky {i}", now, i, body="b" * 300 * KiB), now, f"6{i:03}.bulky.host"
        )
        sizes[f"maildir:INBOX/6{i:03}.bulky.host"] = path.stat().st_size
    budget = 1024 * KiB
    spec = MailboxSpec.of(
        "ana",
        "local",
        "ana@northwind.test",
        {"maildir": str(maildir)},
        limits=LimitSettings(batch_bytes=budget),
    )
    inbox = LocalConnector(spec).mail_sources()[0]
    batches = list(inbox.changes(None))
    held = [sum(sizes.get(i.provider_id, 0) for i in b.items) for b in batches]
    assert max(held) <= budget and len([h for h in held if h]) >= 3
    bulky = [i for b in batches for i in b.items if isinstance(i, MailItem)]
    assert len([i for i in bulky if i.subject.startswith("bulky")]) == 8
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(maildir))
    sync(sessions, with_limits(settings, batch_bytes=budget), "ana", now)
    assert {f"bulky {i}" for i in range(8)} <= subjects(sessions)


# --- finding 5: task files never written through a planted link -----------------------------


def test_links_planted_at_task_and_old_temp_names_never_redirect_the_write(
    sessions, settings, company, now
):
    key = key_file(settings)
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    sync(sessions, settings, "ana", now)  # tasks decided; no calendar yet to write them to
    with sessions() as session:
        uids = list(session.scalars(select(Task.uid)))
    assert uids
    cal = company.calendar
    for uid in uids:
        os.symlink(key, cal / f"{uid}.ics")  # the task's own file name
        os.symlink(key, cal / f".{uid}.ics.tmp")  # the temp name syncd once used
    with sessions.begin() as session:
        ana = session.scalars(select(Mailbox).where(Mailbox.name == "ana")).one()
        ana.settings = {**ana.settings, "calendar": str(cal)}
    sync(sessions, settings, "ana", now)

    assert key.read_bytes() == KEY and stat.S_ISREG(key.lstat().st_mode)
    for uid in uids:
        task = cal / f"{uid}.ics"
        assert stat.S_ISREG(task.lstat().st_mode)  # the link was replaced, not followed
        assert b"BEGIN:VTODO" in task.read_bytes() and uid.encode() in task.read_bytes()
    leftovers = [p.name for p in cal.iterdir() if p.name.endswith(".tmp")]
    assert sorted(leftovers) == sorted(f".{uid}.ics.tmp" for uid in uids)  # untouched links
    with sessions() as session:
        report = reports.task_report(session)
    assert report and all(r["in_calendar"] and not r["write_error"] for r in report)
    nothing_leaked(sessions)


def test_the_task_writer_leaves_no_temp_file_and_never_writes_outside_its_folder(tmp_path, now):
    cal = tmp_path / "cal"
    cal.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(KEY)
    os.symlink(victim, cal / "syncd-abc.ics")
    writer = VdirTaskWriter(cal)
    task = TaskItem(
        uid="syncd-abc", title="Follow up", description="", due=now, status="open", created=now
    )
    for _ in range(3):
        assert writer.put(task) == "syncd-abc.ics"
    assert sorted(p.name for p in cal.iterdir()) == ["syncd-abc.ics"]
    assert stat.S_ISREG((cal / "syncd-abc.ics").lstat().st_mode)
    assert victim.read_bytes() == KEY
    # a directory at the task's name: an error, and nothing left behind
    (cal / "syncd-abc.ics").unlink()
    (cal / "syncd-abc.ics").mkdir()
    with pytest.raises(OSError):
        writer.put(task)
    assert sorted(p.name for p in cal.iterdir()) == ["syncd-abc.ics"]
