"""Issue 10, finding 4 and its Low ones: no endpoint a mailbox is given may carry a password
or token in clear (plain http only to this machine, as ``--tls none``), and credentials never
travel or are stored in a URL. Checked at ``mailbox add`` and again when a connector opens a
row edited by hand; against a real Radicale and Dovecot; the CRM on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import ConnectorError
from syncd.connectors.transport import check_url
from syncd.crm.models import Mailbox
from syncd.crm.reports import activity_report
from syncd.demo import event_ics
from syncd.sync import sync_mailbox

from .helpers import add_mailbox
from .servers import Dovecot, TcpProxy

S = sessionmaker[Session]
SYNCD = [sys.executable, "-m", "syncd"]
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def env(settings: Settings, db_url: str, company: Any) -> dict[str, str]:
    """The CLI's environment, on a CRM database with the demo company's records."""
    return {
        **os.environ,
        "SYNCD_HOME": str(settings.home),
        "SYNCD_DATABASE_URL": db_url,
        "COLUMNS": "250",
    }


def syncd(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SYNCD, *args],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def add(
    env: dict[str, str], kind: str, *args: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return syncd(
        env, "mailbox", "add", "ana", "--kind", kind, "--user", "ana@northwind.test", *args, **extra
    )


def mailboxes(sessions: S) -> dict[str, dict[str, Any]]:
    with sessions() as session:
        return {m.name: dict(m.settings) for m in session.scalars(select(Mailbox))}


def local_address() -> str | None:
    """An address of this machine that is not loopback (a server there is reachable, but
    syncd must treat it as any remote host), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


