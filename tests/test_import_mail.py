"""``syncd import mail --since DATE`` (issue 12): past mail beyond the first sync's window is
logged through the daemon's own pipeline, with no follow-up task for it, under cursors of
its own (the daemon's are untouched), once however often it runs; the mailbox's state is
left to the daemon. Through the Gmail emulator (a first sync reads 90 days), on SQLite and
PostgreSQL, by the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from typer.testing import CliRunner

from syncd.cli import app
from syncd.crm.models import Activity, Mailbox, SourceCursor, Task

from . import test_gmail as gmail_test
from .helpers import sync
from .test_gmail import ANA, deliver, oauth_mailbox

google = gmail_test.google  # the Gmail emulator's fixture

DAY = 24


def activities(sessions) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(Activity.subject)))


def test_past_mail_is_logged_once_without_tasks_and_the_daemons_cursor_stays(
    sessions, settings, company, google, db_url, monkeypatch
):
    emulator, _ = google
    for i, age in enumerate((2, 200 * DAY, 400 * DAY, 900 * DAY)):
        deliver(emulator, ANA, age, subject=f"note {i}", sender="carla@acme.test")
    oauth_mailbox(sessions, settings, google)
    sync(sessions, settings, "ana")
    assert activities(sessions) == {"note 0"}  # the first sync reads 90 days
    with sessions() as session:
        before = dict(session.execute(select(SourceCursor.source, SourceCursor.value)).all())
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == "ana"))
        assert mailbox is not None
        state = (mailbox.last_attempt, mailbox.last_success, mailbox.caught_up_at)
    with sessions() as session:
        tasks_before = session.scalar(select(func.count()).select_from(Task))

    monkeypatch.setenv("SYNCD_HOME", str(settings.home))
    monkeypatch.setenv("SYNCD_DATABASE_URL", db_url)
    since = (datetime.now(UTC) - timedelta(days=500)).date().isoformat()
    runner = CliRunner()
    done = runner.invoke(app, ["import", "mail", "--mailbox", "ana", "--since", since, "--json"])
    assert done.exit_code == 0, done.output
    (row,) = json.loads(done.stdout)
    assert (row["mailbox"], row["state"], row["new_activities"]) == ("ana", "ok", 2)
    assert activities(sessions) == {"note 0", "note 1", "note 2"}  # not the 900-day-old one
    with sessions() as session:
        cursors = dict(session.execute(select(SourceCursor.source, SourceCursor.value)).all())
        assert {k: v for k, v in cursors.items() if not k.startswith("past:")} == before
        assert any(k.startswith("past:") for k in cursors)
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == "ana"))
        assert mailbox is not None
        assert (mailbox.last_attempt, mailbox.last_success, mailbox.caught_up_at) == state
        assert session.scalar(select(func.count()).select_from(Task)) == tasks_before

    again = runner.invoke(app, ["import", "mail", "--mailbox", "ana", "--since", since, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)[0]["new_activities"] == 0
    bad = runner.invoke(app, ["import", "mail", "--all", "--since", "last year"])
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
