"""Mailbox secrets (passwords, refresh tokens, client secrets), encrypted at rest.

The key is a Fernet key (``cryptography``) in ``<home>/secret.key``, created with mode 0600 on
first use; the CRM database holds only Fernet tokens. A :class:`Secret` never shows its
value in a repr, a log line or an error message: code asks for it with ``reveal()``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
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
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = folder / f".{KEY_FILE}.{os.urandom(8).hex()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(Fernet.generate_key())
                    fh.flush()
                    os.fsync(fh.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise SecretsError(
                f"cannot create the secret key {self._where()} ({exc.strerror}); make "
                f"{str(folder)!r} writable by the user syncd runs as, or set SYNCD_HOME"
            ) from None

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
                f"cannot read the secret key {self._where()} ({exc.strerror}); run syncd as "
                "the user that owns it (the systemd unit's User=), or fix its owner"
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
        if not os.path.lexists(self.path):
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
