"""Benchmark: first sync of an IMAP mailbox on a real Dovecot, and a poll of it unchanged.

Prints, from one run: syncd's first-sync rate (messages/s, SQLite), the ceiling (imapclient
fetching the same items on one connection, no processing), their ratio, peak RSS of each
phase (each in its own process), and the time and the number of IMAP commands of a poll of
the unchanged mailbox (counted by a proxy between syncd and Dovecot).

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import peak_rss_mb, run_phase  # noqa: E402

ATTRIBUTES = {
    "metadata": [b"BODY.PEEK[HEADER]", b"INTERNALDATE", b"BODYSTRUCTURE"],
    "snippet": [
        b"BODY.PEEK[HEADER]",
        b"BODY.PEEK[TEXT]<0.16384>",
        b"INTERNALDATE",
        b"BODYSTRUCTURE",
    ],
    "full": [b"BODY.PEEK[]", b"INTERNALDATE"],
}


def phase_ceiling(port: int, login: str, password: str, body: str) -> dict[str, float]:
    """imapclient alone: the same FETCH items, 1000 UIDs a command, nothing done with them."""
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port=port, ssl=False)
    client.login(login, password)
    start = time.perf_counter()
    count = 0
    for folder in ("INBOX", "Sent"):
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        for i in range(0, len(uids), 1000):
            count += len(client.fetch(uids[i : i + 1000], ATTRIBUTES[body]))
    seconds = time.perf_counter() - start
    client.logout()
    return {"messages": count, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def phase_sync(
    url: str, home: str, crm: str, port: int, login: str, password: str, body: str
) -> dict[str, float]:
    """syncd's whole pipeline on the mailbox, as `syncd sync` runs it."""
    from syncd.config import Settings
    from syncd.crm import mailboxes
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.demo import load_company
    from syncd.secrets import Secret, SecretBox
    from syncd.sync import sync_mailbox

    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, Path(crm))
    settings = Settings(home=Path(home), sync={"body": body, "batch_size": 1000})
    with sessions.begin() as session:
        from sqlalchemy import select

        from syncd.crm.models import User

        user_id = session.scalar(select(User.id).where(User.email == "ana@northwind.test"))
        assert user_id is not None
        mailboxes.add_mailbox(
            session,
            name="ana",
            kind="imap",
            user_id=user_id,
            settings={"host": "127.0.0.1", "port": port, "tls": "none", "login": login},
            secret_token=SecretBox(Path(home)).encrypt(Secret(password)),
        )
    start = time.perf_counter()
    report = sync_mailbox(sessions, settings, "ana")
    seconds = time.perf_counter() - start
    assert report.ok, report.error
    return {"seconds": seconds, "activities": report.new_activities, "peak_rss_mb": peak_rss_mb()}


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
    parser.add_argument("--body", choices=list(ATTRIBUTES), default="snippet")
    parser.add_argument("--phase", choices=["ceiling", "sync", "poll"], help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        kw = json.loads(args.args)
        phases: dict[str, Callable[..., Mapping[str, object]]] = {
            "ceiling": phase_ceiling,
            "sync": phase_sync,
            "poll": phase_poll,
        }
        fn = phases[args.phase]
        print(json.dumps(fn(**kw)))
        return

    from syncd.demo import build_demo
    from tests.servers import Dovecot, dovecot

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
        run_phase(
            __file__, "--phase", "ceiling", "--args", json.dumps(common)
        )  # warm Dovecot's indexes
        ceiling = run_phase(__file__, "--phase", "ceiling", "--args", json.dumps(common))
        ceiling_rate = ceiling["messages"] / ceiling["seconds"]
        print(
            f"ceiling (imapclient, same FETCH items, no processing): {ceiling_rate:,.0f} msg/s,"
            f" peak RSS {ceiling['peak_rss_mb']:.0f} MB"
        )
        url = f"sqlite:///{work / 'bench.db'}"
        home = str(work / "home")
        first = run_phase(
            __file__,
            "--phase",
            "sync",
            "--args",
            json.dumps({**common, "url": url, "home": home, "crm": str(demo.root / "crm")}),
        )
        rate = args.messages / first["seconds"]
        print(
            f"syncd first sync (body={args.body}, SQLite): {rate:,.0f} msg/s "
            f"({first['activities']:.0f} activities in {first['seconds']:.1f} s), "
            f"ratio to ceiling {rate / ceiling_rate:.2f}, peak RSS {first['peak_rss_mb']:.0f} MB"
        )
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
