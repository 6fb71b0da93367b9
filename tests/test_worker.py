"""Scale-out: three real ``syncd worker`` processes on one PostgreSQL share 30 Maildir
mailboxes; workers SIGKILLed at random moments mid-pass (and replaced) have their mailboxes
picked up by the others, and the CRM ends equal to a single ``syncd sync``, with no mailbox
ever synced by two workers at once (shown from every worker's per-pass log lines). A
worker refuses SQLite, naming the fix; the queue's tables are created once."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.crm.loader import load_csv
from syncd.crm.models import Mailbox
from syncd.demo import add_local_mailbox, build_demo, generate_maildir, load_company
from syncd.worker import upgrade_queue

from .servers import new_pg_database
from .test_crash import assert_same, snapshot

SYNCD = [sys.executable, "-m", "syncd"]
MAILBOXES = 30
MESSAGES = 200  # a mailbox's; two have BIG, so their passes yield (sync.pass_budget)
BIG = 2000
PASS_LINE = re.compile(
    r"mailbox '(?P<mailbox>[^']+)': (?P<did>.*) \(pass by (?P<owner>\S+) at (?P<at>\S+), "
    r"(?P<seconds>[\d.]+) s\)$"
)


def _copy_as(template: Path, target: Path, k: int) -> None:
    """The template Maildir as rep<k>'s own mail: its own message ids and address."""
    for path in template.rglob("*"):
        if path.is_dir():
            (target / path.relative_to(template)).mkdir(parents=True, exist_ok=True)
            continue
        data = (
            path.read_bytes()
            .replace(b"@gen.test", f"@gen{k}.test".encode())
            .replace(b"ana@northwind.test", f"rep{k}@northwind.test".encode())
            .replace(b"Ana Ruiz", f"Rep {k}".encode())
        )
        copy = target / path.relative_to(template)
        copy.write_bytes(data)
        mtime = path.stat().st_mtime
        os.utime(copy, (mtime, mtime))


def setup_crm(url: str, root: Path) -> None:
    """A fresh CRM: the demo company, 30 salespeople, a Maildir mailbox each, the queue."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, root / "crm")
    with sessions.begin() as session:
        load_csv(session, "users", root / "reps.csv")
    for k in range(MAILBOXES):
        add_local_mailbox(
            sessions, f"rep{k}", f"rep{k}@northwind.test", maildir=str(root / "mail" / f"rep{k}")
        )
    engine.dispose()
    upgrade_queue(url)  # what 'syncd db upgrade' does on PostgreSQL


def environment(url: str, root: Path, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SYNCD_DATABASE_URL": url,
        "SYNCD_HOME": str(home),
        "SYNCD_CONFIG": str(root / "syncd.toml"),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> dict[str, Any]:
    """The mail of 30 salespeople, and the CRM a single ``syncd sync`` makes of it."""
    root = tmp_path_factory.mktemp("scaleout")
    now = datetime.now(UTC).replace(microsecond=0)
    build_demo(root, now)
    small = generate_maildir(root / "small", MESSAGES, now)
    big = generate_maildir(root / "big", BIG, now, seed=11)
    for k in range(MAILBOXES):
        _copy_as(big if k < 2 else small, root / "mail" / f"rep{k}", k)
    (root / "reps.csv").write_text(
        "email,name\n" + "".join(f"rep{k}@northwind.test,Rep {k}\n" for k in range(MAILBOXES))
    )
    # a 5 s pass budget (the least allowed): the two big mailboxes yield and go on
    (root / "syncd.toml").write_text(
        "[sync]\nbatch_size = 100\npoll_interval = 3600\npass_budget = 5\nlease_seconds = 30\n"
    )
    url = new_pg_database(pg_server)
    setup_crm(url, root)
    env = environment(url, root, root / "ref-home")
    done = subprocess.run([*SYNCD, "sync"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return {"root": root, "reference": snapshot(url)}


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path


class Fleet:
    """The worker processes of a test, each logging to its own file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.workers: list[Worker] = []

    def start(self) -> Worker:
        log = self.logs / f"worker{len(self.workers)}.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [*SYNCD, "worker", "--concurrency", "2", "--stalled-after", "3"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    def alive(self) -> dict[int, Worker]:
        return {w.proc.pid: w for w in self.workers if w.proc.poll() is None}

    def stop_all(self) -> None:
        """SIGTERM to each one still running: it finishes its batches and exits 0."""
        alive = self.alive()
        for w in alive.values():
            w.proc.send_signal(signal.SIGTERM)
        for w in alive.values():
            assert w.proc.wait(timeout=60) == 0, w.log.read_text()

    def passes(self) -> list[dict[str, Any]]:
        """Every pass any worker logged (a killed worker's finished ones included)."""
        found = []
        for w in self.workers:
            for line in w.log.read_text().splitlines():
                match = PASS_LINE.search(line)
                if match:
                    start = datetime.fromisoformat(match["at"]).timestamp()
                    found.append(
                        {
                            **match.groupdict(),
                            "start": start,
                            "end": start + float(match["seconds"]),
                        }
                    )
        return found


