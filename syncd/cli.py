"""The ``syncd`` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import ConfigError, Settings, load_settings
from syncd.connectors.base import (
    ConnectorError,
    check_endpoints,
    check_tls,
    check_url,
    mask_urls,
    split_credentials,
)
from syncd.crm import quarantine as quarantine_store
from syncd.crm import queries, recorder
from syncd.crm.database import (
    DatabaseError,
    check_schema,
    make_engine,
    safe_url,
    session_factory,
    upgrade,
)
from syncd.crm.loader import LoadError, load_csv
from syncd.crm.models import Mailbox, User
from syncd.matching.addresses import normalize_address
from syncd.secrets import Secret, SecretBox, SecretsError, token_cache_path

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


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


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
) -> None:
    state.config = config
    state._settings = None
    state._sessions = None
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        state.settings()  # a bad config is reported before anything runs
    except ConfigError as exc:
        fail(str(exc), 2)


# --- db ---------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the CRM database or migrate it to this version of syncd (Alembic)."""
    url = state.settings().database_url()
    upgrade(make_engine(url))
    say(f"database {safe_url(url)} is up to date")


# --- crm --------------------------------------------------------------------------------


class RecordKind(StrEnum):
    users = "users"
    accounts = "accounts"
    contacts = "contacts"
    opportunities = "opportunities"


@crm_app.command("load")
def crm_load(
    kind: Annotated[RecordKind, typer.Argument(help="What the file holds.")],
    file: Annotated[Path, typer.Argument(help="UTF-8 CSV with a header row.")],
) -> None:
    """Load CRM records from CSV; upserts by email, domain, name or external id.

    \b
    users:         email, name [, timezone, working_hours]
    accounts:      name, domains [, external_id]
    contacts:      emails, name [, account, title, phone]
    opportunities: external_id, name, account, owner
                   [, stage, amount, currency, close_date, status, contacts]
    Several values in one cell are separated by ';'. An opportunity's contacts may carry a
    role: 'carla@acme.test=Decision maker'. A bad row is reported with its line and column,
    and nothing of that file is written.
    """
    with state.sessions().begin() as session:
        report = load_csv(session, kind.value, file)
    say(f"{kind.value}: {report.created} created, {report.updated} updated from {file}")


# --- mailbox ----------------------------------------------------------------------------


class Kind(StrEnum):
    local = "local"
    imap = "imap"
    gmail = "gmail"
    microsoft = "microsoft"


class TaskPlace(StrEnum):
    todo = "todo"
    events = "events"


class Body(StrEnum):
    metadata = "metadata"
    snippet = "snippet"
    full = "full"


class Tls(StrEnum):
    implicit = "implicit"
    starttls = "starttls"
    none = "none"


PasswordFile = Annotated[
    Path | None,
    typer.Option("--password-file", help="imap: read the password (or token) from this file."),
]
PasswordEnv = Annotated[
    str | None,
    typer.Option(
        "--password-env", help="imap: read the password (or token) from this environment variable."
    ),
]


def read_secret(password_file: Path | None, password_env: str | None, what: str) -> Secret:
    """From a file, an environment variable, or a prompt: never from the command line."""
    if password_file is not None:
        try:
            value = password_file.read_text(encoding="utf-8").strip("\r\n")
        except OSError as exc:
            fail(f"--password-file {str(password_file)!r}: {exc.strerror}")
            raise
    elif password_env is not None:
        value = os.environ.get(password_env, "")
        if not value:
            fail(f"--password-env {password_env!r}: that environment variable is not set")
    elif sys.stdin.isatty():
        value = typer.prompt(what, hide_input=True)
    else:
        fail(
            f"no {what} given: use --password-file FILE or --password-env VAR "
            "(a password is never taken from the command line)"
        )
        raise AssertionError
    if not value:
        fail(f"the {what} is empty")
    return Secret(value)


def _local_settings(
    maildir: Path | None, calendar: Path | None, mbox: list[Path]
) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if maildir is None and not mbox:
        fail("a local mailbox needs --maildir DIR or --mbox FILE")
    if maildir is not None:
        maildir = maildir.expanduser().resolve()
        if not (maildir / "cur").is_dir():
            fail(
                f"--maildir {str(maildir)!r} is not a Maildir (no cur/ inside); "
                "give the folder that holds cur/, new/ and tmp/"
            )
        settings["maildir"] = str(maildir)
    for m in mbox:
        if not m.is_file():
            fail(f"--mbox {str(m)!r} is not a file; give the path of an mbox archive")
    if mbox:
        settings["mbox"] = [str(m.expanduser().resolve()) for m in mbox]
    if calendar is not None:
        calendar = calendar.expanduser().resolve()
        calendar.mkdir(parents=True, exist_ok=True)
        settings["calendar"] = str(calendar)
    return settings


