"""Writers of one SQLite database in one process take turns in the order they asked.

SQLite's lock is not fair: a writer waiting in its busy handler sleeps and tries again, and
a writer that commits and begins its next transaction at once (a re-match after a CRM load,
an audit, a long first sync, 500 activities a transaction) takes the lock again before the
sleeper wakes. A pass that IDLE woke for one new message waited for the whole re-match of a
first sync's 19,000 activities (13 s, bench/imap_import.py). :class:`Turns` is a ticket
lock taken by ``sessions.begin()`` on SQLite before ``BEGIN IMMEDIATE``: the next writer
of this process gets the database when the current one commits. Writers in other processes
still meet SQLite's own lock and busy timeout.

A thread that holds its turn and opens another write transaction goes on (SQLite itself
then decides, as it did before). A writer that waits longer than the busy timeout gets
:class:`TimeoutError` (``syncd.crm.database`` makes it a ``DatabaseBusy``), its ticket
given up.
"""

from __future__ import annotations

import os
import threading
import time


class Turns:
    """A first-come, first-served lock for the write transactions of one database."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """No turn taken, no one waiting."""
        self._changed = threading.Condition()
        self._next = 0  # the ticket the next writer gets
        self._serving = 0  # the ticket whose turn it is
        self._gave_up: set[int] = set()  # tickets whose writers stopped waiting
        self._owner: int | None = None  # the thread whose turn it is

    def acquire(self, timeout: float) -> bool:
        """Wait for this thread's turn, at most ``timeout`` seconds (else TimeoutError);
        True when the thread held it already (a write transaction inside another)."""
        me = threading.get_ident()
        with self._changed:
            if self._owner == me:
                return True
            self._wait(me, timeout)
            return False

    def release(self, nested: bool) -> None:
        """The end of a write transaction that :meth:`acquire` let start."""
        if nested:
            return
        with self._changed:
            self._owner = None
            self._advance()

    def _wait(self, me: int, timeout: float) -> None:
        ticket = self._next
        self._next += 1
        deadline = time.monotonic() + timeout
        try:
            while self._serving != ticket:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no turn to write within {timeout:g} s")
                self._changed.wait(left)
        except BaseException:  # a timeout, or anything raised in the waiting thread
            if self._serving == ticket:
                self._advance()  # its turn came as it gave up: the next one's now
            else:
                self._gave_up.add(ticket)
            raise
        self._owner = me

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._gave_up:
            self._gave_up.discard(self._serving)
            self._serving += 1
        self._changed.notify_all()


_turns: dict[str, Turns] = {}
_turns_lock = threading.Lock()


def turns_of(database: str) -> Turns:
    """The turns of this database file (one for every engine of it in this process)."""
    with _turns_lock:
        return _turns.setdefault(os.path.realpath(database), Turns())


def _forget_in_child() -> None:
    """A forked process starts with no turns taken: its parent's writers are not its, and
    a lock one of them held stays held in the child."""
    global _turns_lock
    _turns_lock = threading.Lock()
    for turns in _turns.values():
        turns.reset()  # the same object: the sessions of the file keep it


os.register_at_fork(after_in_child=_forget_in_child)
