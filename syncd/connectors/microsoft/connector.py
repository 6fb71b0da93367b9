"""Microsoft 365 (msal + O365): Exchange Online mail, calendar and To Do through Microsoft Graph.

Settings of a ``kind = "microsoft"`` mailbox: ``mode`` (``app``: one app registration with
application permissions serves every mailbox of the tenant; ``device``: the user signs in
once with the device-code flow), ``tenant``, ``client_id``, ``authority`` (default
``https://login.microsoftonline.com``), ``graph_url`` (default
``https://graph.microsoft.com/``), ``ca_bundle`` (a PEM file of CAs to trust instead of the
system's), ``since_days`` (first sync window, default 90), ``tasks`` (``todo``, the default,
or ``events``), ``todo_list`` (default "CRM follow-ups"). The secret is the client secret,
or ``{"private_key", "public_certificate"}`` (JSON) for a certificate, or the msal token cache for
``device`` (the working copy lives encrypted in ``$SYNCD_HOME/tokens/``).

Sources: ``graph:inbox`` and ``graph:sentitems`` read by message delta (one delta link per
folder), ``graph:calendar`` by ``calendarView/delta`` over the configured window, and
``graph:todo`` reads back the follow-up tasks the user completed. A 410 raises
:class:`CursorExpired`. Every request asks for immutable ids and UTC times, and holds one of
the mailbox's four slots (Graph's per-mailbox concurrency limit; a ``$batch`` one per call);
429/503 and 5xx are retried honouring Retry-After, and dropped connections too. Message
delta reads what the body policy needs (``bodyPreview`` for ``snippet``, ``body`` as text for
``full``) and a message's sensitivity as PidTagSensitivity, expanded on the delta itself.

Pure parsers, usable on their own (``syncd quarantine retry``): :func:`mail_item`,
:func:`meeting_item` and :func:`item_from_raw` (the JSON an unreadable item is quarantined
with, format ``graph-message`` or ``graph-event``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import msal
import requests
import tenacity
from O365 import Account
from O365.connection import MSGraphProtocol
from O365.utils.token import BaseTokenBackend, MemoryTokenBackend

from syncd.config import LimitSettings
from syncd.connectors.base import (
    AuthError,
    CalendarSource,
    ConnectorError,
    CursorExpired,
    MailboxSpec,
    MailSource,
    Reread,
    RereadContext,
    TaskWriter,
    json_object,
)
from syncd.connectors.ical import meeting_key
from syncd.connectors.kind import typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.mime import bulk_signals, clean, identity, message_ids
from syncd.items import (
    DONE_MARKS,
    Batch,
    Cursor,
    MailItem,
    MeetingItem,
    Participant,
    ParticipantRole,
    Quarantined,
    TaskItem,
    TaskState,
)
from syncd.limits import check, limits_or_default, run_bounded
from syncd.matching.addresses import normalize_address
from syncd.secrets import Secret, SecretBox, token_cache_path

log = logging.getLogger("syncd.microsoft")
# O365 logs request headers (the bearer token) at debug level: keep it quiet whatever the
# root logger's level is
logging.getLogger("O365").setLevel(logging.CRITICAL)

AUTHORITY = "https://login.microsoftonline.com"
GRAPH = "https://graph.microsoft.com/"
APP_SCOPES = ["https://graph.microsoft.com/.default"]
USER_SCOPES = ["Mail.Read", "Calendars.ReadWrite", "Tasks.ReadWrite"]
APP_PERMISSIONS = "Mail.Read, Calendars.ReadWrite and Tasks.ReadWrite.All"
MAX_IN_FLIGHT = 4  # Graph's concurrency limit per app per mailbox
# $batch: a batch is either fully parallel or fully sequential (dependsOn chains), never both
# (Graph answers 400 otherwise). syncd sends fully parallel batches of at most MAX_IN_FLIGHT
# calls: each call is one of the mailbox's four slots, so one batch in flight fills them and
# no other request of this process overlaps it. Sequential batches of 20 would hold one slot
# but run one call at a time (a quarter of the throughput) and a single refused call (a 429,
# a task the user deleted) would fail every call behind it with 424.
MAX_PARALLEL_BATCH = MAX_IN_FLIGHT
FOLDERS = ("inbox", "sentitems")
PREFER = 'IdType="ImmutableId", outlook.timezone="UTC"'
# what every body policy reads of a message; ``snippet`` adds bodyPreview (text, up to 255
# characters), ``full`` adds body, asked for as text (Prefer: outlook.body-content-type)
MESSAGE_FIELDS = (
    "internetMessageId",
    "conversationId",
    "subject",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "sentDateTime",
    "receivedDateTime",
    "categories",
    "isDraft",
    "internetMessageHeaders",
)
BODY_FIELDS = {"metadata": (), "snippet": ("bodyPreview",), "full": ("body",)}
TEXT_BODY = 'outlook.body-content-type="text"'
# a v1.0 message has no ``sensitivity`` property (only an event has one): it is the MAPI
# property PidTagSensitivity, read by expanding it on the delta request itself (message
# delta supports $select, $top and $expand [message-delta.md])
PID_TAG_SENSITIVITY = "Integer 0x0036"
EXPAND = f"singleValueExtendedProperties($filter=id eq '{PID_TAG_SENSITIVITY}')"
# PidTagSensitivity: 0 normal, 1 personal, 2 private, 3 confidential; as for the RFC 2156
# Sensitivity header (mime.py), Private and Company-Confidential keep an item out of the CRM
PRIVATE_SENSITIVITY = frozenset({2, 3})
PRIVATE_HEADER = frozenset({"private", "company-confidential", "confidential"})
_TAG_RE = re.compile(r"<[^<>]*>")  # never [^>]+: quadratic on a body of "<<<<..."
MAX_RAW = 10 << 20  # the largest item JSON kept in the quarantine (the recorder keeps as much)
TASK_PROPERTY = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name syncdTask"
RETRYABLE = (429, 500, 502, 503, 504)
MAX_WAIT = 60.0  # the longest Retry-After honoured within a pass


class _Retry(Exception):
    """A response worth another try (429/503/5xx); carries its Retry-After."""

    def __init__(self, status: int, retry_after: float | None, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status, self.retry_after = status, retry_after


def _transient(exc: BaseException) -> bool:
    """Worth another try now: a refusal whose Retry-After is short, a dropped connection.
    A longer Retry-After ends the pass instead (the next poll resumes), so that a sync job
    never sleeps past the service watchdog."""
    if isinstance(exc, _Retry):
        return (exc.retry_after or 0.0) <= MAX_WAIT
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _wait(backoff: float, state: tenacity.RetryCallState) -> float:
    """Retry-After when the answer gave one, else exponential backoff from ``backoff``."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retry) and exc.retry_after is not None:
        return exc.retry_after
    return min(backoff * 2 ** (state.attempt_number - 1), 30.0)


