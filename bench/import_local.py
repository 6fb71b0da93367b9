"""Benchmark: first import of a generated Maildir, on SQLite and on PostgreSQL.

Prints, from one run: syncd's import rate (messages/s) on each database, the ceiling
measured in the same run (parsing the same files with the same parser, no database), their
ratio, the peak RSS of each phase (each runs in its own process), and the time of a poll of
the unchanged mailbox.

    .venv/bin/python bench/import_local.py                 # 50,000 messages
    .venv/bin/python bench/import_local.py --messages 200000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import peak_rss_mb, run_phase  # noqa: E402


def phase_ceiling(maildir: Path) -> dict[str, float]:
    """Read and parse every message with syncd's parser; no matching, no database."""
    from syncd.connectors.mime import UnreadableMessage, parse_message

    now = datetime.now(UTC)
    files = [p for d in (maildir / "cur", maildir / ".Sent" / "cur") for p in d.iterdir()]
    start = time.perf_counter()
    for p in files:
        with contextlib.suppress(UnreadableMessage):
            parse_message(p.read_bytes(), p.name, now)
    return {
        "messages": len(files),
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_import(maildir: Path, url: str, crm: Path) -> dict[str, float]:
    """syncd's whole pipeline: connector, matcher, recorder, follow-ups, one transaction a
    batch, exactly as `syncd sync` runs it."""
    from syncd.config import Settings
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.demo import add_local_mailbox, load_company
    from syncd.sync import sync_mailbox

    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, crm)
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(maildir))
    settings = Settings(home=Path(tempfile.mkdtemp()))
    start = time.perf_counter()
    report = sync_mailbox(sessions, settings, "ana")
    seconds = time.perf_counter() - start
    assert report.ok, report.error
    time.sleep(1.1)  # past the cursor's one-second settling margin
    sync_mailbox(sessions, settings, "ana")
    start = time.perf_counter()
    again = sync_mailbox(sessions, settings, "ana")
    poll = time.perf_counter() - start
    assert again.new_activities == 0
    return {
        "seconds": seconds,
        "activities": report.new_activities,
        "not_logged": sum(report.excluded.values()),
        "unchanged_poll_ms": poll * 1000,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--phase", choices=["ceiling", "import"], help=argparse.SUPPRESS)
    parser.add_argument("--maildir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--crm", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "ceiling":
        print(json.dumps(phase_ceiling(args.maildir)))
        return
    if args.phase == "import":
        print(json.dumps(phase_import(args.maildir, args.url, args.crm)))
        return

    from syncd.demo import build_demo, generate_maildir
    from tests.servers import new_pg_database, postgres

    work = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    now = datetime.now(UTC)
    demo = build_demo(work / "demo", now)
    t = time.perf_counter()
    maildir = generate_maildir(work / "maildir", args.messages, now)
    print(f"generated {args.messages} messages in {time.perf_counter() - t:.1f} s ({work})")
    common = ["--maildir", str(maildir), "--crm", str(demo.root / "crm")]
    ceiling = run_phase(__file__, "--phase", "ceiling", *common)
    ceiling_rate = ceiling["messages"] / ceiling["seconds"]
    print(
        f"ceiling (parse only, no database): {ceiling_rate:,.0f} msg/s, "
        f"peak RSS {ceiling['peak_rss_mb']:.0f} MB"
    )
    with postgres() as pg:
        for name, url in (
            ("sqlite", f"sqlite:///{work / 'bench.db'}"),
            ("postgresql", new_pg_database(pg)),
        ):
            r = run_phase(__file__, "--phase", "import", "--url", url, *common)
            rate = args.messages / r["seconds"]
            print(
                f"{name:10s}: {rate:,.0f} msg/s ({args.messages} messages in "
                f"{r['seconds']:.1f} s, {r['activities']:.0f} activities, "
                f"{r['not_logged']:.0f} not logged), ratio to ceiling {rate / ceiling_rate:.2f}, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"unchanged poll {r['unchanged_poll_ms']:.0f} ms"
            )


if __name__ == "__main__":
    main()
