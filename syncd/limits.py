"""What one item may cost: the ``[limits]`` of the config, checked on the raw data, and a
time bound on one item's parse.

Anyone on the internet can put a message into a salesperson's mailbox, and anyone who can
invite them can put an event into their calendar. The parsers (the standard library's
``email``, ``icalendar``, ``recurring-ical-events``) spend memory and time out of all
proportion to some small inputs: a From of 16,000 encoded words, a ``FREQ=SECONDLY`` rule.
So each parser entry point (``mime.parse_message``, ``ical.read_calendar``, the Gmail and
Graph parsers) checks the limits on the raw data first, cheaply, and parses under
:func:`run_bounded`. An item over a limit raises :class:`OverLimit`, whose text names the
limit, what the item holds and how to read it anyway; the connectors quarantine it with
that reason and the pass goes on.

The time bound in the main thread (``syncd sync``, ``syncd import``) uses ``SIGALRM``
(``setitimer(ITIMER_REAL)``). In other threads (the passes of ``syncd run``'s worker pool
and of ``syncd worker``) one monitor thread raises the bound in the parsing thread with
``PyThreadState_SetAsyncExc``: like the signal handler, it takes effect between two
bytecodes of the parse, and a pending one is cleared when the parse ends. A run of many
parses in a main thread (an IMAP run's messages, a Maildir chunk a parse worker reads)
runs within :func:`ticking`: the handler stays set and a timer ticks, so that a parse pays
no system call for its bound.
Signals other than SIGALRM are untouched: the daemon's SIGTERM handler only sets an event, so a long
parse ends at the bound at the latest and the daemon then stops.
"""

from __future__ import annotations

import ctypes
import heapq
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar, cast

from syncd.config import LimitSettings

T = TypeVar("T")

DEFAULT = LimitSettings()
# a bound that fired without stopping the parse (a library swallowed the exception) fires
# again this often until the parse gives up
_REFIRE = 0.05


def limits_or_default(limits: LimitSettings | None) -> LimitSettings:
    return DEFAULT if limits is None else limits


def size(n: float) -> str:
    """A byte count for people: 1.9 MB, 266 KB, 812 bytes."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


class OverLimit(ValueError):
    """An item over one of the ``[limits]``: quarantined with this reason, never parsed.

    ``limit`` is the key in ``[limits]`` (``encoded_words``), ``found`` what the item holds
    ("From has 16000 encoded words"), ``allowed`` the limit as people read it ("200")."""

    def __init__(self, limit: str, found: str, allowed: str) -> None:
        self.limit = limit
        super().__init__(
            f"over limits.{limit}: {found} (limit {allowed}); raise [limits] {limit} to read it"
        )


def check(limit: str, value: int, allowed: int, what: str) -> None:
    """Raise :class:`OverLimit` when ``value`` is over ``allowed``; ``what`` says what the
    item holds, ``{n}`` in it standing for ``value`` (``{size}`` for it in bytes)."""
    if value > allowed:
        shown = size(allowed) if limit.endswith("_bytes") else str(allowed)
        found = what.replace("{n}", str(value)).replace("{size}", size(value))
        raise OverLimit(limit, found, shown)


# --- the time bound ---------------------------------------------------------------------------


class _Expired(BaseException):
    """Raised by the SIGALRM handler inside the parse. A BaseException, so that the
    parsers' own ``except Exception`` (which turn bad input into a reason) let it through;
    :func:`run_bounded` turns it into :class:`OverLimit`."""

    def __init__(self, bound: _Bound) -> None:
        super().__init__()
        self.bound = bound


class _Bound:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = 0.0
        self.active = False
        self.expired = False  # a bound of another thread than the main one that ran out


class _ThreadExpired(BaseException):
    """Raised in a thread other than the main one by :class:`_Monitor` (an exception class
    is all ``PyThreadState_SetAsyncExc`` carries: the bound that ran out is marked
    ``expired``)."""


def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in the thread at its next bytecode; None clears one still pending."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


class _Monitor:
    """The time bounds of the threads other than the main one: one daemon thread wakes at
    the earliest deadline and raises :class:`_ThreadExpired` in the thread that ran over,
    again every ``_REFIRE`` until that parse gives up (a library may swallow it once)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.heap: list[tuple[float, int, int, _Bound]] = []  # deadline, seq, thread, bound
        self.seq = 0
        self.thread: threading.Thread | None = None

    def push(self, bound: _Bound, outer: _Bound | None) -> None:
        now = time.monotonic()
        bound.deadline = now + bound.seconds
        if outer is not None:  # a bound within a bound ends at the outer one's end at the latest
            bound.deadline = min(bound.deadline, outer.deadline)
        # not `with self.lock`: Condition.__enter__ is Python code, and a bound raised in
        # this thread just after the lock was taken there would leave it taken for good;
        # the lock is taken inside the try, and given back if this thread holds it
        try:
            self.lock.acquire()
            bound.active = True
            self.seq += 1
            heapq.heappush(self.heap, (bound.deadline, self.seq, threading.get_ident(), bound))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._watch, name="limits", daemon=True)
                self.thread.start()
            self.lock.notify()
        finally:
            self._release()

    def pop(self, bound: _Bound) -> None:
        """The bound ends: from here on nothing is raised for it (one still pending is
        cleared, under the lock the monitor raises under). Raises only a bound that was
        pending before the lock was taken (the caller calls again: see :func:`_end`)."""
        try:
            self.lock.acquire()
            if bound.active:
                bound.active = False
                _async_raise(threading.get_ident(), None)
        finally:
            self._release()

    def _release(self) -> None:
        if self.lock._is_owned():  # type: ignore[attr-defined]
            self.lock.release()

    def _watch(self) -> None:
        with self.lock:
            while True:
                while self.heap and not self.heap[0][3].active:
                    heapq.heappop(self.heap)
                if not self.heap:
                    self.lock.wait(1.0)
                    if not self.heap:
                        self.thread = None
                        return
                    continue
                deadline, seq, thread_id, bound = self.heap[0]
                now = time.monotonic()
                if now < deadline:
                    self.lock.wait(deadline - now)
                    continue
                heapq.heappop(self.heap)
                bound.expired = True
                _async_raise(thread_id, _ThreadExpired)
                heapq.heappush(self.heap, (now + _REFIRE, seq, thread_id, bound))


