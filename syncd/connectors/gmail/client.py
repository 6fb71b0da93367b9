"""The session with Google: credentials, the Gmail and Calendar services, and every call.

:class:`GmailClient` owns the credentials (a service account's key with domain-wide
delegation, or an OAuth refresh token), the services built from the static discovery
documents (only the endpoint changes: tests point it at the emulator), and
:meth:`GmailClient.execute`, through which every call goes: within the per-user quota
(:class:`QuotaLimiter`), tried again by the shared policy (:mod:`syncd.connectors.retry`)
on HTTP 429 and 5xx, on 403 ``rateLimitExceeded`` and on a dropped connection, after
Google's ``Retry-After`` when it gives one. A ``Retry-After`` over the policy's longest wait
ends the pass with a :class:`ConnectorError`, as a failure that outlasts the tries does;
refused credentials raise an :class:`AuthError` naming ``syncd mailbox reauth``.

It also resolves label ids to names (listed once, again for an id not seen yet) and
fetches messages raw, up to 100 in one batch request.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import google_auth_httplib2
import httplib2
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from syncd.connectors.base import AuthError, ConnectorError, CursorExpired, MailboxSpec, refused
from syncd.connectors.gmail import GmailSettings
from syncd.connectors.gmail.parse import labels_by_id
from syncd.connectors.gmail.signin import SCOPES
from syncd.connectors.kind import typed
from syncd.connectors.retry import RETRYABLE_STATUS, header_retry_after, retrying

GOOGLE_ENDPOINT = "https://gmail.googleapis.com/"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
UNITS = {"getProfile": 1, "labels": 1, "list": 5, "get": 5, "history": 2, "calendar": 1}
BATCH = 100  # Gmail's cap on calls in one batch request
ATTEMPTS = 8  # tries of one call, unless the mailbox sets its own (settings.retries)
FIRST_WAIT, LONGEST_WAIT = 1.0, 32.0  # the backoff of one call, without a Retry-After
PART_FIRST_WAIT, PART_LONGEST_WAIT = 1.0, 16.0  # of the parts of a batch asked again


T = TypeVar("T")


class QuotaLimiter:
    """Keeps a mailbox under its per-user quota (units a minute) so that a backfill runs near
    the ceiling without provoking 429s: a token bucket refilled at ``margin`` of the rate and
    holding at most what the remaining margin allows, so no 60-second window can overspend.

    Gmail's per-user limit is 15,000 quota units a minute (``quota_units_per_minute``; the
    units of each method: "Usage limits", developers.google.com/gmail/api/reference/quota);
    what gets refused anyway (429, 403 ``userRateLimitExceeded``/``rateLimitExceeded``) is
    tried again with exponential backoff, as "Handle errors" asks
    (developers.google.com/workspace/gmail/api/guides/handle-errors). One limiter per pass,
    and one pass per mailbox at a time (its lease): the user's quota is never shared."""

    def __init__(self, units_per_minute: int, margin: float = 0.95) -> None:
        self.rate = units_per_minute * margin / 60.0
        self.capacity = max(units_per_minute * (1 - margin), 1.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, units: int) -> None:
        """Spend ``units``; wait until the bucket is out of debt (never deadlocks)."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= units
            if self.tokens < 0:
                time.sleep(-self.tokens / self.rate)


def transient(exc: BaseException) -> bool:
    """Worth another try: 429, 5xx, 403 ``rateLimitExceeded``/``userRateLimitExceeded``
    (Google's quota refusal), or a dropped connection."""
    if isinstance(exc, HttpError):
        status = exc.resp.status
        if status in RETRYABLE_STATUS:
            return True
        return status == 403 and b"ratelimitexceeded" in bytes(exc.content or b"").lower()
    return isinstance(exc, (socket.error, httplib2.HttpLib2Error, TransportError, TimeoutError))


def retry_hint(exc: BaseException) -> float | None:
    """The ``Retry-After`` of a refusal, in seconds."""
    return header_retry_after(exc.resp) if isinstance(exc, HttpError) else None


def expiring(pages: Iterator[T], status: int, expired: str) -> Iterator[T]:
    """``pages`` of a listing by cursor, where HTTP ``status`` means the cursor is too old
    (Gmail's 404 of a history id, Calendar's 410 of a sync token): CursorExpired."""
    try:
        yield from pages
    except HttpError as exc:
        if exc.resp.status == status:
            raise CursorExpired(expired) from None
        raise


def _credentials(spec: MailboxSpec, settings: GmailSettings, scopes: Sequence[str] = SCOPES) -> Any:
    if spec.secret is None:
        raise refused(spec.name, f"mailbox {spec.name!r}: no Google credentials stored")
    secret = json.loads(spec.secret.reveal())
    if settings.mode == "service_account":
        return service_account.Credentials.from_service_account_info(
            secret, scopes=list(scopes)
        ).with_subject(spec.user_email)
    return user_credentials.Credentials(
        None,
        refresh_token=secret["refresh_token"],
        client_id=settings.client_id,
        client_secret=secret["client_secret"],
        token_uri=settings.token_uri or GOOGLE_TOKEN_URI,
        scopes=list(scopes),
    )


class _Call:
    """A deferred call with ``execute()``, so :meth:`GmailClient.execute` can retry it."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def execute(self) -> Any:
        return self.fn(*self.args)


class _PartsPending(Exception):
    """Parts of a batch request refused for a while (429, 5xx): they are asked again."""

    def __init__(self, wait: float | None) -> None:
        super().__init__("parts of a batch request are pending")
        self.wait = wait


class GmailClient:
    """One mailbox's session with Gmail and Google Calendar (see the module's docstring)."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = self.settings = typed(spec.settings, GmailSettings)
        self.endpoint = s.api_endpoint or GOOGLE_ENDPOINT
        self.http = google_auth_httplib2.AuthorizedHttp(
            _credentials(spec, s), http=httplib2.Http(timeout=s.timeout)
        )
        self.gmail = self._build("gmail", "v1", self.endpoint)
        # Calendar's base must end in calendar/v3/ (PROVIDER-APIS.md)
        self.calendar = self._build(
            "calendar",
            "v3",
            str(
                s.calendar_endpoint
                or self.endpoint.replace("gmail.googleapis.com", "www.googleapis.com")
                + "calendar/v3/"
            ),
        )
        self.limiter = QuotaLimiter(s.quota_units_per_minute)
        self.where = f"mailbox {spec.name!r}: Gmail"
        # label id -> (name, is a user label); listed on first use, again for an unknown id
        self._labels: dict[str, tuple[str, bool]] | None = None
        self._unresolved: set[str] = set()  # ids still unknown after a fresh listing

    def http_for(self, scopes: Sequence[str]) -> Any:
        """An authorised HTTP of its own for other scopes than mail's and calendar's (the
        address books): a token without them fails only the calls that need them."""
        return google_auth_httplib2.AuthorizedHttp(
            _credentials(self.spec, self.settings, scopes),
            http=httplib2.Http(timeout=self.settings.timeout),
        )

    def _build(self, api: str, version: str, endpoint: str, http: Any = None) -> Any:
        return build(
            api,
            version,
            http=http or self.http,
            static_discovery=True,
            client_options={"api_endpoint": endpoint},
        )

    # --- calls --------------------------------------------------------------------------------

    def execute(self, units: int, make: Callable[[], Any]) -> Any:
        """Run one API call within the quota, trying again what :func:`transient` accepts
        (after its Retry-After). Refused credentials raise AuthError; a transient failure
        that outlasts the tries (or asks for a wait over the longest) ConnectorError; any
        other HttpError (404, 409, 410) is the caller's."""
        try:
            for attempt in retrying(
                transient=transient,
                attempts=self.settings.retries or ATTEMPTS,
                first=FIRST_WAIT,
                cap=LONGEST_WAIT,
                wait_hint=retry_hint,
            ):
                with attempt:
                    self.limiter.take(units)
                    return make().execute()
        except Exception as exc:
            failure = self._failure(exc)
            if failure is None:
                raise
            # a refusal is said in full: the failure's own trace is of no use to anyone
            raise failure from (None if isinstance(failure, AuthError) else exc)
        raise AssertionError("unreachable")

    def _failure(self, exc: Exception) -> ConnectorError | None:
        """What a call that failed for good raises instead of ``exc``: AuthError for
        refused credentials, ConnectorError for a transient failure (tried as often as
        allowed, or asked to wait too long); None: ``exc`` itself (a 404, 409 or 410 is
        the caller's)."""
        if isinstance(exc, RefreshError):
            detail = exc.args[0] if exc.args else exc
            return refused(self.spec.name, f"{self.where} refused the credentials ({detail})")
        if transient(exc):
            return ConnectorError(f"{self.where}: {self._what(exc)}; the next poll resumes")
        if isinstance(exc, HttpError) and exc.resp.status in (401, 403):  # no rate limit
            return refused(
                self.spec.name,
                f"{self.where}: access denied ({exc.resp.status}: {exc.reason or 'forbidden'})",
                "check the granted scopes (gmail.readonly, calendar.events)",
            )
        return None

    @staticmethod
    def _what(exc: Exception) -> str:
        """A transient failure in a few words: the status, and the wait asked for."""
        if not isinstance(exc, HttpError):
            return str(exc)
        wait = retry_hint(exc)
        asked = f", asked to wait {wait:.0f} s" if wait is not None else ""
        return f"HTTP {exc.resp.status} ({exc.reason or 'refused'}){asked}"

    def pages(
        self, units: int, method: Callable[..., Any], first: str | None = None, **query: Any
    ) -> Iterator[tuple[str | None, Any]]:
        """Every page of one listing from the page ``first``, one call each: (the page's
        token, the response), following ``nextPageToken``."""
        page = first
        while True:
            response = self.execute(units, partial(method, pageToken=page, **query))
            yield page, response
            page = response.get("nextPageToken")
            if not page:
                return

    # --- labels -------------------------------------------------------------------------------

    def _label(self, label_id: str) -> tuple[str, bool]:
        if self._labels is None or (
            label_id not in self._labels and label_id not in self._unresolved
        ):
            # the first use, or a label made since the last listing
            labels = self.gmail.users().labels()
            self._labels = labels_by_id(
                self.execute(UNITS["labels"], partial(labels.list, userId="me"))
            )
            if label_id not in self._labels:
                self._unresolved.add(label_id)  # e.g. deleted meanwhile: never asked again
        return self._labels.get(label_id, (label_id, False))

    def label_names(self, ids: Sequence[str]) -> tuple[str, ...]:
        """The labels as exclusions name them: a user label by its name, a system label
        (INBOX, SENT, CATEGORY_UPDATES) by its id, an id Gmail does not list as it is."""
        names = []
        for label_id in ids:
            name, user = self._label(label_id)
            names.append(name if user else label_id)
        return tuple(names)

    def is_user_label(self, label_id: str) -> bool:
        return self._label(label_id)[1]

    # --- messages -----------------------------------------------------------------------------

    def _get_batch(self, ids: list[str]) -> tuple[dict[str, Any], list[str], float | None]:
        """One batch request of messages.get format=raw: (replies by id, ids to ask again,
        the longest Retry-After of those). A message deleted since it was listed (404) is
        simply absent."""
        users = self.gmail.users().messages()
        found: dict[str, Any] = {}
        again: list[str] = []
        waits: list[float] = []
        errors: list[BaseException] = []

        def on_reply(request_id: str, response: Any, exc: BaseException | None) -> None:
            if exc is None:
                found[request_id] = response
            elif isinstance(exc, HttpError) and exc.resp.status == 404:
                pass
            elif transient(exc):
                again.append(request_id)
                hint = retry_hint(exc)
                if hint is not None:
                    waits.append(hint)
            else:
                errors.append(exc)

        batch = BatchHttpRequest(batch_uri=self.endpoint + "batch/gmail/v1", callback=on_reply)
        for i in ids:
            batch.add(users.get(userId="me", id=i, format="raw"), request_id=i)
        batch.execute(http=self.http)
        if any(isinstance(e, RefreshError) for e in errors):
            raise RefreshError("refresh failed inside a batch")
        if errors:
            raise errors[0]
        return found, again, max(waits, default=None)

    def fetch_raw(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """messages.get format=raw for up to 100 ids in one batch request; parts refused
        with 429/5xx are asked again by the same policy (after their Retry-After)."""
        found: dict[str, dict[str, Any]] = {}
        pending = list(ids)
        if not pending:
            return found
        try:
            for attempt in retrying(
                transient=lambda exc: isinstance(exc, _PartsPending),
                attempts=ATTEMPTS,
                first=PART_FIRST_WAIT,
                cap=PART_LONGEST_WAIT,
                wait_hint=lambda exc: exc.wait if isinstance(exc, _PartsPending) else None,
            ):
                with attempt:
                    replies, pending, wait = self.execute(
                        UNITS["get"] * len(pending), partial(_Call, self._get_batch, pending)
                    )
                    found.update(replies)
                    if pending:
                        raise _PartsPending(wait)
        except _PartsPending:
            raise ConnectorError(
                f"{self.where}: {len(pending)} messages kept failing; the next poll resumes"
            ) from None
        return found
