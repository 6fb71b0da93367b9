"""What a connector kind is: its typed settings, its sign-in, and how it opens.

Every kind is a package under ``syncd/connectors/<kind>/`` whose ``__init__`` defines
``KIND``, a :class:`Kind`. That ``__init__`` stays light (pydantic models and names only):
``syncd mailbox add --help`` reads every kind's options without loading any provider's
library. The heavy parts are named as ``"module:attribute"`` and imported when used.

settings
    A :class:`KindSettings` model: what is stored in the mailbox's row, with its defaults,
    its validation and its documentation in one place. Each field is a ``mailbox add``
    option (``--field-name``, or the name in ``json_schema_extra={"option": ...}``;
    ``"option": None`` keeps a field out of the command line).
sign-in options
    A :class:`SignInOptions` model: what ``mailbox add`` and ``mailbox reauth`` take but
    never store (a key file, a password file, ``--device-code``), options the same way.
add, reauth
    ``add(ctx, settings, options) -> SignedIn`` signs in (consent flows, key files,
    password prompts) and returns the settings to store and the secret to encrypt;
    ``reauth(ctx, settings, old_secret, options) -> SignedIn`` does it again for an
    existing mailbox. Both raise :class:`SignInError` with the fix.
open
    ``open(spec) -> Connector``; ``watch(spec, on_change, stop)`` starts a push watcher.
formats
    The quarantine formats this kind keeps raw copies in, and their re-parsers.
probe, holdings
    ``probe(spec) -> list[Check]``: ``syncd doctor``'s checks of one mailbox (reachable,
    login, scopes, calendar writable, clock), changing nothing; ``holdings(spec, cursors)
    -> Generator[Held]`` (:class:`syncd.connectors.registry.Held`): what the provider holds,
    in chunks listed as they are consumed, that each source's stored
    cursor says syncd has read (``syncd audit``); a backfill kind (Gmail, Graph) also finds
    its time window among the cursors, under :data:`AUDIT_WINDOW`. Both live in the kind's
    ``probe`` module.
"""

from __future__ import annotations

import importlib
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from syncd.config import BodyPolicy
from syncd.secrets import Secret

# the audit's time window among the cursors handed to ``holdings``: "LOWER/UPPER" in ISO
# 8601 (no source's name starts with "@"; ``syncd.audit.window`` makes it)
AUDIT_WINDOW = "@window"


class SignInError(Exception):
    """A sign-in cannot go on: the message names the option or file, the value and the fix.
    ``code`` 2 means the command line was wrong (a bad option), 1 that the sign-in failed."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def option(name: str | None, help: str, *, hidden: bool = False) -> dict[str, Any]:
    """A field's ``json_schema_extra``: its command-line option (None: none) and help."""
    return {"option": name, "help": help, "hidden": hidden}


MAX_SINCE_DAYS = 36500  # a first sync reads at most a century back


class KindSettings(BaseModel):
    """The settings every kind stores for a mailbox; a kind's model adds its own fields.

    The config's values fill what a mailbox does not set (``syncd.sync.mailbox_spec``):
    the calendar window, and the folders to exclude (the config's and the mailbox's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poll_interval: int | None = Field(
        None,
        ge=5,
        le=7 * 86400,
        json_schema_extra=option("--poll-interval", "Seconds between polls."),
    )
    body: BodyPolicy | None = Field(
        None,
        json_schema_extra=option("--body", "What to store of a message's body (sync.body)."),
    )
    excluded_folders: list[str] = Field(
        default_factory=list,
        json_schema_extra=option(
            "--exclude-folder",
            "A folder never to read, besides the config's exclusions.folders; repeatable.",
        ),
    )
    calendar_past_days: int = Field(
        90,
        ge=0,
        le=36500,
        json_schema_extra=option(
            "--calendar-past-days", "Days of past meetings read (sync.calendar_past_days)."
        ),
    )
    calendar_future_days: int = Field(
        30,
        ge=0,
        le=36500,
        json_schema_extra=option(
            "--calendar-future-days",
            "Days of future meetings read (sync.calendar_future_days).",
        ),
    )
    idle: bool = Field(
        False,
        json_schema_extra=option(
            None, "watch for new mail and sync it at once, where the kind can push (IMAP IDLE)"
        ),
    )
    timeout: float = Field(60.0, gt=0, le=3600, json_schema_extra=option(None, "seconds"))
    since_days: int | None = Field(
        None,
        ge=0,
        le=MAX_SINCE_DAYS,
        json_schema_extra=option(
            None, "set by --since: the first sync reads mail this many days back (null: all)"
        ),
    )
    retries: int | None = Field(
        None, ge=1, le=100, json_schema_extra=option(None, "tries of one call")
    )
    dropbox: bool = Field(
        False,
        json_schema_extra=option(
            "--dropbox",
            "A dropbox: salespeople BCC or forward mail to it to log it; a message from "
            "anyone else is refused, and its own mail and calendar are never logged.",
        ),
    )


class SignInOptions(BaseModel):
    """What ``mailbox add``/``reauth`` take but never store; a kind's model adds fields.
    ``--since DATE`` is every kind's: how far back the first sync reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: date | None = Field(
        None,
        json_schema_extra=option(
            "--since",
            "First sync from DATE (YYYY-MM-DD); default: gmail and microsoft 90 days back, "
            "local and imap all the mail.",
        ),
    )


