"""Cutting work into pieces: the one place for chunking and batching.

chunk
    A run of values sent in one query or one provider command (SQL ``IN`` lists, IMAP UID
    sets, Graph ``$batch`` calls): :func:`chunked`.
batch by size
    Runs of items whose raw bytes add up to at most ``limits.batch_bytes``, so what a batch
    holds in memory is bounded: :func:`by_size`.
batch with its cursor
    A source that reads a whole delta at once and hands it out in several batches: every
    batch but the last keeps the cursor it started from, and only the last carries the new
    cursor (and what belongs to the whole delta: quarantined items, removals, task states),
    so a crash between two batches reads the delta again and loses nothing:
    :func:`with_cursor_on_last`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from syncd.items import Batch, Cursor, Quarantined, T, TaskState

V = TypeVar("V")


def chunked(values: Iterable[V], size: int) -> Iterator[list[V]]:
    """``values`` in lists of at most ``size`` (the last may be shorter; none is empty)."""
    if size < 1:
        raise ValueError(f"chunk size {size} is not a positive number")
    chunk: list[V] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def by_size(sizes: Sequence[int], count: int, budget: int) -> Iterator[tuple[int, int]]:
    """Cut items of these sizes into runs ``[start, end)`` of at most ``count`` items whose
    sizes add up to at most ``budget`` bytes (``limits.batch_bytes``); an item larger than
    the budget is a run of its own."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= count or total + size > budget):
            yield start, i
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield start, len(sizes)


def with_cursor_on_last(
    items: Sequence[T],
    size: int,
    before: Cursor,
    after: Cursor,
    *,
    quarantined: Sequence[Quarantined] = (),
    removed: Sequence[str] = (),
    task_states: Sequence[TaskState] = (),
) -> Iterator[Batch[T]]:
    """``items`` in batches of at most ``size``; only the last carries ``after`` and the
    delta's quarantined items, removals and task states, the others keep ``before``. With
    no items, one batch carries them (it may be empty: it stores the new cursor)."""
    step = max(size, 1)
    for start in range(0, max(len(items), 1), step):
        last = start + step >= len(items)
        yield Batch(
            items=tuple(items[start : start + step]),
            cursor=after if last else before,
            quarantined=tuple(quarantined) if last else (),
            removed=tuple(removed) if last else (),
            task_states=tuple(task_states) if last else (),
        )
