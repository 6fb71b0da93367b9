"""The Google emulator as one server: sign-in endpoints, then (past any injected fault) the
batch endpoint and every API route of the discovery documents, each checked for unknown
query parameters, authorized and charged to its mailbox's per-minute quota (People's routes
are :mod:`.people`'s)."""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Callable
from email.message import Message
from typing import Any, cast

from ..http import Request, Response
from .calendar import Calendar
from .discovery import ROUTES, UNITS
from .gmail import Gmail
from .oauth import OAuth
from .people import People
from .state import Call, GmailError, Mailbox

MAX_BATCH = 100  # [gmail/api/guides/batch: "limited to 100 calls"]


class GoogleEmulator(People, OAuth, Gmail, Calendar):
    """State and behaviour; :meth:`start` serves it on 127.0.0.1 and a free port."""

    def start(self) -> str:
        return super().start() + "/"

    def charge(self, box: Mailbox, units: int) -> None:
        if box.admit(units, self.units_per_minute, 60) is not None:
            self.rejected += 1
            raise GmailError(
                403,  # the per-user quota [gmail/api/reference/quota, handle-errors]
                "userRateLimitExceeded",
                "User Rate Limit Exceeded",
                "usageLimits",
            )

    def call(self, name: str, call: Call) -> dict[str, Any]:
        with self.lock:
            self.charge(call.box, UNITS[name])
            method: Callable[[Call], dict[str, Any]] = getattr(self, "_" + name.replace(".", "_"))
            return method(call)

    def dispatch(self, request: Request) -> Response:
        """One API request (also one part of a batch)."""
        params = request.query
        for pattern, http_method, name, allowed in ROUTES:
            m = pattern.match(request.path)
            if not m or http_method != request.method:
                continue
            unknown = sorted(set(params) - allowed)
            if unknown:
                return self.error(
                    GmailError(
                        400,
                        "invalidParameter",
                        f'Invalid JSON payload received. Unknown name "{unknown[0]}"',
                    )
                )
            groups = m.groupdict()
            owner = groups.get("userId") or (
                "me" if groups.get("calendarId") == "primary" else groups.get("calendarId", "")
            )
            try:
                box = self.authorize(request.headers.get("Authorization"), owner)
                with self.flight(box):
                    result = self.call(name, Call(box, params, groups, request.json()))
            except GmailError as err:
                return self.error(err)
            return Response(204) if name == "events.delete" else Response(200, result)
        return self.error(GmailError(404, "notFound", f"Not Found: {request.path}"))

    def sign_in(self, request: Request) -> Response | None:
        """The consent page and the token endpoint; no fault reaches them, but they count in
        ``requests`` (token refreshes are part of a backfill's cost)."""
        if request.method == "GET" and request.target.startswith("/auth?"):
            answer = self.consent(request)
        elif request.method == "POST" and request.target == "/token":
            answer = Response(*self.token({k: v[0] for k, v in request.form().items()}))
        else:
            return None
        self.count()
        return answer

    def api(self, request: Request) -> Response:
        if request.method == "POST" and request.target == "/batch/gmail/v1":
            return self._batch(request)
        return self.people_api(request) or self.dispatch(request)

    def _batch(self, request: Request) -> Response:
        """multipart/mixed of application/http parts, answered in order [gmail/api/guides/batch]."""
        envelope = email.message_from_bytes(
            b"Content-Type: "
            + request.headers["Content-Type"].encode()
            + b"\r\n\r\n"
            + request.body,
            policy=email.policy.compat32,
        )
        parts = cast(list[Message], envelope.get_payload()) if envelope.is_multipart() else []
        if len(parts) > MAX_BATCH:
            return self.error(
                GmailError(400, "invalidArgument", "Too many requests in batch; the maximum is 100")
            )
        out = []
        for part in parts:
            cid = re.search(r"<([^>]+)>", part.get("Content-ID", ""))
            inner = part.get_payload(decode=False)
            inner = inner.encode() if isinstance(inner, str) else b""
            request_line, _, rest = inner.replace(b"\r\n", b"\n").strip().partition(b"\n")
            method, target = request_line.decode().split(" ")[:2]
            inner_headers = email.message_from_bytes(rest.partition(b"\n\n")[0] + b"\n\n")
            if "Authorization" not in inner_headers:
                inner_headers["Authorization"] = request.headers.get("Authorization", "")
            answer = self.dispatch(Request(method, target, inner_headers))
            body = answer.body
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            out.append(
                b"--batch_boundary\r\nContent-Type: application/http\r\n"
                + (b"Content-ID: <response-" + cid.group(1).encode() + b">\r\n" if cid else b"")
                + b"\r\nHTTP/1.1 "
                + str(answer.status).encode()
                + b" X\r\n"
                + b"Content-Type: application/json; charset=UTF-8\r\n"
                + b"Content-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
                + b"\r\n"
            )
        return Response(
            200,
            b"".join(out) + b"--batch_boundary--\r\n",
            content_type="multipart/mixed; boundary=batch_boundary",
        )
