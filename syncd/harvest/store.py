"""The import's own tables: an import and its options, how far it read each source, and
what each mailbox knows of each person (``import_people``).

What a stretch of a source taught is committed with the cursor after it, in one
transaction (:func:`save`), so an import killed at any moment goes on from its last
cursor and counts nothing twice. A source whose batches carry no new cursor until its end
(a Gmail or Graph first listing) is committed at its end.
"""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.crm.models import Import, ImportCursor, ImportPerson
from syncd.harvest.people import People, Person

# display names kept a person and mailbox: the most frequent, ties by the name itself (a
# person seldom has more; past it, which rare spellings stay may depend on the order read)
NAMES_KEPT = 100


def new_import(session: Session, kind: str, options: dict[str, Any], now: datetime) -> str:
    """A new import's id: its start time and a random part (``imp-20261201-0930-a1b2``)."""
    ident = f"imp-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    session.add(Import(id=ident, kind=kind, state="harvesting", options=options, started_at=now))
    return ident


def unfinished(session: Session, kind: str, options: dict[str, Any]) -> Import | None:
    """The latest import of this kind with these options that did not finish (to resume)."""
    rows = session.scalars(
        select(Import)
        .where(Import.kind == kind, Import.state.in_(("harvesting", "applying")))
        .order_by(Import.started_at.desc())
    )
    return next((row for row in rows if row.options == options), None)


def cursor(session: Session, import_id: str, mailbox: str, source: str) -> ImportCursor | None:
    return session.get(ImportCursor, (import_id, mailbox, source))


def save(
    session: Session,
    import_id: str,
    mailbox: str,
    source: str,
    learnt: People,
    *,
    value: str | None,
    items: int,
    done: bool,
) -> None:
    """Add what a stretch of one source taught to the mailbox's people, and move the
    source's cursor: call inside one transaction."""
    keys = list(learnt.by_key)
    rows = {
        row.key: row
        for start in range(0, len(keys), 500)
        for row in session.scalars(
            select(ImportPerson).where(
                ImportPerson.import_id == import_id,
                ImportPerson.mailbox == mailbox,
                ImportPerson.key.in_(keys[start : start + 500]),
            )
        )
    }
    for key, person in learnt.by_key.items():
        row = rows.get(key)
        if row is None:
            session.add(
                ImportPerson(import_id=import_id, mailbox=mailbox, key=key, data=dump(person))
            )
        else:
            known = load(key, row.data)
            known.merge(person)
            row.data = dump(known)
    mark = cursor(session, import_id, mailbox, source)
    if mark is None:
        mark = ImportCursor(import_id=import_id, mailbox=mailbox, source=source, items=0)
        session.add(mark)
    mark.value, mark.done, mark.items = value, done, (mark.items or 0) + items


def people_by_mailbox(session: Session, import_id: str) -> dict[str, People]:
    """Everything the import harvested, a table a mailbox."""
    found: dict[str, People] = {}
    rows = session.execute(
        select(ImportPerson.mailbox, ImportPerson.key, ImportPerson.data)
        .where(ImportPerson.import_id == import_id)
        .order_by(ImportPerson.id)
    )
    for mailbox, key, data in rows:
        found.setdefault(mailbox, People()).by_key[key] = load(key, data)
    return found


def dump(person: Person) -> dict[str, Any]:
    return {
        "spellings": dict(person.spellings),
        "names": dict(sorted(person.names.items(), key=lambda n: (-n[1], n[0]))[:NAMES_KEPT]),
        "first_seen": person.first_seen.isoformat() if person.first_seen else None,
        "last_seen": person.last_seen.isoformat() if person.last_seen else None,
        "counts": [
            person.sent,
            person.received,
            person.copied,
            person.meetings,
            person.bulk,
            person.auto,
            person.saved,
        ],
        "mailboxes": sorted(person.mailboxes),
        "book": [person.book_name, *(person.book_first_last or ())],
    }


def load(key: str, data: dict[str, Any]) -> Person:
    person = Person(key, Counter(data["spellings"]), Counter(data["names"]))
    person.first_seen = _when(data["first_seen"])
    person.last_seen = _when(data["last_seen"])
    (
        person.sent,
        person.received,
        person.copied,
        person.meetings,
        person.bulk,
        person.auto,
        person.saved,
    ) = data["counts"]
    person.mailboxes = set(data["mailboxes"])
    book = data.get("book") or [""]
    person.book_name = book[0]
    person.book_first_last = (book[1], book[2]) if len(book) == 3 else None
    return person


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
