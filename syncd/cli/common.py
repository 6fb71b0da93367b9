"""The command line's shared parts: the Typer apps, the state (config, database), output."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd import logs
from syncd.config import ConfigError, Settings, load_settings
from syncd.crm.database import (
    check_schema,
    make_engine,
    session_factory,
)

app = typer.Typer(
    help="syncd keeps a CRM up to date from salespeople's mailboxes and calendars.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The CRM database.", no_args_is_help=True)
crm_app = typer.Typer(help="CRM records.", no_args_is_help=True)
mailbox_app = typer.Typer(help="Connected mailboxes.", no_args_is_help=True)
quarantine_app = typer.Typer(
    help="Items syncd could not read: what they are, why, and a retry after an upgrade.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(crm_app, name="crm")
app.add_typer(mailbox_app, name="mailbox")
app.add_typer(quarantine_app, name="quarantine")


class _Out:
    """The terminal for tables, made when one is printed: its width follows COLUMNS and
    the terminal as they are then, not as they were when syncd was imported."""

    def __getattr__(self, name: str) -> Any:
        return getattr(Console(), name)


out = _Out()


class _State:
    config: Path | None = None
    _settings: Settings | None = None
    _sessions: sessionmaker[Session] | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings

    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            engine = make_engine(self.settings().database_url())
            check_schema(engine)
            self._sessions = session_factory(engine)
        return self._sessions


state = _State()


def say(message: str, stream: TextIO | None = None) -> None:
    """Plain lines, never wrapped: admins grep them and scripts parse them."""
    stream = stream or sys.stdout  # looked up now: a test or a caller may have replaced it
    stream.write(message + "\n")
    stream.flush()


def fail(message: str, code: int = 1) -> NoReturn:
    say(f"syncd: error: {message}", sys.stderr)
    raise typer.Exit(code)


def parse_day(option: str, value: str | None) -> datetime | None:
    """A YYYY-MM-DD option as the start of that day in UTC; anything else fails (exit 2)
    naming the option, the value and the form wanted."""
    if value is None:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        fail(f"{option} {value!r} is not a date; give it as YYYY-MM-DD, e.g. 2024-01-01", 2)
    return day.replace(tzinfo=UTC)


def chosen_mailboxes(name: str | None) -> list[str]:
    """The mailbox a command names (failing when there is none by that name), else all."""
    from syncd.crm.models import Mailbox

    with state.sessions()() as session:
        names = list(session.scalars(select(Mailbox.name).order_by(Mailbox.name)))
    if name is None:
        return names
    if name not in names:
        fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
    return [name]


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("syncd")
        except PackageNotFoundError:
            found = "unknown (not installed)"
        say(f"syncd {found}")
        raise typer.Exit(0)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="SYNCD_CONFIG",
            help="TOML config file (default: built-in defaults; see config/syncd.example.toml).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="SYNCD_LOG_FORMAT",
            help="How events are logged on stderr: 'text' (one line each, for a terminal and "
            "journald) or 'json' (one JSON object a line, for log shippers: time, level, "
            "logger, message, mailbox).",
        ),
    ] = LogFormat.text,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Print syncd's version and exit."
        ),
    ] = False,
) -> None:
    state.config = config
    state._settings = None
    state._sessions = None
    logs.setup("json" if log_format is LogFormat.json else "text", verbose)
    try:
        state.settings()  # a bad config is reported before anything runs
    except ConfigError as exc:
        fail(str(exc), 2)


def printable(text: str) -> str:
    """Text from outside (a reason, a provider id: they can hold anything) made safe for a
    terminal: control characters are shown escaped, never sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
