"""What the Google emulator holds: mailboxes (messages, history, labels, the primary calendar),
sign-in state, and Google's error shape. The parts of the emulator (``oauth``, ``gmail``,
``calendar``) are mixins over :class:`GoogleState`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..faults import Metered
from ..http import ApiError, HttpEmulator
from .discovery import USER_UNITS_PER_MINUTE

T = TypeVar("T")
# the google.rpc.Code name of each HTTP status the emulator answers with (Google's API design
# guide, "Errors")
RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
}


@dataclass
class Message:
    id: str
    thread_id: str
    raw: bytes
    labels: set[str]
    internal_date_ms: int
    history_id: int


@dataclass
class Mailbox(Metered):
    email: str
    history_id: int = 1000
    messages: dict[str, Message] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    oldest_history: int = 1000  # older start ids answer 404, as Gmail does after a week
    threads: dict[str, str] = field(default_factory=dict)  # Message-ID -> thread id
    labels: dict[str, str] = field(default_factory=dict)  # user labels: id -> name
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # primary calendar
    event_seq: int = 0  # bumped on every event change; sync tokens are positions in it
    oldest_sync: int = 0


@dataclass
class Call:
    """One API method call: its mailbox, query parameters, path parameters and JSON body."""

    box: Mailbox
    params: dict[str, list[str]]
    path: dict[str, str]
    body: dict[str, Any]

    def page(self, items: list[T], size: int, most: int) -> tuple[list[T], str | None]:
        """The page of ``items`` that ``pageToken`` asks for (``maxResults`` of them, ``size``
        by default, ``most`` at most), and the ``nextPageToken`` after it, if any."""
        size = min(int(self.params.get("maxResults", [str(size)])[0]), most)
        offset = int(self.params.get("pageToken", ["0"])[0])
        more = offset + size < len(items)
        return items[offset : offset + size], str(offset + size) if more else None


class GmailError(ApiError):
    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        domain: str = "global",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.reason, self.domain = reason, domain

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"domain": self.domain, "reason": self.reason, "message": self.message}],
                "status": RPC_STATUS.get(self.status, "UNKNOWN"),
            }
        }


class GoogleState(HttpEmulator):
    """The emulator's state; the mixins add its behaviour."""

    JSON_TYPE = "application/json; charset=UTF-8"

    def __init__(self, units_per_minute: int = USER_UNITS_PER_MINUTE) -> None:
        super().__init__()
        self.mailboxes: dict[str, Mailbox] = {}
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user
        self.codes: dict[str, str] = {}  # authorization code -> user
        self.consenting: str | None = None  # the user who clicks "Allow" on the consent page
        self.clients: dict[str, str] = {}  # client id -> secret
        self.service_accounts: dict[str, tuple[Any, bool]] = {}  # email -> (public key, delegated)
        self.access: dict[str, tuple[str, float]] = {}  # access token -> (user, expiry)
        self.units_per_minute = units_per_minute
        self.rejected = 0  # calls refused for quota (403 userRateLimitExceeded)

    def add_user(self, address: str) -> Mailbox:
        with self.lock:
            return self.mailboxes.setdefault(address, Mailbox(address))

    def meters(self) -> Mapping[str, Metered]:
        return self.mailboxes

    def fault_error(self, status: int) -> ApiError:
        reason = "rateLimitExceeded" if status == 429 else "backendError"
        return GmailError(status, reason, "Injected fault")
