"""Connector kinds: the registry is the only list, each kind's typed settings drive the
``mailbox add`` options and their checks, and the shared conventions (batching, retry,
meeting identity) hold once for every kind."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from syncd.batching import by_size, chunked, with_cursor_on_last
from syncd.cli import app
from syncd.config import Settings
from syncd.connectors import registry
from syncd.connectors.base import ConnectorError, MailboxSpec
from syncd.connectors.ical import read_calendar, task_to_ical
from syncd.connectors.imap import ImapSettings
from syncd.connectors.kind import MAX_SINCE_DAYS, Kind, KindSettings, since_days, typed
from syncd.connectors.meetings import meeting_key, participants, recurrence_id
from syncd.connectors.memory.connector import world
from syncd.connectors.options import options, settings_doc
from syncd.connectors.retry import MAX_WAIT, header_retry_after, retry_after, retrying
from syncd.connectors.taskevents import event_title, is_task_uid, read_back
from syncd.crm import mailboxes
from syncd.crm.models import Activity, Mailbox, User
from syncd.items import Cursor, MailItem, Participant, TaskItem, TaskState
from syncd.sync import sync_mailbox

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


# --- the registry ----------------------------------------------------------------------------


def test_every_kind_is_one_package_whose_parts_the_registry_can_load():
    assert registry.kinds() == ["gmail", "imap", "local", "memory", "microsoft"]
    assert registry.kinds(hidden=False) == ["gmail", "imap", "local", "microsoft"]
    for name in registry.kinds():
        kind = registry.kind(name)
        assert kind.name == name and issubclass(kind.settings, KindSettings)
        assert callable(kind.load("open"))
        for part in ("add", "reauth", "watch"):
            assert getattr(kind, part) is None or callable(kind.load(part))
    for fmt, target in registry.formats().items():
        module, _, attr = target.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), fmt
    assert set(registry.formats()) == {"rfc822", "ical", "graph-message", "graph-event"}


def test_an_unknown_kind_names_the_kinds_there_are():
    with pytest.raises(ConnectorError, match="unknown kind 'exchange'; known kinds: gmail, imap"):
        registry.kind("exchange")


def test_no_module_outside_the_connectors_imports_a_kind_or_a_provider_library():
    kinds = "|".join(registry.KINDS)
    provider = re.compile(
        rf"^\s*(from|import) (syncd\.connectors\.({kinds})\b|imapclient|caldav|msal|O365|"
        r"googleapiclient|google\.|httplib2)",
        re.M,
    )
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "syncd").rglob("*.py")
        if "connectors" not in path.parts and provider.search(path.read_text())
    ]
    assert offenders == []


def test_a_spec_reads_its_settings_through_the_kind_and_names_a_bad_value():
    spec = MailboxSpec.of(
        "ana", "imap", "ana@northwind.test", {"host": "mail.example", "port": 993}
    )
    imap = typed(spec.settings, ImapSettings)
    assert imap.host == "mail.example" and imap.calendar_future_days == 30
    with pytest.raises(ConnectorError, match=r"mailbox 'ana': --port: value 0 is not allowed"):
        MailboxSpec.of("ana", "imap", "ana@northwind.test", {"host": "h", "port": 0})
    with pytest.raises(ConnectorError, match="'hots' is not a setting of this kind"):
        MailboxSpec.of("ana", "imap", "ana@northwind.test", {"hots": "h"})
    # a row edited by hand: a password put in it is never repeated by the error
    with pytest.raises(ConnectorError) as caught:
        MailboxSpec.of("ana", "imap", "ana@northwind.test", {"host": "h", "password": "hunter2"})
    assert "'password' is not a setting" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConnectorError) as caught:
        MailboxSpec.of("ana", "imap", "ana@northwind.test", {"host": "h", "port": "https://u:pw@x"})
    assert "pw" not in str(caught.value) and "https://***@x" in str(caught.value)


def test_the_calendar_window_has_one_default_for_every_kind():
    windows = {
        (
            k.settings.model_fields["calendar_past_days"].default,
            k.settings.model_fields["calendar_future_days"].default,
        )
        for k in map(registry.kind, registry.kinds())
    }
    assert windows == {(Settings().sync.calendar_past_days, Settings().sync.calendar_future_days)}


# --- the memory kind, through the registry like any other ------------------------------------


def mail(n: int, sender: str, to: str, subject: str) -> MailItem:
    return MailItem(
        key=f"mid:m{n}@acme.test",
        provider_id=f"m{n}",
        message_id=f"m{n}@acme.test",
        subject=subject,
        sent_at=datetime.now(UTC) - timedelta(days=1, minutes=n),
        participants=(Participant(sender, "", "from"), Participant(to, "", "to")),
        thread_key="mid:m1@acme.test",
    )


def test_a_memory_mailbox_added_by_name_syncs_through_the_registry(sessions, settings, company):
    box = world("test-kinds").mailbox("mem-ana")
    box.mail["memory:inbox"] = [
        mail(1, "carla@acme.test", "ana@northwind.test", "Renewal [OPP-101]"),
        mail(2, "ana@northwind.test", "carla@acme.test", "Re: Renewal [OPP-101]"),
    ]
    with sessions.begin() as session:
        ana = session.scalar(select(User.id).where(User.email == "ana@northwind.test"))
        mailboxes.add_mailbox(
            session, name="mem-ana", kind="memory", user_id=ana, settings={"world": "test-kinds"}
        )
    result = sync_mailbox(sessions, settings, "mem-ana")  # no connector_factory: the registry's
    assert result.ok and result.new_activities == 2
    with sessions() as session:
        subjects = set(session.scalars(select(Activity.subject)))
    assert subjects == {"Renewal [OPP-101]", "Re: Renewal [OPP-101]"}


def test_a_stored_row_its_kind_refuses_parks_the_mailbox_naming_the_key(
    sessions, settings, company
):
    with sessions.begin() as session:
        ana = session.scalar(select(User.id).where(User.email == "ana@northwind.test"))
        mailboxes.add_mailbox(
            session,
            name="edited",
            kind="memory",
            user_id=ana,
            settings={"world": "test-kinds", "poll_intervall": 60, "token": "s3cret"},
        )
    report = sync_mailbox(sessions, settings, "edited")
    assert report.state == "parked"
    with sessions() as session:
        row = session.scalars(select(Mailbox).where(Mailbox.name == "edited")).one()
    assert row.state == "parked" and row.last_error is not None
    assert "'poll_intervall' is not a setting of this kind" in row.last_error
    assert "s3cret" not in row.last_error


def test_the_first_sync_window_is_at_most_a_century():
    assert since_days(None, 90) == 90
    assert since_days(date(1900, 1, 1), 90) == MAX_SINCE_DAYS
    assert since_days(date.today() + timedelta(days=3), 90) == 0


# --- mailbox add: options generated from the models -------------------------------------------


@pytest.fixture
def cli(settings: Settings, db_url: str) -> Any:
    runner = CliRunner()
    env = {"SYNCD_HOME": str(settings.home), "SYNCD_DATABASE_URL": db_url, "COLUMNS": "300"}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_mailbox_add_offers_every_option_of_every_kind_and_documents_them(cli):
    shown = cli("mailbox", "add", "--help")
    assert shown.exit_code == 0
    readme = (ROOT / "README.md").read_text()
    for name in registry.kinds(hidden=False):
        kind = registry.kind(name)
        assert f"{name}:" in shown.output
        for model in (kind.settings, kind.sign_in):
            for spec in options(model):
                if not spec.hidden:
                    assert spec.flag in shown.output, spec.flag
                    assert spec.flag in readme, f"README does not document {spec.flag}"
    assert "memory" not in shown.output  # a kind for tests is not offered


def test_the_example_config_documents_every_kinds_settings():
    example = (ROOT / "config" / "syncd.example.toml").read_text().splitlines()
    common = Kind("mailbox", "", KindSettings, "")
    documented = [line for line in example if re.match(r"# (mailbox|[a-z]+)\.[a-z_]+ = ", line)]
    expected = settings_doc(common)
    for name in registry.kinds(hidden=False):
        expected += settings_doc(registry.kind(name))
    assert documented == expected  # regenerate the block from settings_doc() when they move


def test_an_option_of_another_kind_is_refused_naming_the_kinds_own(cli, company, tmp_path):
    bad = cli(
        "mailbox", "add", "x", "--kind", "local", "--user", "ana@northwind.test",
        "--maildir", str(company.maildirs["ana"]), "--host", "mail.example",
    )  # fmt: skip
    assert bad.exit_code == 2
    assert "--host: not an option of a local mailbox; its options:" in bad.stderr
    assert "--maildir" in bad.stderr and "Traceback" not in bad.output


def test_a_missing_or_bad_setting_names_the_option_and_the_rule(cli, company):
    missing = cli("mailbox", "add", "x", "--kind", "imap", "--user", "ana@northwind.test")
    assert missing.exit_code == 2 and "an imap mailbox needs --host" in missing.stderr
    bad = cli(
        "mailbox", "add", "x", "--kind", "imap", "--user", "ana@northwind.test",
        "--host", "mail.example", "--port", "70000",
    )  # fmt: skip
    assert bad.exit_code == 2 and "--port: value 70000 is not allowed" in bad.stderr
    with_since = cli(
        "mailbox", "add", "x", "--kind", "microsoft", "--user", "ana@northwind.test",
        "--tenant", "t", "--client-id", "c", "--device-code", "--since", "last week",
    )  # fmt: skip
    assert with_since.exit_code == 2 and "--since: value 'last week'" in with_since.stderr


def test_settings_given_are_stored_typed_and_shown(cli, company, sessions):
    added = cli(
        "mailbox", "add", "ana-local", "--kind", "local", "--user", "ana@northwind.test",
        "--maildir", str(company.maildirs["ana"]), "--exclude-folder", "Archive",
        "--exclude-folder", "Old", "--poll-interval", "60", "--body", "full",
        "--calendar-future-days", "14", "--calendar-past-days", "90",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    with sessions() as session:
        stored = session.scalars(select(Mailbox)).one().settings
    assert stored == {
        "maildir": str(company.maildirs["ana"].resolve()),
        "excluded_folders": ["Archive", "Old"],
        "poll_interval": 60,
        "body": "full",
        "calendar_future_days": 14,
        "calendar_past_days": 90,  # given, so stored: it wins over the config's value
    }


# --- the shared conventions -------------------------------------------------------------------


def test_chunks_and_batches_by_size():
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []
    with pytest.raises(ValueError, match="chunk size 0"):
        list(chunked([1], 0))
    # count 3, budget 10 bytes; an item over the budget is a run of its own
    assert list(by_size([4, 4, 4, 20, 1, 1, 1, 1], 3, 10)) == [
        (0, 2),
        (2, 3),
        (3, 4),
        (4, 7),
        (7, 8),
    ]


def test_only_the_last_batch_of_a_delta_carries_its_cursor():
    before, after = Cursor("old"), Cursor("new")
    m = [mail(n, "carla@acme.test", "ana@northwind.test", f"Mail {n}") for n in range(5)]
    batches = list(with_cursor_on_last(m, 2, before, after, removed=["u1"]))
    assert [b.items for b in batches] == [(m[0], m[1]), (m[2], m[3]), (m[4],)]
    assert [b.cursor for b in batches] == [before, before, after]
    assert [b.removed for b in batches] == [(), (), ("u1",)]
    empty = list(with_cursor_on_last(m[:0], 2, before, after, removed=["u2"]))
    assert len(empty) == 1 and empty[0].cursor == after and empty[0].removed == ("u2",)


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after("7") == 7.0 and retry_after(" 1.5 ") == 1.5
    assert retry_after("Tue, 01 Dec 2026 09:00:30 GMT", now=NOW) == 30.0
    assert retry_after("Tue, 01 Dec 2026 08:00:00 GMT", now=NOW) == 0.0  # in the past
    assert retry_after("soon") is None and retry_after("-3") is None and retry_after(None) is None
    assert header_retry_after({"retry-after": "2"}) == 2.0
    assert header_retry_after({"Content-Type": "x"}) is None


class Refused(Exception):
    def __init__(self, wait: float | None) -> None:
        super().__init__(f"wait {wait}")
        self.wait = wait


def test_the_retry_policy_honours_short_waits_and_gives_up_on_long_ones():
    slept: list[float] = []
    tries: list[int] = []

    def attempt(waits: list[float | None]) -> str:
        policy = retrying(
            transient=lambda exc: isinstance(exc, Refused),
            attempts=4,
            first=0.5,
            wait_hint=lambda exc: exc.wait if isinstance(exc, Refused) else None,
        )
        policy.sleep = slept.append
        for a in policy:
            with a:
                tries.append(1)
                if waits:
                    raise Refused(waits.pop(0))
                return "ok"
        raise AssertionError("unreachable")

    assert attempt([None, 3.0, None]) == "ok"
    assert slept == [0.5, 3.0, 2.0]  # backoff, Retry-After, backoff (third try: 0.5 * 4)
    tries.clear()
    with pytest.raises(Refused):
        attempt([MAX_WAIT + 1])  # longer than a pass may sleep: given up at once
    assert tries == [1]
    with pytest.raises(Refused):
        attempt([None] * 5)  # four tries in all


def test_a_meeting_is_the_same_meeting_whichever_provider_serves_it():
    original = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
    paris = original.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert recurrence_id(original) == recurrence_id(paris) == "20261203T150000Z"
    assert recurrence_id(original.replace(tzinfo=None)) == "20261203T150000Z"  # naive: UTC
    assert meeting_key("uid-1", "20261203T150000Z") == "ical:uid-1#20261203T150000Z"
    assert meeting_key("uid-1", None) == "ical:uid-1"
    people = participants(
        ("MAILTO:Ana@Northwind.test", "Ana"),
        [("ana@northwind.test", "Ana again"), ("carla@acme.test", "carla@acme.test"), ("", "x")],
    )
    assert people == (
        Participant("ana@northwind.test", "Ana", "organizer"),
        Participant("carla@acme.test", "", "attendee"),
    )


def test_a_task_written_as_an_event_reads_back_as_what_the_user_did():
    task = TaskItem("syncd-no-reply-1", "Call Carla back", "", NOW, "open", NOW)
    assert is_task_uid(task.uid) and not is_task_uid("meeting-1@acme.test")
    assert event_title(task) == "Call Carla back"
    assert (
        event_title(TaskItem(task.uid, task.title, "", NOW, "done", NOW)) == "Done: Call Carla back"
    )
    assert read_back(task.uid, "Call Carla back", cancelled=False) is None
    assert read_back(task.uid, "Call Carla back", cancelled=True) == TaskState(
        task.uid, "cancelled"
    )
    for ticked in ("Done: Call Carla back", "✓ Call Carla back", "  ☑ Call"):
        assert read_back(task.uid, ticked, cancelled=False) == TaskState(task.uid, "done")
    # a CalDAV or vdir calendar without VTODO: the user retitles syncd's event "✔ ..."
    data = task_to_ical(task, as_event=True).replace(b"SUMMARY:Call", "SUMMARY:✔ Call".encode())
    read = read_calendar(data, "t.ics", (NOW - timedelta(days=30), NOW + timedelta(days=30)))
    assert read.meetings == [] and read.task_states == [TaskState(task.uid, "done")]
