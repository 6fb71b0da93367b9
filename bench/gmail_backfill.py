"""Benchmark: a Gmail backfill against the local emulator with Google's per-user quota on.

Prints, from one run: the achieved rate as a ratio of the quota ceiling (messages/s that the
quota allows: units per minute / 5 units per messages.get / 60), HTTP requests per message,
the 429s received, and peak RSS.

    .venv/bin/python bench/gmail_backfill.py                       # 5,000 messages
    .venv/bin/python bench/gmail_backfill.py --units-per-minute 60000 --messages 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--units-per-minute", type=int, default=15_000)
    args = parser.parse_args()

    from sqlalchemy import select

    from syncd.config import Settings
    from syncd.crm import mailboxes
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.crm.models import User
    from syncd.demo import build_demo, email_bytes, load_company
    from syncd.secrets import Secret, SecretBox
    from syncd.sync import sync_mailbox
    from tests.emulators.google import GoogleEmulator

    work = Path(tempfile.mkdtemp(prefix="syncd-gmail-bench-"))
    demo = build_demo(work / "demo")
    emulator = GoogleEmulator(units_per_minute=args.units_per_minute)
    emulator.add_client("client-1", "secret-1")
    user = "ana@northwind.test"
    emulator.add_user(user)
    now = datetime.now(UTC)
    for i in range(args.messages):
        when = now - timedelta(minutes=i)
        emulator.deliver(
            user,
            email_bytes(
                sender="Carla <carla@acme.test>",
                to=[user],
                subject=f"note {i}",
                when=when,
                message_id=f"bench-{i}@acme.test",
            ),
            internal_date_ms=int(when.timestamp() * 1000),
        )
    base = emulator.start()
    engine = make_engine(f"sqlite:///{work / 'bench.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, demo.root / "crm")
    home = work / "home"
    secret = {"refresh_token": emulator.grant(user), "client_secret": "secret-1"}
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == user))
        assert user_id is not None
        mailboxes.add_mailbox(
            session,
            name="ana",
            kind="gmail",
            user_id=user_id,
            settings={
                "mode": "oauth",
                "client_id": "client-1",
                "token_uri": base + "token",
                "api_endpoint": base,
                "quota_units_per_minute": args.units_per_minute,
            },
            secret_token=SecretBox(home).encrypt(Secret(json.dumps(secret))),
        )
    rejected_before = emulator.rejected
    emulator.requests = 0
    start = time.perf_counter()
    report = sync_mailbox(sessions, Settings(home=home), "ana")
    seconds = time.perf_counter() - start
    assert report.ok, report.error
    emulator.stop()
    ceiling = args.units_per_minute / 5 / 60  # messages.get costs 5 units
    rate = report.new_activities / seconds
    print(
        f"backfill of {report.new_activities} messages in {seconds:.1f} s: {rate:.1f} msg/s; "
        f"quota ceiling {ceiling:.1f} msg/s ({args.units_per_minute} units/min); "
        f"ratio {rate / ceiling:.2f}"
    )
    print(
        f"HTTP requests: {emulator.requests} ({emulator.requests / args.messages:.3f} per "
        f"message, token refreshes included); rate-limit refusals (403/429) received: "
        f"{emulator.rejected - rejected_before}; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
        "(emulator in the same process)"
    )


if __name__ == "__main__":
    main()