def _retry_after(headers: Any) -> float | None:
    value = str((headers or {}).get("Retry-After") or (headers or {}).get("retry-after") or "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


def _error_text(body: Any) -> tuple[str, str]:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    if isinstance(error, dict):
        return str(error.get("code", "")), str(error.get("message", ""))
    return str(error), str(body.get("error_description", "")).split("\r\n")[0]


class _Slots:
    """At most MAX_IN_FLIGHT requests to one mailbox from this process, whatever asks; a
    ``$batch`` takes all four at once (its calls run four abreast)."""

    _ready = threading.Condition()
    _inflight: ClassVar[dict[str, int]] = {}
    peak: ClassVar[dict[str, int]] = {}

    @classmethod
    @contextmanager
    def hold(cls, mailbox: str, n: int = 1) -> Iterator[None]:
        with cls._ready:
            cls._ready.wait_for(lambda: cls._inflight.get(mailbox, 0) + n <= MAX_IN_FLIGHT)
            cls._inflight[mailbox] = cls._inflight.get(mailbox, 0) + n
            cls.peak[mailbox] = max(cls.peak.get(mailbox, 0), cls._inflight[mailbox])
        try:
            yield
        finally:
            with cls._ready:
                cls._inflight[mailbox] -= n
                cls._ready.notify_all()


class _Http(requests.Session):
    """msal's HTTP client: verifies with ``ca_bundle`` when one is set, passed with every
    request so that REQUESTS_CA_BUNDLE in the environment cannot override it."""

    def __init__(self, ca_bundle: str | None, timeout: float) -> None:
        super().__init__()
        self.ca_bundle, self.default_timeout = ca_bundle, timeout

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        if self.ca_bundle:
            kwargs.setdefault("verify", self.ca_bundle)
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)


class EncryptedCache(BaseTokenBackend):
    """The msal token cache of a device-code mailbox, kept in a file encrypted with syncd's
    key; written back whenever msal changes it (refresh tokens rotate)."""

    def __init__(self, path: Path, box: SecretBox, seed: str | None) -> None:
        super().__init__()
        self.path, self.box = path, box
        if path.exists():
            seed = box.decrypt(path.read_text(), f"token cache {path}").reveal()
        self._cache = self.deserialize(seed) if seed else {}

    def load_token(self) -> bool:
        return self.has_data

    def save_token(self, force: bool = False) -> bool:
        if self._has_state_changed or force:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(self.box.encrypt(Secret(self.serialize())))
            tmp.chmod(0o600)
            tmp.replace(self.path)
        return True


def _protocol(graph_url: str) -> MSGraphProtocol:
    """O365's Graph protocol at another base URL (its constructor ignores protocol_url)."""
    cls = type("SyncdGraphProtocol", (MSGraphProtocol,), {"_protocol_url": graph_url})
    protocol: MSGraphProtocol = cls(api_version="v1.0", default_resource="")
    return protocol


