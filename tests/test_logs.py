"""Logs as journald and a log shipper get them: one line per event, naming the mailbox it
is about; ``--log-format json`` (or ``SYNCD_LOG_FORMAT=json``) one JSON object a line;
credentials in a URL masked."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest

from syncd import logs
from syncd.demo import DemoCompany, add_local_mailbox, deliver, email_bytes

SYNCD = [sys.executable, "-m", "syncd"]


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_json_events_carry_time_level_logger_message_and_mailbox(capsys):
    logs.setup("json")
    log = logging.getLogger("syncd.test")
    try:
        log.warning("mailbox %r failing: %s", "ana", "IMAP said no")
        log.info("a message about %s", "nothing", extra={"mailbox": "ben"})
        with logs.about("carl"):
            log.warning("item %r not logged: %s", "uid-7", "too big")
        log.info("syncd daemon started")
        log.error("refused by https://ana:hunter2@dav.example.com/cal:\nsecond line")
    finally:
        logs.setup("text")
    events = [json.loads(line) for line in stderr_lines(capsys)]
    assert len(events) == 5
    for e in events:
        assert {"time", "level", "logger", "message"} <= set(e)
        assert datetime.fromisoformat(e["time"]).utcoffset() is not None
        assert e["logger"] == "syncd.test"
    assert events[0]["mailbox"] == "ana" and events[0]["level"] == "WARNING"
    assert events[0]["message"] == "mailbox 'ana' failing: IMAP said no"
    assert events[1]["mailbox"] == "ben"
    assert events[2]["mailbox"] == "carl" and events[2]["message"].startswith("item 'uid-7'")
    assert "mailbox" not in events[3]
    assert "hunter2" not in events[4]["message"] and "https://***@dav" in events[4]["message"]


def test_text_is_one_line_an_event_naming_the_mailbox(capsys):
    logs.setup("text")
    log = logging.getLogger("syncd.test")
    log.warning("mailbox %r failing: %s", "ana", "a\nmulti-line\nanswer")
    with logs.about("carl"):
        log.warning("item %r not logged", "uid-7")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("mailbox %r: unexpected error", "dora")
    log.info("see imaps://carl:s3cret@mail.example.com")
    got = stderr_lines(capsys)
    assert got[0] == "WARNING syncd.test: mailbox 'ana' failing: a\\nmulti-line\\nanswer"
    assert got[1] == "WARNING syncd.test: mailbox 'carl': item 'uid-7' not logged"
    assert got[2].startswith("ERROR syncd.test: mailbox 'dora': unexpected error\\nTraceback")
    assert "ValueError: boom" in got[2]
    assert got[3] == "INFO syncd.test: see imaps://***@mail.example.com"
    assert len(got) == 4


GLOBALLY_UNIQUE_TZIDS = (
    Path(__file__).parent
    / "corpus/calendar/icalendar/calendars__issue_313_globally_unique_tzid.ics"
)


def test_a_library_warning_is_one_event_naming_its_kind_library_and_mailbox(capsys, monkeypatch):
    from icalendar.error import GloballyUniqueTZIDGuessed

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back after
    logs.setup("text")
    guessed = "Timezone '/mozilla.org/20070129_1/America/New_York' is a globally unique TZID"
    site = "/usr/lib/python3/site-packages"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with logs.about("ana"):  # a warning of a kind of a library's own
            warnings.warn(GloballyUniqueTZIDGuessed(guessed), stacklevel=1)
        # warnings of Python's own kinds: from a library, from syncd, from anywhere else
        for path in (f"{site}/caldav/davclient.py", logs.__file__, "/srv/tool/helper.py"):
            warnings.warn_explicit("careful\nnow", UserWarning, path, 12)
    got = stderr_lines(capsys)
    assert got == [
        "WARNING py.warnings: mailbox 'ana': GloballyUniqueTZIDGuessed (icalendar): " + guessed,
        "WARNING py.warnings: UserWarning (caldav): careful\\nnow",
        "WARNING py.warnings: UserWarning (syncd): careful\\nnow",
        "WARNING py.warnings: UserWarning (helper): careful\\nnow",
    ]  # one line each: no path, no line of source


def test_a_sync_says_a_calendars_guessed_time_zone_in_one_line_naming_the_mailbox(
    tmp_path: Path, db_url: str, settings, sessions, company: DemoCompany
):
    calendar = tmp_path / "calendar"
    calendar.mkdir()
    (calendar / "meetings.ics").write_bytes(GLOBALLY_UNIQUE_TZIDS.read_bytes())
    add_local_mailbox(
        sessions,
        "ana",
        "ana@northwind.test",
        maildir=str(company.maildirs["ana"]),
        calendar=str(calendar),
        calendar_past_days=3650,
    )
    env = {**os.environ, "SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url}
    proc = subprocess.run([*SYNCD, "sync"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    guessed = [line for line in proc.stderr.splitlines() if "GloballyUniqueTZIDGuessed" in line]
    assert len(guessed) == 3  # one a time zone, each on a line of its own
    for line in guessed:
        assert line.startswith(
            "WARNING py.warnings: mailbox 'ana': GloballyUniqueTZIDGuessed (icalendar): "
        )
    # not Python's way: the library's file and the line of its source that warned
    assert "site-packages" not in proc.stderr and "from_ical(" not in proc.stderr


def test_a_sync_logs_json_lines_each_naming_its_mailbox(
    tmp_path: Path, db_url: str, settings, sessions, company: DemoCompany
):
    now = datetime.now(UTC).replace(microsecond=0)
    events_ics = b"".join(
        b"BEGIN:VEVENT\r\nUID:e%d\r\nDTSTART:20300101T100000Z\r\nEND:VEVENT\r\n" % i
        for i in range(12)
    )
    invitation = email_bytes(
        sender="eva@globex.test",
        to=["ana@northwind.test"],
        subject="Too many meetings",
        when=now,
        message_id="many@globex.test",
        calendar=b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n" + events_ics + b"END:VCALENDAR\r\n",
    )
    deliver(company.maildirs["ana"], invitation, now, "many.1.host")
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(company.maildirs["ana"]))
    add_local_mailbox(sessions, "gone", "ben@northwind.test", maildir=str(tmp_path / "nowhere"))
    config = tmp_path / "syncd.toml"
    config.write_text("[limits]\ncalendar_objects = 10\n")
    env = {
        **os.environ,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_DATABASE_URL": db_url,
        "SYNCD_LOG_FORMAT": "json",
        "SYNCD_CONFIG": str(config),
    }
    proc = subprocess.run([*SYNCD, "sync"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    logged = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in logged]
    assert events
    by_mailbox = {e.get("mailbox") for e in events}
    assert {"ana", "gone"} <= by_mailbox
    (failing,) = [e for e in events if e.get("mailbox") == "gone" and e["level"] == "WARNING"]
    assert "is not a Maildir" in failing["message"]
    # the connector's event about an invitation it left out: its message does not name
    # the mailbox, the event does (the pass's mailbox)
    (left_out,) = [e for e in events if "invitation is left out" in e["message"]]
    assert left_out["mailbox"] == "ana" and "ana" not in left_out["message"]
    # the command's own lines are not log events: one per failed mailbox, plain
    assert "gone: failing:" in proc.stderr
    flag = subprocess.run(
        [*SYNCD, "--log-format", "json", "sync", "gone"],
        env={**env, "SYNCD_LOG_FORMAT": "text"},  # the option wins
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert flag.returncode == 1
    first = flag.stderr.splitlines()[0]
    assert json.loads(first)["mailbox"] == "gone"


def test_an_unknown_log_format_is_refused_without_a_traceback(tmp_path):
    env = {**os.environ, "SYNCD_HOME": str(tmp_path), "SYNCD_LOG_FORMAT": "xml"}
    proc = subprocess.run([*SYNCD, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr
