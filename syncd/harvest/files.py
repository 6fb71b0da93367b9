"""File sources of the historical import: a Google Takeout ``.mbox``, a Maildir, or a folder
of ``.eml`` files, given by path with the address of the person whose mail it is. Each is
read by the local kind, the same readers (and the same safety rules) as a local mailbox."""

from __future__ import annotations

from pathlib import Path

from syncd.config import Settings
from syncd.connectors.base import ConnectorError, MailboxSpec


def file_spec(path: Path, user_email: str, settings: Settings) -> MailboxSpec:
    """The spec of a local mailbox reading ``path`` (headers only)."""
    path = path.expanduser().resolve()
    local: dict[str, object]
    if path.is_file():
        local = {"mbox": [str(path)]}
    elif (path / "cur").is_dir():
        local = {"maildir": str(path), "excluded_folders": list(settings.exclusions.folders)}
    elif path.is_dir():
        local = {"eml": [str(path)]}
    else:
        raise ConnectorError(
            f"{str(path)!r} does not exist; give an mbox file, a Maildir or a folder of .eml files"
        )
    return MailboxSpec.of(
        str(path),
        "local",
        user_email,
        local,
        batch_size=settings.sync.batch_size,
        body_policy="metadata",
        limits=settings.limits,
        home=settings.home,
        parse_processes=settings.sync.parse_processes,
    )
