"""What the benchmarks share: each phase runs in its own process, so its peak RSS is its own."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_phase(script: str, *args: str, timeout: float | None = None) -> dict[str, Any]:
    """Run ``script`` with ``args``; its last line of output is the phase's JSON result."""
    out = subprocess.run(
        [sys.executable, script, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_rate(
    once: Callable[[], tuple[int, float]], seconds: float, runs: int = 1, warm: bool = False
) -> dict[str, float]:
    """A ceiling: ``once`` (it returns how many messages it read and the seconds it took)
    run again and again until it has run ``seconds`` and ``runs`` times, after an untimed
    run if ``warm``; the median rate, the messages of a run, the runs, the time, peak RSS."""
    if warm:
        once()
    rates: list[float] = []
    spent = 0.0
    count = 0
    while spent < seconds or len(rates) < runs:
        count, took = once()
        rates.append(count / took)
        spent += took
    return {
        "messages": count,
        "rate": statistics.median(rates),
        "runs": len(rates),
        "seconds": spent,
        "peak_rss_mb": peak_rss_mb(),
    }


def demo_crm_with_imap(url: str, home: str, crm: str, port: int, login: str, password: str) -> Any:
    """A migrated CRM with the demo company and Ana's IMAP mailbox ``ana`` on Dovecot at
    ``port`` (its password kept as syncd keeps it); returns the session factory."""
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
    with sessions.begin() as session:
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
    return sessions
