"""Benchmark: the historical import's harvest (``syncd import contacts``) from an IMAP mailbox
on a real Dovecot, against the raw header fetch of the same messages.

Prints, from one run, for each mailbox size: the harvest rate (messages/s: read every folder,
merge the people, decide; SQLite, ``--dry-run`` so the CRM is untouched), the ceiling
(imapclient fetching the same messages' headers on one connection, nothing done with them;
the median of three runs after a warm-up one),
their ratio, the candidates found, and the peak RSS of the harvest (each phase in its own
process). Memory must not grow with the mailbox beyond the candidate table.

    .venv/bin/python bench/import_contacts.py                      # 10,000 and 100,000
    .venv/bin/python bench/import_contacts.py --sizes 2000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import demo_crm_with_imap, peak_rss_mb, run_phase  # noqa: E402


def phase_ceiling(port: int, login: str, password: str) -> dict[str, float]:
    """imapclient alone: every message's header block, 1000 UIDs a command."""
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port=port, ssl=False)
    client.login(login, password)
    start = time.perf_counter()
    count = 0
    for folder in ("INBOX", "Sent"):
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        for i in range(0, len(uids), 1000):
            count += len(client.fetch(uids[i : i + 1000], [b"BODY.PEEK[HEADER]"]))
    seconds = time.perf_counter() - start
    client.logout()
    return {"messages": count, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def phase_harvest(url: str, home: str, crm: str, port: int, login: str, password: str) -> dict:
    """``syncd import contacts --mailbox ana --dry-run``, as the command runs it."""
    from syncd.config import Settings
    from syncd.harvest.decide import Policy
    from syncd.harvest.run import ContactImport, Target

    sessions = demo_crm_with_imap(url, home, crm, port, login, password)
    settings = Settings(home=Path(home), sync={"batch_size": 1000})
    start = time.perf_counter()
    job = ContactImport(
        sessions, settings, [Target("ana", "ana@northwind.test")], since=None, policy=Policy()
    )
    outcome = job.run(dry_run=True)
    seconds = time.perf_counter() - start
    assert not outcome.failed, outcome.failed
    return {
        "seconds": seconds,
        "items": outcome.items,
        "candidates": len(outcome.verdicts),
        "to_import": outcome.summary()["to_import"],
        "peak_rss_mb": peak_rss_mb(),
    }


def fill(maildir: Path, messages: int) -> None:
    from syncd.demo import generate_maildir

    generate_maildir(maildir, messages, datetime.now(UTC))
    for dirpath, _dirs, files in os.walk(maildir.parent):
        os.chown(dirpath, 65534, 65534)
        for f in files:
            os.chown(os.path.join(dirpath, f), 65534, 65534)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--phase", choices=["ceiling", "harvest"], help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        kw = json.loads(args.args)
        fn = phase_ceiling if args.phase == "ceiling" else phase_harvest
        print(json.dumps(fn(**kw)))
        return

    from syncd.demo import build_demo
    from tests.servers import Dovecot, dovecot

    work = Path(tempfile.mkdtemp(prefix="syncd-harvest-bench-"))
    demo = build_demo(work / "demo")
    with dovecot() as server:
        for n, size in enumerate(args.sizes):
            login = server.login(f"user{n}")
            start = time.perf_counter()
            fill(server.maildir(login), size)
            print(f"{size:,} messages written in {time.perf_counter() - start:.1f} s")
            common = {"port": server.port, "login": login, "password": Dovecot.PASSWORD}
            run_phase(__file__, "--phase", "ceiling", "--args", json.dumps(common))  # warm
            # the median of three: a phase of a few seconds on a shared machine varies
            ceilings = sorted(
                (run_phase(__file__, "--phase", "ceiling", "--args", json.dumps(common))
                 for _ in range(3)),
                key=lambda c: c["messages"] / c["seconds"],
            )  # fmt: skip
            ceiling = ceilings[1]
            ceiling_rate = ceiling["messages"] / ceiling["seconds"]
            harvest = run_phase(
                __file__,
                "--phase",
                "harvest",
                "--args",
                json.dumps(
                    {
                        **common,
                        "url": f"sqlite:///{work / f'bench{n}.db'}",
                        "home": str(work / f"home{n}"),
                        "crm": str(demo.root / "crm"),
                    }
                ),
            )
            rate = harvest["items"] / harvest["seconds"]
            print(
                f"{size:,} messages: ceiling (imapclient, headers only) {ceiling_rate:,.0f} "
                f"msg/s; harvest {rate:,.0f} msg/s ({harvest['items']:,} items in "
                f"{harvest['seconds']:.1f} s, {harvest['candidates']:,} candidates, "
                f"{harvest['to_import']:,} to import); ratio {rate / ceiling_rate:.2f}; "
                f"peak RSS harvest {harvest['peak_rss_mb']:.0f} MB, "
                f"ceiling {ceiling['peak_rss_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
