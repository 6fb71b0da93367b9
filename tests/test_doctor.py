"""``syncd doctor``: a healthy setup passes (exit 0) and nothing in the CRM changes; a wrong
password, an unreachable server, a secret.key another user owns or others can read, an old
migration level, a world-readable SQLite database, a Microsoft app without a permission, a
read-only calendar that takes follow-up events each fail, naming the fix. Against real
Dovecot and Radicale and the Google and Microsoft emulators (through the real client
libraries), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from syncd.cli import app
from syncd.config import Settings
from syncd.crm.database import make_engine, upgrade
from syncd.crm.models import Base
from syncd.demo import email_bytes

from . import test_microsoft as ms_test
from .emulators.google import GoogleEmulator
from .emulators.microsoft import MicrosoftEmulator
from .helpers import add_mailbox, sync
from .servers import Dovecot, Radicale, free_port
from .test_gmail import add_gmail, oauth_mailbox
from .test_imap import NOW, add_imap_mailbox, append, dav_calendar, new_login

S = sessionmaker[Session]


def doctor(home: Path, db_url: str, *args: str) -> tuple[Result, list[dict[str, Any]]]:
    env = {"SYNCD_HOME": str(home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "250"}
    result = CliRunner().invoke(app, ["doctor", "--json", *args], env=env)
    return result, json.loads(result.stdout) if result.stdout.startswith("[") else []


def verdicts(checks: list[dict[str, Any]]) -> dict[str, str]:
    return {c["what"]: c["verdict"] for c in checks}


def failing(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["what"]: c for c in checks if c["verdict"] == "fail"}


def snapshot(sessions: S) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every CRM table."""
    with sessions() as session:
        return {
            t.name: sorted(map(tuple, session.execute(select(t)).all()), key=repr)
            for t in Base.metadata.sorted_tables
        }


def imap_with_calendar(
    sessions: S, settings: Settings, imap_server: Dovecot, dav_server: Radicale, name: str
) -> str:
    login = new_login(imap_server, name)
    dav_calendar(dav_server, login, name="Work")
    add_imap_mailbox(
        sessions,
        settings,
        name,
        "ana@northwind.test",
        imap_server,
        login,
        caldav_url=dav_server.url,
    )
    return login


