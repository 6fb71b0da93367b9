"""What the connector tests share: a mailbox row with its encrypted secret, a sync pass that
must succeed, and the keys of the activities logged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import RereadContext
from syncd.connectors.registry import reparse
from syncd.crm import mailboxes
from syncd.crm.models import Activity, User
from syncd.items import MailItem, MeetingItem
from syncd.secrets import Secret, SecretBox
from syncd.sync import SyncReport, sync_mailbox

S = sessionmaker[Session]


def add_mailbox(
    sessions: S,
    settings: Settings,
    name: str,
    kind: str,
    user: str,
    secret: str,
    values: dict[str, Any],
) -> None:
    token = SecretBox(settings.home).encrypt(Secret(secret))
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == user))
        assert user_id is not None
        mailboxes.add_mailbox(
            session, name=name, kind=kind, user_id=user_id, settings=values, secret_token=token
        )


def sync(sessions: S, settings: Settings, name: str = "ana") -> SyncReport:
    report = sync_mailbox(sessions, settings, name)
    assert report.ok, report.error
    return report


def keys(sessions: S) -> list[str]:
    with sessions() as session:
        return sorted(session.scalars(select(Activity.key)))


def reread(raw: bytes, fmt: str, body: str = "snippet") -> MailItem | MeetingItem:
    """A kept item read again as ``syncd quarantine retry`` does: by its format, through
    the registry's re-parser."""
    now = datetime(2026, 1, 5, tzinfo=UTC)
    window = (now - timedelta(days=3650), now + timedelta(days=3650))
    context = RereadContext(provider_id="p", body_policy=body, received=now, window=window)
    (item,) = reparse(fmt, raw, context).items
    return item
