"""Mailbox secrets (passwords, refresh tokens, client secrets), encrypted at rest.

The key is a Fernet key (``cryptography``) in ``<home>/secret.key``, created with mode 0600 on
first use whatever the umask (and its folder 0700); the CRM database holds only Fernet
tokens. A :class:`Secret` never shows its value in a repr, a log line or an error message:
code asks for it with ``reveal()``.

Who may use the state folder: its owner, the user the service runs as. A key another user
owns, or one syncd cannot read, is an error naming the fix (``chown`` or ``runuser``); and
syncd run as root refuses a state folder that belongs to another user
(:func:`foreign_state`), as the files it wrote there would be root's and the service could
not read them (the CRM database refuses it too, see syncd.crm.database).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import re
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "secret.key"


class SecretsError(Exception):
    """The key is missing, unsafe or does not fit; the message says what to do."""


class Secret:
    """A secret value that prints as ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_MAILBOX_WHAT = re.compile(r"""^mailbox (['"])(.+)\1$""")


def reauth_command(name: str) -> str:
    """The command that stores a mailbox's credentials again: the one fix every message
    about refused, lost or unreadable credentials names (see syncd.connectors.base)."""
    return f"syncd mailbox reauth {name}"


def _reauth(what: str) -> str:
    """:func:`reauth_command` for the mailbox ``what`` names (``"mailbox 'ana'"``)."""
    m = _MAILBOX_WHAT.match(what)
    return reauth_command(m.group(2) if m else "NAME")


def user_name(uid: int) -> str:
    """The login name of ``uid``, else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def run_as(owner: str) -> str:
    """The fix for a command run as the wrong user."""
    return f"run it as that user: 'runuser -u {owner} -- syncd ...'"


def foreign_state(folder: Path) -> str | None:
    """Why syncd, run as root, must not use ``folder`` (one that belongs to another user,
    the service's): files it created there would be root's, which the service cannot read.
    None when it may (not root, root's own folder, or no folder yet)."""
    if os.geteuid() != 0:
        return None
    try:
        uid = folder.stat().st_uid
    except OSError:
        return None
    if uid == 0:
        return None
    owner = user_name(uid)
    return (
        f"the state folder {str(folder)!r} belongs to the user {owner!r} and this syncd runs "
        f"as root: what it wrote there would be root's, which {owner!r} cannot read; "
        + run_as(owner)
    )


def ownership_fix(path: Path) -> str:
    """What to do about a state file (the key, the database) this process cannot use: give
    it to its folder's owner when another user owns it, else run syncd as that owner."""
    me = os.geteuid()
    try:
        folder_uid = path.parent.stat().st_uid
    except OSError:
        return f"make {str(path.parent)!r} and {str(path)!r} usable by the user {user_name(me)!r}"
    folder_owner = user_name(folder_uid)
    try:
        file_uid: int | None = path.stat().st_uid
    except OSError:
        file_uid = None  # the folder is closed to this user: run as its owner
    if file_uid is not None and file_uid != folder_uid:
        return (
            f"it belongs to the user {user_name(file_uid)!r}, its folder to {folder_owner!r}: "
            f"give it to the folder's owner, as root: 'chown {folder_owner}: {path}'"
        )
    if folder_uid == 0 and me != 0:  # never the advice to run syncd as root
        return (
            f"its folder belongs to root: give it to the user syncd runs as, as root: "
            f"'chown -R {user_name(me)}: {path.parent}', or set SYNCD_HOME to syncd's own folder"
        )
    if folder_uid != me:
        return (
            f"its folder belongs to the user {folder_owner!r} and syncd runs as "
            f"{user_name(me)!r}; {run_as(folder_owner)}"
        )
    return f"check its mode: 'chmod 600 {path}'"


class SecretBox:
    """Encrypts and decrypts with the key under syncd's state directory.

    Every problem with the key (missing, unreadable, readable by others, damaged, another
    key) is a :class:`SecretsError` naming the file and the fix, never a traceback."""

    def __init__(self, home: Path) -> None:
        self.path = home / KEY_FILE
        self._fernet: Fernet | None = None

    def _where(self) -> str:
        return repr(str(self.path))

    def _create(self) -> None:
        """A new key, written whole under a private temp name then linked into place: another
        process creating one at the same time never reads a half-written key, and one of
        the two keys wins."""
        folder = self.path.parent
        try:
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                folder.chmod(0o700)  # whatever the umask
            tmp = folder / f".{KEY_FILE}.{os.urandom(8).hex()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    os.fchmod(fh.fileno(), 0o600)  # whatever the umask
                    fh.write(Fernet.generate_key())
                    fh.flush()
                    os.fsync(fh.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            fix = f"make {str(folder)!r} writable by the user syncd runs as, or set SYNCD_HOME"
            with contextlib.suppress(OSError):
                if folder.stat().st_uid != os.geteuid():
                    fix = ownership_fix(self.path)
            raise SecretsError(
                f"cannot create the secret key {self._where()} ({exc.strerror}); {fix}"
            ) from None

    def _exists(self) -> bool:
        """Whether the key file is there (a link too); a folder this user cannot look into
        is an error naming the fix, not a missing key."""
        try:
            os.lstat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise SecretsError(
                f"cannot read the secret key {self._where()} ({exc.strerror}); "
                + ownership_fix(self.path)
            ) from None
        return True

    def _read(self) -> bytes:
        """The key file's bytes: a regular file (not a symlink) that only its owner can read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SecretsError(
                    f"the secret key {self._where()} is a symbolic link; syncd reads only a "
                    "regular file there: put the key itself in its place"
                ) from None
            raise SecretsError(
                f"cannot read the secret key {self._where()} ({exc.strerror}); "
                + ownership_fix(self.path)
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SecretsError(
                    f"the secret key {self._where()} is not a regular file; restore the key "
                    "file from a backup"
                )
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SecretsError(
                    f"the secret key {self._where()} can be read by other users "
                    f"(mode {stat.filemode(info.st_mode)}); run 'chmod 600 {self.path}'"
                )
            return os.read(fd, 4096)
        finally:
            os.close(fd)

    def _key(self, what: str | None) -> Fernet:
        """The key; created when missing and ``what`` is None (encrypting something new).
        To decrypt ``what``, a missing key is an error: a new key would not open it."""
        if self._fernet is not None:
            return self._fernet
        refused = foreign_state(self.path.parent)
        if refused:
            raise SecretsError(refused)
        if not self._exists():
            if what is not None:
                raise SecretsError(
                    f"{what}: the secret key {self._where()} is missing (SYNCD_HOME changed, or "
                    "the key was not restored with the database), so the stored secret cannot "
                    "be opened; restore the key file from a backup, or store the secret "
                    f"again with '{_reauth(what)}'"
                )
            self._create()
        data = self._read()
        try:
            self._fernet = Fernet(data.strip())
        except ValueError:
            raise SecretsError(
                f"the secret key {self._where()} is damaged (not a Fernet key); restore it "
                "from a backup; without one, move it away and store each mailbox's secret "
                f"again with '{reauth_command('NAME')}'"
            ) from None
        return self._fernet

    def encrypt(self, secret: Secret) -> str:
        return self._key(None).encrypt(secret.reveal().encode()).decode("ascii")

    def decrypt(self, token: str, what: str) -> Secret:
        """``what`` names the secret's owner in errors, e.g. ``"mailbox 'ana'"`` (then the
        fix names 'syncd mailbox reauth ana')."""
        fernet = self._key(what)
        try:
            return Secret(fernet.decrypt(token.encode("ascii")).decode())
        except (InvalidToken, UnicodeError):
            raise SecretsError(
                f"{what}: the stored secret does not open with the key {self._where()} (was "
                "the key replaced?); restore the key file from a backup, or give the secret "
                f"again with '{_reauth(what)}'"
            ) from None


def token_cache_path(home: Path, mailbox: str) -> Path:
    """Where a mailbox's working token cache lives (encrypted with the key above): the
    device-code sign-in of a microsoft mailbox, whose refresh token rotates."""
    return home / "tokens" / f"{hashlib.sha256(mailbox.encode()).hexdigest()[:16]}.msal"
