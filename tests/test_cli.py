"""The ``syncd`` command as an admin runs it: real processes, exit codes, JSON, messages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from syncd.demo import build_demo, deliver, email_bytes

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


def as_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(run(env, *args, "--json").stdout)


@pytest.fixture
def loaded(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    demo = build_demo(tmp_path / "demo", datetime.now(UTC).replace(microsecond=0))
    run(env, "db", "upgrade")
    for kind in ("users", "accounts", "contacts", "opportunities"):
        run(env, "crm", "load", kind, str(demo.csv[kind]))
    run(
        env,
        "mailbox",
        "add",
        "ana",
        "--kind",
        "local",
        "--user",
        "ana@northwind.test",
        "--maildir",
        str(demo.maildirs["ana"]),
        "--calendar",
        str(demo.calendar),
    )
    run(
        env,
        "mailbox",
        "add",
        "ben",
        "--kind",
        "local",
        "--user",
        "ben@northwind.test",
        "--maildir",
        str(demo.maildirs["ben"]),
    )
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
    status = {r["mailbox"]: r for r in as_json(env, "status")}
    assert status["gone"]["state"] == "failing" and "Maildir" in status["gone"]["error"]
    for sub in ("cur", "new", "tmp"):  # the admin fixes it and asks for a retry
        (missing / sub).mkdir(exist_ok=True)
    run(env, "mailbox", "resume", "gone")
    assert run(env, "sync", "gone").returncode == 0
    assert {r["mailbox"]: r for r in as_json(env, "status")}["gone"]["state"] == "ok"
    assert run(env, "sync", "ana").returncode == 0


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
    assert as_json(env, "activities", "--contact", "zoe@acme.test") == []
    unknown = tmp_path / "users.csv"
    unknown.write_text("email,name,shoe_size\nx@northwind.test,X,42\n")
    proc = run(env, "crm", "load", "users", str(unknown), check=False)
    assert proc.returncode == 1 and "unknown column(s) 'shoe_size'" in proc.stderr


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


def test_every_command_has_help(env):
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
    ):
        proc = run(env, *args)
        assert "Usage:" in proc.stdout


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
        while not as_json(env, "activities", "--contact", "eva@globex.test") or not any(
            a["subject"] == "While you run"
            for a in as_json(env, "activities", "--contact", "eva@globex.test")
        ):
            assert time.monotonic() < deadline, "the daemon did not log the new message"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    assert "STOPPING=1" in _received(sock)


def test_pg_database_url_password_is_never_printed(tmp_path, pg_server):
    url = new_pg_database(pg_server).replace("postgres@", "postgres:s3cret-pw@")
    env = {**os.environ, "SYNCD_HOME": str(tmp_path), "SYNCD_DATABASE_URL": url}
    proc = run(env, "db", "upgrade")
    assert "s3cret-pw" not in proc.stdout + proc.stderr and "***" in proc.stdout
    proc = run(
        {**env, "SYNCD_DATABASE_URL": url.replace("127.0.0.1", "127.0.0.2")}, "status", check=False
    )
    assert proc.returncode == 1 and "s3cret-pw" not in proc.stdout + proc.stderr