def held(url: str) -> dict[str, str]:
    """The mailboxes whose lease is held now, with their holder."""
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            rows = s.execute(
                select(Mailbox.name, Mailbox.lease_owner).where(Mailbox.lease_owner.is_not(None))
            ).all()
    finally:
        engine.dispose()
    return {name: str(owner) for name, owner in rows}


def finished(url: str) -> bool:
    """Every mailbox has read all its mail, and no pass waits or runs."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            behind = conn.scalar(
                text("SELECT count(*) FROM mailboxes WHERE caught_up_at IS NULL OR state <> 'ok'")
            )
            queued = conn.scalar(
                text(
                    "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'syncd.pass' "
                    "AND status IN ('todo', 'doing')"
                )
            )
    finally:
        engine.dispose()
    return behind == 0 and queued == 0


@dataclass
class Cut:
    """A worker stopped while it held mailboxes."""

    pid: int
    how: str
    mailboxes: list[str]
    seen: float  # when they were seen held by it
    stopped: float  # when it was sent the signal


def stop_one_mid_pass(
    fleet: Fleet, url: str, how: signal.Signals, rng: random.Random
) -> Cut | None:
    """Wait for a worker to hold a mailbox, then send it ``how``; None when the work was
    all done first (a fast machine)."""
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "no worker took a mailbox"
        if finished(url):
            return None
        seen = time.time()
        alive = fleet.alive()
        holders: dict[int, list[str]] = {}
        for name, owner in held(url).items():
            pid = int(owner.split(":")[1])
            if pid in alive:
                holders.setdefault(pid, []).append(name)
        if holders:
            break
        time.sleep(0.05)
    pid = rng.choice(sorted(holders))
    alive[pid].proc.send_signal(how)
    cut = Cut(pid, how.name, holders[pid], seen, time.time())
    if how == signal.SIGTERM:  # the batch in hand ends, then the worker exits 0
        assert alive[pid].proc.wait(timeout=60) == 0, alive[pid].log.read_text()
    else:
        alive[pid].proc.wait()
    return cut


def pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


def test_three_workers_killed_at_random_moments_sync_like_one_process(
    world: dict[str, Any], pg_server: str, tmp_path: Path
) -> None:
    root = world["root"]
    url = new_pg_database(pg_server)
    setup_crm(url, root)
    fleet = Fleet(environment(url, root, tmp_path / "home"), tmp_path)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for _ in range(3):
        fleet.start()
    cuts: list[Cut] = []
    try:
        for how in [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]:
            time.sleep(rng.uniform(0.5, 3.0) if not cuts else rng.uniform(0.2, 1.0))
            cut = stop_one_mid_pass(fleet, url, how, rng)
            if cut is None:
                break  # all synced already: what is left to show needs no more cuts
            cuts.append(cut)
            fleet.start()  # its replacement
        assert cuts and cuts[0].how == "SIGKILL", f"no worker was killed mid-pass (seed {seed})"
        deadline = time.monotonic() + 120
        while not finished(url):
            assert time.monotonic() < deadline, f"the workers did not finish (seed {seed})"
            assert len(fleet.alive()) == 3, f"a worker died (seed {seed})"
            time.sleep(0.3)
    finally:
        fleet.stop_all()
    where = f"(seed {seed}, stopped mid-pass: {cuts})"
    assert_same(snapshot(url), world["reference"], where)

    by_mailbox: dict[str, list[dict[str, Any]]] = {}
    for p in fleet.passes():
        if not p["did"].startswith("left to"):  # found the mailbox held: did nothing
            by_mailbox.setdefault(p["mailbox"], []).append(p)
    assert sorted(by_mailbox) == sorted(f"rep{k}" for k in range(MAILBOXES))
    # no two passes of one mailbox overlap in time (one machine: one clock)
    for name, runs in by_mailbox.items():
        runs.sort(key=lambda p: p["start"])
        for a, b in pairwise(runs):
            assert a["end"] <= b["start"], f"{name}: {a['owner']} and {b['owner']} overlap {where}"
    # a pass that spent its budget (the big mailboxes, most often) was followed by another
    for name, runs in by_mailbox.items():
        assert "budget ran out" not in runs[-1]["did"], f"{name} was left half-read {where}"
    # a mailbox a stopped worker held: no other worker's pass ran meanwhile, and unless its
    # pass had just ended, another worker finished it afterwards
    picked_up = 0
    for cut in cuts:
        for name in cut.mailboxes:
            runs = by_mailbox[name]
            others = [p for p in runs if pid_of(p["owner"]) != cut.pid]
            assert not [p for p in others if p["start"] < cut.stopped and p["end"] > cut.seen], (
                f"{name}: a pass ran while a worker held it {where}"
            )
            own = [p for p in runs if pid_of(p["owner"]) == cut.pid and p["end"] >= cut.seen]
            if any("stopped" not in p["did"] for p in own):
                continue  # its pass ended between the look and the signal
            assert [p for p in others if p["start"] > cut.seen], (
                f"{name} was not picked up after the {cut.how} {where}"
            )
            picked_up += 1
    assert picked_up, f"no stop landed mid-pass {where}"


def test_a_worker_under_systemd_says_ready_and_stops_cleanly(
    pg_server: str, tmp_path: Path
) -> None:
    """The unit of 'syncd run' (Type=notify, a watchdog) serves a worker as it is."""
    url = new_pg_database(pg_server)
    upgrade(make_engine(url))
    upgrade_queue(url)
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(60)
        env = {
            **os.environ,
            "SYNCD_DATABASE_URL": url,
            "SYNCD_HOME": str(tmp_path / "home"),
            "NOTIFY_SOCKET": str(address),
            "WATCHDOG_USEC": "1000000",
        }
        env.pop("SYNCD_CONFIG", None)
        proc = subprocess.Popen(
            [*SYNCD, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            said = [sock.recv(256).decode() for _ in range(3)]
            assert said[0] == "READY=1" and "WATCHDOG=1" in said, said
            proc.send_signal(signal.SIGTERM)
            while (message := sock.recv(256).decode()) != "STOPPING=1":
                assert message == "WATCHDOG=1", message
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.communicate()[1].decode()
    assert "syncd worker stopped" in stderr, stderr


def test_the_queue_tables_are_created_once(pg_server: str, tmp_path: Path) -> None:
    url = new_pg_database(pg_server)
    upgrade(make_engine(url))
    env = {**os.environ, "SYNCD_DATABASE_URL": url, "SYNCD_HOME": str(tmp_path / "home")}
    env.pop("SYNCD_CONFIG", None)
    done = subprocess.run([*SYNCD, "worker"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "has no job queue yet; create it with 'syncd db upgrade'" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert upgrade_queue(url) is True
    assert upgrade_queue(url) is False  # a second upgrade finds them and does nothing
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass('procrastinate_jobs')")) is not None
    engine.dispose()


def test_a_worker_refuses_sqlite_naming_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    upgrade(make_engine(url))
    env = {**os.environ, "SYNCD_DATABASE_URL": url, "SYNCD_HOME": str(tmp_path / "home")}
    env.pop("SYNCD_CONFIG", None)
    done = subprocess.run([*SYNCD, "worker"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "syncd worker needs PostgreSQL" in done.stderr
    assert "syncd run" in done.stderr and "postgresql+psycopg://" in done.stderr


def test_a_worker_rematches_what_a_crm_load_queued(pg_server: str, tmp_path: Path) -> None:
    """Under 'syncd worker' (no daemon), the schedule hands what 'syncd crm load' queued to
    the syncd.rematch task: a deal lost since is taken off its mail."""
    from syncd.config import Settings
    from syncd.crm import rematch
    from syncd.crm.reports import activity_report
    from syncd.sync import sync_mailbox

    url = new_pg_database(pg_server)
    upgrade(make_engine(url))
    upgrade_queue(url)
    sessions = session_factory(make_engine(url))
    demo = build_demo(tmp_path / "demo", datetime.now(UTC))
    load_company(sessions, demo.root / "crm")
    add_local_mailbox(sessions, "ana", "ana@northwind.test", maildir=str(demo.maildirs["ana"]))
    assert sync_mailbox(sessions, Settings(home=tmp_path / "home"), "ana").ok

    def deals() -> set[str]:
        with sessions() as session:
            (scope,) = [r for r in activity_report(session) if r["subject"] == "Pilot scope"]
        return {lk["name"] for lk in scope["links"] if lk["type"] == "opportunity"}

    assert deals() == {"OPP-202 Globex pilot"}
    lost = tmp_path / "lost.csv"
    lost.write_text(
        "external_id,name,account,owner,status\n"
        "OPP-202,Globex pilot,globex.test,ben@northwind.test,lost\n"
    )
    with sessions.begin() as session:
        assert load_csv(session, "opportunities", lost).queued == 1
    env = {**os.environ, "SYNCD_DATABASE_URL": url, "SYNCD_HOME": str(tmp_path / "home")}
    env.pop("SYNCD_CONFIG", None)
    proc = subprocess.Popen(
        [*SYNCD, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 90
        while deals():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the worker did not re-match within 90 s"
            time.sleep(0.5)
        with sessions() as session:
            assert rematch.pending(session) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
