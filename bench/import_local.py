"""Benchmark: first import of a generated Maildir, on SQLite and on PostgreSQL.

Prints, from one run: syncd's import rate (messages/s) on each database, the ceiling
measured in the same run (parsing the same files with the same parser, no database; read
again until it has run CEILING_SECONDS, the median of the runs), their ratio, the peak RSS of
each phase (each runs in its own process), and the time of a poll of the unchanged mailbox.
Memory (issue 14, flat memory): the peak RSS of the import of a 5,000-message reference
Maildir on each database, and its ratio to that of the ``--messages`` import (aim: at most
1.2, whatever the size).

    .venv/bin/python bench/import_local.py                 # 50,000 messages
    .venv/bin/python bench/import_local.py --messages 200000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import median_rate, peak_rss_mb, run_phase  # noqa: E402

CEILING_SECONDS = 5.0  # a ceiling reads the files again until it has run this long
REFERENCE = 5_000  # messages of the reference import, whose peak RSS the others are held to
RSS_AIM = 1.2


def phase_ceiling(maildir: Path) -> dict[str, float]:
    """Read and parse every message with syncd's parser; no matching, no database. The
    files are listed as they are read (nothing held), as often as it takes."""
    from syncd.connectors.mime import UnreadableMessage, parse_message

    now = datetime.now(UTC)

    def once() -> tuple[int, float]:
        count, start = 0, time.perf_counter()
        for folder in (maildir / "cur", maildir / ".Sent" / "cur"):
            with os.scandir(folder) as it:
                for entry in it:
                    with open(entry.path, "rb") as fh, contextlib.suppress(UnreadableMessage):
                        parse_message(fh.read(), entry.name, now)
                    count += 1
        return count, time.perf_counter() - start

    return median_rate(once, CEILING_SECONDS)


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
    settings = Settings(home=Path(tempfile.mkdtemp(dir=maildir.parent)))
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
    try:
        now = datetime.now(UTC)
        demo = build_demo(work / "demo", now)
        t = time.perf_counter()
        maildir = generate_maildir(work / "maildir", args.messages, now)
        reference = generate_maildir(work / "reference", REFERENCE, now)
        print(
            f"generated {args.messages} messages and a reference of {REFERENCE} in "
            f"{time.perf_counter() - t:.1f} s ({work})"
        )
        crm = ["--crm", str(demo.root / "crm")]
        ceiling = run_phase(__file__, "--phase", "ceiling", "--maildir", str(maildir), *crm)
        print(
            f"ceiling (parse only, no database): {ceiling['rate']:,.0f} msg/s "
            f"(median of {ceiling['runs']} runs over {ceiling['seconds']:.1f} s), "
            f"peak RSS {ceiling['peak_rss_mb']:.0f} MB"
        )
        with postgres() as pg:
            for name, url in (
                ("sqlite", f"sqlite:///{work / 'bench.db'}"),
                ("postgresql", new_pg_database(pg)),
            ):
                ref_url = (
                    f"sqlite:///{work / 'reference.db'}"
                    if name == "sqlite"
                    else new_pg_database(pg)
                )
                small = run_phase(
                    __file__,
                    "--phase",
                    "import",
                    "--url",
                    ref_url,
                    "--maildir",
                    str(reference),
                    *crm,
                )
                r = run_phase(
                    __file__, "--phase", "import", "--url", url, "--maildir", str(maildir), *crm
                )
                rate = args.messages / r["seconds"]
                print(
                    f"{name:10s}: {rate:,.0f} msg/s ({args.messages} messages in "
                    f"{r['seconds']:.1f} s, {r['activities']:.0f} activities, "
                    f"{r['not_logged']:.0f} not logged), "
                    f"ratio to ceiling {rate / ceiling['rate']:.2f}, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB, "
                    f"unchanged poll {r['unchanged_poll_ms']:.0f} ms"
                )
                growth = r["peak_rss_mb"] / small["peak_rss_mb"]
                print(
                    f"{'':10s}  memory: peak RSS {small['peak_rss_mb']:.0f} MB at {REFERENCE} "
                    f"messages, {r['peak_rss_mb']:.0f} MB at {args.messages}: ratio "
                    f"{growth:.2f} (aim <= {RSS_AIM}{', met' if growth <= RSS_AIM else ', missed'})"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a large run leaves gigabytes of files


if __name__ == "__main__":
    main()
