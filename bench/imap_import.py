"""Benchmark: first sync of an IMAP mailbox on a real Dovecot, and a poll of it unchanged.

Prints, from one run: the fetch ceiling (imapclient fetching what syncd's first FETCH asks
for, no processing) with 1 process and with N (each on its own connection, fetching a share
of the UIDs), syncd's first-sync rate (messages/s, SQLite) with 1 parse process and with N
(``sync.parse_processes``), each rate's ratio against the one-process ceiling, the peak RSS
of each phase (each in its own process; a sync's is its main process's), syncd's fetch and
parse alone with N parse processes (the connector's items counted, nothing matched or
recorded: the most a first sync could reach on the machine), and the time and
the number of IMAP commands of a poll of the unchanged mailbox (counted by a proxy between
syncd and Dovecot), and how soon IDLE brings a new message. N is the number of usable CPUs.
Aims (issue 14): a ratio >= 0.7 with N workers on 4 or more cores, >= 0.5 on 2.

A ceiling is measured again and again until it has run for 5 s (at least 3 times), and the
median taken.

    .venv/bin/python bench/imap_import.py                    # 20,000 messages
    .venv/bin/python bench/imap_import.py --messages 200000 --body metadata
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import demo_crm_with_imap, median_rate, peak_rss_mb, run_phase  # noqa: E402

CEILING_SECONDS = 5.0  # a ceiling runs at least this long, and at least CEILING_RUNS times
CEILING_RUNS = 3
Share = list[tuple[str, list[int]]]  # what one process fetches: UIDs by folder

_client: Any = None  # a ceiling process's connection


def _connect(port: int, login: str, password: str) -> None:
    from imapclient import IMAPClient

    global _client
    _client = IMAPClient("127.0.0.1", port=port, ssl=False)
    _client.login(login, password)


def _fetch_share(share: Share, attributes: list[bytes]) -> int:
    """One process's share, 1000 UIDs a command, nothing done with what comes back."""
    count = 0
    for folder, uids in share:
        _client.select_folder(folder, readonly=True)
        for i in range(0, len(uids), 1000):
            count += len(_client.fetch(uids[i : i + 1000], attributes))
    return count


def _settings(home: str, body: str, processes: int) -> Any:
    """The config of a first sync with ``processes`` parse processes."""
    from syncd.config import Settings

    return Settings(
        home=Path(home), sync={"body": body, "batch_size": 1000, "parse_processes": processes}
    )


