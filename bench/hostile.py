"""Benchmark: hostile input. Each bomb goes through a whole `syncd sync` of a local mailbox
(Maildir or vdir calendar) in its own process, beside a clean message of the same size.

Prints, per bomb: its size, the wall time and peak RSS of the sync, the same for the clean
message of that size, the ratios, and what syncd made of it (logged, quarantined with which
reason). Aims (issue 10): no bomb over 2x the clean message's RSS, none over 5 s.

    .venv/bin/python bench/hostile.py
    .venv/bin/python bench/hostile.py --only subject-words
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import peak_rss_mb, run_phase  # noqa: E402

NOW = datetime.now(UTC).replace(microsecond=0)
WHEN = format_datetime(NOW - timedelta(hours=1))


def _message(headers: str, body: str = "Hello\r\n") -> bytes:
    return (headers + "\r\n" + body).encode("utf-8", "surrogateescape")


def _basic(extra: str = "", sender: str = "Carla <carla@acme.test>") -> str:
    return (
        f"From: {sender}\r\nTo: ana@northwind.test\r\nSubject: Hello\r\n"
        f"Date: {WHEN}\r\nMessage-ID: <{time.time_ns()}@acme.test>\r\n{extra}"
    )


def from_words() -> bytes:
    """A From of 16,000 encoded words (the issue's 266 KB message)."""
    words = " ".join("=?utf-8?q?a?=" for _ in range(16_000))
    return _message(_basic(sender=f"{words} <carla@acme.test>"))


def subject_words() -> bytes:
    """A 1.9 MB Subject of encoded words."""
    words = "\r\n ".join("=?utf-8?b?YWJj?=" for _ in range(120_000))
    return _message(_basic().replace("Subject: Hello", f"Subject: {words}"))


def many_headers() -> bytes:
    return _message(_basic("".join(f"X-H{i}: v\r\n" for i in range(100_000))))


def deep_mime() -> bytes:
    depth = 5_000
    head = _basic('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b0"\r\n')
    body = []
    for i in range(1, depth):
        body.append(f'--b{i - 1}\r\nContent-Type: multipart/mixed; boundary="b{i}"\r\n\r\n')
    body.append(f"--b{depth - 1}\r\nContent-Type: text/plain\r\n\r\nx\r\n")
    for i in reversed(range(depth)):
        body.append(f"--b{i}--\r\n")
    return _message(head, "".join(body))


def many_parts() -> bytes:
    parts = 50_000
    head = _basic('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n')
    body = "".join("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(parts))
    return _message(head, body + "--b--\r\n")


def part_words() -> bytes:
    """The From bomb in a MIME part's header (an attachment's file name), past the message's
    own header block."""
    words = " ".join("=?utf-8?q?a?=" for _ in range(16_000))
    head = _basic('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n')
    body = (
        "--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b\r\n"
        f'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="{words}"'
        "\r\n\r\nJVBERi0=\r\n--b--\r\n"
    )
    return _message(head, body)


def long_to() -> bytes:
    """A To of 8,000 addresses (220 KB, under header_bytes): read, by the light parser."""
    to = ", ".join(f"User {i} <u{i}@acme.test>" for i in range(8_000))
    return _message(_basic().replace("To: ana@northwind.test", f"To: ana@northwind.test, {to}"))


def html_angles() -> bytes:
    """5 MB of '<' as an HTML body: a tag-stripping regex must not be quadratic on it."""
    head = _basic("MIME-Version: 1.0\r\nContent-Type: text/html\r\n")
    return _message(head, "<" * (5 << 20))


def _vevent(n: int, freq: str, days_ago: int = 20) -> str:
    start = NOW - timedelta(days=days_ago)
    return (
        f"BEGIN:VEVENT\r\nUID:bomb-{n}@evil.test\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:{start:%Y%m%dT%H%M%SZ}\r\n"
        f"DTEND:{(start + timedelta(minutes=30)):%Y%m%dT%H%M%SZ}\r\n"
        f"RRULE:FREQ={freq}\r\nSUMMARY:Bomb {n}\r\n"
        "ORGANIZER:mailto:carla@acme.test\r\nATTENDEE:mailto:ana@northwind.test\r\n"
        "END:VEVENT\r\n"
    )


def _vcalendar(events: list[str], method: str = "") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//evil//EN\r\n"
        + (f"METHOD:{method}\r\n" if method else "")
        + "".join(events)
        + "END:VCALENDAR\r\n"
    )


def _invitation(cal: str) -> bytes:
    head = _basic("MIME-Version: 1.0\r\nContent-Type: text/calendar; method=REQUEST\r\n")
    return _message(head, cal)


def invitation_objects() -> bytes:
    """An invitation of 5,000 events."""
    return _invitation(_vcalendar([_vevent(n, "DAILY;COUNT=1") for n in range(5_000)], "REQUEST"))


def invitation_slow() -> bytes:
    """900 series of 480 occurrences on their first day: under every size limit, seconds of
    work; the invitation gets half the parse bound, then the mail is logged without it."""
    events = [_vevent(n, "MINUTELY;INTERVAL=3", 1) for n in range(900)]
    return _invitation(_vcalendar(events, "REQUEST"))


def invitation_secondly() -> bytes:
    """A 1.8 KB invitation by mail with six RRULE:FREQ=SECONDLY events."""
    return _invitation(_vcalendar([_vevent(n, "SECONDLY") for n in range(6)], "REQUEST"))


def date_overflow() -> bytes:
    return _message(_basic().replace(f"Date: {WHEN}", "Date: Mon, 1 Jan 2026 10:00:00 +9999999"))


def vdir(freq: str, days_ago: int = 20) -> Callable[[], bytes]:
    def make() -> bytes:
        return _vcalendar([_vevent(0, freq, days_ago)]).encode()

    make.__doc__ = f"a vdir event with RRULE:FREQ={freq}, begun {days_ago} days ago"
    return make


def vdir_objects() -> bytes:
    """A .ics of 5,000 events."""
    return _vcalendar([_vevent(n, "DAILY;COUNT=1") for n in range(5_000)]).encode()


def vdir_series() -> bytes:
    """990 daily series, each under the occurrence limit: 89,000 occurrences in the window
    from one 230 KB file (over limits.occurrences as a whole)."""
    return _vcalendar([_vevent(n, "DAILY", 60) for n in range(990)]).encode()


MAIL_BOMBS: dict[str, Callable[[], bytes]] = {
    "from-words": from_words,
    "subject-words": subject_words,
    "many-headers": many_headers,
    "deep-mime": deep_mime,
    "many-parts": many_parts,
    "part-words": part_words,
    "long-to": long_to,
    "html-angles": html_angles,
    "invitation-secondly": invitation_secondly,
    "invitation-objects": invitation_objects,
    "invitation-slow": invitation_slow,
    "date-overflow": date_overflow,
}
CALENDAR_BOMBS: dict[str, Callable[[], bytes]] = {
    "vdir-secondly": vdir("SECONDLY"),
    "vdir-minutely": vdir("MINUTELY"),
    "vdir-secondly-old": vdir("SECONDLY", 500),
    "vdir-objects": vdir_objects,
    "vdir-many-series": vdir_series,
}


def clean_of_size(size: int) -> bytes:
    """An ordinary message of ``size`` bytes: the same headers, a plain text body."""
    head = _basic()
    line = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
    body = line * (max(0, size - len(head) - 2) // len(line) + 1)
    return _message(head, body)[:size] if size > 200 else _message(head)


def clean_calendar(size: int) -> bytes:
    """An ordinary .ics of about ``size`` bytes: single meetings (at most 900, under the
    component limit), or one short series when the bomb is small."""
    one = _vevent(0, "DAILY;COUNT=1")
    n = min(max(size // len(one), 1), 900)
    if n == 1:
        return vdir("DAILY;COUNT=3")()
    return _vcalendar([_vevent(i, "DAILY;COUNT=1") for i in range(n)]).encode()


def phase_sync(path: Path, kind: str, crm: Path) -> dict[str, object]:
    """One `syncd sync` of a local mailbox holding just this file, on SQLite."""
    import resource

    from sqlalchemy import select

    from syncd.config import Settings
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.crm.models import Activity, QuarantineEntry
    from syncd.demo import add_local_mailbox, load_company
    from syncd.sync import sync_mailbox

    cap = 6 * 1024**3  # this machine is shared: a bomb stops at 6 GB of address space
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    work = Path(tempfile.mkdtemp(prefix="syncd-hostile-"))
    root = work / ("Maildir" if kind == "mail" else "calendar")
    if kind == "mail":
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True)
        (root / "cur" / "bomb:2,S").write_bytes(path.read_bytes())
    else:
        root.mkdir(parents=True)
        (root / "bomb.ics").write_bytes(path.read_bytes())
    engine = make_engine(f"sqlite:///{work / 'crm.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    load_company(sessions, crm)
    where = {"maildir": str(root)} if kind == "mail" else {"calendar": str(root)}
    add_local_mailbox(sessions, "ana", "ana@northwind.test", **where)
    settings = Settings(home=work / "home")
    start = time.perf_counter()
    report = sync_mailbox(sessions, settings, "ana")
    seconds = time.perf_counter() - start
    with sessions() as session:
        activities = len(session.scalars(select(Activity.id)).all())
        reasons = list(session.scalars(select(QuarantineEntry.reason)))
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "state": report.state,
        "error": report.error,
        "activities": activities,
        "quarantined": reasons[0][:90] if reasons else None,
    }


def measure(data: bytes, kind: str, crm: Path, timeout: float) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(delete=False, suffix=".bin") as f:
        f.write(data)
    try:
        return run_phase(
            __file__,
            "--phase",
            "sync",
            "--file",
            f.name,
            "--kind",
            kind,
            "--crm",
            str(crm),
            timeout=timeout,
        )
    except Exception as exc:  # killed at the time limit or out of memory
        return {
            "seconds": timeout,
            "peak_rss_mb": float("nan"),
            "state": "crashed",
            "error": exc.__class__.__name__,
            "activities": 0,
            "quarantined": None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="one bomb by name")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a sync may take")
    parser.add_argument("--phase", choices=["sync"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--crm", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "sync":
        print(json.dumps(phase_sync(args.file, args.kind, args.crm)))
        return

    from syncd.demo import build_demo

    demo = build_demo(Path(tempfile.mkdtemp(prefix="syncd-hostile-demo-")), NOW)
    crm = demo.root / "crm"
    bombs = [(n, "mail", f) for n, f in MAIL_BOMBS.items()] + [
        (n, "calendar", f) for n, f in CALENDAR_BOMBS.items()
    ]
    worst_rss, worst_time = 0.0, 0.0
    for name, kind, make in bombs:
        if args.only and name != args.only:
            continue
        data = make()
        bomb = measure(data, kind, crm, args.timeout)
        clean = measure(
            clean_of_size(len(data)) if kind == "mail" else clean_calendar(len(data)),
            kind,
            crm,
            args.timeout,
        )
        rss = float(bomb["peak_rss_mb"]) / float(clean["peak_rss_mb"])  # type: ignore[arg-type]
        worst_rss = max(worst_rss, rss) if rss == rss else float("inf")
        worst_time = max(worst_time, float(bomb["seconds"]))  # type: ignore[arg-type]
        print(
            f"{name:20s} {len(data):>10,d} B  {bomb['seconds']:6.2f} s  "
            f"{bomb['peak_rss_mb']:6.0f} MB  (clean: {clean['seconds']:5.2f} s "
            f"{clean['peak_rss_mb']:4.0f} MB)  RSS ratio {rss:4.2f}  "
            f"{bomb['state']}, {bomb['activities']} logged, "
            f"quarantined: {bomb['quarantined'] or bomb['error'] or '-'}"
        )
    print(f"worst RSS ratio {worst_rss:.2f} (aim <= 2), worst time {worst_time:.2f} s (aim <= 5)")


if __name__ == "__main__":
    main()
