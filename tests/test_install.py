"""The service install as the README tells an admin to do it, for real on this machine:
``scripts/install-debian`` (as root) into a temporary root with a throwaway service user,
then syncd run as that user with ``runuser``: ``db upgrade``, CRM records, a local and an
IMAP mailbox added and synced, ``status``; the state private (folder 0700, files 0600, the
service user's) under any umask; root refused on the service's state folder; a key another
user owns parks its mailbox with the fix, and running the install again (the upgrade)
gives it back, keeping the config.

The virtualenv is built once for the module by the script itself, with pip's ordinary
settings (the package index, pip's cache); offline, pip reads PIP_NO_INDEX and
PIP_FIND_LINKS from the environment. The throwaway user is deleted at the end."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from syncd.demo import build_demo

from .servers import Dovecot

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "install-debian"

# one worker runs them all (pyproject.toml keeps pytest where --dist loadgroup still groups),
# so the install (a venv, half a minute) is made once; session-scoped, it stays made even if
# that worker runs other modules' tests between this group's
pytestmark = pytest.mark.xdist_group("install")


@dataclass
class Install:
    root: Path
    user: str

    @property
    def syncd_bin(self) -> Path:
        return self.root / "usr/local/bin/syncd"

    @property
    def state(self) -> Path:
        return self.root / "var/lib/syncd"

    @property
    def config(self) -> Path:
        return self.root / "etc/syncd/syncd.toml"

    @property
    def unit(self) -> Path:
        return self.root / "etc/systemd/system/syncd.service"

    @property
    def venv(self) -> Path:
        return self.root / "opt/syncd"

    def script(self) -> subprocess.CompletedProcess[str]:
        r = self.root
        env = {
            **os.environ,
            "SYNCD_USER": self.user,
            "SYNCD_VENV": str(self.venv),
            "SYNCD_BINDIR": str(r / "usr/local/bin"),
            "SYNCD_CONFDIR": str(r / "etc/syncd"),
            "SYNCD_STATEDIR": str(self.state),
            "SYNCD_UNITDIR": str(r / "etc/systemd/system"),
            "SYNCD_DOCDIR": str(r / "usr/share/doc/syncd"),
            "SYNCD_SYSTEMCTL": "",  # never touch this machine's services
        }
        return subprocess.run(
            [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900, check=False
        )

    def syncd(
        self, *args: str, as_root: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``syncd ARGS`` as the service user (``runuser -u USER -- syncd ...``, as the
        README says), under a umask that would make files world-readable."""
        prefix = [] if as_root else ["runuser", "-u", self.user, "--"]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        return subprocess.run(
            [*prefix, str(self.syncd_bin), *args],
            env={**clean, "COLUMNS": "200", **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            umask=0,
            cwd="/",
        )

    def status(self) -> dict[str, dict[str, Any]]:
        shown = self.syncd("status", "--json")
        assert shown.returncode in (0, 1, 2), shown.stderr  # 1/2: a failing/parked mailbox
        return {row["mailbox"]: row for row in json.loads(shown.stdout)}


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: apt-get install {package}")


@pytest.fixture(scope="session")
def installed() -> Iterator[Install]:
    if os.geteuid() != 0:
        pytest.fail("the install test runs as root: it creates and deletes a system user")
    for tool, package in (("runuser", "util-linux"), ("useradd", "passwd"), ("userdel", "passwd")):
        _need(tool, package)
    _need("/usr/bin/python3", "python3 python3-venv")
    root = Path(tempfile.mkdtemp(prefix="syncd-install-"))
    root.chmod(0o755)  # the service user must reach its files in there
    install = Install(root, f"syncdt{uuid.uuid4().hex[:8]}")
    try:
        done = install.script()
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"creating the system user {install.user}" in done.stdout
        yield install
    finally:
        subprocess.run(["userdel", install.user], capture_output=True, check=False)
        subprocess.run(["groupdel", install.user], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def private(install: Install, path: Path, mode: int) -> bool:
    info = path.lstat()
    owner = pwd.getpwnam(install.user)
    return (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        owner.pw_uid,
        owner.pw_gid,
        mode,
    )


@pytest.fixture(scope="session")
def company(installed: Install) -> Path:
    """The demo company's CSV files, Maildirs and calendar, readable by the service user
    (the calendar writable: follow-up tasks are written there), loaded into the CRM."""
    demo = installed.root / "demo"
    build_demo(demo)
    for path in [demo, *demo.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    calendar = demo / "calendar"
    for path in [calendar, *calendar.rglob("*")]:
        shutil.chown(path, installed.user, installed.user)
    for kind in ("users", "accounts", "contacts", "opportunities"):
        loaded = installed.syncd("crm", "load", kind, str(demo / "crm" / f"{kind}.csv"))
        assert loaded.returncode == 0, loaded.stderr
    return demo


@pytest.mark.integration  # runs the install script and syncd as processes
def test_the_install_sets_up_what_the_service_needs(installed):
    account = pwd.getpwnam(installed.user)
    assert account.pw_shell == "/usr/sbin/nologin" and account.pw_dir == str(installed.state)
    assert account.pw_uid < 1000  # a system user
    version = installed.syncd("--version")
    assert version.returncode == 0 and version.stdout.startswith("syncd "), version.stderr
    # the config from the example, its state folder filled in; root's, readable by the group
    example = (ROOT / "config" / "syncd.example.toml").read_text()
    assert installed.config.read_text() == example.replace(
        '# home = "~/.local/state/syncd"', f'home = "{installed.state}"'
    )
    info = installed.config.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        0,
        pwd.getpwnam(installed.user).pw_gid,
        0o640,
    )
    # the state folder and the database `db upgrade` made, as the service user
    assert private(installed, installed.state, 0o700)
    assert private(installed, installed.state / "syncd.db", 0o600)
    # the unit names this install's paths and user, and systemd finds nothing wrong in it
    unit = installed.unit.read_text()
    assert f"ExecStart={installed.venv}/bin/syncd run\n" in unit
    assert f"User={installed.user}\n" in unit and f"ReadWritePaths={installed.state}\n" in unit
    _need("systemd-analyze", "systemd")
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(installed.unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


@pytest.mark.integration  # runs the install script and syncd as processes
def test_mailboxes_added_and_synced_as_the_service_user_keep_the_state_private(
    installed, company, imap_server
):
    added = installed.syncd(
        "mailbox",
        "add",
        "ana",
        "--kind",
        "local",
        "--user",
        "ana@northwind.test",
        "--maildir",
        str(company / "mail" / "ana"),
        "--calendar",
        str(company / "calendar" / "ana"),
    )
    assert added.returncode == 0, added.stderr
    login = imap_server.login("ben")
    added = installed.syncd(
        "mailbox",
        "add",
        "ben-imap",
        "--kind",
        "imap",
        "--user",
        "ben@northwind.test",
        "--host",
        imap_server.host,
        "--port",
        str(imap_server.port),
        "--tls",
        "none",
        "--login",
        login,
        "--password-env",
        "IMAP_PW",
        env={"IMAP_PW": Dovecot.PASSWORD},
    )
    assert added.returncode == 0, added.stderr
    synced = installed.syncd("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    rows = installed.status()
    assert rows["ana"]["state"] == "ok" and rows["ana"]["items"] > 0, rows["ana"]
    assert rows["ben-imap"]["state"] == "ok", rows["ben-imap"]
    # under umask 0, everything syncd made is the service user's and private
    assert private(installed, installed.state, 0o700)
    made = sorted(p.name for p in installed.state.iterdir())
    assert {"syncd.db", "secret.key"} <= set(made), made
    for path in installed.state.iterdir():
        assert private(installed, path, 0o700 if path.is_dir() else 0o600), path
    # the tasks syncd wrote back landed in the calendar folder
    assert any(company.joinpath("calendar", "ana").rglob("*.ics"))


@pytest.mark.integration  # runs the install script and syncd as processes
def test_root_is_refused_on_the_service_state_folder_and_leaves_nothing(installed, company):
    before = sorted(installed.state.iterdir())
    for args in (
        ["mailbox", "add", "carl", "--kind", "local", "--user", "ana@northwind.test",
         "--maildir", str(company / "mail" / "ben")],
        ["db", "upgrade"],
        ["status"],
    ):  # fmt: skip
        refused = installed.syncd(*args, as_root=True)
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr == (
            f"syncd: error: the state folder {str(installed.state)!r} belongs to the user "
            f"{installed.user!r} and this syncd runs as root: what it wrote there would be "
            f"root's, which {installed.user!r} cannot read; run it as that user: "
            f"'runuser -u {installed.user} -- syncd ...'\n"
        )
    assert sorted(installed.state.iterdir()) == before
    assert all(p.stat().st_uid != 0 for p in installed.state.iterdir())
    assert "carl" not in installed.status()


@pytest.mark.integration  # runs the install script and syncd as processes
def test_a_missing_or_closed_state_folder_is_one_line_naming_the_fix(installed):
    closed = installed.root / "closed"
    closed.mkdir(mode=0o755)  # root's: the service user cannot create anything in it
    upgrade = installed.syncd("db", "upgrade", env={"SYNCD_HOME": str(closed / "state")})
    assert upgrade.returncode == 1
    assert upgrade.stderr == (
        f"syncd: error: cannot create the folder {str(closed / 'state')!r} of the CRM database "
        f"(Permission denied); create it for the user syncd runs as, as root: 'install -d -m "
        f"0700 -o {installed.user} {closed / 'state'}' (scripts/install-debian does), or set "
        "SYNCD_HOME\n"
    )
    upgrade = installed.syncd("db", "upgrade", env={"SYNCD_HOME": str(closed)})
    assert upgrade.returncode == 1 and upgrade.stderr.count("\n") == 1, upgrade.stderr
    assert "cannot create the CRM database" in upgrade.stderr
    assert f"'chown -R {installed.user}: {closed}'" in upgrade.stderr
    assert list(closed.iterdir()) == []


@pytest.mark.integration  # runs the install script and syncd as processes
def test_a_key_another_user_owns_parks_its_mailbox_and_the_upgrade_gives_it_back(
    installed, company
):
    # a mailbox with a stored secret (its server is never reached in this test)
    added = installed.syncd(
        "mailbox", "add", "dora", "--kind", "imap", "--user", "ben@northwind.test",
        "--host", "127.0.0.1", "--port", "9", "--tls", "none", "--login", "dora",
        "--password-env", "IMAP_PW", env={"IMAP_PW": "pw-dora-1"},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    key = installed.state / "secret.key"
    # what `mailbox add` run as root did before syncd refused it: a root-only key
    os.chown(key, 0, 0)
    synced = installed.syncd("sync", "dora")
    assert synced.returncode != 0 and "Traceback" not in synced.stderr
    fix = f"give it to the folder's owner, as root: 'chown {installed.user}: {key}'"
    row = installed.status()["dora"]
    assert row["state"] == "parked" and row["error"] == (
        f"cannot read the secret key {str(key)!r} (Permission denied); it belongs to the "
        f"user 'root', its folder to {installed.user!r}: {fix}"
    )
    assert "pw-dora-1" not in synced.stdout + synced.stderr + json.dumps(row)
    # the upgrade (the install run again) keeps the admin's config and gives the key back
    config = installed.config.read_text() + "# the admin's own line\n"
    installed.config.write_text(config)
    again = installed.script()
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"keeping {installed.config}" in again.stdout
    assert "giving back" in again.stdout and str(key) in again.stdout
    assert installed.config.read_text() == config
    assert private(installed, key, 0o600)
    assert "creating the virtualenv" not in again.stdout  # reused, upgraded in place
    resumed = installed.syncd("mailbox", "resume", "dora")
    assert resumed.returncode == 0, resumed.stderr
    synced = installed.syncd("sync", "dora")  # the key opens: now only the server is missing
    row = installed.status()["dora"]
    assert row["state"] == "failing" and "secret key" not in (row["error"] or ""), row


@pytest.mark.integration  # runs the install script and syncd as processes
def test_a_backup_of_the_state_folder_brings_back_the_mailboxes_and_their_secrets(
    installed, company
):
    """The README's backup: the state folder whole (database and secret.key together),
    taken and restored by root with tar, which keeps owners and modes."""
    added = installed.syncd(
        "mailbox", "add", "eve", "--kind", "imap", "--user", "ana@northwind.test",
        "--host", "127.0.0.1", "--port", "9", "--tls", "none", "--login", "eve",
        "--password-env", "IMAP_PW", env={"IMAP_PW": "pw-eve-1"},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    backup = installed.root / "syncd-backup.tar.gz"
    var_lib = str(installed.state.parent)
    subprocess.run(["tar", "-C", var_lib, "-czpf", str(backup), "syncd"], check=True)
    key = (installed.state / "secret.key").read_bytes()
    shutil.rmtree(installed.state)  # the machine is lost
    subprocess.run(["tar", "-C", var_lib, "-xzpf", str(backup)], check=True)
    assert private(installed, installed.state, 0o700)
    assert all(private(installed, p, 0o600) for p in installed.state.iterdir() if p.is_file())
    assert (installed.state / "secret.key").read_bytes() == key
    installed.syncd("sync", "eve")  # its server is not there: failing, but the secret opens
    row = installed.status()["eve"]
    assert row["state"] == "failing" and "cannot connect" in row["error"], row
    # the database alone is not enough: without its key, a mailbox's secret is lost
    (installed.state / "secret.key").unlink()
    installed.syncd("sync", "eve")
    row = installed.status()["eve"]
    assert row["state"] == "parked" and "is missing" in row["error"], row
    assert "restore the key file from a backup" in row["error"]
    subprocess.run(["tar", "-C", var_lib, "-xzpf", str(backup), "syncd/secret.key"], check=True)
    assert private(installed, installed.state / "secret.key", 0o600)