class BackfillSettings(KindSettings):
    """The settings of a kind whose first sync reads a window of past mail (Gmail, Graph:
    an API that lists by date) rather than whole folders."""

    since_days: int = Field(
        90,
        ge=0,
        le=MAX_SINCE_DAYS,
        json_schema_extra=option(None, "set by --since: the first sync window"),
    )


class BackfillSignIn(SignInOptions):
    """The sign-in options of a kind whose first sync reads a window (Gmail, Graph): its
    ``--since`` defaults to :class:`BackfillSettings`'s 90 days."""


@dataclass(frozen=True)
class SignInContext:
    """What a sign-in may use: the mailbox, its owner, the state directory, a way to show
    the user a URL or a code (stderr), and a hidden prompt (None: no terminal)."""

    name: str
    email: str  # the owning CRM user's normalised address
    home: Path
    show: Callable[[str], None]
    prompt: Callable[[str], str] | None = None

    def read_secret(self, password_file: Path | None, password_env: str | None, what: str) -> str:
        """From a file, an environment variable, or the prompt: never the command line."""
        if password_file is not None:
            try:
                value = password_file.read_text(encoding="utf-8").strip("\r\n")
            except OSError as exc:
                raise SignInError(
                    f"--password-file {str(password_file)!r}: {exc.strerror}; give a readable "
                    f"file that holds the {what}"
                ) from None
            except UnicodeDecodeError:
                raise SignInError(
                    f"--password-file {str(password_file)!r} is not UTF-8 text"
                ) from None
        elif password_env is not None:
            value = os.environ.get(password_env, "")
            if not value:
                raise SignInError(f"--password-env {password_env!r}: that variable is not set")
        elif self.prompt is not None:
            value = self.prompt(what)
        else:
            raise SignInError(
                f"no {what} given: use --password-file FILE or --password-env VAR "
                "(a password is never taken from the command line)"
            )
        if not value:
            raise SignInError(f"the {what} is empty")
        return value


def since_days(since: date | None, default: int | None) -> int | None:
    """``--since DATE`` as the days back from today the first sync reads (``default``
    without one: the kind's, None for all the mail)."""
    if since is None:
        return default
    return min(max((datetime.now(UTC).date() - since).days, 0), MAX_SINCE_DAYS)


def checked_url(url: str, what: str) -> str:
    """An endpoint given to ``mailbox add``: https (http only to this machine), and no login
    or password in it (a URL is stored and shown in clear). Refused with exit code 2."""
    from syncd.connectors.base import ConnectorError
    from syncd.connectors.transport import check_url, mask_urls, split_credentials

    bare = split_credentials(url)[0]
    if bare != url:
        raise SignInError(
            f"{what} {mask_urls(url)!r} holds a login or password; a URL is stored and shown "
            f"in clear, so syncd takes none in it: give {bare!r} (the password comes from "
            "--password-file, --password-env or the prompt, and is stored encrypted)",
            2,
        )
    try:
        check_url(url, what)
    except ConnectorError as exc:
        raise SignInError(str(exc), 2) from None
    return url


@dataclass(frozen=True)
class SignedIn:
    """What a sign-in gives: the settings to store, the secret to encrypt, and what the
    secret is, for the message (``password``, ``token``, ``credentials``, ``sign-in``)."""

    settings: KindSettings
    secret: Secret | None
    what: str = "credentials"


Verdict = Literal["ok", "warn", "fail"]
CLOCK_WARN = 60.0  # seconds of difference to a provider's clock that leases and windows bear


@dataclass(frozen=True)
class Check:
    """One thing ``syncd doctor`` checked: what, its verdict, what it found, and the fix."""

    what: str
    verdict: Verdict
    detail: str
    fix: str = ""


