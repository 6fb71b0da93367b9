"""TOML config -> validated :class:`Settings`; errors name the key, the value and what is allowed.

Every key is optional; ``config/syncd.example.toml`` documents them all. The state directory
(the SQLite database, the key that encrypts secrets) is ``SYNCD_HOME``, else ``home`` in the
config, else ``~/.local/state/syncd``.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from syncd.matching.addresses import normalize_address, normalize_domain

BodyPolicy = Literal["metadata", "snippet", "full"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class ConfigError(Exception):
    """The config cannot be used; the message says which key, which value and the fix."""


def parse_working_hours(value: str) -> tuple[time, time]:
    """``'09:00-17:30'`` -> (09:00, 17:30); ValueError with the allowed shape otherwise."""
    m = _HOURS_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a range like '09:00-17:30'")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) >= (h2, m2):
        raise ValueError(f"{value!r} is not a range of the same day like '09:00-17:30'")
    return time(h1, m1), time(h2, m2)


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not an IANA time zone (such as 'Europe/Paris' or 'UTC')"
        ) from None
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str | None = None
    url_env: str | None = None
    url_file: Path | None = None


class CompanySettings(_Section):
    domains: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    working_hours: str = "09:00-17:30"
    working_days: list[Weekday] = ["mon", "tue", "wed", "thu", "fri"]

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [normalize_domain(d) for d in v]

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        parse_working_hours(v)
        return v

    @field_validator("working_days")
    @classmethod
    def _days(cls, v: list[Weekday]) -> list[Weekday]:
        if not v:
            raise ValueError("at least one working day is needed, e.g. ['mon', 'tue']")
        return v


class SyncSettings(_Section):
    poll_interval: int = Field(300, ge=5, le=86400, description="seconds between polls")
    batch_size: int = Field(500, ge=1, le=10000)
    body: BodyPolicy = "snippet"
    calendar_past_days: int = Field(90, ge=0, le=3650)
    calendar_future_days: int = Field(30, ge=0, le=3650)
    max_backoff: int = Field(3600, ge=5, le=86400)


class MatchingSettings(_Section):
    opportunity_tag_prefix: str = Field("OPP-", min_length=1, max_length=20)


class ExclusionSettings(_Section):
    addresses: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)
    folders: list[str] = Field(
        default_factory=lambda: ["Trash", "Junk", "Spam", "Drafts", "Deleted Items", "Outbox"]
    )
    # provider labels and categories (Gmail labels, Outlook categories) never logged ...
    labels: list[str] = Field(default_factory=lambda: ["Spam", "Trash", "Chat", "Drafts", "No CRM"])
    # ... and those that log an item even when it is internal-only, bulk or has no CRM
    # participant (never when it is private or blocklisted)
    force_labels: list[str] = Field(default_factory=lambda: ["CRM"])

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        out = []
        for a in v:
            norm = normalize_address(a)
            if not norm:
                raise ValueError(f"{a!r} is not an email address")
            out.append(norm)
        return out

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [normalize_domain(d) for d in v]


class NoReplyRule(_Section):
    enabled: bool = True
    business_days: int = Field(3, ge=1, le=60)


class MeetingNotesRule(_Section):
    enabled: bool = True


class FollowupSettings(_Section):
    lookback_days: int = Field(14, ge=0, le=365)
    no_reply: NoReplyRule = NoReplyRule()
    meeting_notes: MeetingNotesRule = MeetingNotesRule()


class Settings(_Section):
    home: Path = Field(default_factory=lambda: Path("~/.local/state/syncd").expanduser())
    database: DatabaseSettings = DatabaseSettings()
    company: CompanySettings = CompanySettings()
    sync: SyncSettings = SyncSettings()
    matching: MatchingSettings = MatchingSettings()
    exclusions: ExclusionSettings = ExclusionSettings()
    followups: FollowupSettings = FollowupSettings()

    def database_url(self) -> str:
        """The database URL: SYNCD_DATABASE_URL, else url_env, url_file, url, else SQLite."""
        if os.environ.get("SYNCD_DATABASE_URL"):
            return os.environ["SYNCD_DATABASE_URL"]
        db = self.database
        if db.url_env:
            value = os.environ.get(db.url_env)
            if not value:
                raise ConfigError(
                    f"key 'database.url_env': environment variable {db.url_env!r} is not set; "
                    "set it to the database URL or remove the key"
                )
            return value
        if db.url_file:
            try:
                return db.url_file.expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"key 'database.url_file': cannot read {str(db.url_file)!r} ({exc.strerror}); "
                    "point it at a readable file holding the database URL"
                ) from None
        if db.url:
            return db.url
        return f"sqlite:///{self.home / 'syncd.db'}"


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r} (value {error['input']!r}); see config/syncd.example.toml"
    msg = error["msg"].removeprefix("Value error, ")
    return f"key {key!r}: value {error['input']!r} is not allowed: {msg}"


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate the config; ``None`` means defaults (and ``SYNCD_CONFIG`` if set)."""
    if path is None and os.environ.get("SYNCD_CONFIG"):
        path = Path(os.environ["SYNCD_CONFIG"])
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = f"config {str(path)!r}"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file; pass an existing --config PATH") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    if os.environ.get("SYNCD_HOME"):
        data["home"] = os.environ["SYNCD_HOME"]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
        raise ConfigError(f"{where}: {problems}") from None
    return settings.model_copy(update={"home": settings.home.expanduser()})
