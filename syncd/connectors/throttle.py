"""Process-wide caps on what the connectors open at once, by key (a server's ``host:port``).

``syncd run`` syncs several mailboxes at once on a pool of threads; several of them may sit
on one server (every salesperson of a company on the company's IMAP server). A server limits
the connections it accepts per client address, and refuses or drops the ones over its
limit, so a connector takes a :func:`slot` for its key before it connects and gives it back
when it closes: at most ``cap`` connections per key from this process, whatever asks. A
thread that finds every slot taken waits for one (the other passes are bounded by their
time budget, ``sync.pass_budget``).

The cap of a key is the one given by its first user (``sync.imap_connections`` for IMAP:
every mailbox of a process has the same); :func:`in_use` says how many are held now.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_caps: dict[str, threading.BoundedSemaphore] = {}
_held: dict[str, int] = {}


def _semaphore(key: str, cap: int) -> threading.BoundedSemaphore:
    with _lock:
        found = _caps.get(key)
        if found is None:
            found = _caps[key] = threading.BoundedSemaphore(cap)
        return found


def acquire(key: str, cap: int) -> None:
    """Take one of the ``cap`` slots of ``key``, waiting for one to be free."""
    _semaphore(key, cap).acquire()
    with _lock:
        _held[key] = _held.get(key, 0) + 1


def try_acquire(key: str, cap: int) -> bool:
    """Take one of the ``cap`` slots of ``key`` if one is free now, without waiting (a pass
    that already holds a slot and asks for more must never wait: two such passes would
    wait on each other)."""
    if not _semaphore(key, cap).acquire(blocking=False):
        return False
    with _lock:
        _held[key] = _held.get(key, 0) + 1
    return True


def release(key: str) -> None:
    """Give back a slot taken with :func:`acquire`."""
    with _lock:
        _held[key] -= 1
        semaphore = _caps[key]
    semaphore.release()


@contextmanager
def slot(key: str, cap: int) -> Iterator[None]:
    """One of the ``cap`` slots of ``key`` while the block runs."""
    acquire(key, cap)
    try:
        yield
    finally:
        release(key)


def in_use(key: str) -> int:
    """How many slots of ``key`` are held now."""
    with _lock:
        return _held.get(key, 0)
