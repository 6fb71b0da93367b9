"""The typed words at the edges: every state, kind, reason and rule a CRM column holds is
one of its ``Literal``'s values, and every row ``--json`` prints has exactly its typed keys.
SQLite only: a real sync of the demo company, then the database and the CLI are read."""

from __future__ import annotations

import ast
import json
import types
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints, is_typeddict

import pytest
from sqlalchemy import String, select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import syncd
from syncd.cli import app
from syncd.cli.quarantine import ShownEntry
from syncd.config import Settings
from syncd.crm import mailboxes, reports
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.crm.loader import COLUMNS, RecordKind
from syncd.crm.models import Activity, Base, Mailbox, TaskRule
from syncd.crm.quarantine import QuarantineRow
from syncd.demo import add_local_mailbox, build_demo, load_company
from syncd.followups import RULES
from syncd.items import ExclusionReason, LinkReason
from syncd.matching import matcher
from syncd.sync import sync_mailbox

S = sessionmaker[Session]
PACKAGE = Path(syncd.__file__).parent


# --- what a Literal allows ---------------------------------------------------------------


def literal_values(annotation: Any) -> tuple[str, ...] | None:
    """The values of a ``Literal`` (or ``Literal | None``) annotation; None for any other."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (typing.Union, types.UnionType):
        found = [literal_values(a) for a in get_args(annotation) if a is not type(None)]
        if len(found) == 1:
            return found[0]
    return None


def typed_columns() -> Iterator[tuple[type[Base], str, tuple[str, ...]]]:
    """(model, attribute, allowed values) of every column mapped as ``Mapped[SomeLiteral]``."""
    for mapper in Base.registry.mappers:
        model = mapper.class_
        hints = get_type_hints(model)
        for attr in mapper.column_attrs:
            hint = hints.get(attr.key)
            if hint is None:
                continue
            allowed = literal_values(get_args(hint)[0])
            if allowed is not None:
                yield model, attr.key, allowed


def stored_outside(session: Session) -> list[str]:
    """Every stored value that its column's Literal does not allow."""
    bad = []
    for model, attr, allowed in typed_columns():
        column = getattr(model, attr)
        for value in session.scalars(select(column).distinct()):
            if value is not None and value not in allowed:
                bad.append(f"{model.__name__}.{attr} = {value!r} (allowed: {allowed})")
    return bad


def check_typed(value: Any, annotation: Any, where: str = "row") -> None:
    """Fail unless ``value`` (as JSON gives it back) is what ``annotation`` says: a TypedDict
    with exactly its keys (its NotRequired ones may be missing), a Literal's value, ..."""
    origin = get_origin(annotation)
    if annotation is Any:
        return
    if is_typeddict(annotation):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        required, optional = annotation.__required_keys__, annotation.__optional_keys__
        keys = set(value)
        assert required <= keys <= required | optional, (
            f"{where}: keys {sorted(keys)}; typed: {sorted(required)} (+ {sorted(optional)})"
        )
        hints = get_type_hints(annotation)
        for key, item in value.items():
            check_typed(item, hints[key], f"{where}.{key}")
    elif origin is Literal:
        assert value in get_args(annotation), f"{where}: {value!r} not in {get_args(annotation)}"
    elif origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(annotation):
            try:
                check_typed(value, option, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(" / ".join(errors))
    elif origin is list:
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for i, item in enumerate(value):
            check_typed(item, get_args(annotation)[0], f"{where}[{i}]")
    elif origin is dict:
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
    elif annotation is type(None):
        assert value is None, f"{where}: {value!r} is not null"
    elif annotation is bool:
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif annotation is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r}"
    else:
        assert isinstance(value, annotation), f"{where}: {value!r} is not {annotation}"


# --- pure: the types against the code that writes them ------------------------------------


