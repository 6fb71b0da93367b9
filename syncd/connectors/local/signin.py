"""``mailbox add --kind local``: the paths are checked and stored resolved; no secret."""

from __future__ import annotations

from syncd.connectors.kind import SignedIn, SignInContext, SignInError, SignInOptions
from syncd.connectors.local import LocalSettings


def add(ctx: SignInContext, settings: LocalSettings, options: SignInOptions) -> SignedIn:
    if settings.maildir is None and not settings.mbox:
        raise SignInError("a local mailbox needs --maildir DIR or --mbox FILE")
    maildir = settings.maildir.expanduser().resolve() if settings.maildir else None
    if maildir is not None and not (maildir / "cur").is_dir():
        raise SignInError(
            f"--maildir {str(maildir)!r} is not a Maildir (no cur/ inside); "
            "give the folder that holds cur/, new/ and tmp/"
        )
    for m in settings.mbox:
        if not m.is_file():
            raise SignInError(
                f"--mbox {str(m)!r} is not a file; give the path of an mbox archive", 2
            )
    calendar = settings.calendar.expanduser().resolve() if settings.calendar else None
    if calendar is not None:
        calendar.mkdir(parents=True, exist_ok=True)
    typed = settings.model_copy(
        update={
            "maildir": maildir,
            "mbox": [m.expanduser().resolve() for m in settings.mbox],
            "calendar": calendar,
        }
    )
    return SignedIn(typed, None, "nothing")
