"""``syncd doctor``: every check of an installation, each with a plain verdict and its fix.

The checks, in order (:func:`run`): the config (where it was read from); the database
(reachable, at the migration level this syncd needs, and for SQLite the modes of its file,
0600, and folder, 0700); ``secret.key`` (there when a mailbox has a secret, owned by the
user syncd runs as, mode 0600, a key); then every mailbox: its credentials open with the
key, and its kind's probe (:func:`syncd.connectors.registry.probe`: the server is
reachable, the login or token works, the scopes, the calendar is writable, the clock).

Nothing is written: the database is only read (a missing SQLite file is reported, never
created), no key is made, and the probes write nothing that stays at a provider.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, selectinload

from syncd.config import ConfigError, Settings
from syncd.connectors.kind import Check
from syncd.connectors.registry import probe
from syncd.crm.database import (
    DatabaseError,
    current_revision,
    describe_error,
    head_revision,
    make_engine,
    safe_url,
)
from syncd.crm.models import Mailbox
from syncd.decide import describe
from syncd.secrets import KEY_FILE, SecretsError, reauth_command
from syncd.sync import mailbox_spec

__all__ = ["Check", "as_json", "failed", "run"]

UPGRADE = "stop syncd, run 'syncd db upgrade' as the user syncd runs as, start syncd"


def run(settings: Settings, config: Path | None) -> list[Check]:
    """Every check, in order; nothing is changed."""
    checks = [_config(settings, config)]
    engine, db_checks = _database(settings)
    checks.extend(db_checks)
    mailboxes: list[Mailbox] | None = None
    if engine is not None:
        try:
            with Session(engine) as session:
                mailboxes = list(
                    session.scalars(
                        select(Mailbox).options(selectinload(Mailbox.user)).order_by(Mailbox.name)
                    )
                )
        except Exception as exc:  # read above: a database that fails now is said once
            checks.append(Check("mailboxes", "fail", describe_error(exc, engine.url)))
        finally:
            engine.dispose()
    has_secrets = bool(mailboxes) and any(m.secret for m in mailboxes or [])
    checks.append(_secret_key(settings.home / KEY_FILE, has_secrets))
    if mailboxes is None:
        checks.append(Check("mailboxes", "fail", "not checked: the database cannot be read"))
        return checks
    if not mailboxes:
        checks.append(Check("mailboxes", "ok", "none yet; add one with 'syncd mailbox add'"))
    for mailbox in mailboxes:
        checks.extend(_mailbox(mailbox, settings))
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.verdict == "fail" for c in checks)


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]


# --- the config ---------------------------------------------------------------------------


def _config(settings: Settings, config: Path | None) -> Check:
    """A config that does not load never gets here (every command refuses it with exit 2,
    naming the key): this says where the one in use was read from."""
    path = config or (Path(os.environ["SYNCD_CONFIG"]) if os.environ.get("SYNCD_CONFIG") else None)
    home = f"state folder {str(settings.home)!r}" + (
        " (from SYNCD_HOME)" if os.environ.get("SYNCD_HOME") else ""
    )
    if path is None:
        return Check("config", "ok", f"valid; no config file given: built-in defaults; {home}")
    return Check("config", "ok", f"valid; read from {str(path)!r}; {home}")


# --- the database ---------------------------------------------------------------------------


def _database(settings: Settings) -> tuple[Engine | None, list[Check]]:
    """The database's checks, and an engine on it when its mailboxes can be read."""
    try:
        url = settings.database_url()
    except ConfigError as exc:
        return None, [Check("database", "fail", str(exc))]
    checks: list[Check] = []
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(str(parsed.database)).expanduser()
        if not path.exists():
            return None, [
                Check(
                    "database",
                    "fail",
                    f"no SQLite database at {str(path)!r}",
                    "run 'syncd db upgrade' as the user syncd runs as (it creates it)",
                )
            ]
        checks.extend(_sqlite_modes(path))
    try:
        engine = make_engine(url)
        current = current_revision(engine)
    except DatabaseError as exc:
        return None, [*checks, Check("database", "fail", str(exc))]
    except Exception as exc:
        return None, [
            *checks,
            Check(
                "database",
                "fail",
                f"cannot reach {safe_url(url)}: {describe_error(exc, url)}",
                "check the database URL (SYNCD_DATABASE_URL or [database] in the config) and "
                "that the database server is running",
            ),
        ]
    head = head_revision()
    if current == head:
        checks.insert(0, Check("database", "ok", f"{safe_url(url)}: reachable, at revision {head}"))
        return engine, checks
    state = "is empty" if current is None else f"is at revision {current}"
    checks.insert(
        0,
        Check("database", "fail", f"{safe_url(url)} {state}; this syncd needs {head}", UPGRADE),
    )
    engine.dispose()
    return None, checks


