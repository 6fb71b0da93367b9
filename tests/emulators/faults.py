"""Fault injection and load accounting, the same for every emulator.

- :class:`Faults` is the script of faults a test queues with ``emulator.inject(...)``: each
  one is met by the next request it fits, in order, so a list of faults is a scripted
  sequence (a 503, then a 429 with Retry-After, then a dropped connection…).
- :class:`Metered` is what an emulator counts per mailbox: requests in flight, the most that
  were ever in flight at once, and the recent requests (with their cost) of a sliding rate
  window. Which limits apply, and how a refusal looks, is the provider's: the emulators
  decide that.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Fault:
    """One injected fault. ``delay``: seconds before anything else happens (alone, a slow
    answer); ``drop``: close the connection unanswered; ``status``: answer with that error
    (the provider's shape), with a ``Retry-After`` of ``retry_after`` seconds when given;
    ``path``: met only by a request whose target contains that text."""

    status: int | None = None
    retry_after: int | None = None
    drop: bool = False
    delay: float = 0.0
    path: str = ""


class Faults:
    """The queue of injected faults; empty (false) once every fault was met."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._queue.append(fault)

    def take(self, target: str) -> Fault | None:
        """The first queued fault that fits a request for ``target``, removed from the queue."""
        with self._lock:
            fault = next((f for f in self._queue if f.path in target), None)
            if fault is not None:
                self._queue.remove(fault)
            return fault

    def __len__(self) -> int:
        return len(self._queue)


@dataclass(kw_only=True)
class Metered:
    """Load accounting of one mailbox (a base of each emulator's per-user state)."""

    inflight: int = 0
    peak_inflight: int = 0  # the most requests that were in flight at once (incl. refused)
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, cost) in window

    def arrive(self) -> None:
        """A request arrives: it counts in the peak whether or not it is then refused."""
        self.peak_inflight = max(self.peak_inflight, self.inflight + 1)

    def admit(self, cost: int, limit: int, seconds: float) -> float | None:
        """Charge ``cost`` to the sliding window of the last ``seconds``: None when it fits
        under ``limit`` (and it is recorded), else how long until the oldest charge leaves
        the window (nothing is recorded)."""
        now = time.monotonic()
        while self.recent and self.recent[0][0] <= now - seconds:
            self.recent.popleft()
        if sum(c for _, c in self.recent) + cost > limit:
            return self.recent[0][0] + seconds - now if self.recent else 0.0
        self.recent.append((now, cost))
        return None


def retry_after(wait: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least one (RFC 9110 §10.2.3 delay-seconds)."""
    return str(max(1, int(wait + 0.999)))
