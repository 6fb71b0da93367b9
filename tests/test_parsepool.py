"""The parse pool: results in submission order, a bounded number in flight, and nothing lost
when a worker dies or a task fails (its task is rescued with the reason)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings

import pytest

from syncd.connectors import parsepool
from syncd.connectors.base import ConnectorError

WORKERS = 2


def square_with_pid(n: int) -> tuple[int, int]:
    """A task: the square of ``n``, and the process that computed it."""
    return n * n, os.getpid()


def fail_on_three(n: int) -> int:
    if n == 3:
        raise ValueError("three is not allowed")
    if n == 5:
        raise ConnectorError("mailbox 'ana': the server went away")
    logging.getLogger("syncd.test").warning("worker read %d", n)
    return n


def warn_about(n: int) -> int:
    warnings.warn(f"task {n} was odd", UserWarning, stacklevel=1)
    return n


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def rescued_here(n: int, reason: str) -> tuple[int, int]:
    return n * n, os.getpid()


def test_results_come_back_in_submission_order_from_worker_processes():
    results = list(
        parsepool.ordered(
            square_with_pid,
            range(40),
            processes=WORKERS,
            in_flight=3,
            rescue=rescued_here,
        )
    )
    assert [value for value, _pid in results] == [n * n for n in range(40)]
    assert os.getpid() not in {pid for _value, pid in results}  # read by the workers


def test_a_failed_task_is_rescued_with_its_reason_and_listed_errors_reach_the_caller(caplog):
    reasons: dict[int, str] = {}

    def rescue(n: int, reason: str) -> int:
        reasons[n] = reason
        return -n

    caplog.set_level(logging.INFO)
    results = parsepool.ordered(
        fail_on_three,
        range(7),
        processes=WORKERS,
        in_flight=2,
        rescue=rescue,
        raises=(ConnectorError,),
    )
    assert [next(results) for _ in range(5)] == [0, 1, 2, -3, 4]
    assert reasons == {3: "its worker process failed: ValueError: three is not allowed"}
    with pytest.raises(ConnectorError, match="the server went away"):
        next(results)
    # what a worker logged reaches the main process's log, as a line of its own
    logged = [r.getMessage() for r in caplog.records if r.name == "syncd.test"]
    assert logged == ["worker read 0", "worker read 1", "worker read 2", "worker read 4"]
    assert "Traceback" not in caplog.text


def test_a_warning_in_a_worker_comes_back_as_a_line_of_the_main_processs_log(caplog):
    caplog.set_level(logging.INFO)
    got = list(
        parsepool.ordered(warn_about, range(4), processes=WORKERS, in_flight=2, rescue=rescued_here)
    )
    assert got == [0, 1, 2, 3]  # read by the workers: none rescued
    logged = [r.getMessage() for r in caplog.records if r.name == "py.warnings"]
    assert logged == [f"UserWarning (test_parsepool): task {n} was odd" for n in range(4)]


def test_a_killed_worker_loses_no_task_and_repeats_none():
    list(
        parsepool.ordered(
            square_with_pid, range(4), processes=WORKERS, in_flight=2, rescue=rescued_here
        )
    )  # the pool is up
    pids = parsepool.worker_pids()
    assert pids and os.getpid() not in pids
    for pid in pids:  # frozen: the tasks below wait for them until they are killed
        os.kill(pid, signal.SIGSTOP)
    killer = threading.Timer(1.0, kill_all, (pids,))
    killer.start()
    try:
        results = list(
            parsepool.ordered(
                square_with_pid, range(30), processes=WORKERS, in_flight=4, rescue=rescued_here
            )
        )
    finally:
        killer.join()
    assert [value for value, _pid in results] == [n * n for n in range(30)]  # once, in order
    readers = {pid for _value, pid in results}
    assert os.getpid() in readers  # the tasks the dead workers held were read by the caller
    assert readers - {os.getpid(), *pids}  # and a new pool took the rest


def test_one_process_means_no_pool():
    list(
        parsepool.ordered(
            square_with_pid, range(2), processes=WORKERS, in_flight=2, rescue=rescued_here
        )
    )
    assert parsepool.size(1) == 1
    assert parsepool.size(0) == WORKERS  # the pool's own size, once it is up


def test_where_no_process_can_be_started_every_task_is_read_here_and_said_once(monkeypatch, caplog):
    """A sandbox without /dev/shm (the pool's semaphores), or a cap on processes: the
    reads run in the calling process, with one warning, and nothing is lost."""

    def refused(processes: int) -> None:
        raise PermissionError(13, "Permission denied", "/dev/shm")

    parsepool.shutdown()
    monkeypatch.setattr(parsepool, "_new_executor", refused)
    monkeypatch.setattr(parsepool, "_unavailable", None)
    with caplog.at_level(logging.WARNING, logger="syncd"):
        results = list(
            parsepool.ordered(
                square_with_pid, range(6), processes=WORKERS, in_flight=2, rescue=rescued_here
            )
        )
    assert results == [(n * n, os.getpid()) for n in range(6)]
    warnings = [r.getMessage() for r in caplog.records if "cannot be started" in r.getMessage()]
    assert len(warnings) == 1 and "/dev/shm" in warnings[0]
    assert parsepool.size(WORKERS) == 1  # the next reads do not even try
