"""``mailbox add --since DATE`` for every kind (issue 12): a local or IMAP mailbox's first
sync no longer reads everything. Older mail is left out at every pass as "outside the
window" (recorded, so the gap audit counts it as seen); IMAP does not even fetch it (SEARCH
SINCE). On SQLite and PostgreSQL, through the command line, a real Maildir and Dovecot."""

from __future__ import annotations

import mailbox as stdlib_mailbox
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from typer.testing import CliRunner

from syncd.cli import app
from syncd.crm.models import Activity, Mailbox, SkippedItem
from syncd.demo import email_bytes

from .helpers import sync
from .servers import Dovecot
from .test_audit import audit, folders
from .test_imap import imap, new_login

NOW = datetime.now(UTC).replace(microsecond=0)


def mail(i: int, days_old: int) -> bytes:
    return email_bytes(
        sender="Carla <carla@acme.test>",
        to=["ana@northwind.test"],
        subject=f"note {i}",
        when=NOW - timedelta(days=days_old),
        message_id=f"s{i}@acme.test",
    )


def cli(settings: Any, db_url: str, *args: str, **more: str) -> Any:
    env = {"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "250"}
    return CliRunner().invoke(app, list(args), env={**env, **more})


def subjects(sessions: Any) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Activity.subject)))


def skipped(sessions: Any) -> dict[str, str]:
    with sessions() as session:
        return dict(session.execute(select(SkippedItem.provider_id, SkippedItem.reason)).all())


def test_a_local_mailbox_added_with_since_leaves_older_mail_out(
    sessions, settings, company, db_url, tmp_path
):
    box = stdlib_mailbox.Maildir(tmp_path / "Maildir", create=True)
    keys = [box.add(mail(i, age)) for i, age in enumerate((3, 40, 400))]
    time.sleep(1.1)  # a pass's cursor stops short of files changed in its last second
    since = (NOW - timedelta(days=100)).date().isoformat()
    added = cli(
        settings, db_url, "mailbox", "add", "ana2", "--kind", "local",
        "--user", "ana@northwind.test", "--maildir", str(tmp_path / "Maildir"), "--since", since,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    with sessions() as session:
        row = session.scalar(select(Mailbox).where(Mailbox.name == "ana2"))
        assert row is not None and row.settings["since_days"] == 100
    report = sync(sessions, settings, "ana2")
    assert report.excluded["outside the window"] == 1
    assert subjects(sessions) >= {"note 0", "note 1"} and "note 2" not in subjects(sessions)
    assert skipped(sessions)[f"maildir:INBOX/{keys[2]}"] == "outside the window"
    result, found = audit(settings, db_url, "ana2")
    assert result.exit_code == 0, result.output
    inbox = folders(found, "ana2")["maildir:INBOX"]
    assert (inbox["missing"], inbox["skipped"]) == (0, 1)
    bad = cli(
        settings, db_url, "mailbox", "add", "x", "--kind", "local", "--user", "ana@northwind.test",
        "--maildir", str(tmp_path / "Maildir"), "--since", "yesterday",
    )  # fmt: skip
    assert bad.exit_code == 2 and "--since" in bad.output


def test_an_imap_mailbox_added_with_since_searches_since_and_audits_without_a_gap(
    sessions, settings, company, db_url, imap_server
):
    login = new_login(imap_server, "ana")
    client = imap(imap_server, login)
    for i, age in enumerate((2, 30, 300, 900)):
        client.append("INBOX", mail(i, age), flags=(b"\\Seen",), msg_time=NOW - timedelta(days=age))
    client.logout()
    since = (NOW - timedelta(days=60)).date().isoformat()
    args = ["mailbox", "add", "ana-imap", "--kind", "imap", "--user", "ana@northwind.test"]
    args += ["--host", imap_server.host, "--port", str(imap_server.port), "--tls", "none"]
    args += ["--login", login, "--password-env", "IMAP_PW", "--since", since]
    added = cli(settings, db_url, *args, IMAP_PW=Dovecot.PASSWORD)
    assert added.exit_code == 0, added.output
    report = sync(sessions, settings, "ana-imap")
    assert subjects(sessions) >= {"note 0", "note 1"}
    assert not {"note 2", "note 3"} & subjects(sessions)  # never fetched: SEARCH SINCE
    assert report.excluded["outside the window"] == 0
    result, found = audit(settings, db_url, "ana-imap")
    assert result.exit_code == 0, result.output
    assert folders(found, "ana-imap")["imap:INBOX"]["missing"] == 0
