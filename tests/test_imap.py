"""IMAP mailboxes against a real Dovecot, CalDAV against a real Radicale; the CRM on SQLite and
on PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import icalendar
import pytest
from imapclient import IMAPClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import LimitSettings, Settings
from syncd.connectors.base import AuthError, MailboxSpec
from syncd.connectors.imap import ImapSettings
from syncd.connectors.imap.connector import ImapConnector
from syncd.crm import reports
from syncd.crm.models import Activity, QuarantineEntry, Sighting
from syncd.demo import email_bytes, event_ics
from syncd.secrets import Secret, SecretBox
from syncd.sync import sync_mailbox

from . import servers
from .helpers import add_mailbox, sync
from .servers import Dovecot, Radicale, ServerMissing, TcpProxy, dovecot

S = sessionmaker[Session]
NOW = datetime.now(UTC).replace(microsecond=0)


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
    """A new calendar on Radicale for this login (same password as its IMAP login)."""
    from caldav.davclient import DAVClient

    dav_server.add_user(login, Dovecot.PASSWORD)
    client = DAVClient(
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
        return sorted(r["subject"] for r in reports.activity_report(session))


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
    error = bad.error or ""
    assert bad.state == "parked"
    assert "refused the login" in error and "syncd mailbox reauth ana" in error
    assert "wrong" not in error
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
        rows = reports.activity_report(session)
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
        (row,) = reports.activity_report(session)
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
        (task,) = reports.task_report(session)
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
    assert clear.returncode == 2 and "allowed only for a loopback host" in clear.stderr
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


# --- issue 10: logins whatever the password holds; sizes at read time ---------------------

KiB = 1024


@pytest.fixture(scope="module")
def imap_passwords() -> Iterator[Dovecot]:
    """A Dovecot whose users can have passwords of their own (a passwd-file, read before
    the shared static one): ``users`` below writes them."""
    original = servers._DOVECOT_CONF
    static = "passdb {{\n  driver = static"
    own = (
        "passdb {{\n  driver = passwd-file\n  mechanisms = plain login\n"
        "  args = scheme=PLAIN username_format=%u {root}/users\n}}\n"
    )
    assert static in original
    servers._DOVECOT_CONF = original.replace(static, own + static)
    try:
        with contextlib.ExitStack() as stack:
            try:
                server = stack.enter_context(dovecot())
            finally:
                servers._DOVECOT_CONF = original  # read once, when it starts
            users = server.root / "users"
            users.write_text("")
            users.chmod(0o644)
            yield server
    except ServerMissing as exc:
        pytest.fail(str(exc))


def user_with_password(server: Dovecot, prefix: str, password: str) -> str:
    login = new_login(server, prefix)
    users = server.root / "users"
    with users.open("a", encoding="utf-8") as fh:
        fh.write(f"{login}:{{PLAIN}}{password}::::::\n")
    # Dovecot reads the file again when its mtime changes, and looks at most once a second
    later = max(time.time(), users.stat().st_mtime) + 1
    os.utime(users, (later, later))
    time.sleep(1.1)
    return login


@pytest.mark.parametrize(
    "password",
    ["pässwörd-ñ-日本", 'pa"ss\\word', 'mïx"ed\\-ü'],
    ids=["beyond-ascii", "quote-and-backslash", "both"],
)
def test_a_password_with_quotes_backslashes_or_beyond_ascii_logs_in(
    sessions, settings, company, imap_passwords, password
):
    login = user_with_password(imap_passwords, "ana", password)
    append(imap_passwords, login, "INBOX", msg(1, subject="for a special password"))
    add_imap_mailbox(
        sessions, settings, "ana", "ana@northwind.test", imap_passwords, login, password
    )
    report = sync(sessions, settings, "ana")
    assert report.new_activities == 1 and subjects(sessions) == ["for a special password"]


def imap_quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def leaked(text: str, password: str, login: str) -> list[str]:
    """Every form of the password a server's echo or a library's message could show."""
    forms = {password, imap_quoted(password)}
    forms |= {repr(f.encode())[2:-1] for f in set(forms)}
    forms |= {repr(f)[1:-1] for f in set(forms)}
    forms.add(base64.b64encode(f"\0{login}\0{password}".encode()).decode())
    forms |= {"ng-p", "w\\xc3\\xb6rd", "wörd"}  # pieces of the password below
    return sorted(f for f in forms if f in text)


class EchoingServer:
    """An IMAP server that refuses every login and quotes what it got in its answer, as
    some servers and proxies do: LOGIN with a NO (or a BAD, for ``bad``), and AUTHENTICATE
    PLAIN with its base64 and its decoded text."""

    def __init__(self, bad: bool = False, plain: bool = True) -> None:
        self.bad = bad
        self.caps = b"IMAP4rev1 AUTH=PLAIN" if plain else b"IMAP4rev1"
        self.host = "127.0.0.1"
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                conn.sendall(b"* OK [CAPABILITY " + self.caps + b"] echo ready\r\n")
                while line := lines.readline():
                    tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                    command = rest.split(b" ", 1)[0].upper()
                    if command == b"CAPABILITY":
                        caps = b"* CAPABILITY " + self.caps + b"\r\n"
                        conn.sendall(caps + tag + b" OK done\r\n")
                    elif command == b"LOGIN":
                        word = b" BAD Error in IMAP command: " if self.bad else b" NO refused: "
                        conn.sendall(tag + word + rest + b"\r\n")
                    elif command == b"AUTHENTICATE":
                        conn.sendall(b"+ \r\n")
                        answer = lines.readline().strip()
                        said = base64.b64decode(answer).replace(b"\0", b" ")
                        conn.sendall(tag + b" NO refused " + answer + b" = " + said + b"\r\n")
                    elif command == b"LOGOUT":
                        conn.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
                        break
                    else:
                        conn.sendall(tag + b" BAD unknown\r\n")

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("bad", [False, True], ids=["NO", "BAD"])
@pytest.mark.parametrize(
    "password", ['wr"o\\ng-pässwörd', 'wr"o\\ng-password'], ids=["non-ascii", "ascii"]
)
def test_a_refused_password_is_masked_even_when_the_server_echoes_it(
    sessions, settings, company, caplog, bad, password
):
    server = EchoingServer(bad=bad)
    login = "ana-login"
    try:
        spec = MailboxSpec(
            "ana",
            "imap",
            "ana@northwind.test",
            ImapSettings(host="127.0.0.1", port=server.port, tls="none", login=login),
            secret=Secret(password),
        )
        with pytest.raises(AuthError) as refused:
            ImapConnector(spec).folders()
        message = str(refused.value)
        assert "refused" in message and "***" in message  # the echo came, masked
        assert leaked(message, password, login) == []
        add_imap_mailbox(
            sessions,
            settings,
            "ana",
            "ana@northwind.test",
            server,  # type: ignore[arg-type]  # a host and a port, as a Dovecot
            login,
            password,
        )
        with caplog.at_level(logging.DEBUG):
            report = sync_mailbox(sessions, settings, "ana")
        assert report.state == "parked" and "syncd mailbox reauth ana" in (report.error or "")
        with sessions() as session:
            (status,) = reports.status_report(session)
        for text in (report.error or "", status["error"] or "", caplog.text):
            assert leaked(text, password, login) == []
    finally:
        server.close()


def test_a_password_beyond_ascii_without_authenticate_plain_says_why():
    server = EchoingServer(plain=False)
    password = "wr-o-ng-pässwörd"
    try:
        spec = MailboxSpec(
            "ana",
            "imap",
            "ana@northwind.test",
            ImapSettings(host="127.0.0.1", port=server.port, tls="none", login="ana"),
            secret=Secret(password),
        )
        with pytest.raises(AuthError) as refused:
            ImapConnector(spec).folders()
    finally:
        server.close()
    message = str(refused.value)
    assert "beyond ASCII" in message and "no AUTHENTICATE PLAIN" in message
    assert "syncd mailbox reauth ana" in message and leaked(message, password, "ana") == []


def test_a_wrong_special_password_on_dovecot_parks_without_showing_it(
    sessions, settings, company, imap_passwords
):
    login = user_with_password(imap_passwords, "ana", "right-pässwörd")
    wrong = 'wr"o\\ng-pässwörd'
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_passwords, login, wrong)
    report = sync_mailbox(sessions, settings, "ana")
    assert report.state == "parked" and "AUTHENTICATIONFAILED" in (report.error or "")
    assert leaked(report.error or "", wrong, login) == []


class CountingProxy(TcpProxy):
    """A TcpProxy that counts the bytes the server sends."""

    def __init__(self, target_port: int) -> None:
        self.received = 0
        super().__init__(target_port)

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        if not from_server:
            super()._pipe(src, dst, from_server)
            return
        try:
            while data := src.recv(65536):
                self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.mark.parametrize("policy", ["full", "metadata"])
def test_a_message_over_the_size_limit_is_quarantined_without_fetching_its_body(
    sessions, settings, company, imap_server, policy
):
    login = new_login(imap_server, "ana")
    big = msg(2, subject="the big one", body="B" * 400 * KiB)
    append(imap_server, login, "INBOX", msg(3, subject="small before"), big, msg(1))
    proxy = CountingProxy(imap_server.port)
    try:
        add_imap_mailbox(
            sessions, settings, "ana", "ana@northwind.test", imap_server, login, port=proxy.port
        )
        with sessions.begin() as session:
            from syncd.crm.models import Mailbox

            box = session.scalars(select(Mailbox)).one()
            box.settings = {**box.settings, "body": policy}
        limited = settings.model_copy(update={"limits": LimitSettings(message_bytes=64 * KiB)})
        report = sync(sessions, limited, "ana")
    finally:
        proxy.close()
    assert subjects(sessions) == ["deal note 1", "small before"]
    assert report.quarantined == 1
    with sessions() as session:
        (entry,) = session.scalars(select(QuarantineEntry)).all()
    assert entry.provider_id.startswith("INBOX/") and entry.raw is None
    assert "over the limit of 65536 bytes (limits.message_bytes): not read" in entry.reason
    assert proxy.received < 100 * KiB  # the 400 KB body never crossed the wire


def test_imap_batches_are_cut_by_bytes(sessions, settings, company, imap_server):
    login = new_login(imap_server, "ana")
    append(
        imap_server,
        login,
        "INBOX",
        *(msg(i, subject=f"bulky {i}", body="b" * 300 * KiB) for i in range(7)),
    )
    spec = MailboxSpec(
        "ana",
        "imap",
        "ana@northwind.test",
        ImapSettings(host=imap_server.host, port=imap_server.port, tls="none", login=login),
        body_policy="full",
        secret=Secret(Dovecot.PASSWORD),
        limits=LimitSettings(batch_bytes=1024 * KiB),
    )
    connector = ImapConnector(spec)
    try:
        (inbox,) = [s for s in connector.mail_sources() if s.name == "imap:INBOX"]
        batches = list(inbox.changes(None))
    finally:
        connector.close()
    sizes = [len(b.items) for b in batches]
    assert sum(sizes) == 7 and max(sizes) <= 3 and len(batches) >= 3  # 3 x 300 KB < 1 MB
    add_imap_mailbox(sessions, settings, "ana", "ana@northwind.test", imap_server, login)
    budget = settings.model_copy(update={"limits": LimitSettings(batch_bytes=1024 * KiB)})
    sync(sessions, budget, "ana")
    assert subjects(sessions) == sorted(f"bulky {i}" for i in range(7))
