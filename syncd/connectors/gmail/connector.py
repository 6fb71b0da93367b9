"""Gmail (google-api-python-client + google-auth): mail read incrementally by history id.

Settings of a ``kind = "gmail"`` mailbox: ``mode`` (``service_account`` or ``oauth``),
``api_endpoint`` (default Google's; tests point it at the emulator), ``since_days`` (first
sync window, default 90), ``quota_units_per_minute`` (default 15,000, Gmail's per-user
limit), and for ``oauth`` ``client_id`` and ``token_uri``. The secret is the service
account's key (JSON) or ``{"refresh_token", "client_secret"}`` (JSON), stored encrypted.

The source ``gmail:mail``: a first sync lists messages newer than the window and fetches
them raw in batches of 100 (one HTTP request a batch); its cursor remembers the page and the
position in it, so a crash mid-backfill resumes there. Then ``history.list`` from the
history id taken before the backfill; a 404 raises :class:`CursorExpired`. SPAM, TRASH,
CHAT and drafts are never read; a message taken out of Spam or Trash later (a history record
removing SPAM or TRASH) is read then, like a new one, and so is a message the user gives a
label of their own (so that a "CRM" label applied after arrival forces it in). Gmail's
threadId is kept as a second thread key.

Labels: messages carry label *ids*; a user label's id (``Label_12``) is not its name ("No
CRM"). Items carry the names of user labels and the ids of system labels (INBOX, SENT), so
that ``exclusions.labels`` and ``exclusions.force_labels`` match. The names come from
``users.labels.list``, once per connector and again when an id not seen yet appears.

The source ``gcal:primary``: the primary calendar by sync token, bounded to
``calendar_past_days`` .. ``calendar_future_days`` around now like the other calendars.
Google refuses ``timeMin``/``timeMax`` with a sync token, so the window is applied to what
comes back, and the strips the window has moved over since the last pass (a meeting 45 days
ahead enters a 30-day window 15 days later without changing) are listed by time.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import google_auth_httplib2
import httplib2
import tenacity
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from syncd.config import LimitSettings
from syncd.connectors.base import (
    AuthError,
    CalendarSource,
    ConnectorError,
    CursorExpired,
    MailboxSpec,
    MailSource,
    TaskWriter,
)
from syncd.connectors.gmail import GmailSettings
from syncd.connectors.ical import meeting_key
from syncd.connectors.kind import typed
from syncd.connectors.mime import UnreadableMessage, parse_message
from syncd.items import (
    DONE_MARKS,
    Batch,
    Cursor,
    MailItem,
    MeetingItem,
    Participant,
    Quarantined,
    TaskItem,
    TaskState,
)
from syncd.limits import OverLimit, check
from syncd.matching.addresses import normalize_address

log = logging.getLogger("syncd.gmail")

SCOPES = [
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/calendar.events",
]
GOOGLE_ENDPOINT = "https://gmail.googleapis.com/"
NEVER_READ = {"SPAM", "TRASH", "CHAT", "DRAFT"}
RESTORED = {"SPAM", "TRASH"}  # a message taken out of these is read like a new one
# history record types read: new mail, and label changes that can make a message loggable
HISTORY_TYPES = ["messageAdded", "labelAdded", "labelRemoved"]
UNITS = {"getProfile": 1, "labels": 1, "list": 5, "get": 5, "history": 2}
BATCH = 100  # Gmail's cap on calls in one batch request


class QuotaLimiter:
    """Keeps a mailbox under its per-user quota (units a minute) so that a backfill runs near
    the ceiling without provoking 429s: a token bucket refilled at ``margin`` of the rate and
    holding at most what the remaining margin allows, so no 60-second window can overspend."""

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


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, HttpError):
        value = exc.resp.get("retry-after")
        if value and str(value).isdigit():
            return float(value)
    return None


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, HttpError):
        status = exc.resp.status
        if status in (429, 500, 502, 503, 504):
            return True
        return status == 403 and (
            b"RateLimitExceeded" in exc.content or b"rateLimitExceeded" in exc.content
        )
    return isinstance(exc, (socket.error, httplib2.HttpLib2Error, TransportError, TimeoutError))


def _wait(state: tenacity.RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    after = _retry_after(exc) if exc else None
    return after if after is not None else min(1.0 * 2 ** (state.attempt_number - 1), 32.0)


class GmailAccount:
    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = self.settings = typed(spec.settings, GmailSettings)
        self.endpoint = s.api_endpoint or GOOGLE_ENDPOINT
        if spec.secret is None:
            raise AuthError(
                f"mailbox {spec.name!r}: no Google credentials stored; "
                f"run 'syncd mailbox reauth {spec.name}'"
            )
        secret = json.loads(spec.secret.reveal())
        if s.mode == "service_account":
            creds: Any = service_account.Credentials.from_service_account_info(
                secret, scopes=SCOPES
            ).with_subject(spec.user_email)
        else:
            creds = user_credentials.Credentials(
                None,
                refresh_token=secret["refresh_token"],
                client_id=s.client_id,
                client_secret=secret["client_secret"],
                token_uri=s.token_uri or "https://oauth2.googleapis.com/token",
                scopes=SCOPES,
            )
        self.http = google_auth_httplib2.AuthorizedHttp(
            creds, http=httplib2.Http(timeout=s.timeout)
        )
        self.service = build(
            "gmail",
            "v1",
            http=self.http,
            static_discovery=True,
            client_options={"api_endpoint": self.endpoint},
        )
        # Calendar's base must end in calendar/v3/ (PROVIDER-APIS.md)
        calendar_base = str(
            s.calendar_endpoint
            or self.endpoint.replace("gmail.googleapis.com", "www.googleapis.com") + "calendar/v3/"
        )
        self.calendar = build(
            "calendar",
            "v3",
            http=self.http,
            static_discovery=True,
            client_options={"api_endpoint": calendar_base},
        )
        self.limiter = QuotaLimiter(s.quota_units_per_minute)
        # label id -> (name, is a user label); listed on first use, again for an unknown id
        self._labels: dict[str, tuple[str, bool]] | None = None
        self._unresolved: set[str] = set()  # ids still unknown after a fresh listing

    def _list_labels(self) -> None:
        response = self.execute(
            UNITS["labels"], lambda: self.service.users().labels().list(userId="me")
        )
        labels: dict[str, tuple[str, bool]] = {}
        for label in response.get("labels", []):
            user = label.get("type") == "user"
            labels[str(label["id"])] = (str(label.get("name") or label["id"]), user)
        self._labels = labels

    def _label(self, label_id: str) -> tuple[str, bool]:
        if self._labels is None or (
            label_id not in self._labels and label_id not in self._unresolved
        ):
            self._list_labels()  # a label made since the last listing
            assert self._labels is not None
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

    def _where(self) -> str:
        return f"mailbox {self.spec.name!r}: Gmail"

    def execute(self, units: int, make: Callable[[], Any]) -> Any:
        """Run one API call within the quota, retrying 429/5xx/drops (honouring Retry-After)."""
        try:
            for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception(_transient),
                stop=tenacity.stop_after_attempt(self.settings.retries or 8),
                wait=_wait,
                reraise=True,
            ):
                with attempt:
                    self.limiter.take(units)
                    return make().execute()
        except RefreshError as exc:
            raise AuthError(
                f"{self._where()} refused the credentials ({exc.args[0] if exc.args else exc}); "
                f"run 'syncd mailbox reauth {self.spec.name}'"
            ) from None
        except HttpError as exc:
            if exc.resp.status in (401, 403):  # not a rate limit (those were retried)
                raise AuthError(
                    f"{self._where()}: access denied ({exc.resp.status}: "
                    f"{exc.reason or 'forbidden'}); check the granted scopes (gmail.readonly, "
                    f"calendar.events) and run 'syncd mailbox reauth {self.spec.name}'"
                ) from None
            raise
        except Exception as exc:
            if _transient(exc):
                raise ConnectorError(f"{self._where()}: {exc}; the next poll resumes") from exc
            raise
        raise AssertionError("unreachable")

    def _get_batch(self, ids: list[str]) -> tuple[dict[str, Any], list[str]]:
        """One batch request of messages.get format=raw: (replies by id, ids to ask again).
        A message deleted since it was listed (404) is simply absent."""
        users = self.service.users().messages()
        found: dict[str, Any] = {}
        again: list[str] = []
        errors: list[BaseException] = []

        def on_reply(request_id: str, response: Any, exc: BaseException | None) -> None:
            if exc is None:
                found[request_id] = response
            elif isinstance(exc, HttpError) and exc.resp.status == 404:
                pass
            elif _transient(exc):
                again.append(request_id)
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
        return found, again

    def fetch_raw(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """messages.get format=raw for up to 100 ids in one batch request; parts refused
        with 429/5xx are asked again after a backoff."""
        found: dict[str, dict[str, Any]] = {}
        pending = list(ids)
        for attempt in range(8):
            if not pending:
                return found
            replies, pending = self.execute(
                UNITS["get"] * len(pending), partial(_Call, self._get_batch, pending)
            )
            found.update(replies)
            if pending:
                time.sleep(min(2**attempt, 16))
        if pending:
            raise ConnectorError(
                f"{self._where()}: {len(pending)} messages kept failing; the next poll resumes"
            )
        return found


class _Call:
    """A deferred call with ``execute()``, so :meth:`GmailAccount.execute` can retry it."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def execute(self) -> Any:
        return self.fn(*self.args)