_MONITOR = _Monitor()
_outer = threading.local()  # the bounds in force in this thread (other than the main one)


class _Timer:
    """The bounds in force in the main thread, innermost last, and what was there before
    the outermost one: SIGALRM's handler and a timer of someone else's."""

    def __init__(self) -> None:
        self.stack: list[_Bound] = []
        self.previous_handler: Any = None
        self.previous_timer: tuple[float, float] = (0.0, 0.0)
        self.previous_hook: Any = None
        self.armed_at = 0.0
        self.ticking = False  # within ticking(): the handler and a ticking timer stay set

    def unraisable(self, info: Any) -> None:
        """The bound, raised where Python cannot pass an exception on (a weakref callback,
        a ``__del__`` run by the garbage collector), is ignored quietly: it fires again."""
        if isinstance(info.exc_value, _Expired):
            return
        self.previous_hook(info)

    def handler(self, _signum: int, _frame: FrameType | None) -> None:
        now = time.monotonic() + 0.01  # the timer's clock and the monotonic clock may differ
        for bound in reversed(self.stack):
            if bound.active and now >= bound.deadline:
                raise _Expired(bound)

    def push(self, bound: _Bound) -> None:
        now = time.monotonic()
        bound.deadline = now + bound.seconds
        if self.stack:  # a bound within a bound ends at the outer one's end at the latest
            bound.deadline = min(bound.deadline, self.stack[-1].deadline)
        elif not self.ticking:  # (ticking: the handler is set, the timer ticks already)
            self.previous_handler = signal.signal(signal.SIGALRM, self.handler)
            self.previous_timer = signal.setitimer(signal.ITIMER_REAL, 0)
            self.previous_hook, sys.unraisablehook = sys.unraisablehook, self.unraisable
            self.armed_at = now
        self.stack.append(bound)
        bound.active = True
        if not self.ticking:
            signal.setitimer(signal.ITIMER_REAL, max(bound.deadline - now, 1e-6), _REFIRE)

    def pop(self, bound: _Bound) -> None:
        bound.active = False
        if bound not in self.stack:
            return  # popped already (the signal came while it was being popped)
        del self.stack[self.stack.index(bound) :]
        if self.ticking:
            return  # the timer goes on ticking; the handler finds no bound or the outer one
        now = time.monotonic()
        if self.stack:  # the outer bound again, with what is left of it (maybe nothing)
            signal.setitimer(signal.ITIMER_REAL, max(self.stack[-1].deadline - now, 1e-6), _REFIRE)
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        handler = self.previous_handler
        signal.signal(signal.SIGALRM, signal.SIG_DFL if handler is None else handler)
        if sys.unraisablehook == self.unraisable:  # unless someone replaced it meanwhile
            sys.unraisablehook = self.previous_hook
        delay, interval = self.previous_timer
        if delay > 0:  # someone else's timer goes on, less the time the parse took
            signal.setitimer(signal.ITIMER_REAL, max(delay - (now - self.armed_at), 1e-6), interval)


