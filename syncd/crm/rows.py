"""Rows in bulk, the way every module of ``syncd.crm`` puts them into the database: the
text every database stores (:func:`clean`), many rows in one statement (:func:`insert_rows`:
COPY on PostgreSQL, the driver's executemany elsewhere), a row only where its key is new
(:func:`insert_new`), a column matching any of many values (:func:`one_of`), and how many
values one ``IN (...)`` list holds (:data:`IN_LIMIT`, for :func:`syncd.batching.chunked`).

:func:`insert_rows` is the recorder's hot path (bench/import_local.py): the INSERT of a table
and its columns is compiled by SQLAlchemy once, each value is converted by its column type's
own bind processor (the same conversion ``session.execute(insert(...))`` makes, without its
per-row work), and the statement runs through ``exec_driver_sql`` on the session's own
connection and transaction, so a refused row raises the same SQLAlchemy error as before.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import (
    ColumnElement,
    Insert,
    String,
    Table,
    any_,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import InstrumentedAttribute, Session

from syncd.crm.models import Base

IN_LIMIT = 500  # values per IN (...) list
# values in one list of :func:`one_of` (one parameter, whatever its length): few statements
# for a batch of 1,000 items, and no list so long that the database's plan suffers
# (PostgreSQL turns to a parallel scan of a million addresses past ~1,500 of them)
LOOKUP_CHUNK = 1000

_UNSET = object()  # no value converted yet

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str | None) -> str | None:
    """Text as every database stores it: no NUL (PostgreSQL refuses it) and no other
    control character (tabs and line breaks stay); each becomes U+FFFD."""
    return _CONTROL.sub("\ufffd", text) if text else text


def insert_rows(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert many rows (each with the same columns); returns key -> id where the table has
    unique keys (activities).

    On PostgreSQL this is COPY (bench/import_local.py: row-by-row INSERTs cost the server
    ~30 us a row, COPY a few), with the ids of keyed rows drawn from the table's sequence
    first. Elsewhere one executemany, or for keyed rows INSERT ... VALUES (...), (...)
    RETURNING (id, key) (the ids come back in no particular order), in statements of
    power-of-two row counts (:func:`statement_sizes`).
    """
    if not rows:
        return {}
    table: Table = Base.metadata.tables[model.__tablename__]
    keyed = "key" in table.c and bool(table.c.key.unique)
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        if not keyed:
            _copy_rows(connection, table, rows, [])
            return {}
        ids = _reserve_ids(connection, table, len(rows))
        _copy_rows(connection, table, rows, ids)
        return {str(row["key"]): row_id for row, row_id in zip(rows, ids, strict=True)}
    plan = _plan(connection.dialect, table, tuple(rows[0]), keyed)
    if not keyed:
        connection.exec_driver_sql(plan.sql, plan.parameters(rows))
        return {}
    found: dict[str, int] = {}
    start = 0
    for count in statement_sizes(len(rows), plan.rows_per_statement):
        chunk = rows[start : start + count]
        start += count
        flat = [value for values in plan.parameters(chunk) for value in values]
        result = connection.exec_driver_sql(plan.many_values(count), tuple(flat))
        found.update((str(key), int(row_id)) for row_id, key in result)
    return found