def _gmail_settings(
    user: str, service_account: Path | None, oauth_client: Path | None, since: str | None
) -> tuple[dict[str, Any], Secret]:
    from syncd.connectors import gmail

    settings: dict[str, Any] = {}
    days = _since_days(since)
    if days is not None:
        settings["since_days"] = days
    try:
        if service_account is not None and oauth_client is None:
            settings["mode"] = "service_account"
            key = gmail.read_service_account(str(service_account))
            token_uri = json.loads(key).get("token_uri")
            if token_uri:  # where the signed assertion goes, for an access token
                _checked_url(
                    str(token_uri), f"--service-account {str(service_account)!r}: token_uri"
                )
            return settings, Secret(key)
        if oauth_client is not None and service_account is None:
            client = gmail.read_oauth_client(str(oauth_client))
            for key in ("auth_uri", "token_uri"):
                _checked_url(str(client[key]), f"--oauth-client {str(oauth_client)!r}: {key}")
            settings.update(
                mode="oauth",
                client_id=client["client_id"],
                auth_uri=client["auth_uri"],
                token_uri=client["token_uri"],
            )
            refresh = gmail.oauth_consent(
                client,
                lambda url: say(
                    "Open this URL, sign in as " + user + " and allow access:\n" + url, sys.stderr
                ),
                login_hint=user,
            )
            return settings, Secret(
                json.dumps({"refresh_token": refresh, "client_secret": client["client_secret"]})
            )
    except ConnectorError as exc:
        fail(str(exc))
    fail(
        "a gmail mailbox needs --service-account KEYFILE (admin mode) or --oauth-client FILE "
        "(user mode), one of them"
    )
    raise AssertionError


def _since_days(since: str | None) -> int | None:
    if not since:
        return None
    try:
        return max((datetime.now(UTC).date() - date.fromisoformat(since)).days, 0)
    except ValueError:
        fail(f"--since {since!r} is not a date such as 2024-01-31")
        raise


def _microsoft_secret(
    settings: dict[str, Any],
    email: str,
    client_secret_file: Path | None,
    certificate: Path | None,
    device_code: bool,
) -> Secret:
    """The secret of a microsoft mailbox: a client secret, a certificate (admin mode), or
    the token cache of a device-code sign-in (user mode, run now)."""
    from syncd.connectors import microsoft

    if sum((client_secret_file is not None, certificate is not None, device_code)) != 1:
        fail(
            "a microsoft mailbox needs one of --client-secret-file FILE or --certificate PEM "
            "(admin mode, application permissions) or --device-code (user mode)"
        )
    try:
        if device_code:
            settings["mode"] = "device"
            return Secret(
                microsoft.sign_in_with_device_code(
                    settings, lambda text: say(f"{text} (sign in as {email})", sys.stderr)
                )
            )
        settings["mode"] = "app"
        if certificate is not None:
            return Secret(microsoft.read_certificate(str(certificate)))
        assert client_secret_file is not None
        value = client_secret_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"--client-secret-file {str(client_secret_file)!r}: {exc.strerror}")
        raise
    except ConnectorError as exc:
        fail(str(exc))
        raise
    if not value:
        fail(f"--client-secret-file {str(client_secret_file)!r} is empty")
    return Secret(value)


def _checked_url(url: str, what: str) -> str:
    """An endpoint given to ``mailbox add``: https (http only to this machine), and no login
    or password in it (a URL is stored and shown in clear). Refused with exit code 2."""
    bare = split_credentials(url)[0]
    if bare != url:
        fail(
            f"{what} {mask_urls(url)!r} holds a login or password; a URL is stored and shown "
            f"in clear, so syncd takes none in it: give {bare!r} (the password comes from "
            "--password-file, --password-env or the prompt, and is stored encrypted)",
            2,
        )
    try:
        check_url(url, what)
    except ConnectorError as exc:
        fail(str(exc), 2)
    return url


def _caldav_url(url: str) -> tuple[str, str | None]:
    """``--caldav``: the URL without credentials, and the CalDAV login when the URL named
    only one (``https://ana@dav.example/``). A password in it is refused: it would be
    stored in clear, and CalDAV uses the mailbox's own (encrypted) password."""
    bare, login, password = split_credentials(url)
    if password is not None:
        fail(
            f"--caldav {mask_urls(url)!r} holds a password; a URL is stored and shown in "
            f"clear, so syncd takes none in it: give --caldav {bare!r}. CalDAV logs in with "
            "the mailbox's login (--login) and its password (--password-file, --password-env "
            "or the prompt), which is stored encrypted",
            2,
        )
    try:
        check_url(bare, "--caldav")
    except ConnectorError as exc:
        fail(str(exc), 2)
    return bare, login


def _shown(value: Any) -> Any:
    """A mailbox setting as it may be shown: a URL's login and password masked (a row
    written by an older syncd or edited by hand may hold them)."""
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    return value


