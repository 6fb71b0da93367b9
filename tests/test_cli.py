"""The ``syncd`` command as an admin runs it: real processes, exit codes, JSON, messages."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from syncd.cli import app
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.demo import add_local_mailbox, build_demo, deliver, email_bytes, load_company

from .servers import new_pg_database

SYNCD = [sys.executable, "-m", "syncd"]


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest, db_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "SYNCD_HOME": str(tmp_path / "home"),
        "SYNCD_DATABASE_URL": db_url,
        "COLUMNS": "200",
    }


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*SYNCD, *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def as_json(env: dict[str, str], *args: str, code: int = 0) -> Any:
    """The command's JSON; it exits with ``code`` (``syncd status``: 1 when a mailbox is
    failing, 2 when one is parked)."""
    proc = run(env, *args, "--json", check=False)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def loaded(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """The demo company in the CRM and its two mailboxes added, as ``syncd db upgrade``,
    ``crm load`` and ``mailbox add --kind local`` leave them (set up in this process: those
    commands are tested as processes on their own, here they would cost seconds a test)."""
    demo = build_demo(tmp_path / "demo", datetime.now(UTC).replace(microsecond=0))
    engine = make_engine(env["SYNCD_DATABASE_URL"])
    try:
        upgrade(engine)
        sessions = session_factory(engine)
        load_company(sessions, demo.root / "crm")
        maildir = demo.maildirs
        add_local_mailbox(
            sessions,
            "ana",
            "ana@northwind.test",
            maildir=str(maildir["ana"]),
            calendar=str(demo.calendar),
        )
        add_local_mailbox(sessions, "ben", "ben@northwind.test", maildir=str(maildir["ben"]))
    finally:
        engine.dispose()
    return {"demo": demo}


def test_sync_then_reports_in_json(env, loaded):
    out = run(env, "sync").stdout
    assert "ana: ok:" in out and "ben: ok:" in out
    status = {r["mailbox"]: r for r in as_json(env, "status")}
    assert set(status) == {"ana", "ben"}
    assert status["ana"]["state"] == "ok" and status["ana"]["last_success"]
    assert status["ana"]["kind"] == "local" and status["ana"]["error"] is None
    assert status["ana"]["items"] == 8 and status["ben"]["items"] == 1
    acts = as_json(env, "activities", "--opportunity", "OPP-101")
    assert {a["subject"] for a in acts} >= {"Renewal proposal [OPP-101]", "Acme QBR"}
    for a in acts:
        assert {
            "id",
            "kind",
            "subject",
            "occurred_at",
            "direction",
            "participants",
            "links",
        } <= set(a)
        assert any(lk["type"] == "opportunity" and lk["reason"] for lk in a["links"])
        datetime.fromisoformat(a["occurred_at"])
    by_contact = as_json(env, "activities", "--contact", "EVA@globex.test")
    assert {a["subject"] for a in by_contact} == {
        "Pilot scope",
        "Re: Pilot scope",
        "Globex pilot check-in",
    }
    by_account = as_json(env, "activities", "--account", "globex.test")
    assert {a["subject"] for a in by_account} == {a["subject"] for a in by_contact}
    tasks = as_json(env, "tasks", "--user", "ana@northwind.test")
    assert len(tasks) == 4
    for t in tasks:
        assert {
            "uid",
            "title",
            "due",
            "user",
            "status",
            "rule",
            "activity_id",
            "opportunity_id",
        } <= set(t)
        assert t["status"] == "open" and t["user"] == "ana@northwind.test"
    assert as_json(env, "tasks", "--user", "ben@northwind.test") == []
    table = run(env, "activities").stdout
    assert "Renewal proposal" in table and "(tag)" in table


def test_sync_exits_non_zero_and_names_the_failing_mailbox(env, loaded, tmp_path):
    missing = tmp_path / "gone"
    (missing / "cur").mkdir(parents=True)
    run(
        env,
        "mailbox",
        "add",
        "gone",
        "--kind",
        "local",
        "--user",
        "ben@northwind.test",
        "--maildir",
        str(missing),
    )
    (missing / "cur").rmdir()
    proc = run(env, "sync", check=False)
    assert proc.returncode == 1
    assert "gone: failing:" in proc.stderr and "is not a Maildir" in proc.stderr
    assert "ana: ok" in proc.stdout  # the others were synced all the same
    status = {r["mailbox"]: r for r in as_json(env, "status", code=1)}
    assert status["gone"]["state"] == "failing" and "Maildir" in status["gone"]["error"]
    for sub in ("cur", "new", "tmp"):  # the admin fixes it and asks for a retry
        (missing / sub).mkdir(exist_ok=True)
    run(env, "mailbox", "resume", "gone")
    assert run(env, "sync", "gone").returncode == 0
    assert {r["mailbox"]: r for r in as_json(env, "status")}["gone"]["state"] == "ok"
    assert run(env, "sync", "ana").returncode == 0


def test_an_admin_sets_up_the_crm_and_mailboxes_from_the_command_line(env, tmp_path):
    demo = build_demo(tmp_path / "demo", datetime.now(UTC).replace(microsecond=0))
    assert run(env, "db", "upgrade").returncode == 0
    for kind in ("users", "accounts", "contacts", "opportunities"):
        loaded = run(env, "crm", "load", kind, str(demo.csv[kind]))
        assert f"{kind}: " in loaded.stdout and " created" in loaded.stdout, loaded.stdout
    for name in ("ana", "ben"):
        added = run(
            env, "mailbox", "add", name, "--kind", "local", "--user", f"{name}@northwind.test",
            "--maildir", str(demo.maildirs[name]),
            *(["--calendar", str(demo.calendar)] if name == "ana" else []),
        )  # fmt: skip
        assert f"mailbox {name!r} added for {name}@northwind.test" in added.stdout
    listed = {m["mailbox"]: m for m in as_json(env, "mailbox", "list")}
    assert sorted(listed) == ["ana", "ben"] and listed["ana"]["kind"] == "local"
    out = run(env, "sync").stdout
    assert "ana: ok:" in out and "ben: ok:" in out


def test_mailbox_add_list_remove(env, loaded, tmp_path):
    names = [m["mailbox"] for m in as_json(env, "mailbox", "list")]
    assert names == ["ana", "ben"]
    bad = run(
        env,
        "mailbox",
        "add",
        "x",
        "--kind",
        "local",
        "--user",
        "nobody@northwind.test",
        "--maildir",
        str(loaded["demo"].maildirs["ana"]),
        check=False,
    )
    assert bad.returncode == 1 and "no CRM user 'nobody@northwind.test'" in bad.stderr
    bad = run(
        env,
        "mailbox",
        "add",
        "x",
        "--kind",
        "local",
        "--user",
        "ana@northwind.test",
        "--maildir",
        str(tmp_path),
        check=False,
    )
    assert bad.returncode == 1 and "is not a Maildir" in bad.stderr
    bad = run(
        env,
        "mailbox",
        "add",
        "x",
        "--kind",
        "gmailish",
        "--user",
        "ana@northwind.test",
        check=False,
    )
    assert bad.returncode == 2 and "gmailish" in bad.stderr
    run(env, "mailbox", "remove", "ben")
    assert [m["mailbox"] for m in as_json(env, "mailbox", "list")] == ["ana"]
    gone = run(env, "mailbox", "remove", "ben", check=False)
    assert gone.returncode == 1 and "no mailbox named 'ben'" in gone.stderr


def test_csv_errors_name_line_and_column_and_load_nothing(env, loaded, tmp_path):
    bad = tmp_path / "contacts.csv"
    bad.write_text(
        "emails,name,account\n"
        "zoe@acme.test,Zoe,acme.test\n"
        "not-an-address,Broken,acme.test\n"
        "yan@acme.test,Yan,nowhere.test\n",
        encoding="utf-8",
    )
    proc = run(env, "crm", "load", "contacts", str(bad), check=False)
    assert proc.returncode == 1
    assert "line 3, column 'emails' (value 'not-an-address')" in proc.stderr
    assert "line 4, column 'account' (value 'nowhere.test')" in proc.stderr
    assert "nothing was loaded" in proc.stderr
    run(env, "sync", "ana")
    proc = run(env, "activities", "--contact", "zoe@acme.test", "--json", check=False)
    assert proc.returncode == 2 and "no contact has the address 'zoe@acme.test'" in proc.stderr
    unknown = tmp_path / "users.csv"
    unknown.write_text("email,name,shoe_size\nx@northwind.test,X,42\n")
    proc = run(env, "crm", "load", "users", str(unknown), check=False)
    assert proc.returncode == 1 and "unknown column(s) 'shoe_size'" in proc.stderr


def test_unknown_filters_are_errors_naming_them_and_filters_narrow_the_timeline(env, loaded):
    run(env, "sync")
    for args, named in (
        (("activities", "--opportunity", "OPP-999"), "no opportunity 'OPP-999'"),
        (("activities", "--contact", "No@Acme.test"), "no contact has the address 'no@acme.test'"),
        (("activities", "--account", "nowhere.test"), "no account 'nowhere.test'"),
        (("activities", "--user", "zed@northwind.test"), "no user 'zed@northwind.test'"),
        (("activities", "--mailbox", "zed"), "no mailbox 'zed'"),
        (("activities", "--id", "999999"), "no activity 999999"),
        (("activities", "--until", "31/12/2026"), "--until '31/12/2026' is not a date"),
        (("tasks", "--user", "zed@northwind.test"), "no user 'zed@northwind.test'"),
    ):
        proc = run(env, *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    everything = as_json(env, "activities")
    ana = as_json(env, "activities", "--mailbox", "ana")
    ben = as_json(env, "activities", "--user", "ben@northwind.test")
    assert ana and ben and len(ben) < len(everything)
    assert all("ana" in a["mailboxes"] for a in ana) and all("ben" in a["mailboxes"] for a in ben)
    assert {a["id"] for a in ana} | {a["id"] for a in ben} == {a["id"] for a in everything}
    first = everything[0]
    day = first["occurred_at"][:10]
    on_day = as_json(env, "activities", "--since", day, "--until", day)
    assert first["id"] in {a["id"] for a in on_day}
    assert {a["occurred_at"][:10] for a in on_day} == {day}
    assert [a["id"] for a in as_json(env, "activities", "--id", str(first["id"]))] == [first["id"]]
    rows = list(csv.DictReader(io.StringIO(run(env, "activities", "--csv").stdout)))
    assert [int(r["id"]) for r in rows] == [a["id"] for a in everything]
    assert rows[0]["subject"] == first["subject"] and rows[0]["occurred_at"] == first["occurred_at"]


def test_a_bad_config_is_reported_before_anything_runs(env, tmp_path):
    config = tmp_path / "syncd.toml"
    config.write_text('[sync]\nbody = "everything"\npoll_intervall = 30\n')
    proc = run({**env, "SYNCD_CONFIG": str(config)}, "db", "upgrade", check=False)
    assert proc.returncode == 2
    assert "key 'sync.body': value 'everything' is not allowed" in proc.stderr
    assert "'metadata', 'snippet' or 'full'" in proc.stderr
    assert "unknown key 'sync.poll_intervall'" in proc.stderr
    assert not (tmp_path / "home" / "syncd.db").exists()


def test_commands_refuse_a_database_that_was_not_created(env):
    proc = run(env, "status", check=False)
    assert proc.returncode == 1 and "run 'syncd db upgrade'" in proc.stderr


def test_every_command_has_help():
    runner = CliRunner()
    for args in (
        ["--help"],
        ["db", "upgrade", "--help"],
        ["crm", "load", "--help"],
        ["mailbox", "add", "--help"],
        ["mailbox", "list", "--help"],
        ["mailbox", "remove", "--help"],
        ["sync", "--help"],
        ["run", "--help"],
        ["status", "--help"],
        ["activities", "--help"],
        ["tasks", "--help"],
        ["demo", "--help"],
        ["quarantine", "--help"],
        ["quarantine", "list", "--help"],
        ["quarantine", "show", "--help"],
        ["quarantine", "retry", "--help"],
    ):
        result = runner.invoke(app, args, prog_name="syncd")  # (tests/test_cli_startup.py
        assert result.exit_code == 0, result.output  # runs --help as a process)
        assert "Usage: syncd " in result.output


def test_demo_builds_syncs_and_prints_the_timeline(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SYNCD_HOME", "SYNCD_DATABASE_URL", "SYNCD_CONFIG")
    }
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [*SYNCD, "demo", "--dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Renewal proposal [OPP-101]" in proc.stdout
    assert "Send notes and next steps: Acme QBR" in proc.stdout
    assert (tmp_path / "d" / "state" / "syncd.db").exists()
    assert len(list((tmp_path / "d" / "calendar" / "ana").glob("syncd-*.ics"))) == 4


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def _received(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            return got


def test_daemon_notifies_systemd_picks_up_new_mail_and_stops_on_sigterm(env, loaded, tmp_path):
    sock, path = _notify_socket(tmp_path)
    config = tmp_path / "fast.toml"
    config.write_text("[sync]\npoll_interval = 5\n")
    proc = subprocess.Popen(
        [*SYNCD, "run"],
        env={**env, "NOTIFY_SOCKET": path, "SYNCD_CONFIG": str(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 60
        while not any("STATUS=idle" in m for m in messages):
            assert time.monotonic() < deadline and proc.poll() is None
            messages += _received(sock)
        assert messages[0] == "READY=1"
        assert any(m == "WATCHDOG=1" for m in messages)
        now = datetime.now(UTC).replace(microsecond=0)
        deliver(
            loaded["demo"].maildirs["ana"],
            email_bytes(
                sender="eva@globex.test",
                to=["ana@northwind.test"],
                subject="While you run",
                when=now,
                message_id="live@globex.test",
            ),
            now,
            "live.1.host",
        )
        deadline = time.monotonic() + 30
        while not any(
            a["subject"] == "While you run"
            for a in as_json(env, "activities", "--contact", "eva@globex.test")
        ):
            assert time.monotonic() < deadline, "the daemon did not log the new message"
            messages += _received(sock)  # as systemd does: the socket is always drained
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    assert "STOPPING=1" in _received(sock)
    sock.close()


def _fill(path: str) -> list[socket.socket]:
    """Fill a datagram socket nobody reads until a new sender is refused too."""
    senders = []
    while True:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        senders.append(sender)
        try:
            sender.sendto(b"FILLER=1", path)
        except BlockingIOError:
            return senders
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.sendto(b"FILLER=1", path)


def test_a_notify_socket_nobody_reads_never_keeps_the_daemon_from_stopping(env, loaded, tmp_path):
    sock, path = _notify_socket(tmp_path)
    senders = _fill(path)  # a stuck supervisor: its socket is full and stays full
    proc = subprocess.Popen(
        [*SYNCD, "run"],
        env={**env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not as_json(env, "activities", "--contact", "eva@globex.test"):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not sync with a full socket"
            time.sleep(0.5)
        time.sleep(2)  # a few more watchdog ticks into the full socket
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        for sender in senders:
            sender.close()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert took < 10
    assert "notify socket is full" in stderr and "Traceback" not in stderr
    assert set(_received(sock)) == {"FILLER=1"}  # nothing of the daemon's got in
    sock.close()


def test_status_shows_the_task_writer_apart_from_the_mailbox_and_the_fix(env, loaded, db_url):
    from syncd.crm import mailboxes
    from syncd.crm.database import make_engine, session_factory
    from syncd.crm.models import Mailbox

    run(env, "sync")
    engine = make_engine(db_url)
    try:
        with session_factory(engine).begin() as session:
            ana = session.scalars(select(Mailbox).where(Mailbox.name == "ana")).one()
            mailboxes.mark_writer(
                session,
                ana.id,
                state="failing",
                now=datetime.now(UTC),
                error="cannot write task to the calendar: [Errno 13] Permission denied: '/cal'",
            )
    finally:
        engine.dispose()
    status = {r["mailbox"]: r for r in as_json(env, "status")}
    assert status["ana"]["state"] == "ok" and status["ana"]["error"] is None
    tasks = status["ana"]["tasks"]
    assert tasks["state"] == "failing" and "Permission denied: '/cal'" in tasks["error"]
    assert "give syncd write access" in tasks["fix"] and "syncd sync ana" in tasks["fix"]
    datetime.fromisoformat(tasks["updated_at"])
    assert status["ben"]["tasks"] == {"state": "ok", "error": None, "updated_at": None}
    assert status["ana"]["quarantined"] == 1 and status["ben"]["quarantined"] == 0
    table = run(env, "status").stdout
    assert "tasks" in table and "failing: cannot write task to the calendar" in table
    assert "ana: follow-up tasks are not written: mail is still read and logged" in table
    assert "ana: 1 item could not be read: see 'syncd quarantine list --mailbox ana'" in table


def _edit_mailbox(db_url: str, name: str, **values: Any) -> None:
    """Set columns of a mailbox row as a pass (of this or another process) leaves them."""
    from sqlalchemy import update

    from syncd.crm.database import make_engine, session_factory
    from syncd.crm.models import Mailbox

    engine = make_engine(db_url)
    try:
        with session_factory(engine).begin() as session:
            session.execute(update(Mailbox).where(Mailbox.name == name).values(**values))
    finally:
        engine.dispose()


def test_status_exit_code_is_for_nagios_and_json_adds_lag_and_who_syncs(env, loaded, db_url):
    assert "Nagios" in run(env, "status", "--help").stdout
    before = {r["mailbox"]: r for r in as_json(env, "status")}
    assert before["ana"]["lag_seconds"] is None and before["ana"]["caught_up_at"] is None
    run(env, "sync")
    status = {r["mailbox"]: r for r in as_json(env, "status")}
    for row in status.values():
        caught_up = datetime.fromisoformat(row["caught_up_at"])
        assert caught_up.utcoffset() is not None
        assert row["lag_seconds"] >= 0 and row["lease_owner"] is None
    # a pass of another process holds ana now; ben last read everything 3 hours ago
    now = datetime.now(UTC)
    held = {"lease_owner": "box2:4242:ab12cd34", "lease_until": now + timedelta(minutes=5)}
    _edit_mailbox(db_url, "ana", **held)
    _edit_mailbox(db_url, "ben", caught_up_at=now - timedelta(hours=3))
    table = run(env, "status").stdout  # all ok: exit 0
    assert "ana: being synced now by box2:4242:ab12cd34" in table
    assert "│ 3h " in table
    ana, ben = as_json(env, "status")
    assert ana["lease_owner"] == "box2:4242:ab12cd34" and ben["lag_seconds"] >= 3 * 3600
    # a lease that ran out names nobody; failing: exit 1; parked: 2, which wins
    _edit_mailbox(db_url, "ana", lease_until=now - timedelta(seconds=1))
    _edit_mailbox(db_url, "ben", state="failing", last_error="the server went away")
    ana, ben = as_json(env, "status", code=1)
    assert ana["lease_owner"] is None and ben["state"] == "failing"
    _edit_mailbox(db_url, "ana", state="parked", last_error="run 'syncd mailbox reauth ana'")
    assert run(env, "status", check=False).returncode == 2


def test_quarantine_commands_exit_codes_as_an_admin_sees_them(env, loaded):
    run(env, "sync")
    (entry,) = as_json(env, "quarantine", "list")
    assert entry["mailbox"] == "ana" and entry["reason"]
    shown = run(env, "quarantine", "show", str(entry["id"]))
    assert entry["reason"] in shown.stdout and "--raw FILE" in shown.stdout
    retried = run(env, "quarantine", "retry", str(entry["id"]), check=False)
    assert retried.returncode == 1 and "still unreadable" in retried.stderr
    assert as_json(env, "quarantine", "list")[0]["attempts"] == 2
    bad = run(env, "quarantine", "retry", "999", check=False)
    assert bad.returncode == 2 and "no quarantine entry 999" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_pg_database_url_password_is_never_printed(tmp_path, pg_server):
    url = new_pg_database(pg_server).replace("postgres@", "postgres:s3cret-pw@")
    env = {**os.environ, "SYNCD_HOME": str(tmp_path), "SYNCD_DATABASE_URL": url}
    proc = run(env, "db", "upgrade")
    assert "s3cret-pw" not in proc.stdout + proc.stderr and "***" in proc.stdout
    proc = run(
        {**env, "SYNCD_DATABASE_URL": url.replace("127.0.0.1", "127.0.0.2")}, "status", check=False
    )
    assert proc.returncode == 1 and "s3cret-pw" not in proc.stdout + proc.stderr


def test_fifos_and_links_never_hang_the_daemon_and_show_in_status(env, loaded, tmp_path):
    """Issue 10, finding 6: a FIFO once hung 'syncd run' so that SIGTERM no longer stopped
    it. A FIFO, a link to /dev/zero or to the key, in a Maildir, a calendar folder and at an
    mbox path: the daemon reads everything else, counts them in status, and stops at once."""
    demo = loaded["demo"]
    ana = demo.maildirs["ana"]
    home = Path(env["SYNCD_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    key = home / "secret.key"
    key.write_bytes(b"KEY-SENTINEL-not-to-be-read")
    os.mkfifo(ana / "new" / "9001.fifo.host")
    os.symlink("/dev/zero", ana / "new" / "9002.zero.host")
    os.mkfifo(demo.calendar / "fifo.ics")
    os.symlink(key, demo.calendar / "key.ics")
    archive = tmp_path / "archive.mbox"
    archive.write_bytes(b"From x Mon Jan  1 00:00:00 2024\nFrom: a@acme.test\n\nhi\n")
    run(env, "mailbox", "add", "ana-archive", "--kind", "local", "--user", "ana@northwind.test",
        "--mbox", str(archive))  # fmt: skip
    archive.unlink()
    os.mkfifo(archive)  # replaced once added: the path is now a FIFO
    config = tmp_path / "fast.toml"
    config.write_text("[sync]\npoll_interval = 5\n")
    proc = subprocess.Popen(
        [*SYNCD, "run"],
        env={**env, "SYNCD_CONFIG": str(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            status = {r["mailbox"]: r for r in as_json(env, "status")}
            if (
                status["ana"]["items"]
                and status["ana"]["quarantined"] >= 5
                and status["ana-archive"]["quarantined"] == 1
            ):
                break
            assert time.monotonic() < deadline, f"the daemon did not get past them: {status}"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0 and took < 10, stderr
    assert status["ana"]["state"] == "ok" and status["ana-archive"]["state"] == "ok"
    reasons = {e["provider_id"]: e["reason"] for e in as_json(env, "quarantine", "list")}
    assert "a FIFO" in reasons["maildir:INBOX/9001.fifo.host"]
    assert "a symbolic link" in reasons["maildir:INBOX/9002.zero.host"]
    assert "a FIFO" in reasons["calendar/fifo.ics"]
    assert "a symbolic link" in reasons["calendar/key.ics"]
    assert "a FIFO" in reasons["mbox:archive.mbox"]
    assert "KEY-SENTINEL" not in json.dumps(reasons)
    table = run(env, "status").stdout
    assert "ana-archive: 1 item could not be read: see 'syncd quarantine list" in table


def test_a_damaged_secret_key_is_one_line_naming_the_fix_not_a_traceback(env, loaded, tmp_path):
    """issue 10: `mailbox add` with a bad key crashed with a traceback."""
    home = Path(env["SYNCD_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    key = home / "secret.key"
    key.write_bytes(b"not a fernet key")
    key.chmod(0o600)
    password = tmp_path / "pw"
    password.write_text("hunter2-секрет\n")
    added = run(
        env,
        "mailbox",
        "add",
        "carl",
        "--kind",
        "imap",
        "--user",
        "ana@northwind.test",
        "--host",
        "127.0.0.1",
        "--login",
        "ana",
        "--password-file",
        str(password),
        "--tls",
        "none",
        check=False,
    )
    assert added.returncode == 1, added.stderr
    assert "Traceback" not in added.stderr and "hunter2" not in added.stderr + added.stdout
    assert str(key) in added.stderr
    assert [m["mailbox"] for m in as_json(env, "mailbox", "list")] == ["ana", "ben"]


def test_explain_says_why_an_item_was_logged_skipped_quarantined_or_not_seen(env, loaded):
    from email import message_from_bytes

    inbox = Path(loaded["demo"].maildirs["ana"])
    (inbox / "cur" / "planted:2,S").symlink_to("/etc/hostname")  # quarantined: a link
    run(env, "sync")
    ids = {}
    for path in inbox.glob("**/cur/*"):  # the inbox and its subfolders (.Sent)
        if not path.is_symlink():
            parsed = message_from_bytes(path.read_bytes())
            ids[str(parsed["Subject"])] = str(parsed["Message-ID"])

    logged = as_json(env, "explain", ids["Renewal proposal [OPP-101]"])
    assert logged["verdict"] == "logged" and logged["activity"]["subject"].startswith("Renewal")
    deal = next(lk for lk in logged["activity"]["links"] if lk["type"] == "opportunity")
    assert deal["reason"] == "tag" and "names the deal" in deal["rule"]
    assert {s["mailbox"] for s in logged["activity"]["sightings"]} == {"ana", "ben"}  # Cc: Ben
    by_id = as_json(env, "explain", str(logged["activity"]["id"]))
    assert by_id["activity"] == logged["activity"]
    text = run(env, "explain", ids["Renewal proposal [OPP-101]"]).stdout
    assert ": logged" in text and "linked to opportunity OPP-101" in text

    bulk = as_json(env, "explain", ids["Our November newsletter"].strip("<>").upper())
    assert bulk["verdict"] == "skipped" and bulk["activity"] is None
    (skip,) = bulk["skipped"]
    assert (skip["mailbox"], skip["reason"]) == ("ana", "bulk") and "List-Id" in skip["why"]
    stranger = as_json(env, "explain", ids["Hello"])
    assert stranger["skipped"][0]["reason"] == "no CRM participant"

    (entry,) = [q for q in as_json(env, "quarantine", "list") if "planted" in q["provider_id"]]
    quarantined = as_json(env, "explain", "--mailbox", "ana", "--provider-id", entry["provider_id"])
    assert quarantined["verdict"] == "quarantined"
    assert "symbolic link" in quarantined["quarantined"][0]["reason"]

    unseen = run(env, "explain", "<never-sent@nowhere.test>", check=False)
    assert unseen.returncode == 1 and "not seen" in unseen.stdout and "syncd sync" in unseen.stdout
    for args in (("999999",), ("--mailbox", "zed", "--provider-id", "x"), ("--mailbox", "ana")):
        proc = run(env, "explain", *args, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


def test_link_and_unlink_from_the_command_line(env, loaded):
    run(env, "sync")
    (scope,) = [a for a in as_json(env, "activities") if a["subject"] == "Pilot scope"]
    done = run(env, "link", str(scope["id"]), "--opportunity", "OPP-101").stdout
    assert f"activity {scope['id']} linked to opportunity OPP-101" in done
    (after,) = as_json(env, "activities", "--id", str(scope["id"]))
    deals = {(lk["name"], lk["reason"]) for lk in after["links"] if lk["type"] == "opportunity"}
    assert deals == {("OPP-101 Acme platform renewal", "manual")}
    done = run(env, "unlink", str(scope["id"]), "--account", "globex.test").stdout
    assert "unlinked from account Globex" in done and "not be linked to it again" in done
    gone = run(env, "activity", "delete", str(scope["id"])).stdout
    assert f"activity {scope['id']} deleted ('Pilot scope')" in gone and "not be logged" in gone
    proc = run(env, "activities", "--id", str(scope["id"]), check=False)
    assert proc.returncode == 2 and f"no activity {scope['id']}" in proc.stderr
    explained = run(env, "explain", scope["key"].removeprefix("mid:")).stdout
    assert ": deleted" in explained and "never logged again" in explained
    for args, named in (
        (("activity", "delete", "424242"), "no activity 424242"),
        (("link", "424242", "--opportunity", "OPP-101"), "no activity 424242"),
        (("link", str(scope["id"]), "--opportunity", "OPP-999"), "no opportunity 'OPP-999'"),
        (("unlink", str(scope["id"])), "name one of --opportunity, --contact or --account"),
    ):
        proc = run(env, *args, check=False)
        assert proc.returncode == 2 and named in proc.stderr, proc.stderr


def test_forget_from_the_command_line_shows_first_then_forgets(env, loaded):
    run(env, "sync")
    before = as_json(env, "activities")
    shown = run(env, "forget", "--address", "eva@globex.test", "--dry-run").stdout
    assert "would forget address eva@globex.test" in shown and "nothing was changed" in shown
    assert "contacts removed: 1" in shown
    assert as_json(env, "activities") == before
    done = as_json(env, "forget", "--address", "eva@globex.test")
    assert done["dry_run"] is False and done["contacts_removed"] == ["Eva Novak"]
    assert len(as_json(env, "activities")) == len(before) - len(done["activities_removed"])
    for args in ((), ("--address", "a@b.test", "--domain", "b.test"), ("--domain", "nodot")):
        proc = run(env, "forget", *args, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
