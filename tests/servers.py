"""Real servers for tests and benchmarks, started on 127.0.0.1 and a free port in a temp dir.

Shared by the pytest fixtures (tests/conftest.py) and the benchmarks (bench/)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

POSTGRES_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found; install them with "
    "'apt-get install -y postgresql' (scripts/test does this)"
)


class ServerMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise ServerMissing(POSTGRES_HINT)
    return path


_removals: list[subprocess.Popen[bytes]] = []  # PostgreSQL data deleted in the background


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL; yields its base URL (append ``/DBNAME``)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    subprocess.run(
        [
            *as_user,
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "pg.log"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            opts,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "stop", "-m", "fast"], capture_output=True
        )
        # a session's hundred databases took 14-32 s to delete at the end of the suite,
        # with every test done: deleted by a process of their own, not waited for
        _removals.append(  # kept: a dropped Popen still running warns
            subprocess.Popen(
                ["rm", "-rf", "--", str(root)],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )


def new_pg_database(base: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


DOVECOT_HINT = (
    "Dovecot (IMAP) was not found; install it with 'apt-get install -y --no-install-recommends "
    "dovecot-core dovecot-imapd' (scripts/test does this)"
)
_DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
info_log_path = {root}/log/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
login_trusted_networks = 127.0.0.0/8
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 65534
first_valid_gid = 65534
mail_location = maildir:{root}/mail/%u/Maildir
mail_uid = 65534
mail_gid = 65534
mail_fsync = never
mail_max_userip_connections = 100
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    auto = subscribe
    special_use = \\Sent
  }}
  mailbox Drafts {{
    auto = subscribe
    special_use = \\Drafts
  }}
  mailbox Trash {{
    auto = subscribe
    special_use = \\Trash
  }}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2
  args = {root}/oauth2.conf.ext
}}
passdb {{
  driver = static
  mechanisms = plain login
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_min_avail = 1
  chroot =
}}
service anvil {{
  chroot =
}}
"""


class Dovecot:
    """A running Dovecot: any login exists, with the password ``PASSWORD``, or over XOAUTH2
    with the access token ``token(login)`` (checked by an OAuth2 introspection endpoint here)."""

    PASSWORD = "imap-test-pw"
    TOKEN_PREFIX = "ya29.test-token-for-"

    @classmethod
    def token(cls, login: str) -> str:
        return cls.TOKEN_PREFIX + login

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.host = "127.0.0.1"

    def login(self, prefix: str) -> str:
        """A new user: every login has ``PASSWORD`` (a static passdb never needs a reload)."""
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def log(self) -> str:
        path = self.root / "log" / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wait_for_greeting(port: int, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"* OK"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@contextmanager
def dovecot() -> Iterator[Dovecot]:
    """Debian's Dovecot in the foreground, with its own config, on a free port."""
    binary = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if binary is None:
        raise ServerMissing(DOVECOT_HINT)
    root = Path(tempfile.mkdtemp(prefix="syncd-dovecot-"))
    for d in ("run", "state", "log", "mail"):
        (root / d).mkdir()
    # as root, mail runs as nobody: it must reach and own the mail tree
    for parent in [root, *root.parents]:
        parent.chmod(parent.stat().st_mode | 0o001)
    os.chown(root / "mail", 65534, 65534)
    port = free_port()
    introspection = _introspection_server()
    (root / "oauth2.conf.ext").write_text(
        "introspection_mode = post\n"
        f"introspection_url = http://127.0.0.1:{introspection.server_port}/introspect\n"
        "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
    )
    conf = root / "dovecot.conf"
    conf.write_text(_DOVECOT_CONF.format(root=root, port=port, password=Dovecot.PASSWORD))
    proc = subprocess.Popen(
        [binary, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        try:
            _wait_for_greeting(port)
        except OSError:
            proc.kill()
            _, err = proc.communicate()
            log = root / "log" / "dovecot.log"
            raise RuntimeError(
                f"Dovecot did not start: {err.decode(errors='replace')}"
                f"{log.read_text(errors='replace') if log.exists() else ''}"
            ) from None
        yield Dovecot(root, port)
    finally:
        _stop(proc)
        introspection.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def _introspection_server() -> Any:
    """An OAuth 2.0 token introspection endpoint (RFC 7662) for Dovecot's oauth2 passdb:
    ``Dovecot.token(login)`` is active for that login, any other token is not."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"] or 0)).decode())
            token = form.get("token", [""])[0]
            user = token.removeprefix(Dovecot.TOKEN_PREFIX)
            active = token.startswith(Dovecot.TOKEN_PREFIX) and user
            body = json.dumps(
                {"active": True, "username": user} if active else {"active": False}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


_RADICALE_CONF = """\
[server]
hosts = 127.0.0.1:{port}
max_connections = 20
timeout = 30
[auth]
type = htpasswd
htpasswd_filename = {root}/users
htpasswd_encryption = plain
delay = 0
[rights]
type = owner_only
[storage]
type = multifilesystem
filesystem_folder = {root}/collections
[web]
type = none
[logging]
level = warning
"""


class Radicale:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{port}/"

    def add_user(self, name: str, password: str) -> None:
        with (self.root / "users").open("a") as fh:
            fh.write(f"{name}:{password}\n")


@contextmanager
def radicale() -> Iterator[Radicale]:
    """Radicale (from PyPI) in the foreground, with its own config, on a free port."""
    import sys
    import time

    root = Path(tempfile.mkdtemp(prefix="syncd-radicale-"))
    (root / "users").write_text("")
    port = free_port()
    conf = root / "radicale.conf"
    conf.write_text(_RADICALE_CONF.format(root=root, port=port))
    env = {**os.environ, "HOME": str(root)}  # no ~/.config/radicale/config of the user
    proc = subprocess.Popen(
        [sys.executable, "-m", "radicale", "--config", str(conf)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(
                        "Radicale did not start: "
                        + (proc.stderr.read().decode(errors="replace") if proc.stderr else "")
                    ) from None
                time.sleep(0.05)
        yield Radicale(root, port)
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class TcpProxy:
    """A TCP proxy to a server on 127.0.0.1, for what crosses the wire: it records the name
    of every tagged IMAP command a client sends (``commands``), and can cut the connection
    once, after the server has sent ``cut_after`` bytes (a connection dropped mid-fetch)."""

    def __init__(self, target_port: int, cut_after: int | None = None) -> None:
        import threading

        self.target = ("127.0.0.1", target_port)
        self.cut_after = cut_after
        self.cuts = 0
        self.commands: list[str] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _count(self, data: bytes) -> None:
        for line in data.split(b"\r\n"):
            parts = line.split(b" ", 2)
            if len(parts) >= 2 and parts[0][:1].isalpha() and parts[0] != b"DONE":
                self.commands.append(parts[1].decode(errors="replace").upper())

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if not from_server:
                    self._count(data)
                dst.sendall(data)
                sent += len(data)
                if (
                    from_server
                    and self.cut_after is not None
                    and self.cuts == 0
                    and sent > self.cut_after
                ):
                    self.cuts += 1
                    break
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
