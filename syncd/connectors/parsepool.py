"""The process-wide pool of worker processes that fetch and parse for the main one.

A first sync or a historical import reads years of mail; fetching it and parsing it are
CPU work that one process cannot spread over the machine's cores. The connectors hand that
work to this pool in *tasks* (a picklable value and a top-level function: a range of IMAP
UIDs, a chunk of Maildir files) and get the results back **in the order the tasks were
submitted** (:func:`ordered`), so that the main process still matches and records every
batch in the order of its source's cursor: crash safety (a batch and its cursor in one
transaction) does not change.

- Size: ``sync.parse_processes`` worker processes (0: one per usable CPU); 1 is no pool at
  all, everything is read in the calling process as before. The pool is created by its
  first user, with that user's size, and shut down when the process exits.
- Workers are started by a ``forkserver`` (never a plain fork: the daemon runs threads),
  ignore SIGINT and SIGTERM (the main process decides when to stop), and send back the log
  lines of a task with its result, so that they reach the main process's log as if logged
  there.
- At most ``in_flight`` tasks of one :func:`ordered` call are queued or running at once, so
  memory stays flat whatever the number of tasks.
- Nothing is lost silently: a task whose worker died (killed, out of memory) or that raised
  an unexpected exception is given to the caller's ``rescue`` with a one-line reason (the
  IMAP connector reads it again in the calling process); the pool is replaced by a new one
  for the next tasks. Exceptions the caller lists in ``raises`` (a refused login, an expired
  cursor) reach it as if the task had run in its own process. No traceback reaches a user.

Use from a connector (a chunk of Maildir files, say)::

    workers = parsepool.size(spec.parse_processes)
    if workers > 1 and len(files) >= SOME_THRESHOLD:
        results = parsepool.ordered(
            read_chunk, chunks, processes=spec.parse_processes, in_flight=workers,
            rescue=lambda chunk, reason: read_chunk(chunk),
        )
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from syncd import logs
from syncd.connectors.reasons import describe

T = TypeVar("T")
R = TypeVar("R")

# imported once by the forkserver, so that a new worker starts with the parsers loaded
PRELOAD = ["syncd.connectors.mime"]
MAX_LOG_LINES = 200  # log lines a task sends back with its result; the rest are counted

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None
_processes = 0  # the pool's size, once created
_atexit_registered = False
_unavailable: str | None = None  # why no worker process can be started here, once known

log = logging.getLogger("syncd")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def size(processes: int) -> int:
    """How many worker processes ``sync.parse_processes = processes`` means: 1 is none (read
    in the calling process), 0 one per usable CPU; once the pool exists, its own size (the
    first user's: every user of one process has the same configuration)."""
    if processes == 1 or _unavailable is not None:
        return 1
    with _lock:
        if _executor is not None:
            return _processes
    return processes if processes > 0 else usable_cpus()


# --- in a worker process ------------------------------------------------------------------


class _Collect(logging.Handler):
    """Keeps a task's log lines to send them back with its result."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, int, str]] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < MAX_LOG_LINES:
            self.lines.append((record.name, record.levelno, record.getMessage()))
        else:
            self.dropped += 1


_collect = _Collect()


def _start_worker(level: int) -> None:
    """A worker's setup: SIGINT and SIGTERM are the main process's business (systemd sends
    SIGTERM to the whole unit: the main process finishes its batch and stops the pool);
    log lines are collected, and warnings logged (``syncd.logs.capture_warnings``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [_collect]
    root.setLevel(level)
    logs.capture_warnings()  # a library's warning comes back as a line of the task's log


def _call(fn: Callable[[T], R], task: T) -> tuple[R, list[tuple[str, int, str]], int]:
    """``fn(task)`` in a worker, with the log lines it wrote."""
    _collect.lines, _collect.dropped = [], 0
    value = fn(task)
    return value, _collect.lines, _collect.dropped


# --- in the main process --------------------------------------------------------------------


def _new_executor(processes: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    # what the main process logs, but no DEBUG from workers (imapclient's protocol lines)
    level = max(logging.INFO, logging.getLogger("syncd").getEffectiveLevel())
    return ProcessPoolExecutor(
        max_workers=processes, mp_context=context, initializer=_start_worker, initargs=(level,)
    )


def _pool(processes: int) -> ProcessPoolExecutor:
    """The process-wide pool, created on first use."""
    global _executor, _processes, _atexit_registered
    with _lock:
        if _executor is None:
            _processes = processes if processes > 0 else usable_cpus()
            _executor = _new_executor(_processes)
            if not _atexit_registered:
                atexit.register(shutdown)
                _atexit_registered = True
        return _executor


def _replace(broken: ProcessPoolExecutor) -> None:
    """A new pool in place of a broken one (once, whoever notices first)."""
    global _executor
    with _lock:
        if _executor is broken:
            _executor = _new_executor(_processes)
    broken.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop the pool's workers (at exit; a later use starts a new pool)."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


def worker_pids() -> list[int]:
    """The process ids of the pool's workers now (none before its first task)."""
    with _lock:
        executor = _executor
    procs: dict[int, Any] = getattr(executor, "_processes", None) or {}
    return sorted(procs)


Submitted = tuple[Any, "Future[Any]", ProcessPoolExecutor | None]


def _submit(fn: Callable[[T], R], task: T, processes: int) -> Submitted:
    if _unavailable is not None:  # known since an earlier task: not tried again
        return _failed(task, OSError(_unavailable))
    try:
        executor = _pool(processes)
        try:
            return task, executor.submit(_call, fn, task), executor
        except BrokenProcessPool:  # a worker died since: a new pool takes the task
            _replace(executor)
            executor = _pool(processes)
            return task, executor.submit(_call, fn, task), executor
    except OSError as exc:  # no process can be started here: the task is rescued
        _give_up(exc)
        return _failed(task, exc)


def _failed(task: Any, exc: OSError) -> Submitted:
    """A task no process can take: rescued by the caller (see :func:`_outcome`)."""
    failed: Future[Any] = Future()
    failed.set_exception(exc)
    return task, failed, None


def _give_up(exc: OSError) -> None:
    """No worker process can be started in this process (a sandbox without /dev/shm for
    the pool's semaphores, a cap on processes): say so once; from now on :func:`size` is 1
    and every read runs in the calling process, as with ``sync.parse_processes = 1``."""
    global _unavailable
    with _lock:
        first = _unavailable is None
        _unavailable = describe(exc)
    if first:
        log.warning(
            "parse processes cannot be started here (%s); large reads run in the main "
            "process; set sync.parse_processes = 1 to say so",
            _unavailable,
        )


def _replay(lines: list[tuple[str, int, str]], dropped: int) -> None:
    for name, level, message in lines:
        logging.getLogger(name).log(level, "%s", message)
    if dropped:
        logging.getLogger("syncd").warning("a parse worker left out %d more log lines", dropped)


def _outcome(
    entry: Submitted,
    rescue: Callable[[Any, str], R],
    raises: tuple[type[BaseException], ...],
) -> R:
    task, future, executor = entry
    try:
        value, lines, dropped = future.result()
    except BrokenProcessPool:
        if executor is not None:
            _replace(executor)
        return rescue(task, "its worker process stopped (killed, or out of memory)")
    except raises:
        raise
    except Exception as exc:  # a bug, or a result that cannot be sent back
        return rescue(task, f"its worker process failed: {describe(exc)}")
    _replay(lines, dropped)
    result: R = value
    return result


def ordered(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    *,
    processes: int,
    in_flight: int,
    rescue: Callable[[T, str], R],
    raises: tuple[type[BaseException], ...] = (),
) -> Generator[R, None, None]:
    """``fn(task)`` for each task, run by the pool's workers, yielded in the order of
    ``tasks``, with at most ``in_flight`` of them queued or running at once. A task whose
    worker died or that raised anything but ``raises`` is ``rescue(task, reason)`` instead.
    ``fn`` must be a top-level function and the tasks picklable. Closing the iterator
    early cancels the tasks not started and waits for the running ones."""
    pending: deque[Submitted] = deque()
    source = iter(tasks)

    def fill() -> None:
        while len(pending) < max(1, in_flight):
            try:
                task = next(source)
            except StopIteration:
                return
            pending.append(_submit(fn, task, processes))

    try:
        fill()
        while pending:
            result = _outcome(pending.popleft(), rescue, raises)
            fill()  # the workers go on while the caller takes this result
            yield result
    finally:
        for _task, future, _executor in pending:
            future.cancel()
        # a running task ends before the caller gives back what it uses (a connection slot)
        wait([future for _task, future, _executor in pending])
