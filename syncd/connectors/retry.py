"""The retry policy every connector shares (tenacity).

A transient failure (a dropped connection, HTTP 429 and 5xx, a provider's rate-limit
refusal) is tried again with exponential backoff, or after the provider's ``Retry-After``
when it gave one. A ``Retry-After`` longer than :data:`MAX_WAIT` is not slept through: the
pass ends with a :class:`~syncd.connectors.base.ConnectorError` and the next poll resumes
from the last stored batch, so a sync job never sleeps past the service watchdog.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import tenacity

MAX_WAIT = 60.0  # seconds: the longest Retry-After honoured within a pass
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


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


def retrying(
    *,
    transient: Callable[[BaseException], bool],
    attempts: int,
    first: float = 0.5,
    cap: float = 30.0,
    wait_hint: Callable[[BaseException], float | None] = lambda exc: None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` for ``for attempt in retrying(...): with attempt: ...``:
    tries again what ``transient`` accepts, at most ``attempts`` times in all, waiting what
    ``wait_hint`` finds in the failure (a Retry-After) or else :func:`backoff`. A hint over
    :data:`MAX_WAIT` is not waited for: the failure is raised at once (the last one is
    always raised as it is, never wrapped)."""

    def retry_it(exc: BaseException) -> bool:
        hint = wait_hint(exc)
        return transient(exc) and (hint is None or hint <= MAX_WAIT)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = wait_hint(exc) if exc is not None else None
        return hint if hint is not None else backoff(first, cap, state.attempt_number)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_it),
        stop=tenacity.stop_after_attempt(max(attempts, 1)),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )
