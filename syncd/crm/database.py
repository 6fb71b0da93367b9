"""Engines, sessions and Alembic migrations for the CRM database (SQLite WAL or PostgreSQL).

Sessions: ``sessions()`` reads, ``sessions.begin()`` is a transaction that writes. On SQLite
the latter starts with ``BEGIN IMMEDIATE``: it takes the write lock before it reads and waits
up to the busy timeout (30 s, ``?timeout=SECONDS`` in the URL) for another process to finish.
A deferred ``BEGIN`` would read first and then fail at once with "database is locked" when it
tries to write while another process writes (SQLite cannot let a reader holding an older
snapshot wait for the lock). Reads stay deferred: in WAL mode they never wait, and a read
session left open never holds up a write, even one of the same thread. A writer still locked
out after the timeout gets :class:`DatabaseBusy`, a one-line message, never a traceback.

Secrets: a password, and any query parameter that may carry a secret (``?password=``), never
reach the engine's URL (they go to the driver as connect arguments), so neither the URL nor a
``repr`` of the engine can show them; :func:`safe_url` masks them in everything printed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import is_secret_name, mask_url, url_secrets
from syncd.crm.turns import Turns, turns_of
from syncd.secrets import foreign_state, ownership_fix, run_as, user_name

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
WRITE = "syncd_write"  # execution option: this connection's transactions write
# connections one process keeps: the passes of `syncd run`'s pool (up to sync.workers, 32
# by default at most) and its loop each hold one for a moment; SQLAlchemy's default of 15
# would make a busy pool wait for a connection
POOL: dict[str, int] = {"pool_size": 10, "max_overflow": 40}
SQLITE_TIMEOUT = 30.0  # seconds a SQLite writer waits for another one (busy_timeout)
_SQLITE_BUSY = 5  # SQLITE_BUSY, and its extended codes (BUSY_SNAPSHOT, ...) in the low byte


class DatabaseError(Exception):
    """The CRM database cannot be used as it is; the message says what to run."""


class DatabaseBusy(DatabaseError, TimeoutError):
    """Another process held the SQLite database's write lock for longer than the busy
    timeout. A TimeoutError too, so code that treats a timed-out resource as a passing
    failure (the sync job's OSError handling) does so."""


def safe_url(url: str | URL) -> str:
    """The URL with its password and secret query parameters masked, for logs and errors."""
    return mask_url(url)


def _scrubbed(text: str, secrets: list[str]) -> str:
    """A driver's message without the secrets of the URL (however it quotes them); with a
    secret too short to find reliably, without the message."""
    if any(len(s) < 4 for s in secrets):
        return "(details not shown: they may contain the password)"
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


def describe_error(exc: BaseException, url: str | URL) -> str:
    """A database error as one line: the driver's first line, never the SQL, its parameters
    or a secret of the URL."""
    orig = getattr(exc, "orig", None) if isinstance(exc, StatementError) else None
    cause = orig if orig is not None else exc
    first = str(cause).splitlines()[0].strip() if str(cause).strip() else ""
    return f"{cause.__class__.__name__}: {_scrubbed(first[:300], url_secrets(url))}".rstrip(": ")


def _split_secrets(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL without its secret query parameters, and those as connect arguments (the
    drivers take them either way: SQLAlchemy passes the query to the driver's connect)."""
    secret = {k: v for k, v in url.query.items() if is_secret_name(k)}
    if not secret:
        return url, {}
    return url.difference_update_query(list(secret)), dict(secret)


def _busy_message(url: URL, timeout: float, ours: bool = False) -> str:
    """Why a writer gave up on a locked SQLite file, and the fixes; ``ours``: the writer
    it waited for is of this syncd (its turns, ``syncd.crm.turns``), not another process."""
    where = url.database or "(in memory)"
    who = (
        "another writer of this syncd"
        if ours
        else "another process (most likely another syncd, a 'syncd run' or 'syncd sync')"
    )
    fix = (
        ""
        if ours
        else "wait for it to finish and run this again, or stop the other one (systemctl "
        "stop syncd); "
    )
    return (
        f"the CRM database {where} is locked: {who} has been writing to it for more than "
        f"{timeout:g} s; {fix}a longer wait: ?timeout=SECONDS in the database URL; several "
        "writers at once: use PostgreSQL"
    )


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF == _SQLITE_BUSY
    return "database is locked" in str(exc)


def _sqlite_timeout(url: URL) -> float:
    raw = url.query.get("timeout")
    if raw is None:
        return SQLITE_TIMEOUT
    try:
        value = float(raw if isinstance(raw, str) else raw[-1])
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise DatabaseError(
            f"the database URL {safe_url(url)}: timeout={raw!r} is not a number of seconds "
            "from 0 to 86400; fix ?timeout= in the URL"
        )
    return value


def _private_file(path: Path) -> None:
    """The SQLite database's folder (0700) and file (0600) made private whatever the umask,
    when syncd creates them: the CRM holds everyone's mail metadata (SQLite gives its -wal
    and -shm files the database's mode). Existing ones keep the modes an admin gave them.

    A folder or file this user cannot use is a one-line error naming the fix (``install
    -d``, ``chown``, ``runuser``); run as root, syncd refuses a folder that belongs to
    another user (the service's): a database root created there would be root's."""
    folder = path.parent
    refused = foreign_state(folder)
    if refused:
        raise DatabaseError(refused)
    me = user_name(os.geteuid())
    try:
        folder.stat()
    except FileNotFoundError:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.chmod(0o700)  # whatever the umask
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the folder {str(folder)!r} of the CRM database "
                f"({exc.strerror}); create it for the user syncd runs as, as root: 'install "
                f"-d -m 0700 -o {me} {folder}' (scripts/install-debian does), or set SYNCD_HOME"
            ) from None
    except OSError as exc:
        raise DatabaseError(
            f"cannot use the folder {str(folder)!r} of the CRM database ({exc.strerror}); "
            f"make it and the folders above it usable by the user {me!r}, or set SYNCD_HOME"
        ) from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)  # only a new one: an existing file is not touched
    except FileExistsError:
        _usable(path)
        return
    except OSError as exc:
        raise DatabaseError(
            f"cannot create the CRM database {str(path)!r} ({exc.strerror}); " + ownership_fix(path)
        ) from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


def _usable(path: Path) -> None:
    """An existing SQLite database this user can read and write, in a folder where SQLite
    can create its -wal and -shm files; else a one-line error naming the fix."""
    folder = path.parent
    if not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseError(
            f"cannot open the CRM database {str(path)!r}: the user {user_name(os.geteuid())!r} "
            f"cannot read and write it; {ownership_fix(path)}"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        owner = user_name(folder.stat().st_uid)
        raise DatabaseError(
            f"cannot open the CRM database {str(path)!r}: its folder is not writable by the "
            f"user {user_name(os.geteuid())!r} (SQLite writes its -wal and -shm files there); "
            + (run_as(owner) if owner != user_name(os.geteuid()) else f"'chmod 700 {folder}'")
        )


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a URL that cannot be used is a DatabaseError that never shows
    a secret."""
    try:
        parsed = make_url(url)
    except Exception:
        raise DatabaseError(
            "the database URL cannot be parsed (it is not shown, as it may hold a password); "
            "give one such as postgresql+psycopg://syncd@db.example.com/crm or "
            "sqlite:////var/lib/syncd/syncd.db"
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        parsed, secret_args = _split_secrets(parsed)
        return create_engine(parsed, pool_pre_ping=True, connect_args=secret_args, **POOL)
    except DatabaseError:
        raise
    except (ImportError, SQLAlchemyError, TypeError, ValueError) as exc:
        raise DatabaseError(
            f"cannot use the database URL {safe_url(url)}: {describe_error(exc, url)}; "
            "syncd runs on sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        ) from None


def _sqlite_engine(url: URL) -> Engine:
    secret = sorted(k for k in url.query if is_secret_name(k))
    if secret:
        raise DatabaseError(
            f"the database URL {safe_url(url)}: SQLite takes no {', '.join(secret)}; remove "
            "it from the URL (protect the database file with its permissions instead)"
        )
    timeout = _sqlite_timeout(url)
    read_only = url.query.get("mode") == "ro"
    path = url.database
    if path and path != ":memory:" and not path.startswith("file:") and not read_only:
        _private_file(Path(path).expanduser())
    memory = not path or path == ":memory:"  # one connection a thread: no pool to size
    engine = create_engine(url, connect_args={"timeout": timeout}, **({} if memory else POOL))

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        # WAL: readers never block the writer; NORMAL is durable against a process crash.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        # let SQLAlchemy, not pysqlite, open transactions (SAVEPOINT needs it)
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # a writer takes the write lock first, waiting up to the busy timeout, instead of
        # failing at once when its read transaction tries to write (see the module docstring)
        write = conn.get_execution_options().get(WRITE) and not read_only
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @event.listens_for(engine, "handle_error")
    def _sqlite_busy(context: ExceptionContext) -> None:
        if _is_busy(context.original_exception):
            raise DatabaseBusy(_busy_message(url, timeout))

    return engine


class Sessions(sessionmaker[Session]):
    """``sessions()`` for reading; ``sessions.begin()`` for a transaction that writes (and
    commits at the end of the block): on SQLite it starts with BEGIN IMMEDIATE, after the
    writers of this process that asked first (``syncd.crm.turns``)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, expire_on_commit=False)
        self.writer = engine.execution_options(**{WRITE: True})
        self._turns: Turns | None = None
        self._timeout = 0.0
        path = engine.url.database
        if engine.dialect.name == "sqlite" and path and path != ":memory:":
            self._turns = turns_of(os.path.expanduser(path))
            self._timeout = _sqlite_timeout(engine.url)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Session]:
        with self._turn(), self(bind=self.writer) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        if self._turns is None:
            yield
            return
        try:
            nested = self._turns.acquire(self._timeout)
        except TimeoutError:
            raise DatabaseBusy(_busy_message(self.writer.url, self._timeout, ours=True)) from None
        try:
            yield
        finally:
            self._turns.release(nested)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return Sessions(engine)


