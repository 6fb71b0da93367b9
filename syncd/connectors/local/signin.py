"""``mailbox add --kind local``: the paths are checked and stored resolved; no secret."""

from __future__ import annotations

from pathlib import Path

from syncd.connectors.kind import (
    SignedIn,
    SignInContext,
    SignInError,
    SignInOptions,
    since_days,
)
from syncd.connectors.local import LocalSettings


def _maildir(path: Path | None) -> Path | None:
    maildir = path.expanduser().resolve() if path else None
    if maildir is not None and not (maildir / "cur").is_dir():
        raise SignInError(
            f"--maildir {str(maildir)!r} is not a Maildir (no cur/ inside); "
            "give the folder that holds cur/, new/ and tmp/"
        )
    return maildir


def _mboxes(paths: list[Path]) -> list[Path]:
    for m in paths:
        if not m.is_file():
            raise SignInError(f"--mbox {str(m)!r} is not a file; give the path of an mbox archive")
    return [m.expanduser().resolve() for m in paths]


def _emls(paths: list[Path]) -> list[Path]:
    for folder in paths:
        if not folder.is_dir():
            raise SignInError(f"--eml {str(folder)!r} is not a folder; give a folder of .eml files")
    return [folder.expanduser().resolve() for folder in paths]


def _calendar(path: Path | None) -> Path | None:
    """The vdir calendar, created when it does not exist yet (syncd writes tasks into it)."""
    calendar = path.expanduser().resolve() if path else None
    if calendar is not None:
        calendar.mkdir(parents=True, exist_ok=True)
    return calendar


def add(ctx: SignInContext, settings: LocalSettings, options: SignInOptions) -> SignedIn:
    if settings.maildir is None and not settings.mbox and not settings.eml:
        raise SignInError("a local mailbox needs --maildir DIR, --mbox FILE or --eml DIR")
    given = {
        "since_days": since_days(options.since, None),
        "maildir": _maildir(settings.maildir),
        "mbox": _mboxes(settings.mbox),
        "eml": _emls(settings.eml),
        "calendar": _calendar(settings.calendar),
    }
    # only what was given is stored (resolved): the rest keeps the model's defaults
    typed = settings.model_copy(
        update={k: v for k, v in given.items() if v is not None and v != []}
    )
    return SignedIn(typed, None, "nothing")
