"""Prometheus metrics of ``syncd run`` and ``syncd worker`` (being built: issue 13)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.report import SyncReport


def serve(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Serve the metrics at ``metrics.address``; nothing when it is empty."""
    del settings, sessions


def observe_pass(report: SyncReport, seconds: float) -> None:
    """Count what one pass of one mailbox did, and how long it took."""
    del report, seconds
