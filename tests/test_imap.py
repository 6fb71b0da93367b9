"""IMAP mailboxes against a real Dovecot, CalDAV against a real Radicale; the CRM on SQLite and
on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import icalendar
import pytest
from imapclient import IMAPClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.crm import queries
from syncd.crm.models import Activity, Sighting
from syncd.demo import email_bytes, event_ics
from syncd.secrets import Secret, SecretBox
from syncd.sync import sync_mailbox

from .helpers import add_mailbox, sync
from .servers import Dovecot, Radicale, ServerMissing, TcpProxy, dovecot, radicale

S = sessionmaker[Session]
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="session")
def imap_server() -> Iterator[Dovecot]:
    try:
        with dovecot() as server:
            yield server
    except ServerMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def dav_server() -> Iterator[Radicale]:
    with radicale() as server:
        yield server


def new_login(server: Dovecot, prefix: str) -> str:
    return server.login(prefix)


def imap(server: Dovecot, login: str) -> IMAPClient:
    client = IMAPClient(server.host, port=server.port, ssl=False)
    client.login(login, Dovecot.PASSWORD)
    return client


def append(server: Dovecot, login: str, folder: str, *messages: bytes) -> None:
    client = imap(server, login)
    for m in messages:
        client.append(folder, m, flags=(b"\\Seen",))
    client.logout()


def dav_calendar(dav_server: Radicale, login: str, **kw: Any) -> Any:
    """A new calendar on Radicale for this login (same password as its IMAP account)."""
    import caldav

    dav_server.add_user(login, Dovecot.PASSWORD)
    client = caldav.DAVClient(
        url=dav_server.url,
        username=login,
        password=Dovecot.PASSWORD,
        enable_rfc6764=False,
        require_tls=False,
    )
    return client.principal().make_calendar(**kw)


def add_imap_mailbox(
    sessions: S,
    settings: Settings,
    name: str,
    user: str,
    server: Dovecot,
    login: str,
    password: str | None = None,
    **extra: Any,
) -> None:
    values = {
        "host": server.host,
        "port": server.port,
        "tls": "none",
        "login": login,
        "retries": 4,
        **extra,
    }
    add_mailbox(sessions, settings, name, "imap", user, password or Dovecot.PASSWORD, values)


def subjects(sessions: S) -> list[str]:
    with sessions() as session:
        return sorted(r["subject"] for r in queries.timeline(session))


def msg(
    i: int, sender: str = "Carla <carla@acme.test>", to: str = "ana@northwind.test", **kw: Any
) -> bytes:
    return email_bytes(
        sender=sender,
        to=[to],
        subject=kw.pop("subject", f"deal note {i}"),
        when=NOW - timedelta(hours=i),
        message_id=f"imap-{i}@acme.test",
        **kw,
    )


def test_first_incremental_and_unchanged_syncs(sessions, settings, company, imap_server):
    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", *(msg(i) for i in range(5)))
    append(
        imap_server,
        login,
        "Sent",
        msg(10, sender="ana@northwind.test", to="Eva <eva@globex.test>", subject="pilot plan"),
    )
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    first = sync(sessions, settings, "ana")
    assert first.new_activities == 6
    assert "pilot plan" in subjects(sessions)
    append(imap_server, login, "INBOX", msg(20))
    second = sync(sessions, settings, "ana")
    assert (second.new_activities, second.new_sightings) == (1, 1)
    quiet = sync(sessions, settings, "ana")
    assert (quiet.new_activities, quiet.new_sightings, quiet.quarantined) == (0, 0, 0)
    # syncd only PEEKs: the unread mail it read is still unread
    append(imap_server, login, "INBOX", msg(21))
    client = imap(imap_server, login)
    client.select_folder("INBOX")
    client.remove_flags(client.search(["ALL"]), [b"\\Seen"])
    sync(sessions, settings, "ana")
    assert client.search(["SEEN"]) == []
    client.logout()


def test_a_changed_uidvalidity_reads_the_folder_again_without_duplicates(
    sessions, settings, company, imap_server
):
    login = new_login(imap_server, "ana")
    client = imap(imap_server, login)
    client.create_folder("Deals")
    client.logout()
    append(imap_server, login, "Deals", *(msg(i) for i in range(4)))
    add_imap_mailbox(
        sessions, settings, "ana", "ana@northwind.test", imap_server, login, folders=["Deals"]
    )
    sync(sessions, settings, "ana")
    client = imap(imap_server, login)
    before = client.folder_status("Deals", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    client.delete_folder("Deals")  # the server rebuilds the folder: same mail, new UIDVALIDITY
    client.create_folder("Deals")
    for m in [msg(0), msg(1), msg(2), msg(3), msg(4)]:
        client.append("Deals", m)
    after = client.folder_status("Deals", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    client.logout()
    assert after != before
    report = sync(sessions, settings, "ana")
    assert report.new_activities == 1  # only msg(4) is new
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 5
        assert session.scalar(select(func.count()).select_from(Sighting)) == 5


def test_a_wrong_password_parks_only_that_mailbox_until_reauth(
    sessions, settings, company, imap_server
):
    ana, ben = new_login(imap_server, "ana"), new_login(imap_server, "ben")
    append(imap_server, ana, "INBOX", msg(1))
    append(imap_server, ben, "INBOX", msg(2, to="ben@northwind.test"))
    add_imap_mailbox(
        sessions, settings, "ana", "ana@northwind.test", imap_server, ana, password="wrong"
    )
    add_imap_mailbox(sessions, settings, "ben", "ben@northwind.test", imap_server, ben)
    bad = sync_mailbox(sessions, settings, "ana")
    assert bad.state == "parked"
    assert "refused the login" in (bad.error or "") and "syncd mailbox reauth ana" in bad.error
    assert "wrong" not in bad.error
    sync(sessions, settings, "ben")
    assert subjects(sessions) == ["deal note 2"]
    with sessions.begin() as session:
        from syncd.crm.models import Mailbox

        mailbox = session.scalars(select(Mailbox).where(Mailbox.name == "ana")).one()
        mailbox.secret = SecretBox(settings.home).encrypt(Secret(Dovecot.PASSWORD))
    sync(sessions, settings, "ana")
    assert subjects(sessions) == ["deal note 1", "deal note 2"]


def test_a_connection_dropped_mid_fetch_is_retried_and_nothing_is_lost(
    sessions, settings, company, imap_server
):
    login = new_login(imap_server, "ana")
    messages = [msg(i, body="x" * 3000) for i in range(60)]
    append(imap_server, login, "INBOX", *messages)
    proxy = TcpProxy(imap_server.port, cut_after=60_000)
    small = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"batch_size": 10, "body": "full"})}
    )
    add_imap_mailbox(
        sessions, small, "ana", "ana@northwind.test", imap_server, login, port=proxy.port
    )
    report = sync(sessions, small, "ana")
    proxy.close()
    assert proxy.cuts == 1  # the connection really was cut mid-fetch
    assert report.new_activities == 60
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Sighting)) == 60


def test_an_invitation_by_mail_is_a_meeting(sessions, settings, company, imap_server):
    login = new_login(imap_server, "ana")
    start = (NOW - timedelta(days=1)).replace(hour=10, minute=0, second=0)
    invite = email_bytes(
        sender="Carla <carla@acme.test>",
        to=["ana@northwind.test"],
        subject="Invitation: Acme review",
        when=NOW - timedelta(days=3),
        message_id="inv-1@acme.test",
        calendar=event_ics(
            "review-1@acme.test",
            "Acme review",
            start,
            60,
            ("carla@acme.test", "Carla"),
            [("ana@northwind.test", "Ana")],
            "REQUEST",
        ),
    )
    append(imap_server, login, "INBOX", invite)
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    sync(sessions, settings, "ana")  # body policy "snippet": the invitation is fetched whole
    with sessions() as session:
        rows = queries.timeline(session)
    assert [(r["kind"], r["subject"]) for r in rows] == [("meeting", "Acme review")]


def test_one_email_in_two_imap_mailboxes_is_one_activity(sessions, settings, company, imap_server):
    ana, ben = new_login(imap_server, "ana"), new_login(imap_server, "ben")
    shared = email_bytes(
        sender="Ana <ana@northwind.test>",
        to=["Carla <carla@acme.test>"],
        cc=["ben@northwind.test"],
        subject="Renewal [OPP-101]",
        when=NOW,
        message_id="shared-1@northwind.test",
    )
    append(imap_server, ana, "Sent", shared)
    append(imap_server, ben, "INBOX", shared)
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, ana)
    add_imap_mailbox(sessions, settings, "ben", "ben@northwind.test", imap_server, ben)
    sync(sessions, settings, "ana")
    sync(sessions, settings, "ben")
    with sessions() as session:
        (row,) = queries.timeline(session)
    assert row["mailboxes"] == ["ana", "ben"]


def test_caldav_meetings_and_tasks_written_back_and_completed(
    sessions, settings, company, imap_server, dav_server
):
    login = new_login(imap_server, "ana")
    cal = dav_calendar(dav_server, login, name="work")
    start = (NOW - timedelta(days=1)).replace(hour=14, minute=0, second=0)
    cal.add_event(
        event_ics(
            "call-1@northwind.test",
            "Globex call",
            start,
            30,
            ("ana@northwind.test", "Ana"),
            [("eva@globex.test", "Eva")],
        ).decode()
    )
    add_imap_mailbox(
        sessions,
        settings,
        "ana",
        "ana@northwind.test",
        imap_server,
        login,
        caldav_url=dav_server.url,
    )
    first = sync(sessions, settings, "ana")
    assert first.tasks_written == 1
    assert subjects(sessions) == ["Globex call"]
    todos = [t for t in cal.todos() if "X-SYNCD-TASK" in t.data]
    assert len(todos) == 1 and "Send notes and next steps: Globex call" in todos[0].data
    again = sync(sessions, settings, "ana")  # reads its own task back: no meeting, no rewrite
    assert (again.new_activities, again.tasks_written) == (0, 0)
    assert len([t for t in cal.todos() if "X-SYNCD-TASK" in t.data]) == 1
    # the user ticks the task off in their calendar app
    todo = todos[0]
    parsed = icalendar.Calendar.from_ical(todo.data)
    parsed.walk("VTODO")[0]["STATUS"] = "COMPLETED"
    todo.data = parsed.to_ical().decode()
    todo.save()
    sync(sessions, settings, "ana")
    with sessions() as session:
        (task,) = queries.task_report(session)
    assert (task["status"], task["resolution"]) == ("done", "calendar")
    assert subjects(sessions) == ["Globex call"]


def test_idle_logs_new_inbox_mail_long_before_the_next_poll(
    sessions, settings, company, imap_server, db_url, tmp_path
):
    import os
    import signal
    import subprocess
    import sys
    import time

    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", msg(1))
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login, idle=True)
    config = tmp_path / "syncd.toml"
    config.write_text("[sync]\npoll_interval = 3600\n")  # only IDLE can bring mail in time
    env = {
        **os.environ,
        "SYNCD_DATABASE_URL": db_url,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_CONFIG": str(config),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while subjects(sessions) != ["deal note 1"]:  # the first poll
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.0)  # IDLE is listening by now
        append(imap_server, login, "INBOX", msg(2))
        deadline = time.monotonic() + 20
        while "deal note 2" not in subjects(sessions):
            assert proc.poll() is None
            assert time.monotonic() < deadline, "IDLE did not bring the new mail in"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert code == 0, proc.stderr.read() if proc.stderr else ""


def test_xoauth2_logs_in_with_an_access_token_and_a_revoked_one_parks(
    sessions, settings, company, imap_server
):
    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", msg(1))
    add_imap_mailbox(
        sessions,
        settings,
        "ana",
        "ana@northwind.test",
        imap_server,
        login,
        password=Dovecot.token(login),
        auth="xoauth2",
    )
    assert sync(sessions, settings, "ana").new_activities == 1
    with sessions.begin() as session:
        from syncd.crm.models import Mailbox

        mailbox = session.scalars(select(Mailbox).where(Mailbox.name == "ana")).one()
        mailbox.secret = SecretBox(settings.home).encrypt(Secret("ya29.revoked"))
    report = sync_mailbox(sessions, settings, "ana")
    assert report.state == "parked" and "syncd mailbox reauth ana" in (report.error or "")
    assert "ya29.revoked" not in (report.error or "")


def test_cli_adds_an_imap_mailbox_without_a_password_on_the_command_line(
    company, imap_server, db_url, settings, tmp_path
):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SYNCD_DATABASE_URL": db_url, "SYNCD_HOME": str(settings.home)}

    def syncd(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncd", *args],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", msg(1))
    base = [
        "mailbox",
        "add",
        "ana",
        "--kind",
        "imap",
        "--user",
        "ana@northwind.test",
        "--login",
        login,
    ]
    clear = syncd(
        *base, "--host", "mail.example.com", "--tls", "none", "--password-env", "PW", PW="x"
    )
    assert clear.returncode == 1 and "allowed only for a loopback host" in clear.stderr
    nothing = syncd(*base, "--host", "127.0.0.1", "--port", str(imap_server.port), "--tls", "none")
    assert nothing.returncode == 1 and "--password-file FILE or --password-env VAR" in (
        nothing.stderr
    )
    secret_file = tmp_path / "pw"
    secret_file.write_text(Dovecot.PASSWORD + "\n")
    added = syncd(
        *base,
        "--host",
        "127.0.0.1",
        "--port",
        str(imap_server.port),
        "--tls",
        "none",
        "--password-file",
        str(secret_file),
    )
    assert added.returncode == 0, added.stderr
    assert syncd("sync", "ana").returncode == 0
    status = json.loads(syncd("status", "--json").stdout)
    assert status[0]["state"] == "ok" and status[0]["items"] == 1
    listing = syncd("mailbox", "list", "--json").stdout
    assert Dovecot.PASSWORD not in listing
    # a changed password: the mailbox parks, then reauth fixes it
    wrong = syncd("mailbox", "reauth", "ana", "--password-env", "PW", PW="not-it")
    assert wrong.returncode == 0
    assert syncd("sync", "ana").returncode == 1
    status = json.loads(syncd("status", "--json").stdout)
    assert status[0]["state"] == "parked" and "reauth" in status[0]["error"]
    assert (
        syncd("mailbox", "reauth", "ana", "--password-env", "PW", PW=Dovecot.PASSWORD).returncode
        == 0
    )
    assert syncd("sync", "ana").returncode == 0


def test_a_calendar_without_vtodo_gets_tasks_as_events_never_logged_as_meetings(
    sessions, settings, company, imap_server, dav_server
):
    login = new_login(imap_server, "ana")
    cal = dav_calendar(
        dav_server, login, name="events only", supported_calendar_component_set=["VEVENT"]
    )
    start = (NOW - timedelta(days=1)).replace(hour=9, minute=0, second=0)
    cal.add_event(
        event_ics(
            "qbr-9@northwind.test",
            "Acme QBR",
            start,
            60,
            ("ana@northwind.test", "Ana"),
            [("dan@acme.test", "Dan")],
        ).decode()
    )
    add_imap_mailbox(
        sessions,
        settings,
        "ana",
        "ana@northwind.test",
        imap_server,
        login,
        caldav_url=dav_server.url,
    )
    assert sync(sessions, settings, "ana").tasks_written == 1
    events = [e.data for e in cal.events()]
    assert sum("X-SYNCD-TASK" in e for e in events) == 1
    assert any("Send notes and next steps: Acme QBR" in e for e in events)
    again = sync(sessions, settings, "ana")
    assert again.new_activities == 0 and subjects(sessions) == ["Acme QBR"]


def test_an_unreadable_imap_message_is_quarantined_and_the_folder_moves_on(
    sessions, settings, company, imap_server
):
    login = new_login(imap_server, "ana")
    append(
        imap_server, login, "INBOX", b"Subject: nobody sent this\r\n\r\nno addresses\r\n", msg(1)
    )
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    report = sync(sessions, settings, "ana")
    assert (report.new_activities, report.quarantined) == (1, 1)
    with sessions() as session:
        from syncd.crm.models import QuarantineEntry

        (entry,) = session.scalars(select(QuarantineEntry)).all()
    assert entry.provider_id.startswith("INBOX/") and "no From, To, Cc or Bcc" in entry.reason


def test_extra_folders_are_read_and_excluded_ones_never(sessions, settings, company, imap_server):
    login = new_login(imap_server, "ana")
    client = imap(imap_server, login)
    client.create_folder("Deals")
    client.create_folder("Private")
    client.logout()
    append(imap_server, login, "Deals", msg(1, subject="in deals"))
    append(imap_server, login, "Private", msg(2, subject="in private"))
    append(imap_server, login, "Trash", msg(3, subject="in trash"))
    add_imap_mailbox(
        sessions,
        settings,
        "ana",
        "ana@northwind.test",
        imap_server,
        login,
        folders=["Deals", "Private", "Trash"],
        excluded_folders=["Private"],
    )
    sync(sessions, settings, "ana")
    assert subjects(sessions) == ["in deals"]  # Trash is excluded by the config's defaults
