"""The retry policy every connector shares (tenacity).

A transient failure (a dropped connection, HTTP 429 and 5xx, a provider's rate-limit
refusal) is tried again with exponential backoff, or after the provider's ``Retry-After``
when it gave one. A ``Retry-After`` longer than :data:`MAX_WAIT` is not slept through: the
pass ends with a :class:`~syncd.connectors.base.ConnectorError` and the next poll resumes
from the last stored batch, so a sync job never sleeps past the service watchdog.

Every try is counted for the metrics (:mod:`syncd.connectors.counters`), by provider: a
request (a try that did not itself run tries of an inner policy, such as Gmail's batch
whose parts are asked again), a throttle (:func:`is_throttle`), a retry.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Generator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, TypeVar

import tenacity

from syncd.connectors import counters

MAX_WAIT = 60.0  # seconds: the longest Retry-After honoured within a pass
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
THROTTLE_STATUS = frozenset({429, 503})
T = TypeVar("T")


def retry_after(value: object, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date
    (RFC 9110, section 10.2.3); None when it holds neither."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
    return seconds if seconds >= 0 and seconds == seconds else None  # not NaN or negative


def header_retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """:func:`retry_after` of a response's headers (any case of the name)."""
    for name, value in (headers or {}).items():
        if str(name).lower() == "retry-after":
            return retry_after(value)
    return None


def backoff(first: float, cap: float, attempt: int) -> float:
    """Exponential backoff: ``first`` seconds before the second try, doubling, at most ``cap``."""
    return float(min(first * 2 ** max(attempt - 1, 0), cap))


def is_throttle(exc: BaseException, hint: float | None) -> bool:
    """Whether a failure is the provider's rate limit: a Retry-After to wait (``hint``,
    found by the policy's ``wait_hint``), HTTP 429 or 503, or Gmail's 403
    ``rateLimitExceeded``/``userRateLimitExceeded``."""
    if hint is not None and hint > 0:
        return True
    status = getattr(exc, "status", None)
    if status is None:  # googleapiclient's HttpError keeps it in its response
        status = getattr(getattr(exc, "resp", None), "status", None)
    if status in THROTTLE_STATUS:
        return True
    content = getattr(exc, "content", None)
    return status == 403 and isinstance(content, bytes) and b"ratelimitexceeded" in content.lower()


class _Tries(threading.local):
    """The tries running in this thread, innermost last: each notes whether an inner
    policy's try ran within it (then that one was the request, not this one)."""

    def __init__(self) -> None:
        self.stack: list[list[bool]] = []


_tries = _Tries()


class _Try:
    """One try, counted when it ends: wraps tenacity's AttemptManager (``with attempt:``)
    or a call (``policy(fn, ...)``)."""

    def __init__(self, policy: _Counted, inner: tenacity.AttemptManager | None = None) -> None:
        self.policy, self.inner = policy, inner

    def __enter__(self) -> None:
        if _tries.stack:
            _tries.stack[-1][0] = True
        _tries.stack.append([False])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        nested = _tries.stack.pop()[0] if _tries.stack else False
        provider = self.policy.provider
        if not nested:
            counters.REQUESTS.labels(provider).inc()
        if isinstance(exc, Exception) and is_throttle(exc, self.policy.wait_hint(exc)):
            counters.THROTTLES.labels(provider).inc()
        return self.inner.__exit__(exc_type, exc, tb) if self.inner is not None else None


class _Counted(tenacity.Retrying):
    """``tenacity.Retrying`` that counts its tries (see :class:`_Try`)."""

    def __init__(
        self, provider: str, wait_hint: Callable[[BaseException], float | None], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.provider, self.wait_hint = provider, wait_hint

    def __iter__(self) -> Generator[tenacity.AttemptManager, None, None]:
        for attempt in super().__iter__():
            yield _Try(self, attempt)  # type: ignore[misc]  # used as `with attempt:` alone

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def counted(*a: Any, **kw: Any) -> T:
            with _Try(self):
                return fn(*a, **kw)

        return super().__call__(counted, *args, **kwargs)


def _caller_kind() -> str:
    """The connector kind of the module that asked :func:`retrying` for a policy (its
    package: ``syncd.connectors.<kind>...``), for a caller that does not name it."""
    module = str(sys._getframe(2).f_globals.get("__name__", ""))
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["syncd", "connectors"] else "other"


def retrying(
    *,
    transient: Callable[[BaseException], bool],
    attempts: int,
    first: float = 0.5,
    cap: float = 30.0,
    wait_hint: Callable[[BaseException], float | None] = lambda exc: None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    provider: str | None = None,
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` for ``for attempt in retrying(...): with attempt: ...``:
    tries again what ``transient`` accepts, at most ``attempts`` times in all, waiting what
    ``wait_hint`` finds in the failure (a Retry-After) or else :func:`backoff`. A hint over
    :data:`MAX_WAIT` is not waited for: the failure is raised at once (the last one is
    always raised as it is, never wrapped). Its tries are counted under ``provider``
    (default: the kind of the connector package that calls this)."""
    kind = provider or _caller_kind()

    def retry_it(exc: BaseException) -> bool:
        hint = wait_hint(exc)
        return transient(exc) and (hint is None or hint <= MAX_WAIT)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = wait_hint(exc) if exc is not None else None
        return hint if hint is not None else backoff(first, cap, state.attempt_number)

    def again(state: tenacity.RetryCallState) -> None:
        counters.RETRIES.labels(kind).inc()
        if before_sleep is not None:
            before_sleep(state)

    return _Counted(
        kind,
        wait_hint,
        retry=tenacity.retry_if_exception(retry_it),
        stop=tenacity.stop_after_attempt(max(attempts, 1)),
        wait=wait,
        before_sleep=again,
        reraise=True,
    )