def test_every_literal_column_fits_its_string_column():
    seen = set()
    for model, attr, allowed in typed_columns():
        seen.add(f"{model.__name__}.{attr}")
        column = model.__table__.c[attr]
        assert isinstance(column.type, String), (model, attr)
        longest = max(allowed, key=len)
        assert column.type.length is None or len(longest) <= column.type.length, (
            f"{model.__name__}.{attr}: {longest!r} does not fit {column.type}"
        )
        if column.default is not None and column.default.is_scalar:
            assert column.default.arg in allowed, (model, attr, column.default.arg)
    assert {
        "Mailbox.state",
        "Mailbox.writer_state",
        "Activity.kind",
        "Activity.direction",
        "Activity.status",
        "Opportunity.status",
        "ActivityParticipant.role",
        "Link.type",
        "Link.reason",
        "Task.rule",
        "Task.status",
        "Task.resolution",
    } <= seen


def _column_literals() -> dict[tuple[str, str], tuple[str, ...]]:
    return {(m.__name__, attr): allowed for m, attr, allowed in typed_columns()}


def test_every_constant_the_code_writes_in_sql_is_allowed_by_its_column():
    """``update(Model)....values(column="word")`` and ``Model(column="word")`` are not seen
    by mypy's Literal checks (SQL values are untyped): read them from the source."""
    allowed = _column_literals()
    models = {name for name, _ in allowed}
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        if "connectors" in path.parts:
            continue  # connectors never write the CRM
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            model = _model_of(node, models)
            if model is None:
                continue
            for kw in node.keywords:
                words = allowed.get((model, kw.arg or ""))
                if words is not None and isinstance(kw.value, ast.Constant):
                    checked += 1
                    assert kw.value.value in words, (
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: "
                        f"{model}.{kw.arg} = {kw.value.value!r} is not one of {words}"
                    )
    assert checked >= 5  # resume, reauth, add, cancel a removed meeting, a tag link...


