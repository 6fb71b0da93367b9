"""Real-world mail and calendars (``tests/corpus/``: public test suites, each file's source
and licence in its README.md) through the local mailbox, and through a real Dovecot and
Radicale, on SQLite and PostgreSQL.

Every message goes into a Maildir (the mbox archives as ``--mbox``), every ``.ics`` file
into a vdir. No exception may escape, the mailbox stays ok, and each item the connector
yields is logged, skipped with a reason (the report's excluded counter) or quarantined
with a reason; a second sync changes nothing.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.connectors.base import CalendarSource, Connector, MailboxSpec, MailSource
from syncd.connectors.imap.connector import ImapConnector
from syncd.connectors.local.connector import LocalConnector
from syncd.connectors.mime import parse_message
from syncd.crm.models import Activity, Link, Mailbox, QuarantineEntry, Sighting, Task
from syncd.demo import add_local_mailbox, load_company
from syncd.items import MailItem, Quarantined
from syncd.secrets import Secret
from syncd.sync import SyncReport, sync_mailbox

from .helpers import add_mailbox
from .servers import Dovecot, Radicale, ServerMissing, dovecot, radicale

S = sessionmaker[Session]
CORPUS = Path(__file__).parent / "corpus"
MAIL = sorted(p for p in (CORPUS / "mail").rglob("*") if p.is_file())
MBOXES = sorted(p for p in (CORPUS / "mbox").iterdir() if p.is_file())
CALENDARS = sorted((CORPUS / "calendar").rglob("*.ics"))
USER = "ana@northwind.test"
# the corpus' meetings are from 1996 on: the calendar window reaches back to 1990
PAST_DAYS = (datetime.now(UTC) - datetime(1990, 1, 1, tzinfo=UTC)).days


def test_the_corpus_is_the_documented_one():
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert len(MAIL) >= 100 and len(CALENDARS) >= 50 and MBOXES
    assert sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()) < 2_000_000
    for path in [*MAIL, *MBOXES, *CALENDARS]:  # each file is listed with its source
        assert f"`{path.relative_to(CORPUS)}`" in readme, path
    for licence in ("PSF-2.0", "MIT", "BSD-2-Clause"):
        assert licence in readme
    assert len(list((CORPUS / "LICENSES").iterdir())) == 4


@dataclass(frozen=True)
class Unit:
    """One item as the sync decides about it: a message (its key, or the keys of the
    invitations it carries) or a meeting occurrence. It is logged when one of its keys is,
    and each unit that is not counts at least once in the report's excluded counter."""

    provider_id: str
    keys: tuple[str, ...]

    def logged(self, keys: set[str]) -> bool:
        return any(k in keys for k in self.keys)


def build_mailbox(root: Path) -> dict[str, object]:
    """A Maildir with every corpus message, the mbox archives, a vdir with every calendar."""
    maildir, calendar = root / "Maildir", root / "calendar"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for path in MAIL:
        (maildir / "cur" / f"{path.parent.name}__{path.name}:2,S").write_bytes(path.read_bytes())
    calendar.mkdir()
    for path in CALENDARS:
        (calendar / path.name).write_bytes(path.read_bytes())
    time.sleep(1.1)  # the Maildir settles: a later scan reads nothing again
    return {
        "maildir": str(maildir),
        "calendar": str(calendar),
        "mbox": [str(p) for p in MBOXES],
        "calendar_past_days": PAST_DAYS,
        "calendar_future_days": 30,
    }


def connector_output(connector: Connector) -> tuple[list[Unit], list[Quarantined], set[str]]:
    """What a connector yields, read without the sync job: the units the sync decides
    about, the quarantine entries, and every participant address."""
    units: list[Unit] = []
    quarantined: list[Quarantined] = []
    addresses: set[str] = set()
    try:
        sources: list[MailSource | CalendarSource] = [
            *connector.mail_sources(),
            *connector.calendar_sources(),
        ]
        for source in sources:
            for batch in source.changes(None):
                quarantined.extend(batch.quarantined)
                for item in batch.items:
                    invitations = item.invitations if isinstance(item, MailItem) else ()
                    keys = tuple(i.key for i in invitations) or (item.key,)
                    units.append(Unit(item.provider_id, keys))
                    for one in (item, *invitations):
                        addresses.update(p.address for p in one.participants)
    finally:
        connector.close()
    return units, quarantined, addresses


