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
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import URL, make_url

from syncd.matching.addresses import normalize_address, normalize_domain
from syncd.matching.matcher import OpportunityPolicy

BodyPolicy = Literal["metadata", "snippet", "full"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class ConfigError(Exception):
    """The config cannot be used; the message says which key, which value and the fix."""


# --- secrets in database URLs -----------------------------------------------------------

# query parameters that may carry a secret (?password=, sslpassword, token, api_key, ...):
# masked wherever a URL is shown, and kept out of the engine's URL (syncd.crm.database)
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
_URL_LIKE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:/")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
URL_EXAMPLE = "postgresql+psycopg://syncd@db.example.com/crm or sqlite:////var/lib/syncd/syncd.db"


def is_secret_name(name: str) -> bool:
    """Whether a URL query parameter or a config key may carry a secret."""
    return bool(_SECRET_NAME.search(name))


def looks_like_url(value: str) -> bool:
    return bool(_URL_LIKE.match(value)) or "://" in value


def mask_url(url: str | URL) -> str:
    """A database URL to show: its password and every query parameter that may carry a
    secret (``?password=``, ``sslpassword``, ``token``, ...) become ``***``."""
    try:
        parsed = make_url(url)
    except Exception:
        return "<a database URL that cannot be parsed (not shown)>"
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    params = []
    for name, value in parsed.query.items():
        for v in value if isinstance(value, tuple) else (value,):
            params.append(f"{quote(name)}={'***' if is_secret_name(name) else quote(v)}")
    return shown + ("?" + "&".join(params) if params else "")


def url_secrets(url: str | URL) -> list[str]:
    """The secret values inside a URL (its password, secret query parameters), to scrub
    from any text (a driver's error message) before it is shown."""
    try:
        parsed = make_url(url)
    except Exception:
        return []
    found = [parsed.password] if parsed.password else []
    for name, value in parsed.query.items():
        if is_secret_name(name):
            found.extend(value if isinstance(value, tuple) else (value,))
    return [str(v) for v in found if v]


def check_database_url(value: str, where: str) -> str:
    """``value`` if it is a database URL syncd can use; else a ConfigError naming where it
    came from and the fix, never the value (it may hold a password)."""
    value = value.strip()
    if not value:
        raise ConfigError(f"{where} is empty; it must hold a database URL such as {URL_EXAMPLE}")
    try:
        backend = make_url(value).get_backend_name()
    except Exception:
        hint = ""
        if _ENV_NAME.match(value):
            hint = (
                " (it looks like the name of an environment variable: name it in "
                "database.url_env instead)"
            )
        raise ConfigError(
            f"{where} does not hold a database URL{hint}; the value is not shown, as it may "
            f"hold a password; give a URL such as {URL_EXAMPLE}"
        ) from None
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"{where}: database {backend!r} is not supported; syncd runs on SQLite or "
            f"PostgreSQL, e.g. {URL_EXAMPLE}"
        )
    return value


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


def normalized_addresses(values: list[str]) -> list[str]:
    """Addresses of the config, normalised; one that is none is a ValueError naming it."""
    out = []
    for a in values:
        norm = normalize_address(a)
        if not norm:
            raise ValueError(f"{a!r} is not an email address")
        out.append(norm)
    return out


def check_holidays(value: str) -> str:
    """``COUNTRY`` or ``COUNTRY-SUBDIVISION`` (ISO 3166 codes the holidays library knows:
    ``DE``, ``DE-BY``, ``US-CA``), upper case; anything else is a ValueError naming the fix."""
    import holidays

    code = value.strip().upper()
    country, _, subdivision = code.partition("-")
    known = holidays.list_supported_countries()
    if country not in known:
        raise ValueError(
            f"{value!r} names no country the holidays library knows; give an ISO 3166 code "
            "such as 'DE', 'FR' or 'US', optionally with a subdivision: 'DE-BY', 'US-CA'"
        )
    if subdivision and subdivision not in known[country]:
        shown = ", ".join(known[country][:12]) + (" ..." if len(known[country]) > 12 else "")
        raise ValueError(f"{value!r}: {country} has no subdivision {subdivision!r} ({shown})")
    return code


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str | None = None
    url_env: str | None = None
    url_file: Path | None = None

    # the messages below never repeat the value: a URL put in the wrong key holds a password
    @field_validator("url_env")
    @classmethod
    def _url_env(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if looks_like_url(v):
            raise ValueError(
                "the value looks like a database URL, but this key takes the *name* of an "
                'environment variable that holds the URL (e.g. url_env = "CRM_DATABASE_URL"); '
                "put the URL in that variable (or in SYNCD_DATABASE_URL) and name it here"
            )
        if not _ENV_NAME.match(v):
            raise ValueError(
                "this is not the name of an environment variable (letters, digits and '_', "
                'not starting with a digit), e.g. url_env = "CRM_DATABASE_URL"'
            )
        return v

    @field_validator("url_file", mode="before")
    @classmethod
    def _url_file(cls, v: object) -> object:
        if isinstance(v, str) and looks_like_url(v):
            raise ValueError(
                "the value looks like a database URL, but this key takes the *path* of a file "
                "that holds the URL; put the URL in a file only syncd can read (chmod 600) "
                "and give its path here"
            )
        return v


class CompanySettings(_Section):
    domains: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    working_hours: str = "09:00-17:30"
    working_days: list[Weekday] = ["mon", "tue", "wed", "thu", "fri"]
    # public holidays are no working days: "DE", "DE-BY", "US-CA" (the holidays library's
    # ISO 3166 country and subdivision codes); a user's own (users.csv) wins
    holidays: str | None = None

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, v: str | None) -> str | None:
        return check_holidays(v) if v else None

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
    # mailboxes synced at once by `syncd run` (0: sized to the machine)
    workers: int = Field(0, ge=0, le=256)
    # seconds a pass runs before it yields its worker to the other mailboxes (at the next
    # batch boundary; the next pass goes on from the cursor)
    pass_budget: int = Field(60, ge=5, le=86400)
    # seconds a pass holds its mailbox without committing before another may take it over
    lease_seconds: int = Field(600, ge=5, le=86400)
    # IMAP connections open at once to one server, across all its mailboxes
    imap_connections: int = Field(8, ge=1, le=1000)
    # worker processes that fetch and parse large reads (a first sync, an import) beside
    # the process that records them (0: one per usable CPU; 1: none, all in one process)
    parse_processes: int = Field(0, ge=0, le=256)