@contextlib.contextmanager
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A TCP listener on a non-loopback address of this machine: ``http://HOST:PORT/`` a
    mailbox may be pointed at, to see whether syncd connects at all."""
    # without an address but loopback, 0.0.0.0: syncd must treat it as remote (it is not
    # loopback), yet a connection to it would reach this listener, so none may arrive
    address = local_address() or "0.0.0.0"
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield f"{address}:{sock.getsockname()[1]}", sock
    finally:
        sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


# --- mailbox add ----------------------------------------------------------------------------


def test_mailbox_add_refuses_plain_http_to_another_host_for_every_endpoint(env, sessions, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("imap-pw\n")
    secret = tmp_path / "app.secret"
    secret.write_text("client-secret\n")
    refused = {
        "--caldav": add(
            env,
            "imap",
            "--host",
            "mail.example.com",
            "--password-file",
            str(pw),
            "--caldav",
            "http://dav.example.com/dav/",
        ),
        "--api-endpoint": add(
            env,
            "gmail",
            "--service-account",
            str(tmp_path / "none.json"),
            "--api-endpoint",
            "http://gmail.example.com/",
        ),
        "--graph-url": add(
            env,
            "microsoft",
            "--tenant",
            "t",
            "--client-id",
            "c",
            "--client-secret-file",
            str(secret),
            "--graph-url",
            "http://graph.example.com/",
        ),
        "--authority": add(
            env,
            "microsoft",
            "--tenant",
            "t",
            "--client-id",
            "c",
            "--device-code",
            "--authority",
            "http://login.example.com",
        ),
    }
    for option, proc in refused.items():
        assert proc.returncode == 2, (option, proc.stderr)
        assert option in proc.stderr and "in clear" in proc.stderr, proc.stderr
        assert "allowed only for a loopback host (127.0.0.1, ::1, localhost)" in proc.stderr
        assert "use 'https://" in proc.stderr and "Traceback" not in proc.stderr
    assert "'http://dav.example.com/dav/'" in refused["--caldav"].stderr
    assert "use 'https://dav.example.com/dav/'" in refused["--caldav"].stderr
    assert "client-secret" not in refused["--graph-url"].stderr
    assert "ana" not in mailboxes(sessions)
    # this machine over plain http is allowed, as --tls none is
    ok = add(
        env,
        "imap",
        "--host",
        "127.0.0.1",
        "--tls",
        "none",
        "--password-file",
        str(pw),
        "--caldav",
        "http://127.0.0.1:5232/",
    )
    assert ok.returncode == 0, ok.stderr
    assert mailboxes(sessions)["ana"]["caldav_url"] == "http://127.0.0.1:5232/"


def test_oauth_client_and_key_files_naming_a_plain_http_endpoint_are_refused(
    env, sessions, tmp_path
):
    client = tmp_path / "client.json"
    client.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": "id-1",
                    "client_secret": "oauth-client-secret",
                    "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                    "token_uri": "http://oauth.example.com/token",
                }
            }
        )
    )
    proc = add(env, "gmail", "--oauth-client", str(client))  # would wait for a consent
    assert proc.returncode == 2 and "token_uri 'http://oauth.example.com/token'" in proc.stderr
    assert "Open this URL" not in proc.stderr and "oauth-client-secret" not in proc.stderr
    key = tmp_path / "sa.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "private_key": "-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----\n",
                "client_email": "sa@example.iam.gserviceaccount.com",
                "token_uri": "http://oauth.example.com/token",
            }
        )
    )
    proc = add(env, "gmail", "--service-account", str(key))
    assert proc.returncode == 2 and "token_uri" in proc.stderr and "PRIVATE" not in proc.stderr
    assert "ana" not in mailboxes(sessions)


def test_a_url_holding_a_password_is_refused_and_a_login_is_kept_apart(env, sessions, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("imap-pw\n")
    base = ["--host", "mail.example.com", "--password-file", str(pw)]
    proc = add(env, "imap", *base, "--caldav", "https://ana:s3cr%40t-in-url@dav.example.com/dav/")
    assert proc.returncode == 2
    assert "s3cr" not in proc.stdout + proc.stderr and "t-in-url" not in proc.stderr
    assert "'https://***@dav.example.com/dav/'" in proc.stderr
    assert "give --caldav 'https://dav.example.com/dav/'" in proc.stderr
    assert "--password-file" in proc.stderr  # where the password goes instead
    other = add(env, "gmail", "--service-account", "x", "--api-endpoint", "https://u:p@g.test/")
    assert other.returncode == 2 and "u:p@" not in other.stderr
    assert "ana" not in mailboxes(sessions)
    # a login alone is no secret: it becomes the CalDAV login, and the URL is stored bare
    ok = add(env, "imap", *base, "--caldav", "https://ana.dav@dav.example.com/dav/")
    assert ok.returncode == 0, ok.stderr
    stored = mailboxes(sessions)["ana"]
    assert stored["caldav_url"] == "https://dav.example.com/dav/"
    assert stored["caldav_login"] == "ana.dav"


def test_rows_of_an_older_syncd_with_a_password_in_a_url_are_masked_when_shown(env, sessions):
    add_mailbox(
        sessions,
        Settings(home=Path(env["SYNCD_HOME"])),
        "ana",
        "imap",
        "ana@northwind.test",
        "imap-pw",
        {
            "host": "mail.example.com",
            "caldav_url": "https://ana:OLD-PW-in-url@dav.example.com/",
            "folders": ["https://x:OLD-PW-in-list@y.test/"],
        },
    )
    with sessions.begin() as session:
        box = session.scalars(select(Mailbox)).one()
        box.state, box.last_error = "failing", "CalDAV https://ana:OLD-PW-in-url@dav/ refused"
    listing = syncd(env, "mailbox", "list", "--json")
    shown = json.loads(listing.stdout)[0]["settings"]
    assert shown["caldav_url"] == "https://***@dav.example.com/"
    table = syncd(env, "mailbox", "list").stdout
    status = syncd(env, "status", "--json").stdout
    table_status = syncd(env, "status").stdout
    for text in (listing.stdout, table, status, table_status):
        assert "OLD-PW" not in text
    assert "https://***@dav/" in json.loads(status)[0]["error"]


# --- when a connector opens (a row edited by hand) ------------------------------------------


def test_a_row_edited_by_hand_is_refused_before_anything_is_sent(sessions, settings, company):
    with listener() as (where, sock):
        rows: dict[str, tuple[str, dict[str, Any]]] = {
            "cal": ("imap", {"host": "127.0.0.1", "tls": "none", "caldav_url": f"http://{where}/"}),
            "imap": (
                "imap",
                {"host": where.split(":")[0], "port": int(where.split(":")[1]), "tls": "none"},
            ),
            "gmail": ("gmail", {"mode": "service_account", "api_endpoint": f"http://{where}/"}),
            "graph": (
                "microsoft",
                {"tenant": "t", "client_id": "c", "mode": "app", "graph_url": f"http://{where}/"},
            ),
            "login": (
                "microsoft",
                {"tenant": "t", "client_id": "c", "mode": "app", "authority": f"http://{where}"},
            ),
        }
        for name, (kind, values) in rows.items():
            add_mailbox(sessions, settings, name, kind, "ana@northwind.test", "the-secret", values)
        key = {"type": "service_account", "private_key": "k", "token_uri": f"http://{where}/t"}
        add_mailbox(
            sessions,
            settings,
            "sa",
            "gmail",
            "ana@northwind.test",
            json.dumps(key),
            {"mode": "service_account"},
        )
        reports = {name: sync_mailbox(sessions, settings, name) for name in [*rows, "sa"]}
        assert connections(sock) == 0  # not one byte left for that host
    for name, report in reports.items():
        assert report.state == "failing", (name, report.error)
        error = report.error or ""
        assert "in clear" in error and "loopback" in error, (name, error)
        assert "the-secret" not in error and "'private_key'" not in error
    assert f"--caldav 'http://{where}/'" in (reports["cal"].error or "")
    assert "--tls none" in (reports["imap"].error or "")
    assert "token_uri" in (reports["sa"].error or "")


# --- a real Radicale: credentials in a stored URL never travel ------------------------------


class RecordingProxy(TcpProxy):
    """A TcpProxy that keeps every byte the client sends."""

    def __init__(self, target_port: int) -> None:
        self.sent = bytearray()
        super().__init__(target_port)

    def _count(self, data: bytes) -> None:
        self.sent += data


def test_a_password_in_a_stored_caldav_url_is_never_sent_nor_shown(
    sessions, settings, company, dav_server, imap_server
):
    from caldav.davclient import DAVClient

    login = imap_server.login("ana")
    dav_server.add_user(login, Dovecot.PASSWORD)
    client = DAVClient(
        url=dav_server.url, username=login, password=Dovecot.PASSWORD, enable_rfc6764=False
    )
    cal = client.principal().make_calendar(name="work")
    start = (NOW - timedelta(days=1)).replace(hour=10, minute=0, second=0)
    cal.add_event(
        event_ics(
            "url-creds@northwind.test",
            "Globex sync",
            start,
            30,
            ("ana@northwind.test", "Ana"),
            [("eva@globex.test", "Eva")],
        ).decode()
    )
    proxy = RecordingProxy(int(dav_server.url.rsplit(":", 1)[1].strip("/")))
    try:
        add_mailbox(
            sessions,
            settings,
            "ana",
            "imap",
            "ana@northwind.test",
            Dovecot.PASSWORD,
            {
                "host": imap_server.host,
                "port": imap_server.port,
                "tls": "none",
                "login": login,
                # as an older syncd stored it: credentials in the URL, in clear
                "caldav_url": f"http://{login}:OLD-PW-in-url@127.0.0.1:{proxy.port}/",
            },
        )
        report = sync_mailbox(sessions, settings, "ana")
    finally:
        proxy.close()
    assert report.ok, report.error
    with sessions() as session:
        assert "Globex sync" in {r["subject"] for r in activity_report(session)}
    sent = bytes(proxy.sent)
    assert b"PROPFIND" in sent or b"REPORT" in sent
    assert b"OLD-PW-in-url" not in sent
    assert base64.b64encode(f"{login}:OLD-PW-in-url".encode()) not in sent
    assert base64.b64encode(f"{login}:{Dovecot.PASSWORD}".encode()) in sent  # the stored one


def test_an_endpoint_with_a_secret_in_its_query_is_refused_without_showing_it():
    for url in (
        "https://dav.example.test/cal/?token=s3cr3t",
        "https://graph.example.test/v1.0?api_key=s3cr3t&x=1",
        "https://ana:s3cr3t@dav.example.test/?access_token=s3cr3t",
    ):
        with pytest.raises(ConnectorError) as refused:
            check_url(url, "--caldav")
        assert "s3cr3t" not in str(refused.value) and "in its query" in str(refused.value)
    check_url("https://dav.example.test/cal/?view=week", "--caldav")  # no secret: fine