def statement_sizes(count: int, most: int) -> list[int]:
    """How many rows each ``INSERT ... VALUES (...), (...)`` of ``count`` rows holds: powers
    of two, none over ``most``, largest first (1,000 rows at most 1,000: 512, 256, 128, 64,
    32, 8). The driver keeps each statement it prepared per connection (128 of them, the
    largest ones hundreds of kilobytes), so one a row count would grow the process with
    every batch of a size not seen yet (bench/import_local.py: 30 MB at 50,000 messages);
    powers of two are at most log2(most) + 1 texts a table, whatever the batches (ten for
    the activities' 1,000 rows)."""
    page = 1 << (max(1, most).bit_length() - 1)
    sizes = [page] * (count // page)
    rest = count % page
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


def one_of(
    session: Session, column: InstrumentedAttribute[Any], values: list[Any]
) -> ColumnElement[bool]:
    """``column IN (values)`` as one parameter rather than one a value: on PostgreSQL
    ``column = ANY(:array)``, which the server plans faster (500 keys: 1.3 ms against 3.8);
    on SQLite ``column IN (SELECT value FROM json_each(:json))`` (SQLite's JSON functions
    are built in since 3.38), which SQLAlchemy need not expand into one bound parameter a
    value (5,000 keys: about 5 ms of Python saved, bench/matching_scale.py)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(values, postgresql.ARRAY(column.type)))
    listed = func.json_each(literal(json.dumps(values), String())).table_valued("value")
    return column.in_(select(listed.c.value))


def insert_new(session: Session, model: type[Base], key: str) -> Insert:
    """INSERT that skips rows whose ``key`` is already stored (ON CONFLICT DO NOTHING)."""
    table = Base.metadata.tables[model.__tablename__]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


# --- the executemany path ---------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The INSERT of one table and columns, compiled once for a dialect (qmark style)."""

    sql: str  # INSERT INTO t (a, b) VALUES (?, ?), for executemany
    returning: str  # the same with RETURNING id, key (keyed tables), else ""
    group: str  # its "(?, ?)"
    keys: tuple[str, ...]  # row keys in parameter order
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)
    rows_per_statement: int  # for VALUES (...), (...) within the dialect's parameter limit
    error: type[Exception]  # the driver's base error

    def parameters(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row's values in parameter order, converted as the column types convert
        them (a column at a time; a value that is the same object as the one above it, such
        as the batch's ``now``, is converted once)."""
        get = itemgetter(*self.keys)
        values = map(get, rows) if len(self.keys) > 1 else ((get(row),) for row in rows)
        if not self.converters:
            return list(values)
        columns: list[Any] = list(zip(*values, strict=True))
        for position, convert in self.converters:
            columns[position] = self._convert(columns[position], convert)
        return list(zip(*columns, strict=True))

    def _convert(self, column: tuple[Any, ...], convert: Callable[[Any], Any]) -> list[Any]:
        converted: list[Any] = []
        last: Any = _UNSET
        for value in column:
            if value is not last:
                try:
                    done = convert(value)
                except Exception as exc:  # as SQLAlchemy raises it: a StatementError
                    raise DBAPIError.instance(self.sql, None, exc, self.error) from exc
                last = value
            converted.append(done)
        return converted

    def many_values(self, count: int) -> str:
        """INSERT ... VALUES with ``count`` rows, RETURNING id, key."""
        return self.returning.replace(self.group, ", ".join([self.group] * count), 1)


_plans: WeakKeyDictionary[Dialect, dict[tuple[str, tuple[str, ...]], _Plan]] = WeakKeyDictionary()
_plans_lock = threading.Lock()


def _plan(dialect: Dialect, table: Table, keys: tuple[str, ...], keyed: bool) -> _Plan:
    with _plans_lock:
        plans = _plans.setdefault(dialect, {})
        plan = plans.get((table.name, keys))
        if plan is None:
            plan = plans[(table.name, keys)] = _compile(dialect, table, keys, keyed)
    return plan


def _compile(dialect: Dialect, table: Table, keys: tuple[str, ...], keyed: bool) -> _Plan:
    statement = insert(table)
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    order = tuple(compiled.positiontup or ())
    # names come from our own code, never from input; qmark: one "?" a column, in order
    assert dialect.paramstyle == "qmark" and sorted(order) == sorted(keys), (table.name, keys)
    group = "(" + ", ".join(["?"] * len(order)) + ")"
    returning = ""
    if keyed:
        returning = (
            statement.returning(table.c.id, table.c.key)
            .compile(dialect=dialect, column_keys=list(keys))
            .string
        )
        assert returning.count(group) == 1, returning
    converters = []
    for position, key in enumerate(order):
        convert = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
        if convert is not None:
            converters.append((position, convert))
    return _Plan(
        sql=compiled.string,
        returning=returning,
        group=group,
        keys=order,
        converters=tuple(converters),
        rows_per_statement=max(
            1,
            min(
                dialect.insertmanyvalues_page_size,
                dialect.insertmanyvalues_max_parameters // len(order),
            ),
        ),
        error=dialect.loaded_dbapi.Error,
    )


# --- PostgreSQL -------------------------------------------------------------------------


def _reserve_ids(connection: Connection, table: Table, count: int) -> list[int]:
    """``count`` ids from the table's own sequence (what the id column's default draws)."""
    sequence = func.nextval(func.pg_get_serial_sequence(table.name, "id"))
    found = connection.scalars(select(sequence).select_from(func.generate_series(1, count)))
    return sorted(int(row_id) for row_id in found)


def _copy_rows(
    connection: Connection, table: Table, rows: list[dict[str, Any]], ids: list[int]
) -> None:
    """PostgreSQL COPY ... FROM STDIN on the session's own connection and transaction;
    with ``ids``, each row's id."""
    columns = list(rows[0])
    for column in columns:  # names come from our own code, never from input; checked anyway
        assert column in table.c, column
    raw: Any = connection.connection.dbapi_connection  # a psycopg connection
    sql = f'COPY "{table.name}" ({", ".join(["id", *columns] if ids else columns)}) FROM STDIN'
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            if ids:
                for row_id, row in zip(ids, rows, strict=True):
                    copy.write_row([row_id, *[row[c] for c in columns]])
            else:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
    except Exception as exc:  # the driver's own error, raised as SQLAlchemy raises one: a
        # lock or statement timeout, a deadlock, a full disk as OperationalError (the
        # database, not an item: the pass stops and retries), a refused row as another
        raise DBAPIError.instance(sql, None, exc, type(raw).Error) from exc