def clock_check(what: str, date_header: str | None, now: datetime | None = None) -> Check:
    """This machine's clock against an HTTP ``Date`` header (RFC 9110 §6.6.1, one-second
    precision): a warning over :data:`CLOCK_WARN` seconds, as leases and sync windows
    depend on it."""
    if not date_header:
        return Check(what, "warn", "the server sent no Date header: not compared")
    try:
        theirs = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return Check(what, "warn", f"the server's Date header {date_header!r} is not a date")
    if theirs.tzinfo is None:
        theirs = theirs.replace(tzinfo=UTC)
    skew = ((now or datetime.now(UTC)) - theirs).total_seconds()
    if abs(skew) > CLOCK_WARN:
        return Check(
            what,
            "warn",
            f"this machine's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
            "the server's",
            "synchronise the clock (systemd-timesyncd or chrony): leases and sync windows "
            "depend on it",
        )
    return Check(what, "ok", f"within {max(abs(skew), 1):.0f} s of the server's Date header")


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Kind:
    """One connector kind, as its package's ``KIND`` describes it."""

    name: str
    summary: str  # one line for --help: what the kind reads
    settings: type[KindSettings]
    open: str  # "module:factory", factory(spec) -> Connector
    sign_in: type[SignInOptions] = SignInOptions
    add: str | None = None  # "module:function", see the module's docstring
    reauth: str | None = None
    watch: str | None = None  # "module:function", watch(spec, on_change, stop)
    formats: Mapping[str, str] = field(default_factory=dict)  # format -> "module:reparser"
    probe: str | None = None  # "module:function", probe(spec) -> list[Check] (syncd doctor)
    holdings: str | None = None  # "module:function", holdings(spec, cursors) (syncd audit)
    hidden: bool = False  # not offered by ``mailbox add --help`` (the memory kind)

    def load(self, what: str) -> Any:
        """The object one of the ``"module:attribute"`` fields names, imported now."""
        target = getattr(self, what)
        return _load(target) if target else None

    def read_settings(self, values: Mapping[str, Any], where: str) -> KindSettings:
        """Validate stored or given settings; a problem names the key, the value and why."""
        try:
            return self.settings.model_validate(dict(values))
        except ValidationError as exc:
            raise SettingsError(f"{where}: {describe(exc, self.settings)}") from None


class SettingsError(ValueError):
    """A mailbox's settings are not valid for its kind."""


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic error as a user reads it: the option (or key), the value and the rule;
    never a value that may hold a secret (:func:`shown_value`)."""
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        key = loc[0] if loc else ""
        shown = option_name(model, key) or repr(key)
        if error["type"] == "missing":
            problems.append(f"{shown} is required")
            continue
        value = shown_value(key, error.get("input"))
        if error["type"] == "extra_forbidden":
            problems.append(f"{shown} is not a setting of this kind (value {value})")
            continue
        msg = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{shown}: value {value} is not allowed: {msg}")
    return "; ".join(problems)


def shown_value(key: str, value: Any) -> str:
    """A value as an error may show it: nothing under a key named like a secret (a row
    edited by hand may hold a password), at any depth, and URLs without their login,
    password or credential query parameters."""
    from syncd.config import is_secret_name
    from syncd.connectors.transport import mask_urls

    def masked(name: str, item: Any) -> Any:
        if is_secret_name(name):
            return "***"
        if isinstance(item, Mapping):
            return {k: masked(str(k), v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [masked(name, v) for v in item]
        if isinstance(item, str) and "://" in item:
            bare, _, query = item.partition("?")
            pairs = [p.partition("=") for p in query.split("&")] if query else []
            query = "&".join(k + (s + "***" if is_secret_name(k) else s + v) for k, s, v in pairs)
            return mask_urls(bare + ("?" + query if query else ""))
        return item

    if is_secret_name(key):
        return "(not shown: it may hold a secret)"
    return repr(masked(key, value))


def option_name(model: type[BaseModel], name: str) -> str | None:
    info = model.model_fields.get(name)
    if info is None:
        return None
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "option" in extra:
        value = extra["option"]
        return str(value) if value else None
    return "--" + name.replace("_", "-")


S = typing.TypeVar("S", bound=KindSettings)


def typed(settings: KindSettings, model: type[S]) -> S:
    """A spec's settings as its kind's model (a connector opened with another kind's
    settings is a bug, said at once)."""
    if not isinstance(settings, model):
        raise TypeError(f"settings of type {type(settings).__name__}, not {model.__name__}")
    return settings
