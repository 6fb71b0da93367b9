"""What the Microsoft emulator holds: app registrations and grants, users with their delta
collections (mail folders, the calendar) and To Do lists, and Graph's error shape. The
parts of the emulator (``identity``, ``mail``, ``calendar``, ``delta``, ``todo``, ``batch``)
are mixins over :class:`GraphState`."""

from __future__ import annotations

import datetime as dt
import random
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..faults import Metered
from ..http import ApiError, HttpEmulator, Request, Response

GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
MAILBOX_CONCURRENCY = 4  # [throttling-limits: Outlook service]
APP_PERMISSIONS = frozenset({"Mail.Read", "Calendars.ReadWrite", "Tasks.ReadWrite.All"})


class GraphError(ApiError):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, message, headers)
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": str(uuid.uuid4()),
                    "client-request-id": str(uuid.uuid4()),
                },
            }
        }


def item_not_found() -> GraphError:
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


@dataclass
class App:
    tenant: str
    client_id: str
    secret: str | None = None
    certificate: Any = None  # the public key a certificate assertion must verify with
    thumbprints: tuple[str, ...] = ()  # base64url SHA-1 (x5t) and SHA-256 (x5t#S256)
    public: bool = False  # a public client (device code) rather than a confidential one
    permissions: frozenset[str] = APP_PERMISSIONS
    consented: bool = True


@dataclass
class Grant:
    app: App
    user: str | None  # None: app-only
    expires: float
    scopes: frozenset[str] = frozenset()


@dataclass
class Record:
    """One item of a delta collection: a message in a folder, an event, a task."""

    immutable_id: str
    rest_id: str
    resource: dict[str, Any]
    seq: int
    removed: bool = False


@dataclass
class User(Metered):
    address: str
    object_id: str
    collections: dict[str, dict[str, Record]] = field(default_factory=dict)
    todo_lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    todo_tasks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    transactions: dict[str, str] = field(default_factory=dict)  # transactionId -> event id
    calendar_can_edit: bool = True  # the primary calendar's canEdit [resources/calendar.md]

    def collection(self, name: str) -> dict[str, Record]:
        return self.collections.setdefault(name, {})

    def add_list(self, name: str, wellknown: str = "none") -> dict[str, Any]:
        """A new To Do list (``wellknownListName`` "defaultList" for the user's Tasks)."""
        lid = "AQMkAD" + secrets.token_urlsafe(18)
        self.todo_lists[lid] = {
            "id": lid,
            "displayName": name,
            "isOwner": True,
            "isShared": False,
            "wellknownListName": wellknown,
        }
        self.todo_tasks[lid] = {}
        return self.todo_lists[lid]


@dataclass
class GraphCall:
    """One Graph request for a user's resources; ``rest`` is its path after ``/users/{id}``
    or ``/me``, ``params`` its query options (the last of each name)."""

    grant: Grant
    box: User
    method: str
    rest: str
    params: dict[str, str]
    prefer: dict[str, str]
    payload: Any

    def need(self, *permissions: str) -> None:
        """403 unless the grant holds one of ``permissions`` (the app's application
        permissions, or the delegated scopes of a user's sign-in)."""
        have = self.grant.app.permissions if self.grant.user is None else self.grant.scopes
        if not any(p in have for p in permissions):
            raise GraphError(
                403,
                "ErrorAccessDenied",
                f"Access is denied. Check credentials and try again. (needs {permissions[0]})",
            )


class GraphState(HttpEmulator):
    """The emulator's state; the mixins add its behaviour."""

    JSON_TYPE = "application/json; odata.metadata=minimal"

    def __init__(
        self,
        mailbox_concurrency: int = MAILBOX_CONCURRENCY,
        throttle_retry_after: int = 1,
        rate_limit: tuple[int, float] | None = None,
        shuffle_seed: int | None = 1,
    ) -> None:
        """``shuffle_seed``: message delta results come in an order drawn from this seed (the
        same every run, never oldest first); None serves them in the order they changed."""
        super().__init__(tls=True)
        self.apps: dict[str, App] = {}
        self.users: dict[str, User] = {}
        self.grants: dict[str, Grant] = {}  # access token -> grant
        self.refresh_tokens: dict[str, tuple[str, str]] = {}  # token -> (client id, user)
        self.device_codes: dict[str, dict[str, Any]] = {}
        self.auto_approve: str | None = None  # the user who signs in at the device page
        self.delta_tokens: dict[str, dict[str, Any]] = {}
        self.seq = 0
        self.mailbox_concurrency = mailbox_concurrency
        self.throttle_retry_after = throttle_retry_after
        self.rate_limit = rate_limit
        self.shuffle_seed = shuffle_seed
        self.replays = False  # incremental rounds repeat some earlier changes
        self.empty_pages = False  # every delta round starts with an empty page + nextLink
        self.maintenance = False  # an unknown delta token answers 410 with Location
        self.latency = 0.0  # seconds every Graph request takes
        self.token_requests = 0
        self._random = random.Random(7)

    def add_user(self, address: str) -> User:
        with self.lock:
            if address not in self.users:
                box = User(address, str(uuid.uuid5(uuid.NAMESPACE_URL, address)))
                box.add_list("Tasks", wellknown="defaultList")
                self.users[address] = box
            return self.users[address]

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def graph(self, request: Request) -> Response:
        """One Graph request (also one item of a $batch)."""
        raise NotImplementedError

    # --- what the shared server asks -----------------------------------------------------

    def meters(self) -> Mapping[str, Metered]:
        return self.users

    def response_headers(self) -> dict[str, str]:
        return {"request-id": str(uuid.uuid4())}

    def fault_error(self, status: int) -> ApiError:
        if status == 429:
            return GraphError(429, "TooManyRequests", "Too many requests.")
        return GraphError(
            status,
            "serviceNotAvailable" if status == 503 else "generalException",
            "The service is temporarily unavailable.",
        )