def read_directly(values: dict[str, object]) -> tuple[list[Unit], list[Quarantined]]:
    """What the local connector yields for ``values`` (a local mailbox's settings)."""
    spec = MailboxSpec.of(name="ana", kind="local", user_email=USER, settings=values)
    units, quarantined, _ = connector_output(LocalConnector(spec))
    return units, quarantined


def load_crm(sessions: S, root: Path, addresses: set[str]) -> None:
    """A CRM where every corpus address is a contact, so that items are logged (and the
    matcher and recorder see every oddity), not only skipped."""
    crm = root / "crm"
    crm.mkdir(parents=True)
    contacts = sorted(
        a
        for a in addresses
        if a != USER and len(a) <= 200 and a.isascii() and a.isprintable() and ";" not in a
    )
    rows = {
        "users": [["email", "name"], [USER, "Ana Ruiz"]],
        "accounts": [["name", "domains"]],
        "contacts": [["emails", "name"], *([a, a] for a in contacts)],
        "opportunities": [["external_id", "name", "account", "owner"]],
    }
    for kind, table in rows.items():
        with (crm / f"{kind}.csv").open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(table)
    load_company(sessions, crm)


def snapshot(sessions: S) -> dict[str, object]:
    """Everything a sync writes: activities as stored, sightings, links, quarantine, tasks."""
    with sessions() as session:
        activities = select(
            Activity.key, Activity.occurred_at, Activity.ends_at, Activity.status, Activity.subject
        )
        return {
            "activities": sorted(session.execute(activities).all()),
            "sightings": session.scalar(select(func.count()).select_from(Sighting)),
            "links": sorted(session.execute(select(Link.type, Link.target_id, Link.reason)).all()),
            "quarantine": sorted(
                session.execute(select(QuarantineEntry.provider_id, QuarantineEntry.reason)).all()
            ),
            "tasks": sorted(session.execute(select(Task.uid, Task.status, Task.version)).all()),
        }


def check_sync(
    sessions: S, settings: Settings, units: list[Unit], quarantined: list[Quarantined]
) -> tuple[set[str], dict[str, QuarantineEntry]]:
    """Sync mailbox ana twice: the first pass accounts for every unit, the second changes
    nothing. Returns the keys logged and the quarantine entries by provider id."""
    report: SyncReport = sync_mailbox(sessions, settings, "ana")

    assert report.ok, report.error
    with sessions() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == "ana"))
        assert mailbox is not None and mailbox.state == "ok" and mailbox.last_error is None
        logged = set(session.scalars(select(Activity.key)))
        entries = {q.provider_id: q for q in session.scalars(select(QuarantineEntry)).all()}
    # what the connector could not read is in the quarantine, with its reason and its bytes
    for q in quarantined:
        assert q.reason.strip(), q
        entry = entries[q.provider_id]
        assert entry.reason == q.reason
        assert (entry.raw, entry.format) == (q.raw, q.format), q.provider_id
    assert all(e.reason.strip() for e in entries.values())
    # every other item is logged, or quarantined (matching, recording), or skipped for a reason
    unexplained = [u for u in units if not u.logged(logged) and u.provider_id not in entries]
    assert all(reason.strip() for reason in report.excluded)
    assert len(unexplained) <= sum(report.excluded.values()), unexplained

    before = snapshot(sessions)
    again = sync_mailbox(sessions, settings, "ana")
    assert again.ok, again.error
    # (``updated`` would count follow-up tasks the first pass wrote, read back unchanged)
    changes = (again.new_activities, again.new_sightings, again.quarantined, again.tasks_changed)
    assert changes == (0, 0, 0, 0)
    assert snapshot(sessions) == before
    return logged, entries


