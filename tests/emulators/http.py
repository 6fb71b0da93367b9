"""The HTTP plumbing every emulator shares, written once.

An emulator subclasses :class:`HttpEmulator` and keeps only its provider's semantics: it
answers one parsed :class:`Request` with one :class:`Response` in :meth:`~HttpEmulator.api`
(its paths, resources, cursors, quota rules and error shapes), and its sign-in endpoints in
:meth:`~HttpEmulator.sign_in`. Everything else is here:

- the threaded server on 127.0.0.1 and a free port, over TLS with a test CA when asked
  (:meth:`~HttpEmulator.start`, :meth:`~HttpEmulator.stop`);
- request parsing (path, query, JSON or form body, headers) and JSON answers, with the
  provider's JSON media type and any headers it adds to every answer;
- injected faults (:meth:`~HttpEmulator.inject`; see :mod:`.faults`), answered with the
  provider's error for a status (:meth:`~HttpEmulator.fault_error`);
- counters: ``requests`` (as the emulator counts them), ``throttled`` (every 429 answered,
  batch items included) and the peak of requests in flight per mailbox
  (:meth:`~HttpEmulator.flight`, :meth:`~HttpEmulator.peak_inflight`).
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import ParseResult, parse_qs, urlparse

from .faults import Fault, Faults, Metered
from .tls import make_tls


@dataclass
class Request:
    """One HTTP request (or one request inside a batch)."""

    method: str
    target: str  # the request target as sent: path and query
    headers: Any  # http.client.HTTPMessage, an email Message, or Headers: each has .get()
    body: bytes = b""

    @cached_property
    def url(self) -> ParseResult:
        return urlparse(self.target)

    @property
    def path(self) -> str:
        return self.url.path

    @cached_property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.url.query)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}

    def form(self) -> dict[str, list[str]]:
        """An ``application/x-www-form-urlencoded`` body (OAuth token requests)."""
        return parse_qs(self.body.decode())


@dataclass
class Response:
    """An answer: ``body`` is sent as JSON unless it is bytes; ``content_type`` None is the
    emulator's JSON type (sent only with a body). ``drop``: close the connection instead."""

    status: int
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    drop: bool = False


class ApiError(Exception):
    """A refusal in the provider's error shape (:meth:`body`), with its status and headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        raise NotImplementedError


class Headers(dict[str, Any]):
    """Case-insensitive headers of a request inside a batch."""

    def __init__(self, values: Mapping[str, str | None]) -> None:
        super().__init__({k.lower(): v for k, v in values.items() if v is not None})

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class HttpEmulator:
    """A provider's emulator served over HTTP: state and behaviour live in the subclass."""

    JSON_TYPE: ClassVar[str] = "application/json"

    def __init__(self, tls: bool = False) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.requests = 0  # HTTP requests, as the emulator counts them (a batch is one)
        self.throttled = 0  # 429s answered (batch items included)
        self.server: ThreadingHTTPServer | None = None
        self.base = ""
        self.tls_dir: Path | None = None
        if tls:
            self.tls_dir = Path(tempfile.mkdtemp(prefix="syncd-emulator-"))
            self.ca_pem, self._cert, self._key = make_tls(self.tls_dir)

    # --- what the provider decides -------------------------------------------------------

    def sign_in(self, request: Request) -> Response | None:
        """Answer a request outside the API (the sign-in endpoints), which no injected fault
        reaches and ``requests`` counts only if the emulator says so; None for an API
        request."""
        return None

    def api(self, request: Request) -> Response:
        """Answer one API request."""
        raise NotImplementedError

    def fault_error(self, status: int) -> ApiError:
        """The provider's error for an injected fault of ``status``."""
        raise NotImplementedError

    def meters(self) -> Mapping[str, Metered]:
        """Each mailbox's load accounting, by its address."""
        raise NotImplementedError

    def response_headers(self) -> dict[str, str]:
        """Headers the provider adds to every answer."""
        return {}

    # --- faults and counters -------------------------------------------------------------

    def serve(self, request: Request) -> Response:
        """Sign-in first; then, counted and past any injected fault, the API."""
        answer = self.sign_in(request)
        if answer is not None:
            return answer
        self.count()
        return self.injected(request) or self.api(request)

    def inject(self, **fault: Any) -> None:
        """Queue a fault for the next request it fits: status=503 (retry_after=s), status=429,
        drop=True (close the connection unanswered), delay=seconds before answering;
        path="…" limits it to requests whose path contains that text. Faults are met in
        the order they were queued."""
        self.faults.add(Fault(**fault))

    def count(self) -> None:
        with self.lock:
            self.requests += 1

    def injected(self, request: Request) -> Response | None:
        """Apply the next queued fault that fits ``request``: its answer, or None when the
        request goes on (no fault, or only a delay)."""
        fault = self.faults.take(request.target)
        if fault is None:
            return None
        if fault.delay:
            time.sleep(fault.delay)
        if fault.drop:
            return Response(0, drop=True)
        if fault.status:
            err = self.fault_error(fault.status)
            if fault.retry_after is not None:
                err.headers["Retry-After"] = str(fault.retry_after)
            return self.error(err)
        return None

    def error(self, err: ApiError) -> Response:
        """``err`` as an answer (a 429 is counted in ``throttled``)."""
        if err.status == 429:
            with self.lock:
                self.throttled += 1
        return Response(err.status, err.body(), err.headers)

    @contextmanager
    def flight(
        self, meter: Metered, check: Callable[[Metered], None] | None = None
    ) -> Iterator[None]:
        """One request to a mailbox, counted in flight while it runs. It counts in the peak
        as it arrives; ``check`` (the provider's concurrency and rate limits) then runs under
        the same lock and may refuse it by raising, and then it is not in flight."""
        with self.lock:
            meter.arrive()
            if check is not None:
                check(meter)
            meter.inflight += 1
        try:
            yield
        finally:
            with self.lock:
                meter.inflight -= 1

    def peak_inflight(self) -> dict[str, int]:
        return {address: m.peak_inflight for address, m in self.meters().items()}

    # --- serving -------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on 127.0.0.1 and a free port; returns the base URL (``self.base``)."""
        handler = type("Handler", (_Handler,), {"emulator": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        scheme = "http"
        if self.tls_dir is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self._cert, self._key)
            # the handshake runs in the request's thread, so one slow client cannot stall accept()
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
            scheme = "https"
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.base = f"{scheme}://127.0.0.1:{server.server_port}"
        return self.base

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        if self.tls_dir is not None:
            shutil.rmtree(self.tls_dir, ignore_errors=True)


class _Handler(BaseHTTPRequestHandler):
    emulator: HttpEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.emulator.serve(Request(self.command, self.path, self.headers, body))
        if answer.drop:
            self.close_connection = True
            self.connection.close()
            return
        data = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        if data:
            self.send_header("Content-Type", answer.content_type or self.emulator.JSON_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**self.emulator.response_headers(), **answer.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve
