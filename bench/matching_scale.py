"""Benchmark: matching against a CRM of 1,000, 100,000 and 1,000,000 contacts, on SQLite and
on PostgreSQL.

Prints, from one run, for each CRM size and database: the time to generate the CRM, the
matching rate (items/s: what a sync pass pays for matching, the CRM index it loads once and
``decide`` for every batch of 1,000 items), the peak RSS of the matching (each phase in its
own process), and the ratio of the rate to the smallest CRM's rate measured in the same run
(the ceiling: matching should cost the same whatever the CRM's size), and the database's
own share of a pass (every statement the pass sent, replayed on the driver's cursor: what no
leaner Python can take off a pass that waits for each statement in turn). The same items (same
seed) are matched at every size; they name contacts, accounts and deals by their position in
the CRM, so the share of matched participants is the same at every size.

Aims (issue 14): >= 20,000 items/s at the largest size, a ratio >= 0.5, peak RSS < 1 GB.

    .venv/bin/python bench/matching_scale.py                          # every size, both DBs
    .venv/bin/python bench/matching_scale.py --sizes small medium --db sqlite --items 20000
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import peak_rss_mb, run_phase  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from syncd.config import Settings
    from syncd.items import MailItem

# name -> (contacts, opportunities); accounts are contacts / 10
SIZES = {"small": (1_000, 1_000), "medium": (100_000, 20_000), "large": (1_000_000, 200_000)}
CONTACTS_PER_ACCOUNT = 10
USERS = 20
COMPANY = "northwind-bench.test"
FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com")
ROLES = ("decision maker", "champion", "technical buyer")
STATUSES = ("open", "open", "open", "won", "lost")
BATCH = 1_000  # items a decide() call, as a sync pass cuts them
CHUNK = 50_000  # rows an insert, one transaction each
MIN_SECONDS = 5.0  # a size's passes are repeated until they have run this long (median)
MAX_PASSES = 25
SEED = 14


def match_batches(
    sessions: sessionmaker[Session], settings: Settings, batches: Iterable[Sequence[MailItem]]
) -> int:
    """Everything a sync pass pays for matching, and the only call into syncd's matching in
    this benchmark (adapt it when the matcher's API changes): the pass's CRM index, and
    ``decide`` for each batch. Returns the number of items logged."""
    from collections import Counter

    from syncd.decide import PassIndex, decide

    index = PassIndex(sessions, settings)
    n = 0
    for items in batches:
        n += len(decide(items, index.load(items), settings, Counter()))
    return n


# --- the CRM: every name and address is a function of its row's position -----------------


def user_address(u: int) -> str:
    return f"user{u:02d}@{COMPANY}"


def account_domains(a: int) -> list[str]:
    """One or two domains; pairs of accounts share a parent domain (east./west.grpN.test)."""
    if a % 5 in (1, 2):
        first = f"{'east' if a % 5 == 1 else 'west'}.grp{a // 5}.test"
    else:
        first = f"acct{a}.test"
    return [first, f"acct{a}.example"] if a % 3 == 0 else [first]


def contact_addresses(c: int) -> list[str]:
    """One or two addresses: at the contact's account, some on free mail."""
    account = account_domains(c // CONTACTS_PER_ACCOUNT)
    free = FREE_MAIL[c % len(FREE_MAIL)]
    first = f"p{c}@{free}" if c % 10 == 3 else f"p{c}@{account[0]}"
    if c % 4 == 0:
        return [first, f"p{c}.home@{free}"]
    if c % 4 == 1 and len(account) > 1:
        return [first, f"p{c}@{account[1]}"]
    return [first]


def opportunity_account(o: int, accounts: int) -> int:
    return o % accounts


def opportunity_contacts(o: int, accounts: int) -> list[int]:
    """1-3 distinct contacts of the deal's account."""
    base = opportunity_account(o, accounts) * CONTACTS_PER_ACCOUNT
    first = (o // accounts) % CONTACTS_PER_ACCOUNT
    return [base + (first + 3 * k) % CONTACTS_PER_ACCOUNT for k in range(1 + o % 3)]


def crm_rows(contacts: int, opportunities: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, row) for the whole CRM, table after table, parents first."""
    accounts = contacts // CONTACTS_PER_ACCOUNT
    for u in range(USERS):
        yield "users", {"id": u + 1, "email": user_address(u), "name": f"User {u}"}
    for a in range(accounts):
        yield "accounts", {"id": a + 1, "name": f"Account {a}"}
    for a in range(accounts):
        for domain in account_domains(a):
            yield "account_domains", {"domain": domain, "account_id": a + 1}
    for c in range(contacts):
        account_id = c // CONTACTS_PER_ACCOUNT + 1
        contact = {"id": c + 1, "name": f"Person {c}", "account_id": account_id}
        yield "contacts", {**contact, "auto_created": False}
    for c in range(contacts):
        for address in contact_addresses(c):
            yield "contact_addresses", {"address": address, "contact_id": c + 1}
    for o in range(opportunities):
        yield (
            "opportunities",
            {
                "id": o + 1,
                "external_id": f"OPP-{o + 1}",
                "name": f"Deal {o + 1}",
                "account_id": opportunity_account(o, accounts) + 1,
                "owner_id": o % USERS + 1,
                "stage": "proposal",
                "status": STATUSES[o % len(STATUSES)],
            },
        )
    for o in range(opportunities):
        for k, c in enumerate(opportunity_contacts(o, accounts)):
            row = {"opportunity_id": o + 1, "contact_id": c + 1, "role": ROLES[k]}
            yield "opportunity_contacts", row


def phase_generate(url: str, contacts: int, opportunities: int) -> dict[str, float]:
    """Create the schema and fill the CRM in bulk (COPY on PostgreSQL), then ANALYZE."""
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.crm.models import Base
    from syncd.crm.rows import insert_rows

    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    models = {m.class_.__tablename__: m.class_ for m in Base.registry.mappers}
    start = time.perf_counter()
    rows = 0
    chunk: list[dict[str, Any]] = []
    table = ""

    def flush() -> None:
        with sessions.begin() as session:
            insert_rows(session, models[table], chunk)

    for name, row in crm_rows(contacts, opportunities):
        if chunk and (name != table or len(chunk) >= CHUNK):
            flush()
            chunk = []
        table = name
        chunk.append(row)
        rows += 1
    flush()
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return {"seconds": time.perf_counter() - start, "rows": rows, "peak_rss_mb": peak_rss_mb()}


# --- the items: the same for every size ----------------------------------------------------


def _someone(rng: random.Random, contacts: int) -> tuple[str, str]:
    """(address, name) of an external participant, or a colleague. Draws the same random
    numbers whatever the CRM's size, so every size gets the same item set, scaled."""
    kind, u, v, w = rng.random(), rng.random(), rng.random(), rng.random()
    if kind < 0.70:  # a contact of the CRM, by one of its addresses
        c = int(u * contacts)
        addresses = contact_addresses(c)
        return addresses[int(v * len(addresses))], f"Person {c}"
    if kind < 0.82:  # someone unknown at an account's domain (or a subdomain of it)
        domain = account_domains(int(u * contacts / CONTACTS_PER_ACCOUNT))[0]
        domain = f"mail.{domain}" if v < 0.3 else domain
        return f"guest{int(w * 1e6)}@{domain}", "Guest"
    if kind < 0.95:  # a stranger on free mail
        return f"stranger{int(w * 1e6)}@{FREE_MAIL[int(v * len(FREE_MAIL))]}", "Stranger"
    colleague = int(u * USERS)
    return user_address(colleague), f"User {colleague}"


def make_items(
    count: int, contacts: int, opportunities: int, seed: int = SEED
) -> list[list[MailItem]]:
    """``count`` mails in batches of BATCH: a user and 1-4 others, half of them sent by the
    user; one in ten names a deal by tag (one in a hundred a tag naming none)."""
    from syncd.items import MailItem, Participant, ParticipantRole

    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    items: list[MailItem] = []
    for i in range(count):
        u = int(rng.random() * USERS)
        user = (user_address(u), f"User {u}")
        others = [_someone(rng, contacts) for _ in range(1 + int(rng.random() * 4))]
        outbound, tag, deal = rng.random() < 0.5, rng.random(), rng.random()
        people = [user, *others] if outbound else [others[0], user, *others[1:]]
        seen: dict[str, Participant] = {}
        for k, (address, name) in enumerate(people):
            role: ParticipantRole = "from" if k == 0 else "to" if k < 3 else "cc"
            seen.setdefault(address, Participant(address=address, name=name, role=role))
        subject = f"Proposal {i}"
        if tag < 0.01:
            subject = f"[OPP-X{i}] {subject}"
        elif tag < 0.10:
            subject = f"Re: [OPP-{int(deal * opportunities) + 1}] {subject}"
        key = f"mid:{i}@bench.test"
        items.append(
            MailItem(
                key=key,
                provider_id=str(i),
                message_id=f"{i}@bench.test",
                subject=subject,
                sent_at=start + timedelta(minutes=i),
                participants=tuple(seen.values()),
                thread_key=key,
                body="Hello, following up on our call.",
            )
        )
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


def phase_match(url: str, contacts: int, opportunities: int, count: int) -> dict[str, float]:
    """Match the items, pass after pass (each loads its index anew) until MIN_SECONDS,
    after a pass of one item (untimed in the rate: it warms the imports and the caches)."""
    from syncd.config import Settings
    from syncd.crm.database import make_engine, session_factory

    sessions = session_factory(make_engine(url))
    settings = Settings(home=Path(tempfile.gettempdir()) / "syncd-bench-home")  # never written
    batches = make_items(count, contacts, opportunities)
    # the items are this benchmark's input, held whole; a pass holds one batch of them.
    # Frozen, the collector does not walk them again and again as syncd allocates.
    gc.freeze()
    before = peak_rss_mb()  # the interpreter, syncd and the items themselves
    start = time.perf_counter()  # a pass of one item: mostly what it costs to start a pass
    match_batches(sessions, settings, [batches[0][:1]])
    first = time.perf_counter() - start
    runs: list[float] = []
    logged = 0
    while not runs or (sum(runs) < MIN_SECONDS and len(runs) < MAX_PASSES):
        start = time.perf_counter()
        logged = match_batches(sessions, settings, batches)
        runs.append(time.perf_counter() - start)
    peak = peak_rss_mb()  # the passes' own: before the recorded pass and its statements
    return {
        "seconds": statistics.median(runs),
        "database_seconds": database_share(sessions, settings, batches),
        "passes": len(runs),
        "one_item_seconds": first,
        "logged": logged,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
    }


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def database_share(
    sessions: sessionmaker[Session], settings: Settings, batches: Sequence[Sequence[MailItem]]
) -> float:
    """The seconds the database itself takes for a pass's look-ups: a pass run once more
    with every statement it sends recorded, then the statements replayed on the driver's
    own cursor (execute, and fetch every row), with none of SQLAlchemy's or syncd's Python;
    the median of three replays."""
    from sqlalchemy import event

    engine = sessions.kw["bind"]
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if not statement.lstrip().upper().startswith(TRANSACTION_CONTROL):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        match_batches(sessions, settings, batches)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    connection = engine.raw_connection()
    try:
        driver = connection.driver_connection
        replays = []
        for _ in range(3):
            cursor = driver.cursor()
            try:
                start = time.perf_counter()
                for statement, parameters in sent:
                    cursor.execute(statement, parameters)
                    if cursor.description is not None:
                        cursor.fetchall()
                replays.append(time.perf_counter() - start)
            finally:
                cursor.close()
                driver.rollback()
        return statistics.median(replays)
    finally:
        connection.close()


# --- the run ---------------------------------------------------------------------------------


def _measure(name: str, url: str, size: str, count: int) -> dict[str, Any]:
    contacts, opportunities = SIZES[size]
    numbers = ["--contacts", str(contacts), "--opportunities", str(opportunities)]
    made = run_phase(__file__, "--phase", "generate", "--url", url, *numbers)
    print(
        f"{name:10s} {size:6s}: CRM of {contacts:,} contacts, {opportunities:,} opportunities "
        f"({made['rows']:,.0f} rows) generated in {made['seconds']:.2f} s",
        flush=True,
    )
    found = run_phase(__file__, "--phase", "match", "--url", url, *numbers, "--items", str(count))
    found["rate"] = count / found["seconds"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=list(SIZES),
        default=list(SIZES),
        help="CRM sizes to measure; the smallest (the ceiling of the ratio) is always measured",
    )
    parser.add_argument("--items", type=int, default=50_000, help="items a pass matches")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--phase", choices=["generate", "match"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--contacts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--opportunities", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.items < 1:
        parser.error(f"--items must be at least 1, not {args.items}")
    if args.phase == "generate":
        print(json.dumps(phase_generate(args.url, args.contacts, args.opportunities)))
        return
    if args.phase == "match":
        print(json.dumps(phase_match(args.url, args.contacts, args.opportunities, args.items)))
        return

    from tests.servers import new_pg_database, postgres

    sizes = [s for s in SIZES if s in args.sizes or s == "small"]
    print(
        f"{args.items:,} items (seed {SEED}) in batches of {BATCH:,}; a pass loads the CRM "
        f"index and decides every batch; passes repeated for {MIN_SECONDS:.0f} s, median"
    )
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as work:
        for name in dbs:
            server: AbstractContextManager[str | None] = (
                postgres() if name == "postgresql" else nullcontext()
            )
            with server as pg:
                rates: dict[str, float] = {}
                measured: dict[str, dict[str, Any]] = {}
                for size in sizes:
                    url = new_pg_database(pg) if pg else f"sqlite:///{work}/{size}.db"
                    r = measured[size] = _measure(name, url, size, args.items)
                    rates[size] = r["rate"]
                    print(
                        f"{name:10s} {size:6s}: {r['rate']:,.0f} items/s ({r['logged']:,.0f} "
                        f"of {args.items:,} logged, median of {r['passes']:.0f} passes of "
                        f"{r['seconds']:.2f} s, {r['database_seconds']:.2f} s of it the "
                        f"database's own; a pass of one item {r['one_item_seconds']:.2f} s), "
                        f"ratio to {sizes[0]} "
                        f"{r['rate'] / rates[sizes[0]]:.2f}, peak RSS {r['peak_rss_mb']:.0f} MB "
                        f"({r['rss_before_mb']:.0f} MB before matching: Python, syncd, items)",
                        flush=True,
                    )
                largest = sizes[-1]
                print(
                    f"{name:10s} {largest} / {sizes[0]}: ratio "
                    f"{rates[largest] / rates[sizes[0]]:.2f} (aims at the largest size: "
                    f">= 20,000 items/s, ratio >= 0.5, peak RSS < 1 GB)",
                    flush=True,
                )
                if largest != sizes[0]:
                    small, large = measured[sizes[0]], measured[largest]
                    # the smallest CRM's pass, with its database's share swapped for the
                    # largest's: the pass of the largest if its look-ups cost no more Python
                    # than the smallest's (whose index holds the CRM after a batch or two)
                    bound = small["seconds"] - small["database_seconds"]
                    bound += large["database_seconds"]
                    print(
                        f"{name:10s} {largest}: with no more Python in its look-ups "
                        f"than {sizes[0]}, at most "
                        f"{args.items / bound:,.0f} items/s, a ratio of "
                        f"{small['seconds'] / bound:.2f} (the {sizes[0]} pass with the "
                        f"{largest} database's share)",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
