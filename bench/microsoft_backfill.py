"""Benchmark: a Microsoft 365 backfill against the local Graph emulator with its throttling on.

The emulator refuses a fifth concurrent request to a mailbox and, with ``--rate``, more than
that many requests a second to it (429 + Retry-After); each answer takes ``--latency``. The
ceiling is measured in the same run, against the same emulator, latency and throttle: the
raw delta fetch of the same folders with
the same page size and ``$select`` by plain requests (honouring Retry-After), parsing
nothing and storing nothing. Prints syncd's rate as a ratio of it, HTTP requests per
message, the 429s received, the peak of requests in flight to the mailbox (Graph allows 4)
and peak RSS (the emulator runs in the same process).

    .venv/bin/python bench/microsoft_backfill.py                    # 5,000 messages
    .venv/bin/python bench/microsoft_backfill.py --messages 20000 --page-size 200 --rate 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--rate", type=int, default=5, help="requests/s a mailbox may make")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.1,
        help="seconds each Graph answer takes (a real "
        "delta page of 100 messages takes a few hundred ms)",
    )
    parser.add_argument("--database", default=None, help="a database URL (default: SQLite)")
    args = parser.parse_args()

    import msal
    import requests
    from sqlalchemy import select

    from syncd.config import Settings
    from syncd.connectors.microsoft.client import _Http
    from syncd.connectors.microsoft.mail import FOLDERS
    from syncd.connectors.microsoft.parse import SELECT
    from syncd.crm import mailboxes
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.crm.models import User
    from syncd.demo import build_demo, load_company
    from syncd.secrets import Secret, SecretBox
    from syncd.sync import sync_mailbox

    work = Path(tempfile.mkdtemp(prefix="syncd-msft-bench-"))
    demo = build_demo(work / "demo")
    tenant, user = "northwind.onmicrosoft.com", "ana@northwind.test"
    # the emulator serves from its own process, as a real server would: its JSON and TLS work
    # do not compete with syncd for this process's GIL, and the peak RSS below is syncd's
    control, child_end = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(
        target=serve,
        args=(child_end, args.messages, args.rate, args.latency, tenant, user),
        daemon=True,
    )
    server.start()
    emulator = Remote(control)
    # the ceiling: the same delta pages fetched raw, same throttle
    token = msal.ConfidentialClientApplication(
        "app-1",
        client_credential="secret-1",
        authority=f"{emulator.base}/{tenant}",
        instance_discovery=False,
        http_client=_Http(str(emulator.ca_pem), 60),
    ).acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])["access_token"]
    raw = requests.Session()
    raw.headers.update(
        {
            "Authorization": f"Bearer {token}",
            "Prefer": f'odata.maxpagesize={args.page_size}, IdType="ImmutableId"',
        }
    )
    fetched, raw_429 = 0, 0
    start = time.perf_counter()
    for folder in FOLDERS:
        link: str | None = (
            f"{emulator.graph_url}users/{user}/mailFolders/{folder}/messages/delta?"
            + urlencode({"$select": SELECT})
        )
        while link:
            response = raw.get(link, verify=str(emulator.ca_pem), timeout=60)
            if response.status_code == 429:
                raw_429 += 1
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            page = response.json()
            fetched += len(page["value"])
            link = page.get("@odata.nextLink")
    raw_seconds = time.perf_counter() - start
    raw_rate = fetched / raw_seconds
    time.sleep(1.1)  # let the rate window empty

    engine = make_engine(args.database or f"sqlite:///{work / 'bench.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, demo.root / "crm")
    home = work / "home"
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == user))
        assert user_id is not None
        mailboxes.add_mailbox(
            session,
            name="ana",
            kind="microsoft",
            user_id=user_id,
            settings={
                "mode": "app",
                "tenant": tenant,
                "client_id": "app-1",
                "authority": emulator.base,
                "graph_url": emulator.base + "/",
                "ca_bundle": str(emulator.ca_pem),
                "page_size": args.page_size,
            },
            secret_token=SecretBox(home).encrypt(Secret("secret-1")),
        )
    emulator.reset()
    start = time.perf_counter()
    # the backfill alone: no follow-up tasks (their write-back is measured by the tests)
    settings = Settings.model_validate(
        {"home": home, "followups": {"no_reply": {"enabled": False}}}
    )
    report = sync_mailbox(sessions, settings, "ana")
    seconds = time.perf_counter() - start
    assert report.ok, report.error
    assert report.new_activities == args.messages, report
    stats = emulator.stats()
    emulator.stop()
    rate = report.new_activities / seconds
    print(
        f"backfill of {report.new_activities} messages in {seconds:.1f} s: {rate:.0f} msg/s; "
        f"ceiling (raw delta fetch, same pages, same throttle) {fetched} in {raw_seconds:.1f} s:"
        f" {raw_rate:.0f} msg/s ({raw_429} 429s); ratio {rate / raw_rate:.2f}"
    )
    print(
        f"HTTP requests: {stats['requests']} ({stats['requests'] / args.messages:.3f} per "
        f"message); 429s received: {stats['throttled']}; peak requests in flight to the "
        f"mailbox: {stats['peak']} (limit 4); throttle {args.rate} req/s, latency "
        f"{args.latency * 1000:.0f} ms, page size {args.page_size}; peak RSS of syncd "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


class Remote:
    """The emulator in its child process, driven over a pipe."""

    def __init__(self, control: Any) -> None:
        self.control = control
        self.base, ca = control.recv()
        self.ca_pem = Path(ca)
        self.graph_url = self.base + "/v1.0/"

    def _ask(self, command: str) -> Any:
        self.control.send(command)
        return self.control.recv()

    def reset(self) -> None:
        self._ask("reset")

    def stats(self) -> dict[str, int]:
        return dict(self._ask("stats"))

    def stop(self) -> None:
        self._ask("stop")


def serve(control: Any, messages: int, rate: int, latency: float, tenant: str, user: str) -> None:
    from tests.emulators.microsoft import MicrosoftEmulator

    emulator = MicrosoftEmulator(rate_limit=(rate, 1.0))
    emulator.latency = latency
    emulator.add_app(tenant, "app-1", secret="secret-1")
    emulator.add_user(user)
    now = datetime.now(UTC)
    for i in range(messages):
        sent = i % 5 == 0
        emulator.deliver(
            user,
            "sentitems" if sent else "inbox",
            subject=f"note {i}",
            sender=("Ana", user) if sent else ("Carla", "carla@acme.test"),
            to=[("Carla", "carla@acme.test")] if sent else [("Ana", user)],
            message_id=f"<bench-{i}@acme.test>",
            sent=now - timedelta(days=89) * (i / messages),  # spread over the window
            body=f"Hello Ana, about the renewal, note {i}. " * 3,
        )
    emulator.start()
    control.send((emulator.base, str(emulator.ca_pem)))
    while True:
        command = control.recv()
        if command == "reset":
            emulator.requests = emulator.throttled = 0
            emulator.users[user].peak_inflight = 0
            control.send(None)
        elif command == "stats":
            control.send(
                {
                    "requests": emulator.requests,
                    "throttled": emulator.throttled,
                    "peak": emulator.peak_inflight()[user],
                }
            )
        else:
            emulator.stop()
            control.send(None)
            return


if __name__ == "__main__":
    main()