def test_healthy_setup_passes_and_changes_nothing(
    sessions, settings, company, imap_server, dav_server, db_url, tmp_path
):
    login = imap_with_calendar(sessions, settings, imap_server, dav_server, "ana")
    message = email_bytes(
        sender="Carla <carla@acme.test>",
        to=["ana@northwind.test"],
        subject="pilot",
        when=NOW,
        message_id="doctor-1@acme.test",
    )
    append(imap_server, login, "INBOX", message)
    vdir = tmp_path / "ben-calendar"
    vdir.mkdir()
    add_mailbox(
        sessions,
        settings,
        "ben",
        "local",
        "ben@northwind.test",
        "unused",
        {"maildir": str(company.maildirs["ben"]), "calendar": str(vdir)},
    )
    sync(sessions, settings, "ana")
    sync(sessions, settings, "ben")
    before = snapshot(sessions)
    files_before = sorted(p.name for p in settings.home.iterdir())

    result, checks = doctor(settings.home, db_url)

    assert result.exit_code == 0, result.output
    found = verdicts(checks)
    assert "fail" not in found.values(), failing(checks)
    for what in (
        "config",
        "database",
        "secret.key",
        "mailbox 'ana': credentials",
        "mailbox 'ana': IMAP login",
        "mailbox 'ana': CalDAV login",
        "mailbox 'ana': calendar writable",
        "mailbox 'ana': clock (CalDAV Date)",
        "mailbox 'ben': Maildir",
        "mailbox 'ben': calendar writable",
    ):
        assert found[what] == "ok", checks
    writable = next(c for c in checks if c["what"] == "mailbox 'ana': calendar writable")
    assert "nothing written" in writable["detail"]
    assert snapshot(sessions) == before
    assert sorted(p.name for p in settings.home.iterdir()) == files_before
    assert list(vdir.iterdir()) == []  # no scratch object left in the calendar folder

    table = CliRunner().invoke(
        app,
        ["doctor"],
        env={"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "250"},
    )
    assert table.exit_code == 0
    assert "verdict" in table.stdout and "calendar writable" in table.stdout


def test_wrong_password_and_unreachable_server_fail_with_their_fix(
    sessions, settings, company, imap_server, db_url
):
    login = new_login(imap_server, "ana")
    add_imap_mailbox(
        sessions, settings, "ana", "ana@northwind.test", imap_server, login, password="Wr0ng-pass-7"
    )
    gone = Dovecot(imap_server.root, free_port())  # nothing listens there
    add_imap_mailbox(sessions, settings, "ben", "ben@northwind.test", gone, login)
    before = snapshot(sessions)

    result, checks = doctor(settings.home, db_url)

    assert result.exit_code == 1
    failed = failing(checks)
    assert set(failed) == {"mailbox 'ana': IMAP login", "mailbox 'ben': IMAP server"}
    assert "refused the login" in failed["mailbox 'ana': IMAP login"]["detail"]
    assert "Wr0ng-pass-7" not in json.dumps(checks)  # the password is never shown
    assert "syncd mailbox reauth ana" in failed["mailbox 'ana': IMAP login"]["fix"]
    assert "cannot connect" in failed["mailbox 'ben': IMAP server"]["detail"]
    assert "reachable" in failed["mailbox 'ben': IMAP server"]["fix"]
    assert snapshot(sessions) == before


def test_secret_key_of_another_user_or_readable_by_others_fails(
    sessions, settings, company, imap_server, db_url
):
    add_imap_mailbox(
        sessions, settings, "ana", "ana@northwind.test", imap_server, new_login(imap_server, "a")
    )
    key = settings.home / "secret.key"

    key.chmod(0o644)
    result, checks = doctor(settings.home, db_url)
    assert result.exit_code == 1
    assert failing(checks)["secret.key"]["fix"] == f"run 'chmod 600 {key}'"
    key.chmod(0o600)

    if os.geteuid() == 0:  # as root: the key made by a root 'mailbox add' for another user
        nobody = pwd.getpwnam("nobody").pw_uid
        os.chown(key, nobody, -1)
        result, checks = doctor(settings.home, db_url)
        problem = failing(checks)["secret.key"]
        assert "belongs to nobody" in problem["detail"]
        assert "runuser -u syncd" in problem["fix"] and "chown root" in problem["fix"]
        os.chown(key, 0, -1)
    else:  # as a user: a key this user cannot read
        key.chmod(0o000)
        result, checks = doctor(settings.home, db_url)
        assert "cannot read" in failing(checks)["secret.key"]["detail"]
        key.chmod(0o600)
    assert result.exit_code == 1

    key.unlink()  # lost: the stored secret cannot be opened
    result, checks = doctor(settings.home, db_url)
    failed = failing(checks)
    assert "restore it from the backup" in failed["secret.key"]["fix"]
    assert "syncd mailbox reauth ana" in failed["mailbox 'ana': credentials"]["fix"]
    assert not key.exists()  # doctor never makes a key


def test_old_migration_level_fails_naming_db_upgrade(db_url, settings):
    engine = make_engine(db_url)
    upgrade(engine, "0004")
    engine.dispose()

    result, checks = doctor(settings.home, db_url)

    assert result.exit_code == 1
    problem = failing(checks)["database"]
    assert "is at revision 0004" in problem["detail"]
    assert "syncd db upgrade" in problem["fix"]
    engine = make_engine(db_url)
    meta = MetaData()
    meta.reflect(engine)
    engine.dispose()
    assert "skips" not in meta.tables  # nothing was migrated


@pytest.mark.parametrize("what", ["file", "folder"])
def test_world_readable_sqlite_database_fails(tmp_path, what):
    """File modes are SQLite's alone: PostgreSQL keeps its files itself."""
    home = tmp_path / "state"
    url = f"sqlite:///{home / 'syncd.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    target = home / "syncd.db" if what == "file" else home
    target.chmod(0o644 if what == "file" else 0o755)

    result, checks = doctor(home, url)

    assert result.exit_code == 1
    problem = failing(checks)[f"database {what} mode"]
    fix = f"run 'chmod 600 {target}'" if what == "file" else f"run 'chmod 700 {target}'"
    assert problem["fix"] == fix


def test_missing_sqlite_database_fails_and_is_not_created(tmp_path):
    home = tmp_path / "state"
    home.mkdir(mode=0o700)
    result, checks = doctor(home, f"sqlite:///{home / 'syncd.db'}")
    assert result.exit_code == 1
    assert "syncd db upgrade" in failing(checks)["database"]["fix"]
    assert not (home / "syncd.db").exists()


def test_gmail_through_the_emulator(sessions, settings, company, db_url):
    """The real Google client against the emulator: the sign-in, the scopes its token
    endpoint reports, the calendar by its scope, the clock by the API's Date header; a
    revoked refresh token fails, naming the reauth."""
    emulator = GoogleEmulator()
    emulator.add_client("client-1", "secret-1")
    emulator.add_user("ana@northwind.test")
    emulator.add_user("ben@northwind.test")
    base = emulator.start()
    try:
        oauth_mailbox(sessions, settings, (emulator, base))
        add_gmail(
            sessions,
            settings,
            "ben",
            "ben@northwind.test",
            {"refresh_token": "revoked", "client_secret": "secret-1"},
            mode="oauth",
            client_id="client-1",
            token_uri=base + "token",
            api_endpoint=base,
        )
        before = snapshot(sessions)

        result, checks = doctor(settings.home, db_url)
    finally:
        emulator.stop()

    found = verdicts(checks)
    for what in ("sign-in", "scopes", "calendar writable", "clock (Gmail API Date)"):
        key = "Google sign-in" if what == "sign-in" else what
        assert found[f"mailbox 'ana': {key}"] == "ok", checks
    assert result.exit_code == 1
    problem = failing(checks)["mailbox 'ben': Google sign-in"]
    assert problem["fix"] == "run 'syncd mailbox reauth ben'"
    assert snapshot(sessions) == before


def microsoft_emulator() -> MicrosoftEmulator:
    emulator = MicrosoftEmulator()
    emulator.add_app(ms_test.TENANT, "app-1", secret="secret-1")
    emulator.add_app(
        ms_test.TENANT, "mail-only", secret="secret-2", permissions=frozenset({"Mail.Read"})
    )
    for user in (ms_test.ANA, ms_test.BEN):
        emulator.add_user(user)
    emulator.start()
    return emulator


MS_CHECKS = (
    "Microsoft sign-in",
    "mail (Mail.Read)",
    "calendar (Calendars.ReadWrite)",
    "To Do (Tasks.ReadWrite.All)",
    "calendar writable",
    "clock (Graph Date)",
)


def test_microsoft_healthy_mailbox_passes_and_writes_nothing(sessions, settings, company, db_url):
    """The real msal and O365 session against the Graph emulator: a token, each permission
    by a read Graph answers, the calendar's canEdit, the clock by Graph's Date header; nothing
    written in the CRM or the mailbox."""
    emulator = microsoft_emulator()
    try:
        ms_test.deliver(emulator, 1)
        ms_test.add_mailbox(sessions, settings, emulator)
        before = snapshot(sessions)
        lists = dict(emulator.users[ms_test.ANA].todo_lists)

        result, checks = doctor(settings.home, db_url)

        assert emulator.events(ms_test.ANA) == []
        assert emulator.users[ms_test.ANA].todo_lists == lists
    finally:
        emulator.stop()

    assert result.exit_code == 0, result.output
    found = verdicts(checks)
    for what in MS_CHECKS:
        assert found[f"mailbox 'ana': {what}"] == "ok", checks
    assert snapshot(sessions) == before


def test_microsoft_missing_permission_and_read_only_calendar_fail_naming_them(
    sessions, settings, company, db_url
):
    """An app granted only Mail.Read fails on the calendar and To Do, naming the permission
    and the consent to give; a read-only calendar fails when follow-ups are written as events,
    and is fine when they go to To Do; a refused client secret fails the sign-in, naming the
    reauth."""
    emulator = microsoft_emulator()
    try:
        emulator.users[ms_test.BEN].calendar_can_edit = False
        ms_test.add_mailbox(sessions, settings, emulator, client_id="mail-only", secret="secret-2")
        ms_test.add_mailbox(sessions, settings, emulator, "ben", ms_test.BEN, tasks="events")
        ms_test.add_mailbox(sessions, settings, emulator, "ben-todo", ms_test.BEN)
        ms_test.add_mailbox(sessions, settings, emulator, "ben-old", ms_test.BEN, secret="old")

        result, checks = doctor(settings.home, db_url)
    finally:
        emulator.stop()

    assert result.exit_code == 1
    found, failed = verdicts(checks), failing(checks)
    assert found["mailbox 'ana': mail (Mail.Read)"] == "ok"
    for what, permission in (("calendar", "Calendars.ReadWrite"), ("To Do", "Tasks.ReadWrite.All")):
        problem = failed[f"mailbox 'ana': {what} ({permission})"]
        assert f"{permission} is not granted" in problem["detail"]
        assert problem["fix"].startswith(f"grant the application permission {permission} ")
        assert "mail-only" in problem["fix"]
    assert "mailbox 'ana': calendar writable" not in found  # the calendar could not be read
    read_only = failed["mailbox 'ben': calendar writable"]
    assert "canEdit false" in read_only["detail"]
    assert "--tasks todo" in read_only["fix"]
    assert found["mailbox 'ben': calendar (Calendars.ReadWrite)"] == "ok"
    assert found["mailbox 'ben-todo': calendar writable"] == "ok"
    for what in MS_CHECKS:
        assert found[f"mailbox 'ben-todo': {what}"] == "ok", checks
    refused = failed["mailbox 'ben-old': Microsoft sign-in"]
    assert "invalid_client" in refused["detail"] and "old" not in refused["detail"].split()
    assert refused["fix"] == "run 'syncd mailbox reauth ben-old'"
