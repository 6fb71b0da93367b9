"""Benchmark: ``syncd run``'s worker pool, 200 IMAP mailboxes on a real Dovecot, 1 to N workers.

For each worker count (1, 2, 4, ... up to ``--max-workers``), in its own process (so its
peak RSS is its own) and on a fresh CRM database, the daemon syncs every mailbox's first
import, then one poll of each unchanged mailbox (all pushed at once). Prints, in one run:
passes per minute and items per second of the import, passes per minute of the polls,
each as a ratio to one worker, the CPU syncd used during the import (Python threads share
one interpreter lock: near 100% of one core, more workers cannot help), and the peak RSS.
Each mailbox has its own CRM user and ``--messages`` messages of its own (written straight
into Dovecot's Maildirs); ``sync.imap_connections`` is set to the worker count, so the cap
is not what limits.

    .venv/bin/python bench/daemon_scale.py                         # 200 mailboxes, 1..16
    .venv/bin/python bench/daemon_scale.py --mailboxes 50 --messages 400 --database sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import peak_rss_mb, run_phase  # noqa: E402

PASSWORD = "imap-test-pw"  # tests.servers.Dovecot.PASSWORD: every login has it


def fill(maildir: Path, user: str, messages: int) -> None:
    """``messages`` small messages from the company's contacts to ``user``, each its own."""
    from syncd.demo import deliver, email_bytes, make_maildir

    make_maildir(maildir)
    now = datetime.now(UTC).replace(microsecond=0)
    senders = ["Carla <carla@acme.test>", "Dan Wu <dan@acme.test>", "Eva <eva@globex.test>"]
    for i in range(messages):
        when = now - timedelta(minutes=messages - i)
        data = email_bytes(
            sender=senders[i % 3],
            to=[user],
            subject=f"Rollout step {i}",
            when=when,
            message_id=f"m{i}.{user}",
            body="we discussed the rollout plan and the next steps.",
        )
        deliver(maildir, data, when, f"{i:06}.bench")
    for dirpath, _dirs, files in os.walk(maildir.parent):
        os.chown(dirpath, 65534, 65534)
        for f in files:
            os.chown(os.path.join(dirpath, f), 65534, 65534)


def setup_crm(url: str, crm: str, port: int, logins: list[str], home: str) -> Any:
    """A fresh CRM: the company, one user and one IMAP mailbox per login."""
    from sqlalchemy import select

    from syncd.crm import mailboxes
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.crm.models import User
    from syncd.demo import load_company
    from syncd.secrets import Secret, SecretBox

    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, Path(crm))
    token = SecretBox(Path(home)).encrypt(Secret(PASSWORD))
    with sessions.begin() as session:
        users = dict(session.execute(select(User.email, User.id)).tuples().all())
        for login in logins:
            settings = {"host": "127.0.0.1", "port": port, "tls": "none", "login": login}
            mailboxes.add_mailbox(
                session,
                name=login,
                kind="imap",
                user_id=users[f"{login}@northwind.test"],
                settings=settings,
                secret_token=token,
            )
    return sessions