def phase_ceiling(
    port: int, login: str, password: str, body: str, processes: int
) -> dict[str, float]:
    """imapclient alone, on ``processes`` connections in as many processes: the FETCH items
    syncd asks first for each message, for every message of INBOX and Sent."""
    import multiprocessing

    from syncd.connectors.imap.parse import fetch_attributes

    attributes = fetch_attributes(body)
    _connect(port, login, password)
    shares: list[Share] = [[] for _ in range(processes)]
    for folder in ("INBOX", "Sent"):
        _client.select_folder(folder, readonly=True)
        uids = sorted(_client.search(["ALL"]))
        step = -(-len(uids) // processes)
        for i, share in enumerate(shares):
            share.append((folder, uids[i * step : (i + 1) * step]))
    pool = None
    if processes > 1:
        context = multiprocessing.get_context("forkserver")
        pool = context.Pool(processes, initializer=_connect, initargs=(port, login, password))

    def once() -> tuple[int, float]:
        start = time.perf_counter()
        if pool is None:
            count = _fetch_share(shares[0], attributes)
        else:
            count = sum(pool.starmap(_fetch_share, [(s, attributes) for s in shares], 1))
        return count, time.perf_counter() - start

    result = median_rate(once, CEILING_SECONDS, CEILING_RUNS, warm=True)  # warm: Dovecot's caches
    if pool is not None:
        pool.terminate()
    _client.logout()
    return result


def phase_sync(
    url: str,
    home: str,
    crm: str,
    port: int,
    login: str,
    password: str,
    body: str,
    processes: int,
) -> dict[str, float]:
    """syncd's whole pipeline on the mailbox, as `syncd sync` runs it, with ``processes``
    parse processes (``sync.parse_processes``)."""
    from syncd.sync import sync_mailbox

    sessions = demo_crm_with_imap(url, home, crm, port, login, password)
    start = time.perf_counter()
    report = sync_mailbox(sessions, _settings(home, body, processes), "ana")
    seconds = time.perf_counter() - start
    assert report.ok, report.error
    return {"seconds": seconds, "activities": report.new_activities, "peak_rss_mb": peak_rss_mb()}


def phase_read(
    url: str,
    home: str,
    crm: str,
    port: int,
    login: str,
    password: str,
    body: str,
    processes: int,
) -> dict[str, float]:
    """syncd's IMAP connector alone, as the first sync runs it with ``processes`` parse
    processes: every folder's messages fetched and parsed, which the main process only
    counts (items and quarantined messages; nothing matched, recorded or settled). Its rate
    is the most the pipeline could reach on this machine, whatever the main process does."""
    from sqlalchemy import select

    from syncd.connectors.registry import open_connector
    from syncd.crm.models import Mailbox
    from syncd.sync import mailbox_spec

    sessions = demo_crm_with_imap(url, home, crm, port, login, password)
    with sessions() as session:
        mailbox = session.scalars(select(Mailbox).where(Mailbox.name == "ana")).one()
        spec = mailbox_spec(mailbox, _settings(home, body, processes))

    def once() -> tuple[int, float]:
        start = time.perf_counter()
        connector = open_connector(spec)
        messages = 0
        try:
            for source in connector.mail_sources():
                for batch in source.changes(None):
                    messages += len(batch.items) + len(batch.quarantined)
        finally:
            connector.close()
        return messages, time.perf_counter() - start

    return median_rate(once, CEILING_SECONDS, CEILING_RUNS, warm=True)


def phase_poll(url: str, home: str, port: int, body: str) -> dict[str, float | str]:
    """One more pass over the unchanged mailbox, through a proxy that counts commands."""
    from syncd.config import Settings
    from syncd.crm.database import make_engine, session_factory
    from syncd.crm.models import Mailbox
    from syncd.sync import sync_mailbox
    from tests.servers import TcpProxy

    sessions = session_factory(make_engine(url))
    settings = Settings(home=Path(home), sync={"body": body})

    def use_port(p: int) -> None:
        with sessions.begin() as session:
            mailbox = session.query(Mailbox).filter_by(name="ana").one()
            mailbox.settings = {**mailbox.settings, "port": p}

    sync_mailbox(sessions, settings, "ana")  # warm: imports, caches
    start = time.perf_counter()
    report = sync_mailbox(sessions, settings, "ana")  # timed straight to Dovecot
    seconds = time.perf_counter() - start
    assert report.ok and report.new_activities == 0, report.error
    proxy = TcpProxy(port)  # counted through the proxy (which adds its own latency)
    use_port(proxy.port)
    sync_mailbox(sessions, settings, "ana")
    use_port(port)
    return {
        "seconds": seconds,
        "commands": len(proxy.commands),
        "status": sum(1 for c in proxy.commands if c == "STATUS"),
        "list": " ".join(proxy.commands),
    }


def idle_latency(url: str, home: str, port: int, login: str, password: str) -> float:
    """Seconds from an APPEND to INBOX until its activity is in the CRM, with `syncd run` on
    IDLE (and a poll interval of an hour, so that only IDLE can be the reason)."""
    from imapclient import IMAPClient
    from sqlalchemy import select

    from syncd.crm.database import make_engine, session_factory
    from syncd.crm.models import Activity, Mailbox

    sessions = session_factory(make_engine(url))
    with sessions.begin() as session:
        mailbox = session.query(Mailbox).filter_by(name="ana").one()
        mailbox.settings = {**mailbox.settings, "idle": True}
    config = Path(home) / "idle.toml"
    config.write_text("[sync]\npoll_interval = 3600\n")
    env = {**os.environ, "SYNCD_DATABASE_URL": url, "SYNCD_HOME": home, "SYNCD_CONFIG": str(config)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3.0)  # started, first (unchanged) pass done, IDLE listening
        client = IMAPClient("127.0.0.1", port=port, ssl=False)
        client.login(login, password)
        msg = (
            b"From: Carla <carla@acme.test>\r\nTo: ana@northwind.test\r\n"
            b"Subject: idle probe\r\nMessage-ID: <idle-probe@acme.test>\r\n\r\nhi\r\n"
        )
        start = time.perf_counter()
        client.append("INBOX", msg)
        key = "mid:idle-probe@acme.test"
        while True:
            with sessions() as session:
                if session.scalar(select(Activity.id).where(Activity.key == key)):
                    return time.perf_counter() - start
            if time.perf_counter() - start > 60:
                return float("nan")
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fill(maildir: Path, messages: int) -> float:
    """Write the messages straight into the user's Maildir, as Dovecot's own delivery would."""
    from syncd.demo import generate_maildir

    start = time.perf_counter()
    generate_maildir(maildir, messages, datetime.now(UTC))
    for dirpath, _dirs, files in os.walk(maildir.parent):
        os.chown(dirpath, 65534, 65534)
        for f in files:
            os.chown(os.path.join(dirpath, f), 65534, 65534)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="up to 200,000")
    parser.add_argument("--body", choices=["metadata", "snippet", "full"], default="snippet")
    parser.add_argument("--processes", type=int, default=0, help="N (default: one per usable CPU)")
    parser.add_argument(
        "--phase", choices=["ceiling", "read", "sync", "poll"], help=argparse.SUPPRESS
    )
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        kw = json.loads(args.args)
        phases: dict[str, Callable[..., Mapping[str, object]]] = {
            "ceiling": phase_ceiling,
            "read": phase_read,
            "sync": phase_sync,
            "poll": phase_poll,
        }
        fn = phases[args.phase]
        print(json.dumps(fn(**kw)))
        return

    from syncd.connectors import parsepool
    from syncd.demo import build_demo
    from tests.servers import Dovecot, dovecot

    n = args.processes or parsepool.usable_cpus()
    work = Path(tempfile.mkdtemp(prefix="syncd-imap-bench-"))
    demo = build_demo(work / "demo")
    with dovecot() as server:
        login = server.login("ana")
        seconds = fill(server.maildir(login), args.messages)
        print(f"filled INBOX and Sent with {args.messages} messages in {seconds:.1f} s")
        common = {
            "port": server.port,
            "login": login,
            "password": Dovecot.PASSWORD,
            "body": args.body,
        }
        ceilings: dict[int, dict[str, Any]] = {}
        for processes in (1, n):
            ceilings[processes] = ceiling = run_phase(
                __file__,
                "--phase",
                "ceiling",
                "--args",
                json.dumps({**common, "processes": processes}),
            )
            print(
                f"ceiling, {processes} process{'es' if processes > 1 else ''} (imapclient, "
                f"syncd's first FETCH items, no processing): {ceiling['rate']:,.0f} msg/s "
                f"(median of {ceiling['runs']} runs over {ceiling['seconds']:.1f} s), "
                f"x{ceiling['rate'] / ceilings[1]['rate']:.2f} the one-process ceiling, "
                f"peak RSS {ceiling['peak_rss_mb']:.0f} MB"
            )
        base = ceilings[1]["rate"]
        read = run_phase(
            __file__,
            "--phase",
            "read",
            "--args",
            json.dumps(
                {
                    **common,
                    "url": f"sqlite:///{work / 'read.db'}",
                    "home": str(work / "home-read"),
                    "crm": str(demo.root / "crm"),
                    "processes": n,
                }
            ),
        )
        print(
            f"syncd's fetch and parse alone, {n} parse process{'es' if n > 1 else ''} (nothing "
            f"matched or recorded: the most a first sync can reach here): "
            f"{read['rate']:,.0f} msg/s (median of {read['runs']} runs over "
            f"{read['seconds']:.1f} s), ratio to the one-process ceiling "
            f"{read['rate'] / base:.2f}, peak RSS {read['peak_rss_mb']:.0f} MB"
        )
        url = ""
        home = ""
        for processes in (1, n):
            url = f"sqlite:///{work / f'bench-{processes}.db'}"
            home = str(work / f"home-{processes}")
            first = run_phase(
                __file__,
                "--phase",
                "sync",
                "--args",
                json.dumps(
                    {
                        **common,
                        "url": url,
                        "home": home,
                        "crm": str(demo.root / "crm"),
                        "processes": processes,
                    }
                ),
            )
            rate = args.messages / first["seconds"]
            against_n = (
                f", {rate / ceilings[n]['rate']:.2f} of the {n}-process one" if n > 1 else ""
            )
            print(
                f"syncd first sync, {processes} parse process{'es' if processes > 1 else ''} "
                f"(body={args.body}, SQLite): {rate:,.0f} msg/s ({first['activities']:.0f} "
                f"activities in {first['seconds']:.1f} s), ratio to the one-process ceiling "
                f"{rate / base:.2f}{against_n}, peak RSS {first['peak_rss_mb']:.0f} MB"
            )
        aim = 0.7 if n >= 4 else 0.5
        print(f"aim with {n} usable CPUs: a ratio >= {aim} with {n} parse processes")
        poll = run_phase(
            __file__,
            "--phase",
            "poll",
            "--args",
            json.dumps({"url": url, "home": home, "port": server.port, "body": args.body}),
        )
        print(
            f"poll of the unchanged mailbox: {poll['seconds'] * 1000:.0f} ms, "
            f"{poll['commands']:.0f} IMAP commands ({poll['list']}), "
            f"{poll['status']:.0f} STATUS (one per folder)"
        )
        latency = idle_latency(url, home, server.port, login, Dovecot.PASSWORD)
        print(
            f"IDLE: a message appended to INBOX was in the CRM {latency:.2f} s later "
            "(poll interval 3600 s, so IDLE brought it)"
        )


if __name__ == "__main__":
    main()