def _sqlite_modes(path: Path) -> list[Check]:
    """The database file (and its -wal, -shm) 0600 and its folder 0700: the CRM holds
    everyone's mail metadata."""
    checks = []
    folder = path.parent
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        checks.append(
            Check(
                "database folder mode",
                "fail",
                f"{str(folder)!r} is {mode:04o}: other users can list or enter it",
                f"run 'chmod 700 {folder}'",
            )
        )
    else:
        checks.append(Check("database folder mode", "ok", f"{str(folder)!r} is {mode:04o}"))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if not file.exists():
            continue
        mode = stat.S_IMODE(file.stat().st_mode)
        if mode & 0o077:
            checks.append(
                Check(
                    "database file mode",
                    "fail",
                    f"{str(file)!r} is {mode:04o}: other users can read the CRM",
                    f"run 'chmod 600 {file}'",
                )
            )
        elif file == path:
            checks.append(Check("database file mode", "ok", f"{str(file)!r} is {mode:04o}"))
    return checks


# --- secret.key -----------------------------------------------------------------------------


def _secret_key(path: Path, needed: bool) -> Check:
    what = "secret.key"
    try:
        info = path.lstat()
    except FileNotFoundError:
        if needed:
            return Check(
                what,
                "fail",
                f"{str(path)!r} is missing, so no stored secret can be opened",
                "restore it from the backup taken with the database (or store each secret "
                f"again with '{reauth_command('NAME')}')",
            )
        return Check(
            what, "ok", f"{str(path)!r} not created yet (the first secret stored makes it)"
        )
    except OSError as exc:
        return Check(what, "fail", f"cannot look at {str(path)!r} ({exc.strerror})", _run_as())
    if not stat.S_ISREG(info.st_mode):
        return Check(
            what,
            "fail",
            f"{str(path)!r} is not a regular file (a link or something else)",
            "put the key file itself in its place (restore it from a backup)",
        )
    if info.st_uid != os.geteuid():
        return Check(
            what,
            "fail",
            f"{str(path)!r} belongs to {_user(info.st_uid)}, but syncd runs as "
            f"{_user(os.geteuid())}",
            f"run syncd as its owner (runuser -u syncd -- syncd ...), or run 'chown "
            f"{_user(os.geteuid())} {path}'",
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return Check(
            what,
            "fail",
            f"{str(path)!r} is {mode:04o}: other users can read every mailbox's secret",
            f"run 'chmod 600 {path}'",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Check(what, "fail", f"cannot read {str(path)!r} ({exc.strerror})", _run_as())
    try:
        Fernet(data.strip())
    except ValueError:
        return Check(
            what,
            "fail",
            f"{str(path)!r} is damaged (not a Fernet key)",
            "restore it from the backup taken with the database",
        )
    return Check(what, "ok", f"{str(path)!r}: owned by {_user(info.st_uid)}, mode {mode:04o}")


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _run_as() -> str:
    return "run syncd as the user that owns the state folder (runuser -u syncd -- syncd ...)"


# --- mailboxes ------------------------------------------------------------------------------


def _mailbox(mailbox: Mailbox, settings: Settings) -> list[Check]:
    where = f"mailbox {mailbox.name!r}"
    try:
        spec = mailbox_spec(mailbox, settings)
    except SecretsError as exc:
        return [
            Check(
                f"{where}: credentials",
                "fail",
                str(exc),
                f"restore secret.key from a backup, or run '{reauth_command(mailbox.name)}'",
            )
        ]
    except Exception as exc:  # stored settings its kind refuses
        return [Check(f"{where}: settings", "fail", str(exc))]
    detail = "decrypted with secret.key" if spec.secret else "none stored (none needed)"
    checks = [Check(f"{where}: credentials", "ok", detail)]
    try:
        checks.extend(probe(spec))
    except Exception as exc:  # a probe that fails in a way it did not foresee: said, once
        checks.append(Check(f"{where}: {spec.kind}", "fail", describe(exc)))
    return checks
