"""``syncd import contacts``, end to end: harvest every source, decide, report, apply.

1. **Harvest.** Each chosen mailbox is read through its own connector (the same sources the
   daemon reads, headers only: body policy ``metadata``), and each file source (a Takeout
   ``.mbox``, a Maildir, a folder of ``.eml`` files) through the local kind. What a stretch
   of a source teaches is committed with the cursor after it (``syncd.harvest.store``), so a
   killed import goes on where it stopped. Memory holds the people of the stretch in hand,
   never the messages.
2. **Decide** (``syncd.harvest.decide``): the same verdicts for ``--dry-run`` and the run.
   Contacts and accounts this very import created (a run killed while applying) do not
   count as already in the CRM, so a resumed run reaches the verdicts of an uninterrupted
   one.
3. **Report** (CSV) and, unless ``--dry-run``, **apply** in chunks, each its own
   transaction (``syncd.harvest.apply``; idempotent).

An import is found again by its sources and ``--since``: run with ``--dry-run`` first, and
the run that follows applies the harvest the dry run made (to the CRM as it is then).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd import past
from syncd.config import Settings
from syncd.connectors.base import (
    CalendarSource,
    Connector,
    ConnectorError,
    CursorExpired,
    Digests,
    Estimates,
    MailboxSpec,
    MailSource,
)
from syncd.connectors.contacts import AddressBook, CardBatch, HasAddressBooks
from syncd.connectors.registry import open_connector
from syncd.crm.models import (
    Account,
    Contact,
    ForgottenDigest,
    Import,
    ImportCursor,
    Mailbox,
)
from syncd.harvest import store
from syncd.harvest.apply import Applied, apply
from syncd.harvest.collect import MailDigest, see_card, see_mail, see_meeting
from syncd.harvest.decide import Policy, Verdict, decide
from syncd.harvest.files import file_spec
from syncd.harvest.known import known_crm
from syncd.harvest.people import People, merge_key
from syncd.items import Cursor, MailItem
from syncd.secrets import SecretsError

log = logging.getLogger("syncd.harvest")
APPLY_CHUNK = 200  # verdicts a transaction


class Progress(Protocol):
    """Live progress, per mailbox and source (the CLI draws it with rich)."""

    def source(self, mailbox: str, source: str, total: int | None) -> None: ...

    def read(self, mailbox: str, source: str, items: int, people: int) -> None: ...


class Quiet:
    def source(self, mailbox: str, source: str, total: int | None) -> None:
        del mailbox, source, total

    def read(self, mailbox: str, source: str, items: int, people: int) -> None:
        del mailbox, source, items, people


@dataclass(frozen=True)
class Target:
    """One thing to harvest: a mailbox of the CRM, or a file source given as a path."""

    name: str  # the mailbox's name, or the path
    user_email: str
    path: Path | None = None


@dataclass
class Outcome:
    import_id: str
    resumed: bool
    items: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    applied: Applied | None = None
    failed: dict[str, str] = field(default_factory=dict)  # target -> why it was not read
    warnings: dict[str, str] = field(default_factory=dict)  # target -> what was left out

    def summary(self) -> dict[str, Any]:
        skipped: dict[str, int] = {}
        for v in self.verdicts:
            if v.reason:
                skipped[v.reason] = skipped.get(v.reason, 0) + 1
        return {
            "import": self.import_id,
            "resumed": self.resumed,
            "items_read": self.items,
            "candidates": len(self.verdicts),
            "to_import": sum(v.action == "import" for v in self.verdicts),
            "to_update": sum(v.action == "update" for v in self.verdicts),
            "skipped": dict(sorted(skipped.items())),
            "accounts_to_create": len({v.domain for v in self.verdicts if v.new_account}),
            "applied": None if self.applied is None else vars(self.applied),
            "failed": self.failed,
            "warnings": self.warnings,
        }


def options_key(targets: Sequence[Target], since: datetime | None) -> dict[str, Any]:
    """What finds an import again: its sources and window (not the policy)."""
    return {
        "sources": sorted(f"{t.name}|{t.user_email}" for t in targets),
        "since": since.isoformat() if since else None,
    }


class ContactImport:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        targets: Sequence[Target],
        *,
        since: datetime | None,
        policy: Policy,
        progress: Progress | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        connector_factory: Callable[[MailboxSpec], Connector] = open_connector,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.targets = list(targets)
        self.since = since
        self.policy = policy
        self.progress = progress or Quiet()
        self.now = now
        self.connector_factory = connector_factory
        self.warnings: dict[str, str] = {}  # what was left out, and why (not a failure)

    def run(self, *, dry_run: bool, report: Path | None = None) -> Outcome:
        outcome = self._begin()
        for target in self.targets:
            try:
                outcome.items += self._harvest(outcome.import_id, target)
            except CursorExpired as exc:  # where it stopped is gone: this import cannot go on
                self._expire(outcome.import_id)
                outcome.failed[target.name] = (
                    f"{exc}; the provider no longer takes where this import stopped reading, "
                    "so it was given up (nothing was applied): run the same command again to "
                    "start a new one"
                )
            except (ConnectorError, SecretsError, OSError) as exc:
                log.warning("import %s: %s not read: %s", outcome.import_id, target.name, exc)
                outcome.failed[target.name] = str(exc)
        outcome.warnings = dict(self.warnings)
        with self.sessions() as session:
            outcome.items = int(
                session.scalar(
                    select(func.coalesce(func.sum(ImportCursor.items), 0)).where(
                        ImportCursor.import_id == outcome.import_id
                    )
                )
                or 0
            )
            by_mailbox = store.people_by_mailbox(session, outcome.import_id)
            everyone = _merged(by_mailbox)
            outcome.verdicts = decide(
                everyone,
                self.policy,
                known_crm(session, self.settings, outcome.import_id, people=everyone),
            )
        if report is not None:
            write_report(report, outcome.verdicts)
        if dry_run or outcome.failed:
            return outcome  # a source that failed: nothing is applied until it is read
        outcome.applied = self._apply(outcome, by_mailbox)
        return outcome

    # --- harvest ------------------------------------------------------------------------

    def _expire(self, import_id: str) -> None:
        with self.sessions.begin() as session:
            row = session.get(Import, import_id)
            assert row is not None
            row.state, row.finished_at = "expired", self.now()

    def _begin(self) -> Outcome:
        key = options_key(self.targets, self.since)
        with self.sessions.begin() as session:
            found = store.unfinished(session, "contacts", key)
            if found is not None:
                return Outcome(found.id, resumed=True)
            return Outcome(store.new_import(session, "contacts", key, self.now()), resumed=False)

    def _harvest(self, import_id: str, target: Target) -> int:
        """Read one target's sources from where the import left them; items read."""
        own = self._own_keys(target)
        spec = self._spec(target)
        connector = self.connector_factory(spec)
        try:
            sources: list[MailSource | CalendarSource] = [
                *connector.mail_sources(),
                *connector.calendar_sources(),
            ]
            read = sum(self._source(import_id, target, s, own) for s in sources)
            return read + self._books(import_id, target, connector, own)
        finally:
            connector.close()

    def _books(
        self, import_id: str, target: Target, connector: Connector, own: frozenset[str]
    ) -> int:
        """The target's address books; one that cannot be read (a scope or permission not
        granted, a server down) is left out with a warning, the mail is imported all the
        same (the daemon's contacts.sync reads it later)."""
        if not isinstance(connector, HasAddressBooks):
            return 0
        try:
            books = connector.address_books()
            return sum(self._source(import_id, target, book, own) for book in books)
        except CursorExpired:
            raise  # where this import stopped reading is gone: it starts anew (run())
        except ConnectorError as exc:  # a scope not granted, a server down
            log.warning("import %s: %s: address book not read: %s", import_id, target.name, exc)
            self.warnings[target.name] = f"address book not read: {exc}"
            return 0

    def _spec(self, target: Target) -> MailboxSpec:
        if target.path is not None:
            return file_spec(target.path, target.user_email, self.settings)
        from syncd.sync import mailbox_spec  # the one place a mailbox's spec is made

        with self.sessions() as session:
            mailbox = session.scalar(select(Mailbox).where(Mailbox.name == target.name))
            if mailbox is None:
                raise ConnectorError(f"no mailbox named {target.name!r}; see 'syncd mailbox list'")
            spec = mailbox_spec(mailbox, self.settings)
        if self.since is not None:  # every window back to it, the mail's too (Gmail, Graph)
            spec = past.widen(spec, self.since, self.now())
        return replace(spec, body_policy="metadata")

    def _own_keys(self, target: Target) -> frozenset[str]:
        return frozenset({merge_key(target.user_email)})

    def _source(
        self,
        import_id: str,
        target: Target,
        source: MailSource | CalendarSource | AddressBook,
        own: frozenset[str],
    ) -> int:
        """Read one source from the import's cursor; what each stretch teaches is committed
        with the cursor after it (only a batch that moves the cursor is a point to go on
        from: those before it are read again by a resumed import, and counted once)."""
        with self.sessions() as session:
            mark = store.cursor(session, import_id, target.name, source.name)
            if mark is not None and mark.done:
                return 0
            value = mark.value if mark is not None else None
            before = mark.items if mark is not None else 0
        self.progress.source(target.name, source.name, _estimate(source))
        learnt, pending, total = People(), 0, 0
        start = Cursor(value) if value is not None else None
        batches: Iterator[Any] = (
            source.digested(start, MailDigest(target.name, own, self.since))
            if isinstance(source, Digests)  # the people made where the mail is read
            else source.changes(start)
        )
        for batch in batches:
            read = self._see(learnt, batch, target.name, own)
            pending, total = pending + read, total + read
            if batch.cursor.value != value:  # a point to go on from: commit up to it
                value = batch.cursor.value
                with self.sessions.begin() as session:
                    learnt.drop_forgotten(forgotten(session))
                    store.save(
                        session, import_id, target.name, source.name, learnt,
                        value=value, items=pending, done=False,
                    )  # fmt: skip
                learnt, pending = People(), 0
            self.progress.read(target.name, source.name, before + total, len(learnt))
        with self.sessions.begin() as session:
            learnt.drop_forgotten(forgotten(session))
            store.save(
                session, import_id, target.name, source.name, learnt,
                value=value, items=pending, done=True,
            )  # fmt: skip
        return total

    def _see(self, people: People, batch: Any, mailbox: str, own: frozenset[str]) -> int:
        """Add what one batch shows; how many items it held."""
        if isinstance(batch, CardBatch):
            for card in batch.cards:
                see_card(people, card, mailbox, own)
            return len(batch.cards)
        if batch.digest is not None:  # a MailDigest of the batch's mail
            learnt, read = batch.digest
            people.merge(learnt)
            return read + len(batch.quarantined)
        for item in batch.items:
            if isinstance(item, MailItem):
                if self.since is None or item.sent_at >= self.since:
                    see_mail(people, item, mailbox, own)
            elif self.since is None or item.start >= self.since:
                see_meeting(people, item, mailbox, own)
        return len(batch.items) + len(batch.quarantined)

    # --- decide and apply ---------------------------------------------------------------

    def _apply(self, outcome: Outcome, by_mailbox: dict[str, People]) -> Applied:
        with self.sessions.begin() as session:
            row = session.get(Import, outcome.import_id)
            assert row is not None
            row.state = "applying"
        total = Applied()
        todo = [v for v in outcome.verdicts if v.action != "skip"]
        for start in range(0, len(todo), APPLY_CHUNK):
            with self.sessions.begin() as session:
                done = apply(
                    session,
                    outcome.import_id,
                    todo[start : start + APPLY_CHUNK],
                    by_mailbox,
                    update_names=self.policy.update_names,
                )
            for name, value in vars(done).items():
                setattr(total, name, getattr(total, name) + value)
        with self.sessions.begin() as session:
            row = session.get(Import, outcome.import_id)
            assert row is not None
            total.contacts_created = _created(session, Contact, outcome.import_id)
            total.accounts_created = _created(session, Account, outcome.import_id)
            row.state, row.finished_at = "done", self.now()
            row.summary = {**outcome.summary(), "applied": vars(total)}
        return total