def _new_mailbox_owner(session: Session, name: str, user: str) -> int:
    """The id of the CRM user who will own mailbox ``name``, which must be a new name."""
    owner = session.scalar(select(User.id).where(User.email == normalize_address(user)))
    if owner is None:
        fail(f"no CRM user {user!r}; load users first with 'syncd crm load users FILE.csv'")
        raise AssertionError
    if session.scalar(select(Mailbox.id).where(Mailbox.name == name)) is not None:
        fail(f"a mailbox named {name!r} exists already; remove it or pick another name")
    return owner


@mailbox_app.command("add")
def mailbox_add(
    name: Annotated[str, typer.Argument(help="A name for the mailbox, e.g. the address.")],
    kind: Annotated[Kind, typer.Option("--kind", help="The provider kind.")],
    user: Annotated[str, typer.Option("--user", help="The CRM user who owns it (email).")],
    maildir: Annotated[
        Path | None, typer.Option("--maildir", help="local: the Maildir (holding cur/ new/).")
    ] = None,
    calendar: Annotated[
        Path | None,
        typer.Option(
            "--calendar",
            help="local: a vdir calendar folder of .ics files; "
            "follow-up tasks are written into it.",
        ),
    ] = None,
    mbox: Annotated[
        list[Path] | None,
        typer.Option("--mbox", help="local: an mbox archive (e.g. Google Takeout); repeatable."),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="imap: the server.")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="imap: default 993 (implicit TLS), else 143.")
    ] = None,
    tls: Annotated[
        Tls, typer.Option("--tls", help="imap: implicit, starttls, or none (loopback only).")
    ] = Tls.implicit,
    login: Annotated[
        str | None, typer.Option("--login", help="imap: the login (default: the user's email).")
    ] = None,
    xoauth2: Annotated[
        bool, typer.Option("--xoauth2", help="imap: the secret is an OAuth2 access token.")
    ] = False,
    password_file: PasswordFile = None,
    password_env: PasswordEnv = None,
    folder: Annotated[
        list[str] | None, typer.Option("--folder", help="imap: another folder to read; repeatable.")
    ] = None,
    exclude_folder: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-folder",
            help="A folder never to read, besides the config's exclusions.folders; repeatable.",
        ),
    ] = None,
    idle: Annotated[
        bool, typer.Option("--idle/--no-idle", help="imap: push new INBOX mail with IDLE.")
    ] = False,
    caldav: Annotated[
        str | None,
        typer.Option(
            "--caldav",
            help="imap: the CalDAV server URL of the same user's calendars (same login and "
            "password): https://, or http:// to this machine only; never a password in it.",
        ),
    ] = None,
    service_account: Annotated[
        Path | None,
        typer.Option(
            "--service-account",
            help="gmail: a service account key (JSON) with domain-wide delegation: the admin mode.",
        ),
    ] = None,
    oauth_client: Annotated[
        Path | None,
        typer.Option(
            "--oauth-client",
            help="gmail: an OAuth 'Desktop app' client file: the user mode (prints a consent URL).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="gmail, microsoft: first sync from DATE (YYYY-MM-DD); default 90 days back.",
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="microsoft: the Entra ID tenant (id or domain)."),
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option("--client-id", help="microsoft: the app registration's client id."),
    ] = None,
    client_secret_file: Annotated[
        Path | None,
        typer.Option(
            "--client-secret-file",
            help="microsoft (admin mode): a file holding the app's client secret.",
        ),
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(
            "--certificate",
            help="microsoft (admin mode): a PEM file with the private key and the certificate "
            "uploaded to the app registration.",
        ),
    ] = None,
    device_code: Annotated[
        bool,
        typer.Option(
            "--device-code",
            help="microsoft (user mode): sign in as the user now (prints a code to enter).",
        ),
    ] = False,
    tasks: Annotated[
        TaskPlace,
        typer.Option("--tasks", help="microsoft: write follow-ups as To Do tasks or events."),
    ] = TaskPlace.todo,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle",
            help="microsoft: a PEM file of CAs to trust instead of the system's "
            "(a TLS-inspecting proxy).",
        ),
    ] = None,
    authority: Annotated[
        str | None,
        typer.Option("--authority", hidden=True, help="microsoft: another sign-in host."),
    ] = None,
    graph_url: Annotated[
        str | None,
        typer.Option("--graph-url", hidden=True, help="microsoft: another Graph base URL."),
    ] = None,
    api_endpoint: Annotated[
        str | None,
        typer.Option(
            "--api-endpoint",
            hidden=True,
            help="gmail: another API base URL (a proxy, a test server).",
        ),
    ] = None,
    poll_interval: Annotated[
        int | None, typer.Option("--poll-interval", min=5, help="Seconds between polls.")
    ] = None,
    body: Annotated[
        Body | None, typer.Option("--body", help="What to store of a message's body.")
    ] = None,
) -> None:
    """Connect a mailbox of a CRM user.

    \b
    local: --maildir DIR [--calendar DIR] [--mbox FILE ...]
    imap:  --host H [--port P] [--tls implicit|starttls|none] [--login L] [--xoauth2]
           [--password-file F | --password-env VAR | prompt] [--folder F ...] [--idle]
           [--caldav URL]
    gmail: --service-account KEYFILE | --oauth-client FILE [--since DATE]
    microsoft: --tenant T --client-id C (--client-secret-file F | --certificate PEM
           | --device-code) [--tasks todo|events] [--since DATE] [--ca-bundle PEM]
    all:   [--exclude-folder F ...] [--poll-interval S] [--body metadata|snippet|full]
    """
    email = normalize_address(user)
    with state.sessions()() as session:  # before any sign-in or consent is asked for
        _new_mailbox_owner(session, name, user)
    secret: Secret | None = None
    if kind is Kind.local:
        settings = _local_settings(maildir, calendar, mbox or [])
    elif kind is Kind.microsoft:
        if not tenant or not client_id:
            fail("a microsoft mailbox needs --tenant and --client-id")
        for url, option in ((authority, "--authority"), (graph_url, "--graph-url")):
            if url is not None:
                _checked_url(url, option)  # before the device-code sign-in sends anything
        settings = {"tenant": tenant, "client_id": client_id, "tasks": tasks.value}
        for key, value in (
            ("authority", authority),
            ("graph_url", graph_url),
            ("ca_bundle", str(ca_bundle.resolve()) if ca_bundle else None),
            ("since_days", _since_days(since)),
        ):
            if value is not None:
                settings[key] = value
        secret = _microsoft_secret(settings, email, client_secret_file, certificate, device_code)
    elif kind is Kind.gmail:
        if api_endpoint:
            _checked_url(api_endpoint, "--api-endpoint")
        settings, secret = _gmail_settings(user, service_account, oauth_client, since)
        if api_endpoint:
            settings["api_endpoint"] = api_endpoint
    else:
        if not host:
            fail("an imap mailbox needs --host")
            return
        try:
            check_tls(host, tls.value)
        except ConnectorError as exc:
            fail(str(exc), 2)
        caldav_url, caldav_login = _caldav_url(caldav) if caldav else (None, None)
        settings = {
            "host": host,
            "tls": tls.value,
            "auth": "xoauth2" if xoauth2 else "password",
            "idle": idle,
            "folders": folder or [],
        }
        if port is not None:
            settings["port"] = port
        if login:
            settings["login"] = login
        if caldav_url:
            settings["caldav_url"] = caldav_url
            if caldav_login and caldav_login != (login or email):
                settings["caldav_login"] = caldav_login
        secret = read_secret(password_file, password_env, "token" if xoauth2 else "password")
    if exclude_folder:
        settings["excluded_folders"] = exclude_folder
    if poll_interval is not None:
        settings["poll_interval"] = poll_interval
    if body is not None:
        settings["body"] = body.value
    token = SecretBox(state.settings().home).encrypt(secret) if secret else None
    with state.sessions().begin() as session:
        recorder.add_mailbox(
            session,
            name=name,
            kind=kind.value,
            user_id=_new_mailbox_owner(session, name, user),
            settings=settings,
            secret_token=token,
        )
    say(f"mailbox {name!r} added for {email}")