# Alembic is imported by the functions that use it: a command that never looks at the
# schema (syncd --help) does not pay for it.


def _alembic_config(engine: Engine | None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # migrations write: on SQLite they take the write lock first, as sessions.begin() does
    cfg.attributes["engine"] = engine.execution_options(**{WRITE: True}) if engine else None
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _cannot_open(engine: Engine, exc: BaseException) -> DatabaseError:
    return DatabaseError(
        f"cannot open the CRM database {safe_url(engine.url)}: {describe_error(exc, engine.url)}; "
        "check the database URL (SYNCD_DATABASE_URL or database.* in the config) and that "
        "the database server is running"
    )


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or migrate the schema to ``revision`` (Alembic)."""
    from alembic import command
    from alembic.util import CommandError

    try:
        with warnings.catch_warnings():
            # SQLite's migrations copy tables (Alembic's batch mode), reflecting them first:
            # SQLAlchemy says it skips the expression index on opportunities.external_id,
            # which the migration that made it keeps; nothing for an admin to act on
            warnings.filterwarnings(
                "ignore", "Skipped unsupported reflection of expression-based index"
            )
            command.upgrade(_alembic_config(engine), revision)
    except DatabaseError:
        raise
    except SQLAlchemyError as exc:
        raise _cannot_open(engine, exc) from None
    except CommandError as exc:  # e.g. a revision this syncd does not know (a newer syncd's)
        raise DatabaseError(
            f"cannot migrate the CRM database {safe_url(engine.url)}: {exc}; run the syncd "
            "version that last upgraded it, or restore the database from a backup"
        ) from None


def check_schema(engine: Engine) -> None:
    """Refuse to run on a database that is missing or behind: name the command that fixes it."""
    try:
        current = current_revision(engine)
    except DatabaseError:
        raise
    except Exception as exc:
        raise _cannot_open(engine, exc) from None
    head = head_revision()
    if current != head:
        state = "is empty" if current is None else f"is at revision {current}"
        raise DatabaseError(
            f"the CRM database {safe_url(engine.url)} {state}, syncd needs {head}; "
            "run 'syncd db upgrade'"
        )
