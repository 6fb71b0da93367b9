"""Why an item is quarantined: the reason as one bounded line, and the raw bytes kept for a
retry when they are small enough (``items.RAW_KEPT``). Shared by every connector that
quarantines what it cannot read (the MIME and iCalendar parsers, local, imap, caldav)."""

from __future__ import annotations

from syncd.items import RAW_KEPT, Quarantined

REASON_CHARS = 300


def short(reason: str) -> str:
    """A reason fit for the quarantine: one line, bounded (a parser's message may quote
    the whole input)."""
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def describe(exc: BaseException) -> str:
    """An exception as a reason: its class, and its message when it has one, bounded."""
    text = str(exc)
    return short(f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__)


def quarantined(provider_id: str, reason: str, raw: bytes | None, fmt: str) -> Quarantined:
    """A quarantine entry for one item, with what was read when it is small enough to keep."""
    keep = raw if raw is not None and len(raw) <= RAW_KEPT else None
    return Quarantined(provider_id, short(reason), keep, fmt if keep is not None else None)