@mailbox_app.command("reauth")
def mailbox_reauth(
    name: Annotated[str, typer.Argument(help="The mailbox name.")],
    password_file: PasswordFile = None,
    password_env: PasswordEnv = None,
    service_account: Annotated[
        Path | None,
        typer.Option("--service-account", help="gmail (admin mode): a new key file."),
    ] = None,
    client_secret_file: Annotated[
        Path | None,
        typer.Option("--client-secret-file", help="microsoft (admin mode): a new client secret."),
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option("--certificate", help="microsoft (admin mode): a new certificate (PEM)."),
    ] = None,
) -> None:
    """Give a mailbox new credentials and retry it at the next poll.

    \b
    imap:  a new password or token (--password-file, --password-env or a prompt)
    gmail: user mode runs the consent again; admin mode takes --service-account KEYFILE
    microsoft: user mode signs in again (device code); admin mode takes
           --client-secret-file F or --certificate PEM
    """
    box = SecretBox(state.settings().home)
    with state.sessions()() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == name))
        if mailbox is None:
            fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
            return
        kind, settings, old, email = (
            mailbox.kind,
            dict(mailbox.settings),
            mailbox.secret,
            mailbox.user.email,
        )
    try:
        check_endpoints(name, settings)
    except ConnectorError as exc:
        fail(f"{exc}; fix the mailbox's settings (or remove it and add it again)", 2)
    if kind == "gmail":
        from syncd.connectors import gmail

        try:
            if settings.get("mode") == "oauth":
                client_secret = json.loads(box.decrypt(old or "", name).reveal())["client_secret"]
                client = {
                    "client_id": settings["client_id"],
                    "client_secret": client_secret,
                    "auth_uri": settings["auth_uri"],
                    "token_uri": settings["token_uri"],
                }
                refresh = gmail.oauth_consent(
                    client,
                    lambda url: say(
                        "Open this URL, sign in as " + email + " and allow access:\n" + url,
                        sys.stderr,
                    ),
                    login_hint=email,
                )
                secret = Secret(
                    json.dumps({"refresh_token": refresh, "client_secret": client_secret})
                )
            elif service_account is not None:
                secret = Secret(gmail.read_service_account(str(service_account)))
            else:
                fail("this gmail mailbox runs in admin mode: give --service-account KEYFILE")
                return
        except (ConnectorError, SecretsError) as exc:
            fail(str(exc))
            return
        what = "credentials"
    elif kind == "microsoft":
        device = settings.get("mode") == "device"
        secret = _microsoft_secret(settings, email, client_secret_file, certificate, device)
        token_cache_path(state.settings().home, name).unlink(missing_ok=True)
        what = "sign-in" if device else "credentials"
    else:
        what = "token" if settings.get("auth") == "xoauth2" else "password"
        secret = read_secret(password_file, password_env, what)
    try:
        check_endpoints(name, {}, secret)  # a new key names its own token endpoint
    except ConnectorError as exc:
        fail(str(exc), 2)
    with state.sessions().begin() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == name))
        assert mailbox is not None
        mailbox.secret = box.encrypt(secret)
        mailbox.state, mailbox.failures, mailbox.last_attempt = "ok", 0, None
    say(f"mailbox {name!r}: new {what} stored; it will be synced at the next poll")


