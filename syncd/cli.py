"""The ``syncd`` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import ConfigError, Settings, load_settings
from syncd.connectors.base import ConnectorError, check_tls
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
app.add_typer(db_app, name="db")
app.add_typer(crm_app, name="crm")
app.add_typer(mailbox_app, name="mailbox")

out = Console()


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


def say(message: str, stream: TextIO = sys.stdout) -> None:
    """Plain lines, never wrapped: admins grep them and scripts parse them."""
    stream.write(message + "\n")
    stream.flush()


def fail(message: str, code: int = 1) -> None:
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
            return settings, Secret(gmail.read_service_account(str(service_account)))
        if oauth_client is not None and service_account is None:
            client = gmail.read_oauth_client(str(oauth_client))
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
            help="imap: the CalDAV server URL of the same user's "
            "calendars (same login and password).",
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
            fail(str(exc))
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
        if caldav:
            settings["caldav_url"] = caldav
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
            {"mailbox": m.name, "kind": m.kind, "user": u, "settings": m.settings}
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
        if session.execute(delete(Mailbox).where(Mailbox.name == name)).rowcount == 0:  # type: ignore[attr-defined]
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
            say(f"{n}: failed: {exc}", sys.stderr)
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
            say(f"{n}: {r.state}: {r.error}", sys.stderr)
    if failed:
        raise typer.Exit(1)


@app.command("run")
def run_cmd() -> None:
    """The daemon: poll every mailbox at its interval until SIGTERM/SIGINT."""
    from syncd.daemon import Daemon

    raise typer.Exit(Daemon(state.sessions(), state.settings()).run())


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per mailbox: kind, state (ok / failing / parked), last success, items, last error."""
    with state.sessions()() as session:
        rows = queries.status_report(session)
    if as_json:
        _json(rows)
        return
    table = Table("mailbox", "kind", "user", "state", "last success", "items", "error")
    colour = {"ok": "green", "failing": "yellow", "parked": "red"}
    for r in rows:
        table.add_row(
            r["mailbox"],
            r["kind"],
            r["user"],
            f"[{colour.get(r['state'], 'white')}]{r['state']}[/]",
            r["last_success"] or "never",
            str(r["items"]),
            r["error"] or "",
        )
    out.print(table)


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
    except (ConfigError, DatabaseError, LoadError) as exc:
        fail_code = 2 if isinstance(exc, ConfigError) else 1
        say(f"syncd: error: {exc}", sys.stderr)
        sys.exit(fail_code)
