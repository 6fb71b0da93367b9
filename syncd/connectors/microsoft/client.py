"""The session with Microsoft Graph: sign-in tokens (msal), requests (O365's connection), the
mailbox's four slots, retries, and ``$batch``.

:class:`GraphClient` is one mailbox's session. ``mode = "app"``: one app registration with
application permissions serves every mailbox of the tenant, signed in with its client
secret or ``{"private_key", "public_certificate"}`` (JSON) for a certificate; ``mode =
"device"``: the user signed in once with the device-code flow, the secret is msal's token
cache (the working copy lives encrypted in ``$SYNCD_HOME/tokens/``, :class:`EncryptedCache`).

Every request asks for immutable ids and UTC times, and holds one of the mailbox's four
slots (:class:`_Slots`, Graph's per-mailbox concurrency limit; a ``$batch`` one per call).
429 and 5xx are retried honouring Retry-After, and dropped connections too, by the shared
policy (:mod:`syncd.connectors.retry`): a Retry-After over a minute ends the pass instead.
A 410 raises :class:`CursorExpired`; refused credentials :class:`AuthError` with the fix.
:meth:`GraphClient.download` reads a resource's raw content (a message's MIME, ``$value``)
the same way, never more of it than its cap.

Over 400 lines: the session is one object whose parts (tokens, slots, retries, ``$batch``)
share its state; the small helpers beside it (``_Http``, :class:`EncryptedCache`, the O365
protocol) are what it is built from and are used nowhere else but sign-in.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msal
import requests
from O365 import Account
from O365.connection import MSGraphProtocol
from O365.utils.token import BaseTokenBackend, MemoryTokenBackend

from syncd.batching import chunked
from syncd.connectors.base import AuthError, ConnectorError, CursorExpired, MailboxSpec, refused
from syncd.connectors.kind import typed
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.parse import error_text
from syncd.connectors.retry import MAX_WAIT, RETRYABLE_STATUS, backoff, header_retry_after, retrying
from syncd.secrets import Secret, SecretBox, token_cache_path

# O365 logs request headers (the bearer token) at debug level: keep it quiet whatever the
# root logger's level is
logging.getLogger("O365").setLevel(logging.CRITICAL)

AUTHORITY = "https://login.microsoftonline.com"
GRAPH = "https://graph.microsoft.com/"
APP_SCOPES = ["https://graph.microsoft.com/.default"]
USER_SCOPES = ["Mail.Read", "Calendars.ReadWrite", "Tasks.ReadWrite"]
APP_PERMISSIONS = (
    "Mail.Read, Calendars.ReadWrite and Tasks.ReadWrite.All (and Contacts.Read for the "
    "address book)"
)
# Graph's concurrency limit per app per mailbox for the Outlook service (mail, calendars,
# To Do): 4 requests at once, the fifth gets 429 MailboxConcurrency ("Microsoft Graph
# service-specific throttling limits", Outlook service limits,
# learn.microsoft.com/graph/throttling-limits#outlook-service-limits). _Slots holds it for
# every request of this process, the prefetch thread's and a $batch's calls included.
MAX_IN_FLIGHT = 4
# $batch: a batch is either fully parallel or fully sequential (dependsOn chains), never both
# (Graph answers 400 otherwise). syncd sends fully parallel batches of at most MAX_IN_FLIGHT
# calls: each call is one of the mailbox's four slots, so one batch in flight fills them and
# no other request of this process overlaps it. Sequential batches of 20 would hold one slot
# but run one call at a time (a quarter of the throughput) and a single refused call (a 429,
# a task the user deleted) would fail every call behind it with 424.
MAX_PARALLEL_BATCH = MAX_IN_FLIGHT
PREFER = 'IdType="ImmutableId", outlook.timezone="UTC"'
BACKOFF_CAP = 30.0  # seconds: the longest wait between two tries without a Retry-After
BATCH_AGAIN = frozenset({*RETRYABLE_STATUS, 424})  # a batched call worth sending again


class _Retry(Exception):
    """A response worth another try (429/5xx, or a 401 after a fresh token); carries its
    Retry-After."""

    def __init__(self, status: int, retry_after: float | None, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status, self.retry_after = status, retry_after


class TooLarge(Exception):
    """A download over its cap, left unread: ``size`` is its Content-Length (``whole``), or
    the bytes read when the cap was passed (it is larger still)."""

    def __init__(self, size: int, whole: bool) -> None:
        super().__init__(f"{size} bytes{'' if whole else ' or more'}")
        self.size, self.whole = size, whole


class ItemRefused(ConnectorError):
    """Graph refused a call about one item for good (its id unknown, 404 ErrorItemNotFound;
    a 400): that item cannot be read, and the pass goes on without it."""


def _transient(exc: BaseException) -> bool:
    # a body cut short (ChunkedEncodingError) is a dropped connection too
    return isinstance(
        exc,
        (
            _Retry,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ),
    )


def _hint(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, _Retry) else None


def _json_or_empty(response: requests.Response) -> Any:
    """The JSON body of an answer ({} without one, or when it is no JSON)."""
    try:
        return response.json() if response.content else {}
    except ValueError:
        return {}


def _read_capped(response: requests.Response, cap: int) -> bytes:
    """A streamed body, read in pieces until it passes ``cap`` (:class:`TooLarge`)."""
    pieces: list[bytes] = []
    read = 0
    for piece in response.iter_content(chunk_size=64 * 1024):
        read += len(piece)
        if read > cap:
            raise TooLarge(read, False)
        pieces.append(piece)
    return b"".join(pieces)


class _Slots:
    """At most MAX_IN_FLIGHT requests to one mailbox from this process, whatever asks; a
    ``$batch`` takes one per call (its calls run four abreast)."""

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


@dataclass
class _Pace:
    """How a run of ``$batch`` requests goes on: the calls a request carries (as many as got
    through while the mailbox is throttled, doubling back once all pass) and the rounds in
    a row in which nothing got through."""

    retries: int
    first: float  # seconds before the first retry
    where: str
    size: int = MAX_PARALLEL_BATCH
    stuck: int = 0

    def after(self, sent: int, again: int, wait: float, left: int) -> None:
        """Adjust to a request of ``sent`` calls of which ``again`` are to go again (after
        ``wait`` seconds, their longest Retry-After), ``left`` calls waiting in all; sleeps
        before the next try, or gives up (ConnectorError) when it is no use."""
        passed = sent - again
        self.stuck = 0 if passed else self.stuck + 1
        if not again:
            self.size = min(MAX_PARALLEL_BATCH, self.size * 2)
            return
        if self.stuck >= self.retries:
            raise ConnectorError(
                f"{self.where}: {left} batched calls kept failing; the next poll resumes"
            )
        self.size = max(1, passed)
        if wait > MAX_WAIT:
            raise ConnectorError(
                f"{self.where}: throttled (Retry-After {wait:.0f} s); the next poll resumes"
            )
        time.sleep(wait or backoff(self.first, BACKOFF_CAP, self.stuck))


class GraphClient:
    """One mailbox's authenticated session: msal for tokens, O365's connection for requests."""

    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        s = typed(spec.settings, MicrosoftSettings)
        self.mode = s.mode
        self.user = spec.user_email
        if spec.secret is None:
            raise refused(spec.name, f"mailbox {spec.name!r}: no Microsoft credentials stored")
        self.graph = (s.graph_url or GRAPH).rstrip("/") + "/v1.0"
        self.ca_bundle = str(s.ca_bundle) if s.ca_bundle else None
        self.timeout = s.timeout
        self.retries = s.retries or 8
        self.backoff = s.backoff  # seconds before the first retry
        self.cache: BaseTokenBackend
        self.msal: Any = self._msal_app(s, spec.secret)
        self.o365 = Account(
            s.client_id if self.mode == "device" else (s.client_id, ""),
            auth_flow_type="public" if self.mode == "device" else "credentials",
            tenant_id=s.tenant,
            username=self.user if self.mode == "device" else None,
            protocol=_protocol(s.graph_url or GRAPH),
            token_backend=self.cache,
            requests_delay=0,  # pacing is ours: four slots and Retry-After
            request_retries=0,  # retries are ours (tenacity), so every 429 is seen and honoured
            raise_http_errors=False,
            timeout=self.timeout,
            default_headers={"Prefer": PREFER},
        )
        self.o365.con._msal_client = self.msal
        self.con = self.o365.con
        self.con.session = self.con.get_session(load_token=False)
        self._token: str | None = None
        self._renew_at = 0.0
        self.token_lock = threading.Lock()

    def _msal_app(self, s: MicrosoftSettings, secret: Secret) -> Any:
        """msal's application for the mode, with its token cache (``self.cache``)."""
        authority = f"{(s.authority or AUTHORITY).rstrip('/')}/{s.tenant}"
        http = _Http(self.ca_bundle, self.timeout)
        if self.mode == "device":
            home = self.spec.home or Path(".")
            self.cache = EncryptedCache(
                token_cache_path(home, self.spec.name), SecretBox(home), secret.reveal()
            )
            return msal.PublicClientApplication(
                s.client_id,
                authority=authority,
                instance_discovery=False,
                token_cache=self.cache,
                http_client=http,
            )
        self.cache = MemoryTokenBackend()
        value = secret.reveal()
        credential: Any = json.loads(value) if value.startswith("{") else value
        try:
            return msal.ConfidentialClientApplication(
                s.client_id,
                client_credential=credential,
                authority=authority,
                instance_discovery=False,
                token_cache=self.cache,
                http_client=http,
            )
        except ValueError as exc:  # the authority's OpenID configuration is unreachable
            raise ConnectorError(f"{self.where()}: {exc}") from None

    def where(self) -> str:
        return f"mailbox {self.spec.name!r}: Microsoft Graph"

    # --- tokens -------------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Put a valid access token on the session (msal serves it from its cache)."""
        with self.token_lock:
            if force:
                for token in list(self.cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                    self.cache.remove_at(token)
            result = self._acquire()
            if isinstance(self.cache, EncryptedCache):
                self.cache.save_token()
            # msal renews a token five minutes before it expires; ask it again by then
            self._renew_at = time.monotonic() + max(float(result.get("expires_in", 3600)) - 300, 0)
            if result["access_token"] != self._token:
                self._token = result["access_token"]
                self.con.update_session_auth_header(access_token=self._token)

    def _acquire(self) -> dict[str, Any]:
        """An access token from msal (its cache, else the sign-in service)."""
        try:
            if self.mode == "device":
                accounts = self.msal.get_accounts(username=self.user) or self.msal.get_accounts()
                result = (
                    self.msal.acquire_token_silent_with_error(USER_SCOPES, account=accounts[0])
                    if accounts
                    else None
                ) or {"error": "no_account", "error_description": "no signed-in account"}
            else:
                result = self.msal.acquire_token_for_client(scopes=APP_SCOPES)
        except (ValueError, requests.RequestException) as exc:
            raise ConnectorError(f"{self.where()}: the sign-in service failed: {exc}") from exc
        if "access_token" not in result:
            raise self._refused_credentials(result)
        return dict(result)

    def _refused_credentials(self, result: dict[str, Any]) -> AuthError:
        error = str(result.get("error", ""))
        text = str(result.get("error_description", "")).split("\r\n")[0].split("\n")[0]
        problem = f"{self.where()} refused the credentials ({error}: {text})"
        if self.mode == "device":
            return refused(self.spec.name, f"{problem}; the sign-in has expired or was revoked")
        if error == "invalid_client":
            return refused(
                self.spec.name,
                f"{problem}; the app's client secret or certificate was refused (deleted or "
                "expired?)",
                "create a new one in Entra ID (given as --client-secret-file F or --certificate F)",
            )
        if error == "unauthorized_client":
            return AuthError(
                f"{problem}; check --tenant and --client-id: the app registration was not found"
            )
        return refused(self.spec.name, problem)

    # --- requests -----------------------------------------------------------------------------

    @property
    def root(self) -> str:
        """The mailbox's path: ``/me`` when signed in as the user (whose sign-in name may
        differ from the CRM address), ``/users/{address}`` for an app."""
        return "/me" if self.mode == "device" else f"/users/{self.user}"

    def user_url(self, path: str) -> str:
        return f"{self.graph}{self.root}{path}"

    @contextmanager
    def _opened(
        self,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str] | None,
        slots: int,
        stream: bool = False,
    ) -> Iterator[requests.Response]:
        """One request's response, its slots held until it is closed (a ``stream``ed body is
        read within them)."""
        if self._token is None or time.monotonic() >= self._renew_at:
            self.refresh()
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if body is not None:
            kwargs["data"] = body
        if self.ca_bundle:
            kwargs["verify"] = self.ca_bundle
        if stream:
            kwargs["stream"] = True
        with _Slots.hold(f"{self.graph}|{self.user}", slots):
            try:
                response: requests.Response = self.con.oauth_request(url, method, **kwargs)
            except RuntimeError as exc:  # O365's own refresh failed
                raise refused(self.spec.name, f"{self.where()}: {exc}") from None
            with response:
                yield response

    def _send(
        self, method: str, url: str, body: Any, headers: dict[str, str] | None, slots: int
    ) -> requests.Response:
        with self._opened(method, url, body, headers, slots) as response:
            return response  # its body is read: closing it lets the connection go

    def _retrying(self) -> Any:
        """The retry policy of one call: transient failures (429, 5xx, a dropped
        connection) retried with backoff, Retry-After honoured."""
        return retrying(
            transient=_transient,
            attempts=self.retries,
            first=self.backoff,
            cap=BACKOFF_CAP,
            wait_hint=_hint,
        )

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
        refreshed: list[bool] = []  # the one fresh token a call may ask for after a 401
        policy = self._retrying()
        try:
            status, data = policy(self._try, method, url, body, headers, slots, refreshed)
        except (_Retry, requests.RequestException) as exc:
            raise ConnectorError(f"{self.where()}: {exc}; the next poll resumes") from None
        if status in ok:
            return status, data
        raise self._refusal(method, url, status, data)

    def _try(
        self,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str] | None,
        slots: int,
        refreshed: list[bool],
    ) -> tuple[int, Any]:
        """One try of a call; :class:`_Retry` when the answer is worth another."""
        response = self._send(method, url, body, headers, slots)
        data = response.json() if response.content else {}
        return self._judged(response, data, refreshed)

    def _judged(
        self, response: requests.Response, data: Any, refreshed: list[bool]
    ) -> tuple[int, Any]:
        """(status, JSON body) of an answer; :class:`_Retry` when it is worth another try."""
        status = response.status_code
        if status == 401 and not refreshed:  # the token expired early: once more
            refreshed.append(True)
            self.refresh(force=True)
            raise _Retry(status, 0.0, "access token refused; refreshed")
        if status in RETRYABLE_STATUS:
            code, text = error_text(data)
            raise _Retry(status, header_retry_after(response.headers), f"{code} {text}")
        return status, data

    def download(self, url: str, cap: int) -> bytes:
        """A resource's raw content (a message's MIME, ``GET …/messages/{id}/$value``), with
        the retries of :meth:`request`. At most ``cap`` bytes are read: a longer one raises
        :class:`TooLarge`, by its Content-Length before any of it is read, else as soon as
        the bytes read pass ``cap`` (the rest is never read). Graph refusing the item
        itself raises :class:`ItemRefused`; anything else as :meth:`request` does."""
        refreshed: list[bool] = []
        policy = self._retrying()
        try:
            status, data = policy(self._download_once, url, cap, refreshed)
        except (_Retry, requests.RequestException) as exc:
            raise ConnectorError(f"{self.where()}: {exc}; the next poll resumes") from None
        if status == 200:
            return bytes(data)
        if status in (401, 403, 410) or error_text(data)[0] == "ErrorInvalidUser":
            raise self._refusal("GET", url, status, data)
        code, text = error_text(data)
        raise ItemRefused(f"Graph refused it ({status} {code}: {text})")

    def _download_once(self, url: str, cap: int, refreshed: list[bool]) -> tuple[int, Any]:
        """One try of :meth:`download`: (200, the bytes), else (status, the JSON error)."""
        with self._opened("GET", url, None, None, 1, stream=True) as response:
            if response.status_code != 200:
                data = _json_or_empty(response)
            else:
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > cap:
                    raise TooLarge(int(length), True)
                return 200, _read_capped(response, cap)
        return self._judged(response, data, refreshed)

    def _refusal(self, method: str, url: str, status: int, data: Any) -> ConnectorError:
        """The error of a call Graph refused for good."""
        code, text = error_text(data)
        if status == 410:
            return CursorExpired(f"Graph sync state expired ({code or 'resync required'})")
        if status == 404 and code == "ErrorInvalidUser":
            return AuthError(
                f"{self.where()}: the tenant has no mailbox {self.user!r} ({text}); check the "
                f"user's address, then run 'syncd mailbox resume {self.spec.name}'"
            )
        if status in (401, 403):
            problem = f"{self.where()} refused access to {self.user} ({status} {code}: {text})"
            if self.mode != "app":
                return refused(self.spec.name, problem)
            return AuthError(
                f"{problem}; grant admin consent to the application permissions "
                f"{APP_PERMISSIONS} in Entra ID, then run 'syncd mailbox resume {self.spec.name}'"
            )
        return ConnectorError(
            f"{self.where()}: {method} {url.split('?')[0]} gave {status} {code}: {text}"
        )

    # --- $batch -------------------------------------------------------------------------------

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
        pace = _Pace(self.retries, self.backoff, self.where())
        pending = list(calls)
        while pending:
            pending = self._batch_run(pending, pace, results)
        return results

    def _batch_run(
        self, pending: list[dict[str, Any]], pace: _Pace, results: dict[str, tuple[int, Any]]
    ) -> list[dict[str, Any]]:
        """Send ``pending`` in requests of ``pace.size`` calls until the size is to change;
        returns the calls still to send, those to go again first."""
        done = 0
        for chunk in chunked(pending, pace.size):
            again, wait = self._batch_once(chunk, results)
            done += len(chunk)
            if again or pace.size < MAX_PARALLEL_BATCH:
                left = again + pending[done:]
                pace.after(len(chunk), len(again), wait, len(left))
                return left
        return []

    def _batch_once(
        self, chunk: list[dict[str, Any]], results: dict[str, tuple[int, Any]]
    ) -> tuple[list[dict[str, Any]], float]:
        """One ``$batch`` request: the answers go into ``results``; returns the calls to send
        again and the longest Retry-After they came with (0: none)."""
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
            if status in BATCH_AGAIN:
                again.append(call)
                wait = max(wait, header_retry_after(reply.get("headers")) or 0.0)
            else:
                results[call["id"]] = (status, reply.get("body"))
        return again, wait