@mailbox_app.command("list")
def mailbox_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List connected mailboxes."""
    with state.sessions()() as session:
        rows: list[dict[str, Any]] = [
            {"mailbox": m.name, "kind": m.kind, "user": u, "settings": _shown(m.settings)}
            for m, u in session.execute(
                select(Mailbox, User.email).join(User).order_by(Mailbox.name)
            )
        ]
    if as_json:
        _json(rows)
        return
    table = Table("mailbox", "kind", "user", "settings")
    for r in rows:
        table.add_row(
            r["mailbox"],
            r["kind"],
            r["user"],
            ", ".join(f"{k}={v}" for k, v in r["settings"].items()),
        )
    out.print(table)


@mailbox_app.command("remove")
def mailbox_remove(name: Annotated[str, typer.Argument(help="The mailbox name.")]) -> None:
    """Disconnect a mailbox; its activities stay in the CRM."""
    with state.sessions().begin() as session:
        if not recorder.remove_mailbox(session, name):
            fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
    token_cache_path(state.settings().home, name).unlink(missing_ok=True)
    say(f"mailbox {name!r} removed")


@mailbox_app.command("resume")
def mailbox_resume(name: Annotated[str, typer.Argument(help="The mailbox name.")]) -> None:
    """Retry a parked or failing mailbox at the next poll."""
    with state.sessions().begin() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == name))
        if mailbox is None:
            fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
            return
        mailbox.state, mailbox.failures, mailbox.last_attempt = "ok", 0, None
    say(f"mailbox {name!r} will be synced at the next poll")


# --- sync, run, status ------------------------------------------------------------------


@app.command("sync")
def sync_cmd(
    name: Annotated[str | None, typer.Argument(help="One mailbox (default: all).")] = None,
) -> None:
    """One pass over one or all mailboxes, then exit (non-zero if any mailbox failed)."""
    from syncd.sync import sync_mailbox

    sessions = state.sessions()
    with sessions() as session:
        names = list(session.scalars(select(Mailbox.name).order_by(Mailbox.name)))
    if name is not None:
        if name not in names:
            fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
        names = [name]
    if not names:
        fail("no mailbox is connected; add one with 'syncd mailbox add'")
    failed = 0
    for n in names:
        try:
            r = sync_mailbox(sessions, state.settings(), n)
        except ConnectorError as exc:
            say(f"{n}: failed: {mask_urls(str(exc))}", sys.stderr)
            failed += 1
            continue
        if r.ok:
            say(
                f"{n}: ok: {r.new_activities} new activities, {r.new_sightings} sightings, "
                f"{sum(r.excluded.values())} not logged, {r.quarantined} quarantined, "
                f"{r.tasks_changed} tasks changed, {r.tasks_written} written"
            )
        else:
            failed += 1
            say(f"{n}: {r.state}: {mask_urls(r.error or '')}", sys.stderr)
    if failed:
        raise typer.Exit(1)


@app.command("run")
def run_cmd() -> None:
    """The daemon: poll every mailbox at its interval until SIGTERM/SIGINT."""
    from syncd.daemon import Daemon

    raise typer.Exit(Daemon(state.sessions(), state.settings()).run())


WRITER_FIX = (
    "mail is still read and logged; give syncd write access to that calendar or task list (see the "
    "error), then the pending tasks are written at the next poll, or now with 'syncd sync {name}'"
)


def _writer_and_quarantine(session: Session) -> dict[str, dict[str, Any]]:
    """Per mailbox: its task write-back's own state, and how many items are quarantined."""
    quarantined = quarantine_store.counts(session)
    found: dict[str, dict[str, Any]] = {}
    for name, writer_state, error, at in session.execute(
        select(Mailbox.name, Mailbox.writer_state, Mailbox.writer_error, Mailbox.writer_at)
    ):
        tasks: dict[str, Any] = {
            "state": writer_state or "ok",
            "error": error,
            "updated_at": at.isoformat() if at else None,
        }
        if tasks["state"] != "ok":
            tasks["fix"] = WRITER_FIX.format(name=name)
        found[name] = {"tasks": tasks, "quarantined": quarantined.get(name, 0)}
    return found


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per mailbox: kind, state (ok / failing / parked), last success, items, last error,
    the state of its follow-up task write-back (tasks: ok / failing), and how many of its
    items are quarantined. A failing or parked mailbox's error names the fix."""
    with state.sessions()() as session:
        rows = queries.status_report(session)
        extra = _writer_and_quarantine(session)
    for r in rows:
        r.update(extra.get(r["mailbox"], {"tasks": {"state": "ok"}, "quarantined": 0}))
        if r.get("error"):  # an error stored by an older syncd may quote a URL's password
            r["error"] = mask_urls(r["error"])
        if r["tasks"].get("error"):
            r["tasks"]["error"] = mask_urls(r["tasks"]["error"])
    if as_json:
        _json(rows)
        return
    table = Table(
        "mailbox", "kind", "user", "state", "last success", "items", "error", "tasks", "quarantined"
    )
    colour = {"ok": "green", "failing": "yellow", "parked": "red"}
    notes: list[str] = []
    for r in rows:
        tasks = r["tasks"]
        tasks_cell = Text(tasks["state"], style=colour.get(tasks["state"], "white"))
        if tasks.get("error"):
            tasks_cell.append(f": {_printable(tasks['error'])}")
        if tasks.get("fix"):
            notes.append(f"{r['mailbox']}: follow-up tasks are not written: {tasks['fix']}")
        if r["quarantined"]:
            n = r["quarantined"]
            notes.append(
                f"{r['mailbox']}: {n} item{'s' if n != 1 else ''} could not be read: see "
                f"'syncd quarantine list --mailbox {r['mailbox']}'"
            )
        table.add_row(
            Text(r["mailbox"]),
            r["kind"],
            r["user"],
            Text(r["state"], style=colour.get(r["state"], "white")),
            r["last_success"] or "never",
            str(r["items"]),
            Text(_printable(r["error"] or "")),
            tasks_cell,
            str(r["quarantined"]),
        )
    out.print(table)
    for note in notes:
        say(note)