class GmailMail:
    name = "gmail:mail"

    def __init__(self, account: GmailAccount, spec: MailboxSpec) -> None:
        self.account = account
        self.spec = spec
        self.batch_size = max(BATCH, spec.batch_size // BATCH * BATCH)
        self.since = timedelta(days=typed(spec.settings, GmailSettings).since_days)

    def _items(self, ids: list[str]) -> Iterator[tuple[list[MailItem], list[Quarantined], int]]:
        """Read ``ids`` in order: (items, quarantined, how many of ``ids`` they cover), each
        time the raw bytes read reach ``limits.batch_bytes`` and once at the end (so at
        least once). A message over ``limits.message_bytes`` is quarantined unread, by the length
        of its ``raw`` before it is decoded. A batch request asks for as many messages as
        the batch bytes hold at the size of the largest of the previous request (at most
        100): Gmail's listing carries no sizes, and asking for them costs as much quota as
        the messages."""
        limits = self.spec.limits
        items: list[MailItem] = []
        quarantined: list[Quarantined] = []
        held = 0  # raw bytes read since the last yield
        start, per_request = 0, BATCH
        while start < len(ids):
            if held >= limits.batch_bytes:  # the batch holds enough: out before the next
                yield items, quarantined, start
                items, quarantined, held = [], [], 0
            chunk = ids[start : start + per_request]
            raw = self.account.fetch_raw(chunk)
            largest = 0
            for n, i in enumerate(chunk, start=start):
                if held >= limits.batch_bytes:  # likewise within a request's replies
                    yield items, quarantined, n
                    items, quarantined, held = [], [], 0
                m = raw.pop(i, None)  # let each reply go once it is read
                if m is None or NEVER_READ & set(m.get("labelIds", [])):
                    continue
                encoded = m.pop("raw", None)  # held once: decoded, it is let go
                length = len(encoded) * 3 // 4 if isinstance(encoded, str) else 0
                largest, held = max(largest, length), held + length
                over = _over_size(m, length, limits)
                if over is not None:
                    quarantined.append(Quarantined(i, over))
                    continue
                data: bytes | None = None
                try:  # no message can stop the mailbox: what cannot be read is quarantined
                    if not isinstance(encoded, str):
                        raise KeyError("raw")
                    data, encoded = _unbase64(encoded), None
                    when = datetime.fromtimestamp(int(m.get("internalDate", "0")) / 1000, UTC)
                    item = parse_message(data, i, when, limits=limits)
                except Exception as exc:
                    reason = str(exc) if isinstance(exc, UnreadableMessage) else _reason(exc)
                    quarantined.append(
                        Quarantined(i, reason, data, "rfc822" if data is not None else None)
                    )
                    continue
                items.append(
                    dataclasses.replace(
                        item,
                        provider_thread_id=m.get("threadId"),
                        labels=self.account.label_names(m.get("labelIds", [])),
                    )
                )
            start += len(chunk)
            # a request's replies are held at once, in base64 (4/3 of the message) about three
            # times over (the HTTP body, its parts, the JSON): as many as fit the batch bytes
            per_request = max(1, min(BATCH, limits.batch_bytes // max(4 * largest, 1)))
        yield items, quarantined, len(ids)

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state = json.loads(cursor.value) if cursor else {}
        users = self.account.service.users()
        if "h" not in state or state.get("backfill"):
            if "h" not in state:  # the history id comes first: what changes meanwhile is kept
                profile = self.account.execute(
                    UNITS["getProfile"], lambda: users.getProfile(userId="me")
                )
                state = {"h": profile["historyId"], "backfill": True, "page": None, "skip": 0}
            after = int((datetime.now(UTC) - self.since).timestamp())
            page, skip = state.get("page"), int(state.get("skip", 0))
            while True:
                listing = self.account.execute(
                    UNITS["list"],
                    partial(
                        users.messages().list,
                        userId="me",
                        q=f"after:{after}",
                        maxResults=500,
                        pageToken=page,
                    ),
                )
                ids = [m["id"] for m in listing.get("messages", [])]
                for start in range(skip, len(ids), self.batch_size):
                    chunk = ids[start : start + self.batch_size]
                    for items, quarantined, covered in self._items(chunk):
                        state = {**state, "page": page, "skip": start + covered}
                        yield Batch(tuple(items), Cursor(json.dumps(state)), tuple(quarantined))
                page, skip = listing.get("nextPageToken"), 0
                if not page:
                    break
            state = {"h": state["h"]}  # the backfill is complete: history from here on
            yield Batch((), Cursor(json.dumps(state)))
        yield from self._history(state["h"])

    def _to_read(self, record: dict[str, Any]) -> Iterator[str]:
        """The messages one history record asks to read (a record may change several
        messages in several ways [History in gmail.v1.json]): new ones, those taken out of
        Spam or Trash, and those given a label of the user's. Their labels are checked
        again when they are read (a message moved from Spam to Trash stays unread)."""
        for added in record.get("messagesAdded", []):
            yield str(added["message"]["id"])
        for removed in record.get("labelsRemoved", []):
            if RESTORED & set(removed.get("labelIds", [])):
                yield str(removed["message"]["id"])
        for labelled in record.get("labelsAdded", []):
            if any(self.account.is_user_label(i) for i in labelled.get("labelIds", [])):
                yield str(labelled["message"]["id"])

    def _history(self, start: str) -> Iterator[Batch[MailItem]]:
        users = self.account.service.users()
        page: str | None = None
        added: list[str] = []
        latest = start
        while True:
            try:
                response = self.account.execute(
                    UNITS["history"],
                    partial(
                        users.history().list,
                        userId="me",
                        startHistoryId=start,
                        historyTypes=HISTORY_TYPES,
                        maxResults=500,
                        pageToken=page,
                    ),
                )
            except HttpError as exc:
                if exc.resp.status == 404:
                    raise CursorExpired(f"Gmail history id {start} is too old") from None
                raise
            for record in response.get("history", []):
                added.extend(self._to_read(record))
            latest = response.get("historyId", latest)
            page = response.get("nextPageToken")
            if not page:
                break
        if latest == start and not added:
            return
        ids = list(dict.fromkeys(added))
        for begin in range(0, max(len(ids), 1), self.batch_size):
            chunk = ids[begin : begin + self.batch_size]
            for items, quarantined, covered in self._items(chunk):
                final = begin + covered >= len(ids)
                yield Batch(
                    tuple(items),
                    Cursor(json.dumps({"h": latest if final else start})),
                    tuple(quarantined),
                )


def _over_size(message: dict[str, Any], length: int, limits: LimitSettings) -> str | None:
    """Why a message is not read, when it is over ``limits.message_bytes``: by its raw
    length (before it is decoded), else by Gmail's ``sizeEstimate``."""
    try:
        size = length or int(message.get("sizeEstimate") or 0)
        check("message_bytes", size, limits.message_bytes, "the message is {size}")
    except OverLimit as exc:
        return str(exc)
    except (TypeError, ValueError):
        return None
    return None


def _unbase64(value: str) -> bytes:
    """Gmail's ``raw``: base64url, with or without its padding."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _reason(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


def _google_time(value: dict[str, Any]) -> datetime:
    if "dateTime" in value:
        return datetime.fromisoformat(value["dateTime"].replace("Z", "+00:00")).astimezone(UTC)
    return datetime.fromisoformat(value["date"]).replace(tzinfo=UTC)


def _event_meeting(event: dict[str, Any]) -> MeetingItem | None:
    """A Google Calendar event -> MeetingItem keyed by iCalUID (+ the occurrence)."""
    uid = event.get("iCalUID") or event.get("id", "")
    if "start" not in event or "end" not in event:
        return None
    rid = None
    if event.get("recurringEventId") and event.get("originalStartTime"):
        rid = _google_time(event["originalStartTime"]).strftime("%Y%m%dT%H%M%SZ")
    people: list[Participant] = []
    organizer = event.get("organizer", {})
    if organizer.get("email"):
        people.append(
            Participant(
                normalize_address(organizer["email"]), organizer.get("displayName", ""), "organizer"
            )
        )
    for attendee in event.get("attendees", []):
        address = normalize_address(attendee.get("email", ""))
        if address and all(p.address != address for p in people):
            people.append(Participant(address, attendee.get("displayName", ""), "attendee"))
    return MeetingItem(
        key=meeting_key(uid, rid),
        uid=uid,
        recurrence_id=rid,
        provider_id=event["id"],
        subject=" ".join(event.get("summary", "").split()),
        start=_google_time(event["start"]),
        end=_google_time(event["end"]),
        participants=tuple(people),
        cancelled=event.get("status") == "cancelled",
        private=event.get("visibility") in ("private", "confidential"),
        description=event.get("description", ""),
        location=event.get("location", ""),
    )


STRIP_EVERY = timedelta(hours=1)  # how far the window moves before its new edge is listed


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class _Read:
    """What one pass of the calendar found."""

    meetings: dict[str, MeetingItem] = dataclasses.field(default_factory=dict)  # by key
    states: list[TaskState] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    quarantined: list[Quarantined] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.meetings or self.states or self.removed or self.quarantined)


class GoogleCalendar:
    """The user's primary calendar, incrementally by sync token (410 -> read again), within
    [now - calendar_past_days, now + calendar_future_days] like the other calendars.

    The cursor holds the sync token and the stretch of time already listed (``from`` ..
    ``until``). A sync token returns changed events at any date, so the window is applied
    after reading; and an event that does not change never comes back by sync token, so the
    strips the window has moved onto since (``until`` .. now + future, and now - past ..
    ``from`` when the setting grew) are listed by time, without the token."""

    name = "gcal:primary"

    def __init__(self, account: GmailAccount, spec: MailboxSpec) -> None:
        self.account = account
        # the config's sync.calendar_*_days, unless the mailbox sets its own (mailbox_spec)
        self.past = timedelta(days=spec.settings.calendar_past_days)
        self.future = timedelta(days=spec.settings.calendar_future_days)
        self.batch_size = spec.batch_size

    def _list(
        self, found: _Read, window: tuple[datetime, datetime], tasks: bool, **query: str
    ) -> str | None:
        """Every page of one events.list; returns the nextSyncToken of the last page."""
        events = self.account.calendar.events()
        page: str | None = None
        while True:
            try:
                response = self.account.execute(
                    1,
                    partial(
                        events.list,
                        calendarId="primary",
                        singleEvents=True,
                        maxResults=2500,
                        pageToken=page,
                        **query,
                    ),
                )
            except HttpError as exc:
                if exc.resp.status == 410:
                    raise CursorExpired("Google Calendar sync token expired") from None
                raise
            for event in response.get("items", []):
                self._take(event, found, window, tasks)
            page = response.get("nextPageToken")
            if not page:
                token = response.get("nextSyncToken")
                return str(token) if token else None

    def _strip(
        self, found: _Read, window: tuple[datetime, datetime], since: datetime, until: datetime
    ) -> None:
        """The events of [since, until) by time (no sync token; timeMin must be before
        timeMax [events.list in calendar.v3.json]); syncd's own tasks come by sync token."""
        if since < until:
            self._list(found, window, False, timeMin=_rfc3339(since), timeMax=_rfc3339(until))

    @staticmethod
    def _take(
        event: dict[str, Any], found: _Read, window: tuple[datetime, datetime], tasks: bool
    ) -> None:
        task_uid = event.get("extendedProperties", {}).get("private", {}).get("syncdTask")
        if task_uid:  # syncd's own task: never a meeting
            if not tasks:
                return  # listed by time: its changes come by sync token
            if event.get("status") == "cancelled":
                found.states.append(TaskState(task_uid, "cancelled"))
            elif event.get("summary", "").lstrip().startswith(DONE_MARKS):
                found.states.append(TaskState(task_uid, "done"))  # the user ticked it off
            return
        if event.get("status") == "cancelled" and "start" not in event:
            # a tombstone carries its id only: a meeting gone, or one of our tasks
            found.removed.append(event.get("iCalUID") or event["id"])
            found.states.append(TaskState("", "cancelled", ref=event["id"]))
            return
        try:
            item = _event_meeting(event)
        except Exception as exc:  # one bad event never stops the calendar
            found.quarantined.append(Quarantined(str(event.get("id", "?")), _reason(exc)))
            return
        if item is None:
            return
        if not (item.end > window[0] and item.start < window[1]):
            if item.cancelled:  # cancelled out there: an activity logged earlier is too
                found.removed.append(item.provider_id)
            return
        found.meetings[item.key] = item

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        state = json.loads(cursor.value) if cursor else {}
        now = datetime.now(UTC)
        window = (now - self.past, now + self.future)
        found = _Read()
        token = state.get("token")
        if token:
            # timeMin/timeMax cannot go with a sync token (HTTP 400): filtered in _take
            new_token = self._list(found, window, True, syncToken=token)
            # a cursor from before the window was kept: it read everything from then on
            listed = [
                datetime.fromisoformat(state[k]) if k in state else edge
                for k, edge in (("from", window[0]), ("until", window[1]))
            ]
            if window[1] - listed[1] >= STRIP_EVERY:  # the window moved on
                self._strip(found, window, max(listed[1], window[0]), window[1])
                listed[1] = window[1]
            if listed[0] - window[0] >= STRIP_EVERY:  # calendar_past_days grew
                self._strip(found, window, window[0], min(listed[0], window[1]))
                listed[0] = window[0]
        else:
            new_token = self._list(found, window, True, timeMin=_rfc3339(window[0]))
            listed = list(window)
        new_state = {
            "token": new_token,
            "from": listed[0].isoformat(),
            "until": listed[1].isoformat(),
        }
        if token and new_state == state and not found:
            return
        meetings = list(found.meetings.values())
        for start in range(0, max(len(meetings), 1), self.batch_size):
            last = start + self.batch_size >= len(meetings)
            yield Batch(
                items=tuple(meetings[start : start + self.batch_size]),
                cursor=Cursor(json.dumps(new_state if last else state)),
                quarantined=tuple(found.quarantined) if last else (),
                removed=tuple(found.removed) if last else (),
                task_states=tuple(found.states) if last else (),
            )


def event_id(task_uid: str) -> str:
    """A Calendar event id chosen before the write (base32hex), so a retry cannot duplicate."""
    return (
        base64.b32hexencode(hashlib.sha256(task_uid.encode()).digest())
        .decode()
        .lower()
        .rstrip("=")[:40]
    )


class GoogleTaskWriter:
    """Follow-up tasks as short events on the user's calendar, stamped with the task's uid
    in a private extended property; an existing one (409 on insert) is patched."""

    def __init__(self, account: GmailAccount) -> None:
        self.account = account

    def put(self, task: TaskItem) -> str:
        events = self.account.calendar.events()
        due = task.due.astimezone(UTC)
        title = ("Done: " if task.status == "done" else "") + task.title
        body = {
            "summary": title,
            "description": task.description,
            "start": {"dateTime": due.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "end": {"dateTime": (due + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "transparency": "transparent",
            "status": "cancelled" if task.status == "cancelled" else "confirmed",
            "extendedProperties": {"private": {"syncdTask": task.uid}},
        }
        eid = event_id(task.uid)
        try:
            self.account.execute(
                1, partial(events.insert, calendarId="primary", body={**body, "id": eid})
            )
        except HttpError as exc:
            if exc.resp.status != 409:
                raise ConnectorError(f"cannot write task {task.uid}: {exc}") from exc
            self.account.execute(
                1, partial(events.patch, calendarId="primary", eventId=eid, body=body)
            )
        return eid


class GmailConnector:
    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        self.account = GmailAccount(spec)

    def mail_sources(self) -> list[MailSource]:
        return [GmailMail(self.account, self.spec)]

    def calendar_sources(self) -> list[CalendarSource]:
        return [GoogleCalendar(self.account, self.spec)]

    def task_writer(self) -> TaskWriter | None:
        return GoogleTaskWriter(self.account)

    def close(self) -> None:
        pass