_TIMER = _Timer()


@contextmanager
def ticking() -> Iterator[None]:
    """For a run of many bounded parses in this process's main thread (a parse pool worker's
    task): SIGALRM's handler is set once and a timer ticks every :data:`_REFIRE` seconds
    until the run ends, so that a bound costs no system call (three timer and two handler
    calls a parse otherwise); a bound then fires up to one tick late. Anywhere else (another
    thread, within a bound, within another run), or without ``setitimer``, it changes
    nothing. What was there before (a handler, someone else's timer) is restored after."""
    if not _signal_bound() or _TIMER.stack or _TIMER.ticking:
        yield
        return
    previous_handler = signal.signal(signal.SIGALRM, _TIMER.handler)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, _REFIRE, _REFIRE)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _TIMER.unraisable
    _TIMER.previous_hook = previous_hook
    started = time.monotonic()
    _TIMER.ticking = True
    try:
        yield
    finally:
        _TIMER.ticking = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(
            signal.SIGALRM, signal.SIG_DFL if previous_handler is None else previous_handler
        )
        if sys.unraisablehook == _TIMER.unraisable:
            sys.unraisablehook = previous_hook
        delay, interval = previous_timer
        if delay > 0:  # someone else's timer goes on, less the time the run took
            left = max(delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, interval)


def _signal_bound() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


_progress = time.monotonic()


def last_progress() -> float:
    """When (time.monotonic) a bounded parse last ended: the daemon feeds the systemd
    watchdog while items keep being read, within a batch too."""
    return _progress


def run_bounded(seconds: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, stopped after ``seconds`` with :class:`OverLimit`
    (``parse_seconds``), in any thread (the main one by SIGALRM, the others by
    :class:`_Monitor`).

    Bounds nest: an inner one ends with the outer one at the latest, and when it ends the
    outer one goes on with what is left of it. A SIGALRM handler and timer set before are
    restored afterwards (the timer less the time spent here)."""
    global _progress
    try:
        if seconds <= 0:
            return fn(*args, **kwargs)
        if _signal_bound():
            return _in_main(seconds, fn, *args, **kwargs)
        return _in_thread(seconds, fn, *args, **kwargs)
    finally:
        _progress = time.monotonic()


def _over(seconds: float) -> OverLimit:
    return OverLimit("parse_seconds", f"parse took over {seconds:g} s", f"{seconds:g} s")


def _in_main(seconds: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    bound = _Bound(seconds)
    try:
        _TIMER.push(bound)
        try:
            return fn(*args, **kwargs)
        finally:
            bound.active = False  # first, and inline: from here on the handler never raises
            _TIMER.pop(bound)
    except _Expired as exc:
        bound.active = False
        _TIMER.pop(bound)
        if exc.bound is not bound:
            raise  # an outer bound's: it ends there
        raise _over(seconds) from None


def _in_thread(seconds: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    bound = _Bound(seconds)
    stack: list[_Bound] = _outer.__dict__.setdefault("stack", [])
    outer = stack[-1] if stack else None
    done, result = False, cast(T, None)
    try:
        try:
            stack.append(bound)
            _MONITOR.push(bound, outer)
            result = fn(*args, **kwargs)
            done = True
        finally:
            _end(bound, stack)
    except _ThreadExpired:
        _end(bound, stack)
        if done:
            return result  # it came after the work was done
        if not bound.expired:
            raise  # an outer bound's: it ends there (and fires again until it does)
        raise _over(seconds) from None
    return result


def _end(bound: _Bound, stack: list[_Bound]) -> None:
    """End ``bound`` whatever comes meanwhile: once :meth:`_Monitor.pop` got through,
    nothing is raised for it any more (an outer bound's exception, if one comes, fires again
    every ``_REFIRE`` until its own parse ends)."""
    while True:
        try:
            _MONITOR.pop(bound)
            break
        except _ThreadExpired:
            continue
    if bound in stack:
        del stack[stack.index(bound) :]