class GraphAccount:
    """One mailbox's authenticated session: msal for tokens, O365's connection for requests."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = typed(spec.settings, MicrosoftSettings)
        self.mode = s.mode
        self.user = spec.user_email
        if spec.secret is None:
            raise AuthError(
                f"mailbox {spec.name!r}: no Microsoft credentials stored; "
                f"run 'syncd mailbox reauth {spec.name}'"
            )
        self.graph = (s.graph_url or GRAPH).rstrip("/") + "/v1.0"
        self.ca_bundle = str(s.ca_bundle) if s.ca_bundle else None
        self.timeout = s.timeout
        self.retries = s.retries or 8
        self.backoff = s.backoff  # seconds before the first retry
        authority = f"{(s.authority or AUTHORITY).rstrip('/')}/{s.tenant}"
        http = _Http(self.ca_bundle, self.timeout)
        self.cache: BaseTokenBackend
        if self.mode == "device":
            home = spec.home or Path(".")
            self.cache = EncryptedCache(
                token_cache_path(home, spec.name), SecretBox(home), spec.secret.reveal()
            )
            self.msal: Any = msal.PublicClientApplication(
                s.client_id,
                authority=authority,
                instance_discovery=False,
                token_cache=self.cache,
                http_client=http,
            )
            credentials: Any = s.client_id
            flow = "public"
        else:
            self.cache = MemoryTokenBackend()
            secret = spec.secret.reveal()
            credential: Any = json.loads(secret) if secret.startswith("{") else secret
            try:
                self.msal = msal.ConfidentialClientApplication(
                    s.client_id,
                    client_credential=credential,
                    authority=authority,
                    instance_discovery=False,
                    token_cache=self.cache,
                    http_client=http,
                )
            except ValueError as exc:  # the authority's OpenID configuration is unreachable
                raise ConnectorError(f"{self._where()}: {exc}") from None
            credentials = (s.client_id, "")
            flow = "credentials"
        self.account = Account(
            credentials,
            auth_flow_type=flow,
            tenant_id=s.tenant,
            username=self.user if flow == "public" else None,
            protocol=_protocol(s.graph_url or GRAPH),
            token_backend=self.cache,
            requests_delay=0,  # pacing is ours: four slots and Retry-After
            request_retries=0,  # retries are ours (tenacity), so every 429 is seen and honoured
            raise_http_errors=False,
            timeout=self.timeout,
            default_headers={"Prefer": PREFER},
        )
        self.account.con._msal_client = self.msal
        self.con = self.account.con
        self.con.session = self.con.get_session(load_token=False)
        self._token: str | None = None
        self._renew_at = 0.0
        self.token_lock = threading.Lock()

    def _where(self) -> str:
        return f"mailbox {self.spec.name!r}: Microsoft Graph"

    def refresh(self, force: bool = False) -> None:
        """Put a valid access token on the session (msal serves it from its cache)."""
        with self.token_lock:
            if force:
                for token in list(self.cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                    self.cache.remove_at(token)
            try:
                if self.mode == "device":
                    accounts = (
                        self.msal.get_accounts(username=self.user) or self.msal.get_accounts()
                    )
                    result = (
                        self.msal.acquire_token_silent_with_error(USER_SCOPES, account=accounts[0])
                        if accounts
                        else None
                    ) or {"error": "no_account", "error_description": "no signed-in account"}
                else:
                    result = self.msal.acquire_token_for_client(scopes=APP_SCOPES)
            except (ValueError, requests.RequestException) as exc:
                raise ConnectorError(f"{self._where()}: the sign-in service failed: {exc}") from exc
            if "access_token" not in result:
                raise AuthError(self._auth_fix(result))
            if isinstance(self.cache, EncryptedCache):
                self.cache.save_token()
            # msal renews a token five minutes before it expires; ask it again by then
            self._renew_at = time.monotonic() + max(float(result.get("expires_in", 3600)) - 300, 0)
            if result["access_token"] != self._token:
                self._token = result["access_token"]
                self.con.update_session_auth_header(access_token=self._token)

    def _auth_fix(self, result: dict[str, Any]) -> str:
        error = str(result.get("error", ""))
        text = str(result.get("error_description", "")).split("\r\n")[0].split("\n")[0]
        name = self.spec.name
        if self.mode == "device":
            fix = f"the sign-in has expired or was revoked; run 'syncd mailbox reauth {name}'"
        elif error == "invalid_client":
            fix = (
                "the app's client secret or certificate was refused (deleted or expired?); "
                f"create a new one in Entra ID and run 'syncd mailbox reauth {name} "
                "--client-secret-file F' (or --certificate F)"
            )
        elif error == "unauthorized_client":
            fix = "check --tenant and --client-id: the app registration was not found"
        else:
            fix = f"run 'syncd mailbox reauth {name}'"
        return f"{self._where()} refused the credentials ({error}: {text}); {fix}"

    def _send(
        self, method: str, url: str, body: Any, headers: dict[str, str] | None, slots: int
    ) -> requests.Response:
        if self._token is None or time.monotonic() >= self._renew_at:
            self.refresh()
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if body is not None:
            kwargs["data"] = body
        if self.ca_bundle:
            kwargs["verify"] = self.ca_bundle
        with _Slots.hold(f"{self.graph}|{self.user}", slots):
            try:
                response: requests.Response = self.con.oauth_request(url, method, **kwargs)
            except RuntimeError as exc:  # O365's own refresh failed
                raise AuthError(
                    f"{self._where()}: {exc}; run 'syncd mailbox reauth {self.spec.name}'"
                ) from None
        return response

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        slots: int = 1,
        ok: Sequence[int] = (200, 201, 204),
    ) -> tuple[int, Any]:
        """One Graph call with retries; (status, JSON body). A status outside ``ok`` that is
        not retried raises: 401/403 :class:`AuthError`, 410 :class:`CursorExpired`."""
        refreshed = False
        try:
            for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception(_transient),
                stop=tenacity.stop_after_attempt(self.retries),
                wait=partial(_wait, self.backoff),
                reraise=True,
            ):
                with attempt:
                    response = self._send(method, url, body, headers, slots)
                    status = response.status_code
                    data = response.json() if response.content else {}
                    if status == 401 and not refreshed:  # the token expired early: once more
                        refreshed = True
                        self.refresh(force=True)
                        raise _Retry(status, 0, "access token refused; refreshed")
                    if status in RETRYABLE:
                        code, text = _error_text(data)
                        raise _Retry(status, _retry_after(response.headers), f"{code} {text}")
        except (_Retry, requests.RequestException) as exc:
            raise ConnectorError(f"{self._where()}: {exc}; the next poll resumes") from None
        if status in ok:
            return status, data
        code, text = _error_text(data)
        if status == 410:
            raise CursorExpired(f"Graph sync state expired ({code or 'resync required'})")
        if status == 404 and code == "ErrorInvalidUser":
            raise AuthError(
                f"{self._where()}: the tenant has no mailbox {self.user!r} ({text}); check the "
                f"user's address, then run 'syncd mailbox resume {self.spec.name}'"
            )
        if status in (401, 403):
            raise AuthError(
                f"{self._where()} refused access to {self.user} ({status} {code}: {text}); "
                + (
                    f"grant admin consent to the application permissions {APP_PERMISSIONS} "
                    f"in Entra ID, then run 'syncd mailbox resume {self.spec.name}'"
                    if self.mode == "app"
                    else f"run 'syncd mailbox reauth {self.spec.name}'"
                )
            )
        raise ConnectorError(
            f"{self._where()}: {method} {url.split('?')[0]} gave {status} {code}: {text}"
        )

    @property
    def root(self) -> str:
        """The mailbox's path: ``/me`` when signed in as the user (whose sign-in name may
        differ from the CRM address), ``/users/{address}`` for an app."""
        return "/me" if self.mode == "device" else f"/users/{self.user}"

    def user_url(self, path: str) -> str:
        return f"{self.graph}{self.root}{path}"

    def batch(self, calls: list[dict[str, Any]]) -> dict[str, tuple[int, Any]]:
        """Run any number of calls through ``$batch``: fully parallel batches (no
        ``dependsOn``) of at most MAX_PARALLEL_BATCH calls, each holding one of the mailbox's
        slots, so no more than four reach the mailbox at once (see MAX_PARALLEL_BATCH).
        Graph counts each call against the mailbox's limits: calls refused with 429/503/5xx
        (or 424) go again after the longest Retry-After, in smaller batches while the
        mailbox is throttled (as many as got through), larger again once all pass. Only
        rounds in which nothing got through count toward giving up.
        Returns {call id: (status, body)}."""
        results: dict[str, tuple[int, Any]] = {}
        pending = list(calls)
        size, stuck = MAX_PARALLEL_BATCH, 0
        while pending:
            chunk, pending = pending[:size], pending[size:]
            requests_ = []
            for call in chunk:
                # no dependsOn: the batch is fully parallel
                item = {**call, "headers": {"Prefer": PREFER, **call.get("headers", {})}}
                if call.get("body") is not None:
                    item["headers"]["Content-Type"] = "application/json"
                requests_.append(item)
            _, answer = self.request(
                "POST", f"{self.graph}/$batch", {"requests": requests_}, slots=len(chunk)
            )
            by_id = {r["id"]: r for r in answer.get("responses", [])}
            again: list[dict[str, Any]] = []
            wait = 0.0
            for call in chunk:
                reply = by_id.get(call["id"], {"status": 424})
                status = int(reply.get("status", 500))
                if status in (*RETRYABLE, 424):
                    again.append(call)
                    wait = max(wait, _retry_after(reply.get("headers")) or 0.0)
                else:
                    results[call["id"]] = (status, reply.get("body"))
            passed = len(chunk) - len(again)
            if not again:
                size = min(MAX_PARALLEL_BATCH, size * 2)
                continue
            stuck = 0 if passed else stuck + 1
            if stuck >= self.retries:
                raise ConnectorError(
                    f"{self._where()}: {len(again) + len(pending)} batched calls kept failing; "
                    "the next poll resumes"
                )
            size = max(1, passed)
            pending = again + pending
            if wait > MAX_WAIT:
                raise ConnectorError(
                    f"{self._where()}: throttled (Retry-After {wait:.0f} s); the next poll resumes"
                )
            time.sleep(wait or min(self.backoff * 2 ** max(stuck - 1, 0), 30.0))
        return results


# --- mail -------------------------------------------------------------------------------------


def _participants(message: dict[str, Any]) -> list[Participant]:
    people: list[Participant] = []
    seen: set[tuple[str, str]] = set()
    fields: tuple[tuple[str, ParticipantRole], ...] = (
        ("from", "from"),
        ("toRecipients", "to"),
        ("ccRecipients", "cc"),
        ("bccRecipients", "bcc"),
    )
    for key, role in fields:
        value = message.get(key) or []
        for entry in [value] if isinstance(value, dict) else value:
            address = normalize_address(
                clean(str(entry.get("emailAddress", {}).get("address", "")))
            )
            if address and (address, role) not in seen:
                seen.add((address, role))
                name = clean(str(entry.get("emailAddress", {}).get("name") or ""))
                people.append(Participant(address, "" if name == address else name, role))
    return people


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _sensitivity(message: dict[str, Any]) -> int | None:
    """PidTagSensitivity from the expanded single-value extended properties (Graph echoes
    the id normalised, e.g. ``Integer 0x36``; the value is a string)."""
    for prop in message.get("singleValueExtendedProperties") or []:
        kind, _, tag = str(prop.get("id", "")).strip().partition(" ")
        try:
            if kind.lower() == "integer" and int(tag.strip(), 16) == 0x36:
                return int(str(prop.get("value", "")).strip())
        except ValueError:
            continue
    return None


def _headers(message: dict[str, Any]) -> dict[str, str]:
    """Internet headers (present only on mail that came from outside), lower-cased names,
    first value of each."""
    headers: dict[str, str] = {}
    for header in message.get("internetMessageHeaders") or []:
        headers.setdefault(str(header.get("name", "")).lower(), clean(str(header.get("value", ""))))
    return headers


def is_private(message: dict[str, Any]) -> bool:
    """A message marked private or confidential, by PidTagSensitivity (Outlook's setting) or
    by the RFC 2156 ``Sensitivity`` header (mail from outside), as mime.py reads it. Never
    raises: it decides whether anything of an unreadable message may be kept."""
    try:
        if _sensitivity(message) in PRIVATE_SENSITIVITY:
            return True
        value = _headers(message).get("sensitivity", "")
        return " ".join(value.split()).lower() in PRIVATE_HEADER
    except (AttributeError, TypeError, ValueError):
        return False


def _mail_item(message: dict[str, Any], body_policy: str) -> MailItem:
    headers = _headers(message)
    people = _participants(message)
    if not people:
        raise ValueError("no From, To or Cc address that can be read")
    subject = " ".join(clean(str(message.get("subject") or "")).split())
    sent_at = _when(message.get("sentDateTime")) or _when(message.get("receivedDateTime"))
    if sent_at is None:
        raise ValueError(f"no usable date (sentDateTime {message.get('sentDateTime')!r})")
    ids = message_ids(message.get("internetMessageId") or headers.get("message-id"))
    message_id = ids[0] if ids else None
    in_reply_to = message_ids(headers.get("in-reply-to"))
    references = message_ids(headers.get("references"))
    key, thread_key, related = identity(
        message_id, in_reply_to, references, people, sent_at.isoformat(), subject
    )
    # the text the policy asked for goes into MailItem.body, as the MIME connectors do: the
    # matcher looks for [OPP-n] tags in it and the recorder stores its snippet (and, for
    # ``full``, the text itself); a snippet is all the policy allows, and all that was read
    if body_policy == "full":
        body = message.get("body") or {}
        text = clean(str(body.get("content") or ""))
        if str(body.get("contentType", "text")).lower() == "html":  # a server ignoring Prefer
            text = _TAG_RE.sub(" ", text)
    elif body_policy == "snippet":
        text = clean(str(message.get("bodyPreview") or ""))
    else:
        text = ""
    return MailItem(
        key=key,
        provider_id=str(message["id"]),
        message_id=message_id,
        subject=subject,
        sent_at=sent_at.astimezone(UTC),
        participants=tuple(people),
        thread_key=thread_key,
        related_keys=related,
        provider_thread_id=message.get("conversationId"),
        body=text,
        **bulk_signals(headers),
        private=is_private(message),
        labels=tuple(str(c) for c in message.get("categories") or ()),
    )


def json_size(value: Any, cap: int) -> int:
    """About the size of ``value`` written as JSON (characters, not bytes), counted only
    until it passes ``cap``: a walk of the parsed resource, never a copy of it."""
    total, stack = 0, [value]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + sum(len(str(k)) + 4 for k in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 8
    return total


def check_resource(resource: dict[str, Any], limits: LimitSettings, what: str) -> None:
    """The limits a Graph resource is held to before it is read: its size as JSON
    (``message_bytes``) and its number of internet headers (``headers``)."""
    check(
        "message_bytes",
        json_size(resource, limits.message_bytes),
        limits.message_bytes,
        f"the {what} is over {{size}} as JSON",
    )
    headers = resource.get("internetMessageHeaders")
    if isinstance(headers, list):
        check("headers", len(headers), limits.headers, f"the {what} has {{n}} header fields")


def mail_item(
    message: dict[str, Any],
    body_policy: str = "snippet",
    *,
    limits: LimitSettings | None = None,
) -> MailItem:
    """A Graph message resource (as message delta returns it) -> :class:`MailItem`. Pure:
    ``body_policy`` (metadata, snippet, full) says which text goes into the item. Internet
    headers add threading, bulk and sensitivity signals; ``conversationId`` is the
    provider's thread key. Raises ValueError (only) when nothing can be logged, and
    :class:`syncd.limits.OverLimit` (a ValueError) when it is over ``limits`` (None: the
    defaults) or its reading takes over ``parse_seconds``."""
    lim = limits_or_default(limits)
    try:
        check_resource(message, lim, "message")
        return run_bounded(lim.parse_seconds, _mail_item, message, body_policy)
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a readable Graph message ({exc.__class__.__name__}: {exc})") from exc


def quarantined(resource: Any, reason: str, format: str) -> Quarantined:
    """An item that could not be read, with its JSON kept (``format`` graph-message or
    graph-event) so that ``syncd quarantine retry`` can parse it again; a private one, or
    one too large, is kept with its reason only."""
    if not isinstance(resource, dict):
        resource = {"value": resource}
    provider_id = str(resource.get("id", "?"))
    if is_private(resource) if format == "graph-message" else _event_private(resource):
        return Quarantined(provider_id, f"{reason} (marked private: its content is not kept)")
    raw = json.dumps(resource, ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_RAW:
        return Quarantined(provider_id, f"{reason} (too large to keep: {len(raw)} bytes)")
    return Quarantined(provider_id, reason, raw=raw, format=format)


def item_from_raw(raw: bytes, format: str, body_policy: str = "snippet") -> MailItem | MeetingItem:
    """Parse a quarantined item again (``syncd quarantine retry``): ``raw`` is the JSON kept
    by :func:`quarantined`, ``format`` graph-message or graph-event. Raises ValueError."""
    try:
        resource = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(resource, dict):
        raise ValueError("not a Graph resource (a JSON object)")
    if format == "graph-message":
        return mail_item(resource, body_policy)
    if format == "graph-event":
        return meeting_item(resource)
    raise ValueError(f"unknown format {format!r} (graph-message or graph-event)")


def delta_query(body_policy: str) -> dict[str, str]:
    """The query of a first message delta request for ``body_policy``."""
    fields = (*MESSAGE_FIELDS, *BODY_FIELDS.get(body_policy, BODY_FIELDS["snippet"]))
    return {"$select": ",".join(fields), "$expand": EXPAND}


SELECT = delta_query("snippet")["$select"]  # the default policy's $select (bench/)


class GraphMail:
    """One mail folder by message delta; the cursor is the next or delta link, and which
    query made it (a changed body policy, or an older syncd's query, reads the folder again:
    the links carry the query they were made with)."""

    def __init__(self, account: GraphAccount, spec: MailboxSpec, folder: str) -> None:
        self.account, self.spec, self.folder = account, spec, folder
        self.name = f"graph:{folder}"
        self.page = typed(spec.settings, MicrosoftSettings).page_size or max(
            10, min(spec.batch_size, 1000)
        )
        self.since = timedelta(days=typed(spec.settings, MicrosoftSettings).since_days)
        self.policy = spec.body_policy
        self.query = delta_query(self.policy)
        self.query_id = hashlib.sha256(urlencode(self.query).encode()).hexdigest()[:16]

    def _first_link(self) -> str:
        # no $filter on receivedDateTime: Graph caps a filtered delta at 5,000 messages; the
        # window is applied here instead, so a busy mailbox loses nothing of it
        return self.account.user_url(
            f"/mailFolders/{self.folder}/messages/delta?{urlencode(self.query)}"
        )

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state = json.loads(cursor.value) if cursor else {}
        if state.get("query") != self.query_id:
            state = {}
        link = state.get("link") or self._first_link()
        floor = datetime.now(UTC) - self.since if not state.get("synced") else None
        synced = bool(state.get("synced"))
        prefer = [f"odata.maxpagesize={self.page}"]
        if self.policy == "full":
            prefer.append(TEXT_BODY)  # a header: not carried in the links, sent every time
        headers = {"Prefer": ", ".join(prefer)}
        # the next page is fetched while this one is parsed and recorded (two of the
        # mailbox's four slots at most): the network wait and the CRM's work overlap
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph-prefetch") as pool:
            ahead = pool.submit(self.account.request, "GET", link, headers=headers)
            try:
                yield from self._pages(ahead, pool, headers, floor, synced)
            finally:
                ahead.cancel()

    def _pages(
        self,
        ahead: Future[tuple[int, Any]],
        pool: ThreadPoolExecutor,
        headers: dict[str, str],
        floor: datetime | None,
        synced: bool,
    ) -> Iterator[Batch[MailItem]]:
        while True:
            _, page = ahead.result()
            following = page.get("@odata.nextLink")
            if following:
                ahead = pool.submit(self.account.request, "GET", following, headers=headers)
            items: list[MailItem] = []
            held: list[Quarantined] = []
            for message in page.get("value", []):
                if not isinstance(message, dict):
                    held.append(quarantined(message, "not a Graph message", "graph-message"))
                    continue
                if "@removed" in message or message.get("isDraft"):
                    continue  # a move or a deletion: what was logged stays logged
                try:
                    item = mail_item(message, self.policy, limits=self.spec.limits)
                except ValueError as exc:
                    held.append(quarantined(message, str(exc), "graph-message"))
                    continue
                if floor is not None and item.sent_at < floor:
                    continue
                items.append(item)
            final = page.get("@odata.deltaLink")
            if following:
                new_state = {"link": following, "synced": synced, "query": self.query_id}
            elif final:
                new_state = {"link": final, "synced": True, "query": self.query_id}
            else:
                raise ConnectorError(f"{self.account._where()}: a delta page without a link")
            if items or held or not (synced and final and not page.get("value")):
                yield Batch(tuple(items), Cursor(json.dumps(new_state)), tuple(held))
            if not following:
                return


# --- calendar ---------------------------------------------------------------------------------

WINDOWS_ZONES = {
    "UTC": "UTC",
    "Coordinated Universal Time": "UTC",
    "Pacific Standard Time": "America/Los_Angeles",
    "Mountain Standard Time": "America/Denver",
    "Central Standard Time": "America/Chicago",
    "Eastern Standard Time": "America/New_York",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "Tokyo Standard Time": "Asia/Tokyo",
    "India Standard Time": "Asia/Kolkata",
    "AUS Eastern Standard Time": "Australia/Sydney",
}


def graph_time(value: dict[str, Any]) -> datetime:
    """A Graph dateTimeTimeZone (we ask for UTC, but a zone name is honoured) -> UTC."""
    zone_name = str(value.get("timeZone") or "UTC")
    try:
        zone = ZoneInfo(WINDOWS_ZONES.get(zone_name, zone_name))
    except (KeyError, ValueError):
        raise ValueError(f"unknown time zone {zone_name!r}") from None
    stamp = datetime.fromisoformat(str(value["dateTime"])[:26].rstrip("Z"))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=zone)).astimezone(UTC)


def _event_private(event: dict[str, Any]) -> bool:
    """An event's own ``sensitivity`` (private or confidential keeps it out of the CRM)."""
    return str(event.get("sensitivity", "")).lower() in ("private", "confidential")


def meeting_item(event: dict[str, Any], *, limits: LimitSettings | None = None) -> MeetingItem:
    """A Graph event resource (as calendarView delta returns it) -> :class:`MeetingItem`.
    Pure. Raises ValueError (only) when it cannot be read, or is over ``limits``
    (:class:`syncd.limits.OverLimit`; Graph expands recurring events itself, so only the
    size of one event and the time bound apply)."""
    lim = limits_or_default(limits)
    try:
        check_resource(event, lim, "event")
        return run_bounded(lim.parse_seconds, _meeting_item, event)
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a readable Graph event ({exc.__class__.__name__}: {exc})") from exc


def _meeting_item(event: dict[str, Any]) -> MeetingItem:
    uid = str(event.get("iCalUId") or event["id"])
    start, end = graph_time(event["start"]), graph_time(event["end"])
    rid = (
        start.strftime("%Y%m%dT%H%M%SZ")
        if event.get("type") in ("occurrence", "exception")
        else None
    )
    people: list[Participant] = []
    organizer = event.get("organizer", {}).get("emailAddress", {})
    if organizer.get("address"):
        people.append(
            Participant(
                normalize_address(organizer["address"]), organizer.get("name", ""), "organizer"
            )
        )
    for attendee in event.get("attendees") or []:
        info = attendee.get("emailAddress", {})
        address = normalize_address(str(info.get("address", "")))
        if address and all(p.address != address for p in people):
            people.append(Participant(address, str(info.get("name", "")), "attendee"))
    return MeetingItem(
        key=meeting_key(uid, rid),
        uid=uid,
        recurrence_id=rid,
        provider_id=str(event["id"]),
        subject=" ".join(str(event.get("subject") or "").split()),
        start=start,
        end=end,
        participants=tuple(people),
        cancelled=bool(event.get("isCancelled")),
        private=_event_private(event),
        description=str(event.get("bodyPreview") or ""),
        location=str((event.get("location") or {}).get("displayName") or ""),
        labels=tuple(str(c) for c in event.get("categories") or ()),
    )


class GraphCalendar:
    """The primary calendar by calendarView delta over [now - past, now + future]."""

    name = "graph:calendar"

    def __init__(self, account: GraphAccount, spec: MailboxSpec) -> None:
        self.account = account
        self.limits = spec.limits
        self.past = timedelta(days=spec.settings.calendar_past_days)
        self.future = timedelta(days=spec.settings.calendar_future_days)
        self.batch_size = spec.batch_size

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        state = json.loads(cursor.value) if cursor else {}
        link = state.get("link")
        if not link:
            now = datetime.now(UTC)
            window = {
                "startDateTime": (now - self.past).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "endDateTime": (now + self.future).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            link = self.account.user_url(f"/calendarView/delta?{urlencode(window)}")
        headers = {"Prefer": f"odata.maxpagesize={min(self.batch_size, 1000)}"}
        while True:
            _, page = self.account.request("GET", link, headers=headers)
            meetings: list[MeetingItem] = []
            states: list[TaskState] = []
            removed: list[str] = []
            held: list[Quarantined] = []
            for event in page.get("value", []):
                if not isinstance(event, dict):
                    held.append(quarantined(event, "not a Graph event", "graph-event"))
                    continue
                # a removal brings only the id: a meeting gone, or one of our tasks
                if "@removed" in event:
                    if event.get("id"):
                        removed.append(str(event["id"]))
                        states.append(TaskState("", "cancelled", ref=str(event["id"])))
                    continue
                transaction = str(event.get("transactionId") or "")
                if transaction.startswith("syncd-"):  # syncd's own task: never a meeting
                    if event.get("isCancelled"):
                        states.append(TaskState(transaction, "cancelled"))
                    elif str(event.get("subject") or "").lstrip().startswith(DONE_MARKS):
                        states.append(TaskState(transaction, "done"))
                    continue
                try:
                    meetings.append(meeting_item(event, limits=self.limits))
                except ValueError as exc:
                    held.append(quarantined(event, str(exc), "graph-event"))
            following = page.get("@odata.nextLink")
            final = page.get("@odata.deltaLink")
            if not (following or final):
                raise ConnectorError(f"{self.account._where()}: a delta page without a link")
            changed = meetings or states or removed or held
            if changed or following or not state.get("link"):
                yield Batch(
                    tuple(meetings),
                    Cursor(json.dumps({"link": following or final})),
                    tuple(held),
                    removed=tuple(removed),
                    task_states=tuple(states),
                )
            if not following:
                return
            link = following


# --- follow-up tasks --------------------------------------------------------------------------


class TodoTasks:
    """Follow-up tasks in a To Do list of the user's, each linked to its task uid (a linked
    resource with ``externalId``), so a retry or a second pass updates instead of adding.
    As a source (``graph:todo``) it reads back the tasks the user completed."""

    name = "graph:todo"

    def __init__(self, account: GraphAccount, spec: MailboxSpec) -> None:
        self.account = account
        self.list_name = typed(spec.settings, MicrosoftSettings).todo_list
        self._list_id: str | None = None
        self._known: dict[str, dict[str, Any]] | None = None

    def find_list(self, create: bool) -> str | None:
        """The id of syncd's To Do list (made on first write, never just to read)."""
        if self._list_id is None:
            _, lists = self.account.request("GET", self.account.user_url("/todo/lists"))
            found = next(
                (x["id"] for x in lists.get("value", []) if x.get("displayName") == self.list_name),
                None,
            )
            if found is None and create:
                _, made = self.account.request(
                    "POST", self.account.user_url("/todo/lists"), {"displayName": self.list_name}
                )
                found = made["id"]
            self._list_id = str(found) if found else None
        return self._list_id

    def list_id(self) -> str:
        found = self.find_list(create=True)
        assert found is not None
        return found

    def known(self) -> dict[str, dict[str, Any]]:
        """syncd's tasks in the list, by task uid."""
        if self._known is None:
            found: dict[str, dict[str, Any]] = {}
            first = "/todo/lists/{}/tasks?$expand=linkedResources&$top=100"
            link: str | None = self.account.user_url(first.format(self.list_id()))
            while link:
                status, page = self.account.request("GET", link, ok=(200, 404))
                if status == 404:  # the user deleted the list: start a new one
                    self._list_id, found = None, {}
                    link = self.account.user_url(first.format(self.list_id()))
                    continue
                for task in page.get("value", []):
                    for resource in task.get("linkedResources") or []:
                        if resource.get("applicationName") == "syncd" and resource.get(
                            "externalId"
                        ):
                            found[str(resource["externalId"])] = task
                link = page.get("@odata.nextLink")
            self._known = found
        return self._known

    def _call(self, task: TaskItem) -> dict[str, Any] | None:
        """The Graph call that brings To Do in line with ``task`` (None: nothing to do)."""
        base = f"{self.account.root}/todo/lists/{self.list_id()}/tasks"
        existing = self.known().get(task.uid)
        due = task.due.astimezone(UTC)
        fields: dict[str, Any] = {
            "title": task.title,
            "body": {"content": task.description, "contentType": "text"},
            "dueDateTime": {
                "dateTime": due.strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                "timeZone": "UTC",
            },
            "status": "completed" if task.status != "open" else "notStarted",
            "categories": list(task.categories),
        }
        if existing is None:
            if task.status != "open":
                return None
            fields["linkedResources"] = [
                {"applicationName": "syncd", "externalId": task.uid, "displayName": "CRM follow-up"}
            ]
            return {"id": task.uid, "method": "POST", "url": base, "body": fields}
        if task.status == "cancelled":
            return {"id": task.uid, "method": "DELETE", "url": f"{base}/{existing['id']}"}
        if existing.get("status") == "completed" and task.status == "open":
            fields["status"] = "completed"  # the user's tick wins until the CRM reads it back
        return {
            "id": task.uid,
            "method": "PATCH",
            "url": f"{base}/{existing['id']}",
            "body": fields,
        }

    def put(self, task: TaskItem) -> str:
        return self.put_many([task])[0]

    def put_many(self, tasks: Sequence[TaskItem]) -> list[str]:
        """Write several tasks in as few requests as ``$batch`` allows; returns their ids."""
        calls = [c for c in (self._call(t) for t in tasks) if c is not None]
        results = self.account.batch(calls) if calls else {}
        ids: list[str] = []
        for task in tasks:
            status, body = results.get(task.uid, (200, None))
            if status == 404:  # the user deleted it meanwhile: nothing left to update
                self.known().pop(task.uid, None)
            elif status >= 400:
                code, text = _error_text(body or {})
                raise ConnectorError(
                    f"cannot write task {task.uid} to To Do: {status} {code} {text}"
                )
            if isinstance(body, dict) and body.get("id"):
                self.known()[task.uid] = body
            ids.append(str(self.known().get(task.uid, {}).get("id", "")))
        return ids

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MeetingItem]]:
        """The tasks the user completed; the cursor keeps the list's id (one request a poll)
        and a digest of what was reported, so an unchanged list reports nothing."""
        state = json.loads(cursor.value) if cursor else {}
        self._list_id = self._list_id or state.get("list")
        self._known = None
        if self.find_list(create=False) is None:
            return  # nothing written yet
        done = sorted(uid for uid, t in self.known().items() if t.get("status") == "completed")
        digest = hashlib.sha256("\n".join(done).encode()).hexdigest()[:32]
        if state == {"list": self._list_id, "done": digest}:
            return
        yield Batch(
            (),
            Cursor(json.dumps({"list": self._list_id, "done": digest})),
            task_states=tuple(TaskState(uid, "done") for uid in done),
        )