def _model_of(call: ast.Call, models: set[str]) -> str | None:
    """The model a call writes: ``Model(...)``, or ``update(Model)....values(...)``."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in models:
        return func.id
    if isinstance(func, ast.Attribute) and func.attr == "values":
        inner = func.value
        while isinstance(inner, ast.Call | ast.Attribute):
            if isinstance(inner, ast.Call):
                f = inner.func
                if isinstance(f, ast.Name) and f.id in ("update", "insert") and inner.args:
                    target = inner.args[0]
                    return target.id if isinstance(target, ast.Name) else None
                inner = f
            else:
                inner = inner.value
    return None


def test_every_rule_has_its_word_and_every_reason_is_documented():
    assert set(RULES) == set(get_args(TaskRule))
    # the matcher's docstring table names every link reason, and no other
    table = {
        line.split()[0].strip("`")
        for line in (matcher.__doc__ or "").splitlines()
        if line.startswith("``")
    }
    assert table == set(get_args(LinkReason))
    # the CLI's choices for `syncd crm load` are the loader's kinds
    assert {k.value for k in RecordKind} == {k.value for k in COLUMNS}


def test_every_exclusion_reason_is_one_the_code_counts():
    """mypy proves every reason counted is an ExclusionReason; this proves each of them is
    counted somewhere (no word left that nothing produces)."""
    used: set[str] = set()
    for path in (
        PACKAGE / "matching" / "exclusions.py",
        PACKAGE / "decide.py",
        PACKAGE / "sync.py",
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Excluded":
                first = node.args[0]
                assert isinstance(first, ast.Constant) and isinstance(first.value, str)
                used.add(first.value)
            if (
                isinstance(node, ast.Subscript)
                and "excluded" in (getattr(node.value, "id", ""), getattr(node.value, "attr", ""))
                and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str)
            ):
                used.add(node.slice.value)
    assert used == set(get_args(ExclusionReason))


def test_the_checks_fail_on_a_word_outside_the_literal():
    row: dict[str, Any] = {"uid": "u", "title": "t", "due": "2026-01-01T00:00:00+00:00"}
    row |= {"user": "a@b.c"}
    row |= {"status": "snoozed", "resolution": None, "rule": "no-reply", "activity_id": 1}
    row |= {"opportunity_id": None, "opportunity": None, "in_calendar": True}
    row |= {"write_error": None}
    with pytest.raises(AssertionError, match="snoozed"):
        check_typed(row, reports.TaskRow)
    with pytest.raises(AssertionError, match="keys"):
        check_typed({**row, "status": "open", "extra": 1}, reports.TaskRow)
    check_typed({**row, "status": "open"}, reports.TaskRow)


# --- a real sync, then what is stored and what is printed ----------------------


@pytest.fixture
def synced(tmp_path: Path, db_url: str) -> Iterator[tuple[S, dict[str, str]]]:
    """The demo company synced (on SQLite and on PostgreSQL): two mailboxes that work (one
    with a calendar, so tasks are written), one whose Maildir is gone (failing), one whose
    secret cannot be opened (parked); a task write-back that failed."""
    url = db_url
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    settings = Settings(home=tmp_path / "home")
    now = datetime.now(UTC).replace(microsecond=0)
    demo = build_demo(tmp_path / "demo", now)
    load_company(sessions, demo.root / "crm")
    maildirs = {name: str(path) for name, path in demo.maildirs.items()}
    calendar = str(demo.calendar)
    add_local_mailbox(
        sessions, "ana", "ana@northwind.test", maildir=maildirs["ana"], calendar=calendar
    )
    add_local_mailbox(sessions, "ben", "ben@northwind.test", maildir=maildirs["ben"])
    add_local_mailbox(sessions, "gone", "ben@northwind.test", maildir=str(tmp_path / "none"))
    add_local_mailbox(sessions, "locked", "ben@northwind.test", maildir=maildirs["ben"])
    with sessions.begin() as session:
        session.scalars(select(Mailbox).where(Mailbox.name == "locked")).one().secret = "x"
    for name in ("ana", "ben", "gone", "locked"):
        sync_mailbox(sessions, settings, name)
    with sessions.begin() as session:
        ben = session.scalars(select(Mailbox).where(Mailbox.name == "ben")).one()
        mailboxes.mark_writer(session, ben.id, state="failing", now=now, error="refused")
    env = {"SYNCD_HOME": str(tmp_path / "home"), "SYNCD_DATABASE_URL": url, "COLUMNS": "200"}
    yield sessions, env
    engine.dispose()


def test_every_stored_word_is_one_its_column_allows(synced):
    sessions, _ = synced
    with sessions() as session:
        assert stored_outside(session) == []
        states = set(session.scalars(select(Mailbox.state)))
        assert states == {"ok", "failing", "parked"}  # the scan saw each of them
        assert set(session.scalars(select(Activity.kind))) == {"email", "meeting"}
        # and it would see a word the Literal does not allow
        session.execute(update(Activity).values(direction="sideways"))
        assert any("Activity.direction = 'sideways'" in b for b in stored_outside(session))
        session.rollback()


def _json(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
    # status exits 1 for a failing mailbox, 2 for a parked one (Nagios-style); JSON still
    ok = (0, 1, 2) if args == ("status",) else (0,)
    assert result.exit_code in ok, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("command", "row_type"),
    [
        (("status",), reports.StatusRow),
        (("activities",), reports.ActivityRow),
        (("tasks",), reports.TaskRow),
        (("mailbox", "list"), reports.MailboxRow),
        (("quarantine", "list"), QuarantineRow),
    ],
)
def test_every_printed_row_has_exactly_its_typed_keys_and_words(synced, command, row_type):
    _, env = synced
    rows = _json(env, *command)
    assert rows, f"syncd {' '.join(command)} printed no row to check"
    for i, row in enumerate(rows):
        check_typed(row, row_type, f"{' '.join(command)}[{i}]")


def test_status_rows_carry_a_fix_only_for_a_task_write_back_that_fails(synced):
    _, env = synced
    status = {r["mailbox"]: r for r in _json(env, "status")}
    assert {n: r["state"] for n, r in status.items()} == {
        "ana": "ok",
        "ben": "ok",
        "gone": "failing",
        "locked": "parked",
    }
    assert "fix" in status["ben"]["tasks"] and "fix" not in status["ana"]["tasks"]
    shown = _json(env, "quarantine", "show", str(_json(env, "quarantine", "list")[0]["id"]))
    check_typed(shown, ShownEntry, "quarantine show")
    with synced[0]() as session:  # the rows `mailbox list` prints are the typed report's
        assert reports.mailbox_report(session) == _json(env, "mailbox", "list")