class MetricsSettings(_Section):
    # where `syncd run` and `syncd worker` serve Prometheus metrics, "HOST:PORT"; "" is off
    address: str = ""

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v:
            host, colon, port = v.rpartition(":")
            if not (colon and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(
                    f"{v!r} is not HOST:PORT, such as '127.0.0.1:9108' ('' for no metrics)"
                )
        return v


class ContactsSettings(_Section):
    # the daemon reads the users' address books (Google People, Graph contacts, CardDAV)
    # at every pass and creates a contact for each new person saved there, under the
    # historical import's skip rules (`syncd import contacts` reads them either way)
    sync: bool = False


class AuditSettings(_Section):
    # hours between two gap audits of every mailbox by the daemon (0: never)
    interval_hours: int = Field(24, ge=0, le=24 * 30)


class MatchingSettings(_Section):
    opportunity_tag_prefix: str = Field("OPP-", min_length=1, max_length=20)
    # the deal of an item no tag names: single-open-only (the default: no guess between two
    # open deals), most-recent or all-open (syncd.matching.matcher.weak_choice)
    opportunity: OpportunityPolicy = "single-open-only"
    # contacts made from the mail: never, sent (a person at a known account a user wrote
    # to) or two-way (who also wrote back) (syncd.crm.autocreate)
    create_contacts: Literal["never", "sent", "two-way"] = "never"


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
        return normalized_addresses(v)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [normalize_domain(d) for d in v]


class DropboxSettings(_Section):
    """The dropbox mailboxes (``syncd mailbox add ... --dropbox``): salespeople BCC or
    forward mail to them to log it (``syncd.dropbox``)."""

    # the dropboxes' own addresses: never a participant of what they log (a visible Cc)
    addresses: list[str] = Field(default_factory=list)
    # in a forward's note: the forwarded conversation is removed from the CRM instead
    nocrm_word: str = Field("#nocrm", min_length=1, max_length=40)
    # the receiving mail servers' authserv-ids (RFC 8601): when set, a message is taken
    # only if one of them authenticated its From (DMARC, or aligned DKIM or SPF, pass)
    authserv_ids: list[str] = Field(default_factory=list)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return normalized_addresses(v)


class EngagementSettings(_Section):
    """How hot a contact, account or open deal is (``syncd.engagement``): each email and
    meeting of the last ``window_days`` scores its weight, halved every ``half_life_days``;
    ``hot`` and ``warm`` are the points at or above which it is hot or warm (else cold)."""

    inbound_email: float = Field(2.0, ge=0, le=100)  # their mail to us: a reply weighs most
    outbound_email: float = Field(1.0, ge=0, le=100)
    meeting: float = Field(3.0, ge=0, le=100)
    half_life_days: float = Field(14.0, gt=0, le=365)
    window_days: int = Field(90, ge=1, le=3650)
    hot: float = Field(4.0, gt=0, le=10_000)
    warm: float = Field(1.0, gt=0, le=10_000)

    @model_validator(mode="after")
    def _order(self) -> EngagementSettings:
        if self.warm >= self.hot:
            raise ValueError(f"warm ({self.warm:g}) must be below hot ({self.hot:g})")
        return self


class CallListSettings(_Section):
    """Today's call list, one calendar entry a salesperson each working morning
    (``syncd.calllist``); a user may turn it off or on for themselves (users.csv). Off
    unless turned on: it writes into every salesperson's calendar every working day."""

    enabled: bool = False
    cooling_days: int = Field(14, ge=1, le=365)  # an open deal untouched this long cools
    deals: int = Field(10, ge=1, le=100)  # cooling deals listed at most


class NoReplyRule(_Section):
    enabled: bool = True
    business_days: int = Field(3, ge=1, le=60)


class MeetingNotesRule(_Section):
    enabled: bool = True


class FollowupSettings(_Section):
    lookback_days: int = Field(14, ge=0, le=365)
    no_reply: NoReplyRule = NoReplyRule()
    meeting_notes: MeetingNotesRule = MeetingNotesRule()


MiB = 1024 * 1024


class LimitSettings(_Section):
    """What one item may hold before any parser sees it (issue: hostile input). An item over
    a limit is quarantined naming the limit it broke, and the pass goes on. Anyone on the
    internet can mail a salesperson: these keep one message from exhausting syncd."""

    message_bytes: int = Field(25 * MiB, ge=64 * 1024, le=1024 * MiB)
    header_bytes: int = Field(256 * 1024, ge=4096, le=64 * MiB)
    headers: int = Field(1000, ge=50, le=1_000_000)  # header fields in a message
    encoded_words: int = Field(200, ge=10, le=1_000_000)  # RFC 2047 words in one header
    mime_parts: int = Field(500, ge=10, le=1_000_000)
    mime_depth: int = Field(20, ge=3, le=1000)
    calendar_objects: int = Field(1000, ge=10, le=1_000_000)  # components in one .ics
    occurrences: int = Field(500, ge=10, le=1_000_000)  # of one event, in the window
    batch_bytes: int = Field(64 * MiB, ge=MiB, le=4096 * MiB)  # raw bytes held per batch
    parse_seconds: float = Field(5.0, ge=0.1, le=300)  # one item's parse, at most


class ReadLimits(LimitSettings):
    """The limits as a connector reads a mailbox with them, and how its messages are read:
    ``keep_raw``, a dropbox's, keeps each message's bytes with its item (``syncd.dropbox``
    unpacks the forwards in them). Never in the config: ``syncd.sync.mailbox_spec`` sets it.
    The limits travel to every parser, the parse workers too, so the switch travels along."""

    keep_raw: bool = False


class Settings(_Section):
    home: Path = Field(default_factory=lambda: Path("~/.local/state/syncd").expanduser())
    database: DatabaseSettings = DatabaseSettings()
    company: CompanySettings = CompanySettings()
    sync: SyncSettings = SyncSettings()
    matching: MatchingSettings = MatchingSettings()
    exclusions: ExclusionSettings = ExclusionSettings()
    dropbox: DropboxSettings = DropboxSettings()
    engagement: EngagementSettings = EngagementSettings()
    call_list: CallListSettings = CallListSettings()
    followups: FollowupSettings = FollowupSettings()
    limits: LimitSettings = LimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    audit: AuditSettings = AuditSettings()
    contacts: ContactsSettings = ContactsSettings()

    def database_url(self) -> str:
        """The database URL: SYNCD_DATABASE_URL, else url_env, url_file, url, else SQLite.

        A value that is not a usable URL is a ConfigError naming where it came from; the
        value itself is never shown (it may hold a password)."""
        if os.environ.get("SYNCD_DATABASE_URL"):
            return check_database_url(
                os.environ["SYNCD_DATABASE_URL"], "the environment variable SYNCD_DATABASE_URL"
            )
        db = self.database
        if db.url_env:
            value = os.environ.get(db.url_env)
            if not value:
                raise ConfigError(
                    f"key 'database.url_env': environment variable {db.url_env!r} is not set; "
                    "set it to the database URL or remove the key"
                )
            return check_database_url(
                value, f"the environment variable {db.url_env!r} (key 'database.url_env')"
            )
        if db.url_file:
            try:
                value = db.url_file.expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    f"key 'database.url_file': cannot read {str(db.url_file)!r} ({why}); "
                    "point it at a readable file holding the database URL"
                ) from None
            return check_database_url(
                value, f"the file {str(db.url_file)!r} (key 'database.url_file')"
            )
        if db.url:
            return check_database_url(db.url, "key 'database.url'")
        return f"sqlite:///{self.home / 'syncd.db'}"


def _shown(key: str, value: Any) -> str:
    """A config value as an error may show it: never one that may hold a secret (anything
    under [database], a key named like a password or token, a URL with credentials)."""
    if key.startswith("database.") or any(is_secret_name(part) for part in key.split(".")):
        return "(not shown: it may hold a secret)"
    if isinstance(value, str) and looks_like_url(value) and url_secrets(value):
        return repr(mask_url(value))
    return repr(value)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    value = _shown(key, error["input"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r} (value {value}); see config/syncd.example.toml"
    msg = error["msg"].removeprefix("Value error, ")
    return f"key {key!r}: value {value} is not allowed: {msg}"


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
