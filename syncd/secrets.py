"""Mailbox secrets (passwords, refresh tokens, client secrets), encrypted at rest.

The key is a Fernet key (``cryptography``) in ``<home>/secret.key``, created with mode 0600 on
first use; the CRM database holds only Fernet tokens. A :class:`Secret` never shows its
value in a repr, a log line or an error message: code asks for it with ``reveal()``.
"""

from __future__ import annotations

import hashlib
import os
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


class SecretBox:
    """Encrypts and decrypts with the key under syncd's state directory."""

    def __init__(self, home: Path) -> None:
        self.path = home / KEY_FILE
        self._fernet: Fernet | None = None

    def _key(self) -> Fernet:
        if self._fernet is not None:
            return self._fernet
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = self.path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SecretsError(
                    f"the secret key {str(self.path)!r} can be read by other users "
                    f"(mode {stat.filemode(mode)}); run 'chmod 600 {self.path}'"
                ) from None
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        try:
            self._fernet = Fernet(self.path.read_bytes().strip())
        except ValueError:
            raise SecretsError(
                f"{str(self.path)!r} is not a syncd secret key; restore it from a backup"
            ) from None
        return self._fernet

    def encrypt(self, secret: Secret) -> str:
        return self._key().encrypt(secret.reveal().encode()).decode("ascii")

    def decrypt(self, token: str, what: str) -> Secret:
        try:
            return Secret(self._key().decrypt(token.encode("ascii")).decode())
        except InvalidToken:
            raise SecretsError(
                f"{what}: the stored secret does not open with {str(self.path)!r} (was the key "
                "replaced?); give the secret again to 'syncd mailbox add'"
            ) from None


def token_cache_path(home: Path, mailbox: str) -> Path:
    """Where a mailbox's working token cache lives (encrypted with the key above): the
    device-code sign-in of a microsoft mailbox, whose refresh token rotates."""
    return home / "tokens" / f"{hashlib.sha256(mailbox.encode()).hexdigest()[:16]}.msal"