def test_every_corpus_item_is_logged_skipped_or_quarantined(
    sessions: S, settings: Settings, tmp_path: Path
):
    values = build_mailbox(tmp_path)
    spec = MailboxSpec.of(name="ana", kind="local", user_email=USER, settings=values)
    units, quarantined, addresses = connector_output(LocalConnector(spec))
    load_crm(sessions, tmp_path, addresses)
    add_local_mailbox(sessions, "ana", USER, **values)

    logged, _ = check_sync(sessions, settings, units, quarantined)

    # each unreadable file is kept whole, for ``syncd quarantine retry``
    assert all(q.raw and q.format in ("rfc822", "ical") for q in quarantined)
    # the corpus is mostly readable: the lenient parser reads what the strict one refuses
    assert len(logged) >= 100, len(logged)
    mail_quarantined = [q for q in quarantined if q.format == "rfc822"]
    assert len(mail_quarantined) < 20, [(q.provider_id, q.reason) for q in mail_quarantined]
    for name in ("delivery-status.txt", "delivery-status.anonymized.eml"):  # a malformed group
        assert not any(name in q.provider_id for q in quarantined)


@pytest.fixture(scope="module")
def corpus_servers() -> Iterator[tuple[Dovecot, Radicale]]:
    try:
        with dovecot() as imap_server, radicale() as dav_server:
            yield imap_server, dav_server
    except ServerMissing as exc:
        pytest.fail(str(exc))


def test_the_corpus_over_imap_and_caldav(
    sessions: S, settings: Settings, tmp_path: Path, corpus_servers: tuple[Dovecot, Radicale]
):
    """The same files in a real Dovecot INBOX and a real Radicale calendar (each file the
    server takes: Radicale refuses what is not valid iCalendar, such as an event without
    a UID)."""
    from caldav.davclient import DAVClient

    imap_server, dav_server = corpus_servers
    login = imap_server.login("corpus")
    client = IMAPClient(imap_server.host, port=imap_server.port, ssl=False)
    client.login(login, Dovecot.PASSWORD)
    appended = 0
    for path in MAIL:
        try:
            client.append("INBOX", path.read_bytes())
            appended += 1
        except IMAPClientError:
            continue  # the server refuses it: it never reaches syncd
    client.logout()
    dav_server.add_user(login, Dovecot.PASSWORD)
    dav = DAVClient(
        url=dav_server.url,
        username=login,
        password=Dovecot.PASSWORD,
        enable_rfc6764=False,
        require_tls=False,
    )
    calendar = dav.principal().make_calendar(name="corpus")
    stored = 0
    for path in CALENDARS:
        if b"BEGIN:VCALENDAR" not in path.read_bytes() or b"UID:" not in path.read_bytes():
            continue  # Radicale refuses it, and its warnings fill a pipe nobody reads
        response = dav.put(
            f"{calendar.url}{path.stem}.ics",
            path.read_text(encoding="utf-8", errors="replace"),
            {"Content-Type": "text/calendar; charset=utf-8"},
        )
        stored += response.status in (201, 204)
    dav.close()
    assert appended >= len(MAIL) - 5 and stored >= 15, (appended, stored)
    values: dict[str, object] = {
        "host": imap_server.host,
        "port": imap_server.port,
        "tls": "none",
        "login": login,
        "caldav_url": dav_server.url,
        "calendar_past_days": PAST_DAYS,
        "calendar_future_days": 30,
    }
    spec = MailboxSpec.of(
        name="ana", kind="imap", user_email=USER, settings=values, secret=Secret(Dovecot.PASSWORD)
    )
    units, quarantined, addresses = connector_output(ImapConnector(spec))
    load_crm(sessions, tmp_path, addresses)
    add_mailbox(sessions, settings, "ana", "imap", USER, Dovecot.PASSWORD, values)

    logged, _ = check_sync(sessions, settings, units, quarantined)

    assert len([k for k in logged if not k.startswith("ical:")]) >= 80, len(logged)


@pytest.mark.parametrize(
    "name",
    [
        "messages__delivery-status.txt",
        "messages__delivery-status-no-blank-line.txt",
        "messages__delivery-status.anonymized.eml",
    ],
)
def test_a_group_the_standard_parser_refuses_is_read_leniently(name: str):
    """``To: unlisted-recipients:; (no To-header on input)`` makes the standard library's
    header parser raise AttributeError ('Group' object has no attribute 'local_part')."""
    data = (CORPUS / "mail" / "mimekit" / name).read_bytes()
    item = parse_message(data, name, datetime.now(UTC))
    assert [p.role for p in item.participants] == ["from", "cc"]
    assert item.participants[0].address.startswith(("postmaster@", "xxxxxxxxxx@"))
    assert item.sent_at == datetime(1996, 7, 29, 9, 13, 8, tzinfo=UTC)