class EventTasks:
    """Follow-up tasks as short free events: ``transactionId`` is the task uid (a retried POST
    returns the first event) and a single-value extended property carries it too."""

    def __init__(self, account: GraphAccount) -> None:
        self.account = account

    def put(self, task: TaskItem) -> str:
        due = task.due.astimezone(UTC)
        title = ("Done: " if task.status == "done" else "") + task.title
        fields = {
            "subject": title,
            "body": {"contentType": "text", "content": task.description},
            "start": {"dateTime": due.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (due + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
            "showAs": "free",
            "isReminderOn": task.status == "open",
            "categories": list(task.categories),
        }
        _, event = self.account.request(
            "POST",
            self.account.user_url("/events"),
            {
                **fields,
                # the task's uid (syncd-…): a retried POST returns the event made before
                "transactionId": task.uid,
                "singleValueExtendedProperties": [{"id": TASK_PROPERTY, "value": task.uid}],
            },
        )
        url = self.account.user_url(f"/events/{event['id']}")
        if task.status == "cancelled":
            self.account.request("DELETE", url, ok=(204, 404))
        elif event.get("subject") != title or event.get("isReminderOn") != fields["isReminderOn"]:
            self.account.request("PATCH", url, fields)
        return str(event["id"])


class MicrosoftConnector:
    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        self.account = GraphAccount(spec)
        self.mode = typed(spec.settings, MicrosoftSettings).tasks
        self.todo = TodoTasks(self.account, spec) if self.mode == "todo" else None

    def mail_sources(self) -> list[MailSource]:
        return [GraphMail(self.account, self.spec, folder) for folder in FOLDERS]

    def calendar_sources(self) -> list[CalendarSource]:
        sources: list[CalendarSource] = [GraphCalendar(self.account, self.spec)]
        if self.todo is not None:
            sources.append(self.todo)
        return sources

    def task_writer(self) -> TaskWriter | None:
        return self.todo if self.todo is not None else EventTasks(self.account)

    def close(self) -> None:
        self.account.con.session.close()


def reread_message(data: bytes, ctx: RereadContext) -> Reread:
    """The ``graph-message`` re-parser: a kept Graph message resource read again."""
    message = json_object(data, "Graph message")
    if "@removed" in message or message.get("isDraft"):
        return Reread(())  # as the connector: a deletion or a draft is never logged
    return Reread((mail_item(message, ctx.body_policy, limits=ctx.limits),))


def reread_event(data: bytes, ctx: RereadContext) -> Reread:
    """The ``graph-event`` re-parser: a kept Graph event resource read again."""
    event = json_object(data, "Graph event")
    if "@removed" in event or str(event.get("transactionId") or "").startswith("syncd-"):
        return Reread(())  # as the connector: a removal or syncd's own task is no meeting
    return Reread((meeting_item(event, limits=ctx.limits),))
