"""The Microsoft emulator as one server: the identity platform, then Graph v1.0 at
``https://127.0.0.1:PORT/v1.0`` (past any injected fault): ``$batch``, or one request for a
user's resources, authorized, throttled per mailbox and routed to the part that serves it.

Throttling per mailbox, as documented: a fifth concurrent request to one mailbox gets 429
``ApplicationThrottled`` with Retry-After (batch items count one each), and an optional
request-rate window (``rate_limit``). ``/me`` is refused to app tokens.
"""

from __future__ import annotations

import dataclasses
import re
import time
from urllib.parse import unquote

from ..faults import Metered, retry_after
from ..http import Request, Response
from .batch import Batch
from .contacts import Contacts
from .delta import Delta
from .folders import Folders
from .identity import Identity
from .mime import MimeContent
from .odata import preferences
from .state import Grant, GraphCall, GraphError, User
from .todo import Todo

_USER_PATH = re.compile(r"^/(users/(?P<user>[^/]+)|me)(?P<rest>/.*)?$")


class MicrosoftEmulator(Identity, Delta, MimeContent, Folders, Contacts, Todo, Batch):
    """State and behaviour; :meth:`start` serves it over TLS on 127.0.0.1 and a free port."""

    @property
    def graph_url(self) -> str:
        return self.base + "/v1.0/"

    def sign_in(self, request: Request) -> Response | None:
        """The identity platform, and a 404 for any other path outside Graph."""
        answer = self.identity(request)
        if answer is None and not request.target.startswith("/v1.0/"):
            return self.error(GraphError(404, "NotFound", "Not found"))
        return answer

    def api(self, request: Request) -> Response:
        if request.path == "/v1.0/$batch" and request.method == "POST":
            return self.batch(request)
        if request.method not in ("POST", "PATCH"):
            request = dataclasses.replace(request, body=b"")
        return self.graph(request)

    def graph(self, request: Request) -> Response:
        """One Graph request (also one item of a $batch)."""
        path = unquote(request.path).removeprefix("/v1.0")
        if not path.startswith("/"):
            path = "/" + path
        params = {k: v[-1] for k, v in request.query.items()}
        prefer = preferences(request.headers)
        try:
            grant = self.authorize(request.headers.get("Authorization"))
            m = _USER_PATH.match(path)
            if not m:
                raise GraphError(400, "BadRequest", f"Resource not found for the segment '{path}'.")
            box = self.resolve_user(grant, m.group("user") or "me")
            with self.flight(box, self._throttle):
                if self.latency:
                    time.sleep(self.latency)
                rest = m.group("rest") or ""
                call = GraphCall(grant, box, request.method, rest, params, prefer, request.json())
                routes = (
                    self._delta_route,
                    self._mail_route,
                    self._mime_route,
                    self._folders_route,
                    self._calendar_route,
                    self._todo_route,
                    self._contacts_route,
                )
                for route in routes:
                    answer = route(call)
                    if answer is not None:
                        return answer
                raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest}'.")
        except GraphError as err:
            return self.error(err)

    def resolve_user(self, grant: Grant, who: str) -> User:
        if who == "me":
            if grant.user is None:
                raise GraphError(
                    400,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                )
            who = grant.user
        box = self.users.get(who) or next(
            (u for u in self.users.values() if u.object_id == who), None
        )
        if box is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{who}' is invalid.")
        if grant.user is not None and grant.user != box.address:
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return box

    def _throttle(self, box: Metered) -> None:
        """A request to ``box`` is refused past the mailbox's concurrency or rate
        [throttling-limits: Outlook service]."""
        if box.inflight >= self.mailbox_concurrency:
            raise self._throttled("MailboxConcurrency", str(self.throttle_retry_after))
        if self.rate_limit:
            count, window = self.rate_limit
            wait = box.admit(1, count, window)
            if wait is not None:
                raise self._throttled("MailboxRequests", retry_after(wait))

    @staticmethod
    def _throttled(limit: str, after: str) -> GraphError:
        return GraphError(
            429,
            "ApplicationThrottled",
            f"Application is over its {limit} limit.",
            {"Retry-After": after},
        )