def cpu_seconds() -> float:
    """CPU time of this process so far (all its threads), user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def phase_run(
    url: str, crm: str, port: int, logins: list[str], home: str, workers: int, budget: int
) -> dict[str, float]:
    """The daemon with ``workers`` workers: the first import of every mailbox, then one
    poll of each (pushed all at once)."""
    from sqlalchemy import func, select

    from syncd import metrics
    from syncd.config import Settings
    from syncd.crm.models import Mailbox, Sighting
    from syncd.daemon import Daemon, Notifier
    from syncd.report import SyncReport

    sessions = setup_crm(url, crm, port, logins, home)
    settings = Settings(
        home=Path(home),
        sync={
            "workers": workers,
            "imap_connections": workers,
            "poll_interval": 3600,
            "pass_budget": budget,
        },
    )
    passes = [0]
    lock = threading.Lock()
    observe = metrics.observe_pass

    def counted(report: SyncReport, seconds: float) -> None:
        with lock:
            passes[0] += not report.busy
        observe(report, seconds)

    metrics.observe_pass = counted
    daemon = Daemon(sessions, settings, notifier=Notifier(""))
    result: dict[str, float] = {"mailboxes": len(logins)}

    def caught_up() -> int:
        with sessions() as session:
            return int(
                session.scalar(
                    select(func.count(Mailbox.id)).where(Mailbox.caught_up_at.is_not(None))
                )
                or 0
            )

    def drive() -> None:
        try:
            start, cpu = time.perf_counter(), cpu_seconds()
            while caught_up() < len(logins):
                time.sleep(0.1)
            result["import_seconds"] = time.perf_counter() - start
            result["import_cpu"] = cpu_seconds() - cpu
            result["import_passes"] = passes[0]
            with sessions() as session:
                result["items"] = session.scalar(select(func.count(Sighting.id))) or 0
            before, start = passes[0], time.perf_counter()
            for login in logins:
                daemon.on_push(login)
            while passes[0] - before < len(logins):
                time.sleep(0.02)
            result["poll_seconds"] = time.perf_counter() - start
        finally:
            daemon.stopping.set()
            daemon.wake.set()

    helper = threading.Thread(target=drive)
    helper.start()
    daemon.run()
    helper.join()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=200)
    parser.add_argument("--messages", type=int, default=100, help="per mailbox")
    parser.add_argument("--max-workers", type=int, default=16)
    parser.add_argument("--budget", type=int, default=60, help="sync.pass_budget, seconds")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase_run(**json.loads(args.args))))
        return

    from contextlib import ExitStack

    from syncd.demo import build_demo
    from tests.servers import dovecot, new_pg_database, postgres

    work = Path(tempfile.mkdtemp(prefix="syncd-scale-bench-"))
    demo = build_demo(work / "demo")
    with ExitStack() as stack:
        server = stack.enter_context(dovecot())
        pg = stack.enter_context(postgres()) if args.database == "postgresql" else None
        logins = [f"user{i:04}" for i in range(args.mailboxes)]
        started = time.perf_counter()
        for login in logins:
            fill(server.maildir(login), f"{login}@northwind.test", args.messages)
        with (demo.root / "crm" / "users.csv").open("a") as users:
            for login in logins:
                users.write(f"{login}@northwind.test,{login},Europe/Madrid,09:00-17:30\n")
        print(
            f"{args.mailboxes} mailboxes x {args.messages} messages on Dovecot in "
            f"{time.perf_counter() - started:.1f} s; CRM on {args.database}, "
            f"pass_budget {args.budget} s, {os.cpu_count()} CPUs"
        )
        counts = [1]
        while counts[-1] * 2 <= args.max_workers:
            counts.append(counts[-1] * 2)
        rows: list[tuple[int, dict[str, float]]] = []
        for workers in counts:
            url = new_pg_database(pg) if pg else f"sqlite:///{work / f'scale-{workers}.db'}"
            kw = {
                "url": url,
                "crm": str(demo.root / "crm"),
                "port": server.port,
                "logins": logins,
                "home": str(work / "home"),
                "workers": workers,
                "budget": args.budget,
            }
            rows.append((workers, run_phase(__file__, "--phase", "run", "--args", json.dumps(kw))))
            report(rows)


def report(rows: list[tuple[int, dict[str, float]]]) -> None:
    """The latest row, with its ratios to one worker."""
    base = rows[0][1]
    workers, r = rows[-1]
    import_ppm = r["import_passes"] / r["import_seconds"] * 60
    items = r["items"] / r["import_seconds"]
    poll_ppm = r["mailboxes"] / r["poll_seconds"] * 60
    base_items = base["items"] / base["import_seconds"]
    base_poll = base["mailboxes"] / base["poll_seconds"] * 60
    print(
        f"{workers:>2} workers: import {items:7,.0f} items/s (x{items / base_items:.2f}), "
        f"{import_ppm:6,.0f} passes/min ({r['import_passes']:.0f} passes in "
        f"{r['import_seconds']:.1f} s); polls {poll_ppm:7,.0f} passes/min "
        f"(x{poll_ppm / base_poll:.2f}); syncd's CPU during the import "
        f"{r['import_cpu'] / r['import_seconds']:.0%} of one core; peak RSS "
        f"{r['peak_rss_mb']:.0f} MB",
        flush=True,
    )


if __name__ == "__main__":
    main()