def forgotten(session: Session) -> frozenset[str]:
    """The digests of the addresses and domains forgotten (``syncd forget``), as of now: a
    forget run while the import harvests is honoured from its next commit on."""
    return frozenset(session.scalars(select(ForgottenDigest.digest)))


def _created(session: Session, model: type[Contact] | type[Account], import_id: str) -> int:
    return int(
        session.scalar(select(func.count()).select_from(model).where(model.import_id == import_id))
        or 0
    )


def _estimate(source: object) -> int | None:
    """About how many items the source holds, for the progress's ETA (never fails)."""
    if not isinstance(source, Estimates):
        return None
    try:
        return source.estimate()
    except Exception as exc:  # a count is a nicety: the import goes on without it
        log.debug("no estimate of %s: %s", getattr(source, "name", source), exc)
        return None


def _merged(by_mailbox: dict[str, People]) -> People:
    """One table of everyone, from fresh copies (the per-mailbox tables stay as they are)."""
    merged = People()
    for people in by_mailbox.values():
        for person in people:
            copy = store.load(person.key, store.dump(person))
            mine = merged.by_key.setdefault(person.key, copy)
            if mine is not copy:
                mine.merge(copy)
    merged.join_linked()
    return merged


REPORT_COLUMNS = [
    "address",
    "name",
    "first_name",
    "last_name",
    "decision",
    "reason",
    "account",
    "new_account",
    "sent_to",
    "received_from",
    "copied",
    "meetings",
    "saved",
    "bulk",
    "auto_replies",
    "first_seen",
    "last_seen",
    "mailboxes",
    "other_addresses",
]


def write_report(path: Path, verdicts: Sequence[Verdict]) -> None:
    """Every candidate, ranked, with the counts, the decision, the reason and the account."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(REPORT_COLUMNS)
        for v in verdicts:
            p = v.person
            out.writerow(
                [
                    p.address,
                    v.name,
                    v.first_last[0] if v.first_last else "",
                    v.first_last[1] if v.first_last else "",
                    v.action,
                    v.reason or "",
                    v.domain or "",
                    "yes" if v.new_account else "",
                    p.sent,
                    p.received,
                    p.copied,
                    p.meetings,
                    p.saved,
                    p.bulk,
                    p.auto,
                    p.first_seen.isoformat() if p.first_seen else "",
                    p.last_seen.isoformat() if p.last_seen else "",
                    " ".join(sorted(p.mailboxes)),
                    " ".join(sorted(a for a in p.spellings if a != p.address)),
                ]
            )
