"""Gmail mailboxes against the local Google emulator, through the real client libraries;
the CRM on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.crm import queries, recorder
from syncd.crm.models import Activity, Mailbox, Sighting, User
from syncd.demo import email_bytes
from syncd.secrets import Secret, SecretBox
from syncd.sync import SyncReport, sync_mailbox

from .emulators.google import GoogleEmulator
from .test_google_emulator import service_account_key

S = sessionmaker[Session]
NOW = datetime.now(UTC).replace(microsecond=0)
ANA, BEN = "ana@northwind.test", "ben@northwind.test"


@pytest.fixture
def google() -> Iterator[tuple[GoogleEmulator, str]]:
    emulator = GoogleEmulator()
    emulator.add_client("client-1", "secret-1")
    for user in (ANA, BEN):
        emulator.add_user(user)
    base = emulator.start()
    yield emulator, base
    emulator.stop()


def add_gmail(
    sessions: S, settings: Settings, name: str, user: str, secret: dict[str, Any], **extra: Any
) -> None:
    token = SecretBox(settings.home).encrypt(Secret(json.dumps(secret)))
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == user))
        assert user_id is not None
        recorder.add_mailbox(
            session, name=name, kind="gmail", user_id=user_id, settings=extra, secret_token=token
        )


def oauth_mailbox(
    sessions: S,
    settings: Settings,
    google: tuple[GoogleEmulator, str],
    name: str = "ana",
    user: str = ANA,
) -> str:
    emulator, base = google
    refresh = emulator.grant(user)
    add_gmail(
        sessions,
        settings,
        name,
        user,
        {"refresh_token": refresh, "client_secret": "secret-1"},
        mode="oauth",
        client_id="client-1",
        token_uri=base + "token",
        api_endpoint=base,
    )
    return refresh


def deliver(
    emulator: GoogleEmulator,
    user: str,
    i: int,
    sender: str = "carla@acme.test",
    to: str = ANA,
    labels: tuple[str, ...] = ("INBOX",),
    **kw: Any,
) -> bytes:
    raw = email_bytes(
        sender=sender,
        to=[to],
        subject=kw.pop("subject", f"gmail note {i}"),
        when=NOW - timedelta(hours=i),
        message_id=f"g{i}@acme.test",
        **kw,
    )
    emulator.deliver(
        user,
        raw,
        labels=labels,
        internal_date_ms=int((NOW - timedelta(hours=i)).timestamp() * 1000),
    )
    return raw


def sync(sessions: S, settings: Settings, name: str) -> SyncReport:
    report = sync_mailbox(sessions, settings, name)
    assert report.ok, report.error
    return report


def keys(sessions: S) -> list[str]:
    with sessions() as session:
        return sorted(session.scalars(select(Activity.key)))


def test_first_sync_then_history_then_an_expired_history_id(sessions, settings, company, google):
    emulator, _ = google
    for i in range(5):
        deliver(emulator, ANA, i)
    deliver(emulator, ANA, 50, labels=("SPAM",))
    deliver(emulator, ANA, 51, labels=("TRASH",))
    deliver(emulator, ANA, 52, labels=("CHAT",))
    oauth_mailbox(sessions, settings, google)
    assert sync(sessions, settings, "ana").new_activities == 5
    deliver(emulator, ANA, 6)
    second = sync(sessions, settings, "ana")
    assert second.new_activities == 1
    quiet = sync(sessions, settings, "ana")
    assert (quiet.new_activities, quiet.new_sightings) == (0, 0)
    emulator.expire_history()  # a week later: the stored history id is too old
    deliver(emulator, ANA, 7)
    third = sync(sessions, settings, "ana")
    assert (third.new_activities, third.new_sightings) == (1, 1)
    assert len(keys(sessions)) == 7


def test_gmail_thread_id_links_replies_to_the_deal(sessions, settings, company, google):
    emulator, _ = google
    deliver(emulator, ANA, 1, subject="Renewal [OPP-101]")
    oauth_mailbox(sessions, settings, google)
    sync(sessions, settings, "ana")
    deliver(
        emulator,
        ANA,
        0,
        subject="Re: Renewal",
        in_reply_to="g1@acme.test",
        references=["g1@acme.test"],
    )
    sync(sessions, settings, "ana")
    with sessions() as session:
        rows = {r["subject"]: r for r in queries.timeline(session)}
    assert {(lk["type"], lk["reason"]) for lk in rows["Re: Renewal"]["links"]} >= {
        ("opportunity", "thread")
    }


def test_a_revoked_grant_parks_only_that_mailbox(sessions, settings, company, google):
    emulator, _ = google
    deliver(emulator, ANA, 1)
    deliver(emulator, BEN, 2, to=BEN)
    refresh = oauth_mailbox(sessions, settings, google)
    oauth_mailbox(sessions, settings, google, "ben", BEN)
    emulator.revoke(refresh)
    bad = sync_mailbox(sessions, settings, "ana")
    assert bad.state == "parked" and "syncd mailbox reauth ana" in (bad.error or "")
    assert refresh not in (bad.error or "")
    sync(sessions, settings, "ben")
    with sessions() as session:
        states = dict(session.execute(select(Mailbox.name, Mailbox.state)).all())
    assert states == {"ana": "parked", "ben": "ok"}


def test_429_storms_5xx_and_drops_mid_backfill_end_like_a_clean_run(
    sessions, settings, company, google
):
    emulator, _ = google
    for i in range(250):
        deliver(emulator, ANA, i)
    oauth_mailbox(sessions, settings, google)
    for fault in (
        {"status": 503},
        {"status": 429, "retry_after": 1},
        {"drop": True},
        {"status": 500},
        {"status": 429},
    ):
        emulator.inject(**fault)
    fast = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"batch_size": 100})}
    )
    report = sync(sessions, fast, "ana")
    assert report.new_activities == 250
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Sighting)) == 250
    assert not emulator.faults  # every fault was met, and survived


def test_two_gmail_users_who_email_each_other_make_one_activity(
    sessions, settings, company, google
):
    emulator, _ = google
    raw = email_bytes(
        sender=ANA,
        to=["carla@acme.test"],
        cc=[BEN],
        subject="Proposal",
        when=NOW,
        message_id="shared@northwind.test",
    )
    emulator.deliver(ANA, raw, labels=("SENT",))
    emulator.deliver(BEN, raw, labels=("INBOX",))
    oauth_mailbox(sessions, settings, google)
    oauth_mailbox(sessions, settings, google, "ben", BEN)
    sync(sessions, settings, "ana")
    sync(sessions, settings, "ben")
    with sessions() as session:
        (row,) = queries.timeline(session)
    assert row["mailboxes"] == ["ana", "ben"]


def test_service_account_mode_reads_every_user_with_one_key(sessions, settings, company, google):
    emulator, base = google
    info, public = service_account_key(base)
    emulator.add_service_account(info["client_email"], public)
    deliver(emulator, ANA, 1)
    deliver(emulator, BEN, 2, to=BEN)
    for name, user in (("ana", ANA), ("ben", BEN)):
        add_gmail(sessions, settings, name, user, info, mode="service_account", api_endpoint=base)
        sync(sessions, settings, name)
    assert keys(sessions) == ["mid:g1@acme.test", "mid:g2@acme.test"]


def test_cli_adds_gmail_mailboxes_in_user_and_admin_mode(
    company, google, db_url, settings, tmp_path
):
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    emulator, base = google
    deliver(emulator, ANA, 1)
    deliver(emulator, BEN, 2, to=BEN)
    env = {**os.environ, "SYNCD_DATABASE_URL": db_url, "SYNCD_HOME": str(settings.home)}

    def syncd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncd", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # user mode: the consent URL is printed; a "browser" follows it and allows access
    client_file = tmp_path / "client.json"
    client_file.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": "client-1",
                    "client_secret": "secret-1",
                    "auth_uri": base + "auth",
                    "token_uri": base + "token",
                }
            }
        )
    )
    emulator.consenting = ANA
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd",
            "mailbox",
            "add",
            "ana",
            "--kind",
            "gmail",
            "--user",
            ANA,
            "--oauth-client",
            str(client_file),
            "--api-endpoint",
            base,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    url = ""
    while not url.startswith("http"):
        url = proc.stderr.readline().strip()
        assert url or proc.poll() is None, "syncd printed no consent URL"
    assert re.search(r"[?&]access_type=offline", url) and "client_id=client-1" in url
    urllib.request.urlopen(url).read()  # the browser: consent page, then the loopback
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    # admin mode: one service account key for every user of the domain
    info, public = service_account_key(base)
    emulator.add_service_account(info["client_email"], public)
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(info))
    added = syncd(
        "mailbox",
        "add",
        "ben",
        "--kind",
        "gmail",
        "--user",
        BEN,
        "--service-account",
        str(key_file),
        "--api-endpoint",
        base,
    )
    assert added.returncode == 0, added.stderr
    both = syncd("sync")
    assert both.returncode == 0, both.stderr
    status = {r["mailbox"]: r for r in json.loads(syncd("status", "--json").stdout)}
    assert status["ana"]["items"] == 1 and status["ben"]["items"] == 1
    listing = syncd("mailbox", "list", "--json").stdout
    assert "secret-1" not in listing and "PRIVATE KEY" not in listing
    bad = syncd(
        "mailbox",
        "add",
        "x",
        "--kind",
        "gmail",
        "--user",
        ANA,
        "--service-account",
        str(client_file),
    )
    assert bad.returncode == 1 and "is not a service account key" in bad.stderr