@app.command("activities")
def activities_cmd(
    contact: Annotated[str | None, typer.Option(help="Only a contact's (by email).")] = None,
    account: Annotated[str | None, typer.Option(help="Only an account's (domain or name).")] = None,
    opportunity: Annotated[
        str | None, typer.Option(help="Only an opportunity's (external id).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The timeline: each activity with its links and the reason for each link."""
    with state.sessions()() as session:
        rows = queries.timeline(session, contact, account, opportunity)
    if as_json:
        _json(rows)
        return
    table = Table("when", "kind", "dir", "subject", "links (reason)", "mailboxes")
    for r in rows:
        links = "\n".join(f"{lk['type']}: {lk['name']} ({lk['reason']})" for lk in r["links"])
        if r["note"]:
            links += f"\n[dim]{r['note']}[/]"
        subject = r["subject"] + (" [cancelled]" if r["status"] == "cancelled" else "")
        table.add_row(
            r["occurred_at"][:16].replace("T", " "),
            r["kind"],
            r["direction"],
            subject,
            links,
            ", ".join(r["mailboxes"]),
        )
    out.print(table)


@app.command("tasks")
def tasks_cmd(
    user: Annotated[str | None, typer.Option(help="Only a user's (by email).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Follow-up tasks and their state."""
    with state.sessions()() as session:
        rows = queries.task_report(session, user)
    if as_json:
        _json(rows)
        return
    table = Table("due", "user", "status", "title", "rule", "in calendar")
    for r in rows:
        status = r["status"] + (f" ({r['resolution']})" if r["resolution"] else "")
        table.add_row(
            r["due"][:16].replace("T", " "),
            r["user"],
            status,
            r["title"],
            r["rule"],
            "yes" if r["in_calendar"] else (r["write_error"] or "pending"),
        )
    out.print(table)


# --- quarantine -------------------------------------------------------------------------


def _printable(text: str) -> str:
    """Text from outside (a reason, a provider id: they can hold anything) made safe for a
    terminal: control characters are shown escaped, never sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _known_mailbox(session: Session, name: str | None) -> None:
    if name is not None and session.scalar(select(Mailbox.id).where(Mailbox.name == name)) is None:
        fail(f"--mailbox {name!r}: no mailbox has that name; see 'syncd mailbox list'", 2)


def _size(n: int | None) -> str:
    if n is None:
        return "not kept"
    return f"{n} bytes" if n < 10240 else f"{n // 1024} KB"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


@quarantine_app.command("list")
def quarantine_list(
    mailbox: Annotated[
        str | None, typer.Option("--mailbox", help="Only this mailbox's entries.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The items syncd could not read, oldest first: id, mailbox, source, provider id, when,
    attempts, whether a copy was kept (needed for a retry), and the reason."""
    with state.sessions()() as session:
        _known_mailbox(session, mailbox)
        rows = quarantine_store.entries(session, mailbox)
    if as_json:
        _json([r.as_dict() for r in rows])
        return
    if not rows:
        say("nothing is quarantined" + (f" in mailbox {mailbox!r}" if mailbox else ""))
        return
    table = Table("id", "mailbox", "source", "provider id", "since", "tries", "kept", "reason")
    for r in rows:
        table.add_row(
            str(r.id),
            Text(r.mailbox),
            Text(_printable(r.source)),
            Text(_printable(r.provider_id)),
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            str(r.attempts),
            f"{r.format}, {_size(r.size)}" if r.retryable else "no copy",
            Text(_printable(r.reason)),
        )
    out.print(table)
    say(
        "details: syncd quarantine show ID; read again with this version of syncd: "
        "syncd quarantine retry ID ... (or --all)"
    )


def _entry_or_fail(session: Session, entry_id: int) -> quarantine_store.Entry:
    found = quarantine_store.entries(session, ids=[entry_id])
    if not found:
        fail(f"no quarantine entry {entry_id}; see 'syncd quarantine list' for the ids", 2)
    return found[0]


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file only its owner can read (0600), never over another."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fail(f"--raw {str(path)!r} exists already; give the name of a new file", 2)
        raise
    except OSError as exc:
        fail(f"--raw {str(path)!r}: {exc.strerror}")
        raise
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)


@quarantine_app.command("show")
def quarantine_show(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="The entry's id (see list).")],
    raw_file: Annotated[
        Path | None,
        typer.Option(
            "--raw",
            metavar="FILE",
            help="Write the item's bytes, as read, to FILE (a new file, mode 0600). They are "
            "never printed: they can hold anything.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One quarantined item: why it was not read, where it is (mailbox, source, provider
    id), when, how many attempts, its format and size, and whether it can be retried."""
    from syncd.quarantine import why_not_retryable

    with state.sessions()() as session:
        entry = _entry_or_fail(session, entry_id)
        data = quarantine_store.raw(session, entry_id) if raw_file is not None else None
    if raw_file is not None:
        if data is None:
            fail(f"entry {entry_id} has no bytes to write: {why_not_retryable(entry)}")
            return
        _write_private(raw_file, data)
    if as_json:
        _json({**entry.as_dict(), "raw_file": str(raw_file) if raw_file else None})
        return
    retry = (
        f"syncd quarantine retry {entry.id}"
        if entry.retryable
        else f"not possible: {why_not_retryable(entry)}"
    )
    raw_line = (
        f"written to {raw_file} (mode 0600)"
        if raw_file is not None
        else ("not shown; write them to a file with --raw FILE" if entry.retryable else "none")
    )
    for label, value in (
        ("entry", str(entry.id)),
        ("reason", entry.reason),
        ("mailbox", entry.mailbox),
        ("source", entry.source),
        ("provider id", entry.provider_id),
        ("quarantined", _when(entry.created_at)),
        ("last attempt", _when(entry.updated_at or entry.created_at)),
        ("attempts", str(entry.attempts)),
        ("format", entry.format or "unknown"),
        ("size", _size(entry.size)),
        ("raw bytes", raw_line),
        ("retry", retry),
    ):
        say(f"{label + ':':<14}{_printable(value)}")


@quarantine_app.command("retry")
def quarantine_retry(
    entry_ids: Annotated[
        list[int] | None, typer.Argument(metavar="ID", help="The entries to retry.")
    ] = None,
    all_entries: Annotated[
        bool, typer.Option("--all", help="Retry every entry (of --mailbox, if given).")
    ] = False,
    mailbox: Annotated[
        str | None,
        typer.Option("--mailbox", help="Retry every entry of this mailbox (same as with --all)."),
    ] = None,
) -> None:
    """Read quarantined items again with this version of syncd, e.g. after an upgrade.

    Each item is parsed again from the copy kept of it and goes through the same rules as
    a sync: logged (and its entry dropped), not logged by the rules (bulk, private...:
    the entry is dropped too), or still unreadable (the entry stays, with the new reason).
    Exit code 0 when every item was read, 1 when some is still unreadable or has no copy
    to read, 2 for a bad argument.
    """
    from syncd.quarantine import Retrier

    if entry_ids and (all_entries or mailbox):
        fail("give entry ids, or --all / --mailbox NAME, not both", 2)
    if not entry_ids and not all_entries and mailbox is None:
        fail(
            "say which entries to retry: ID ... (see 'syncd quarantine list'), --all, or "
            "--mailbox NAME",
            2,
        )
    sessions = state.sessions()
    with sessions() as session:
        _known_mailbox(session, mailbox)
        if entry_ids:
            wanted = list(dict.fromkeys(entry_ids))
            entries = quarantine_store.entries(session, ids=wanted)
            missing = sorted(set(wanted) - {e.id for e in entries})
            if missing:
                fail(
                    f"no quarantine entry {', '.join(map(str, missing))}; see 'syncd quarantine "
                    "list' for the ids (nothing was retried)",
                    2,
                )
        else:
            entries = quarantine_store.entries(session, mailbox)
    if not entries:
        say("nothing is quarantined" + (f" in mailbox {mailbox!r}" if mailbox else ""))
        return
    counts = {"logged": 0, "not logged": 0, "still unreadable": 0, "not retryable": 0}
    try:
        for outcome in Retrier(sessions, state.settings()).retry(entries):
            e = outcome.entry
            counts[outcome.status] += 1
            line = _printable(
                f"{e.id} ({e.mailbox}, {e.provider_id}): {outcome.status}: {outcome.detail}"
            )
            say(line, sys.stdout if outcome.ok else sys.stderr)
    except SQLAlchemyError as exc:
        from syncd.quarantine import reason_of

        fail(f"the CRM database failed during the retry: {reason_of(exc)}; run it again")
    kept = counts["still unreadable"] + counts["not retryable"]
    say(
        f"retried {len(entries)}: {counts['logged']} logged, {counts['not logged']} read and "
        f"not logged by the rules, {kept} still quarantined"
    )
    if kept:
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to build the sample company.")
    ] = Path("syncd-demo"),
) -> None:
    """Build a sample company (CRM, two Maildirs, a calendar), sync it once, show the result.

    Uses its own database under DIR/state unless --config or SYNCD_HOME says otherwise; keep
    it running afterwards with: SYNCD_HOME=DIR/state syncd run
    """
    from syncd.demo import add_local_mailbox, build_demo, load_company
    from syncd.sync import sync_mailbox

    directory = directory.expanduser().resolve()
    if state.config is None and not os.environ.get("SYNCD_HOME"):
        state._settings = state.settings().model_copy(update={"home": directory / "state"})
    company = build_demo(directory)
    url = state.settings().database_url()
    upgrade(make_engine(url))
    sessions = state.sessions()
    load_company(sessions, company.root / "crm")
    with sessions() as session:
        existing = set(session.scalars(select(Mailbox.name)))
    for name, path in company.maildirs.items():
        if name not in existing:
            extra = {"calendar": str(company.calendar)} if name == "ana" else {}
            add_local_mailbox(sessions, name, f"{name}@northwind.test", maildir=str(path), **extra)
    for name in company.maildirs:
        r = sync_mailbox(sessions, state.settings(), name)
        say(
            f"synced {name}: {r.state}, {r.new_activities} new activities, "
            f"{sum(r.excluded.values())} not logged ({dict(r.excluded)}), "
            f"{r.quarantined} quarantined, {r.tasks_written} tasks written"
        )
    out.rule("Timeline")
    activities_cmd(None, None, None, False)
    out.rule("Follow-up tasks")
    tasks_cmd(None, False)
    say(
        f"\nThe sample company is in {directory}; its database is {safe_url(url)}.\n"
        f"Tasks were written as VTODO files into {company.calendar}.\n"
        f"Keep it in sync with:  SYNCD_HOME={directory / 'state'} syncd run"
    )


def main() -> None:
    try:
        app()
    except (ConfigError, DatabaseError, LoadError, SecretsError) as exc:
        fail_code = 2 if isinstance(exc, ConfigError) else 1
        say(f"syncd: error: {exc}", sys.stderr)
        sys.exit(fail_code)
