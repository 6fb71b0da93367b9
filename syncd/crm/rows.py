"""Rows in bulk, the way every module of ``syncd.crm`` puts them into the database: the
text every database stores (:func:`clean`), many rows in one statement (:func:`insert_rows`:
COPY on PostgreSQL), a row only where its key is new (:func:`insert_new`), and how many
values one ``IN (...)`` list holds (:data:`IN_LIMIT`, for :func:`syncd.batching.chunked`).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Insert, Table, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.crm.models import Base

IN_LIMIT = 500  # values per IN (...) list

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str | None) -> str | None:
    """Text as every database stores it: no NUL (PostgreSQL refuses it) and no other
    control character (tabs and line breaks stay); each becomes U+FFFD."""
    return _CONTROL.sub("\ufffd", text) if text else text


def insert_rows(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert many rows; returns key -> id where the table has keys (activities).

    On PostgreSQL this is COPY (bench/import_local.py: row-by-row INSERTs cost the server
    ~30 us a row, COPY a few); elsewhere one executemany, with RETURNING (id, key) for keyed
    rows (in no particular order: parameter order would make SQLite insert row by row).
    """
    if not rows:
        return {}
    table: Table = Base.metadata.tables[model.__tablename__]
    keyed = "key" in table.c
    if session.get_bind().dialect.name == "postgresql":
        _copy_rows(session, table, rows)
        if not keyed:
            return {}
        return {
            str(key): int(row_id)
            for chunk in chunked([r["key"] for r in rows], IN_LIMIT)
            for key, row_id in session.execute(
                select(table.c.key, table.c.id).where(table.c.key.in_(chunk))
            )
        }
    if not keyed:
        session.execute(insert(table), rows)
        return {}
    result = session.execute(insert(table).returning(table.c.id, table.c.key), rows)
    return {str(key): int(row_id) for row_id, key in result}


def insert_new(session: Session, model: type[Base], key: str) -> Insert:
    """INSERT that skips rows whose ``key`` is already stored (ON CONFLICT DO NOTHING)."""
    table = Base.metadata.tables[model.__tablename__]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


def _copy_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY ... FROM STDIN on the session's own connection and transaction."""
    columns = list(rows[0])
    for column in columns:  # names come from our own code, never from input; checked anyway
        assert column in table.c, column
    raw: Any = session.connection().connection.dbapi_connection  # a psycopg connection
    sql = f'COPY "{table.name}" ({", ".join(columns)}) FROM STDIN'
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
    except Exception as exc:  # the driver's own error, raised as SQLAlchemy raises one
        raise DBAPIError(sql, None, exc) from exc
