"""A local Google emulator: OAuth 2.0 token endpoint and Gmail API v1, over real HTTP.

Written from the public API reference, not from what syncd sends:
- paths, methods and query parameters come from the discovery document shipped with
  google-api-python-client (``gmail.v1.json``): a parameter the document does not list is
  refused with HTTP 400, as Google does;
- semantics follow ``../shared/PROVIDER-APIS.md`` (Gmail list/get/history, batch, quota and
  error shapes; OAuth refresh-token and JWT-bearer grants).

Mailboxes live in memory, seeded from RFC 5322 messages; every change gets the next history
id of its mailbox (monotonic, per change), as Gmail assigns them. Faults can be queued.
Messages carry label *ids*, never names: system labels are their own ids (INBOX, SPAM), user
labels are made with :meth:`GoogleEmulator.add_label` and get ``Label_<n>``, as Gmail's do.
Label changes (:meth:`GoogleEmulator.modify`, what the web interface does when a message is
moved out of Spam, trashed or labelled) are history records with ``labelsAdded`` /
``labelsRemoved``, and ``history.list`` returns only the ``historyTypes`` asked for.

Calendar v3 covers the primary calendar's events: list (sync tokens, paging, 410,
privateExtendedProperty, timeMin/timeMax, and the 400 for parameters a sync token forbids),
insert with a client-chosen id (409 duplicate, even after a
delete), import by iCalUID, get, patch, delete. Not here: People (no issue needs it yet).
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import googleapiclient

DISCOVERY = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
GMAIL = json.loads((DISCOVERY / "gmail.v1.json").read_text())
SYSTEM_LABELS = [
    "INBOX",
    "SENT",
    "DRAFT",
    "SPAM",
    "TRASH",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "CHAT",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
]  # system labels are their own ids [gmail/api/guides/labels: "Types of labels"]
# historyTypes values [history.list in gmail.v1.json] -> the History field each one fills
# [History schema: messagesAdded, messagesDeleted, labelsAdded, labelsRemoved]
HISTORY_FIELDS = {
    "messageAdded": "messagesAdded",
    "messageDeleted": "messagesDeleted",
    "labelAdded": "labelsAdded",
    "labelRemoved": "labelsRemoved",
}
# RFC 3339 with its mandatory offset [timeMin/timeMax in calendar.v3.json events.list]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# quota units per method [gmail/api/reference/quota]
UNITS = {
    "getProfile": 1,
    "labels.list": 1,
    "messages.list": 5,
    "messages.get": 5,
    "history.list": 2,
    **{f"events.{m}": 1 for m in ("list", "insert", "patch", "get", "delete", "import")},
}
USER_UNITS_PER_MINUTE = 15_000
_EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")  # base32hex [calendar events.insert]


CALENDAR = json.loads((DISCOVERY / "calendar.v3.json").read_text())


def _routes() -> list[tuple[re.Pattern[str], str, str, set[str]]]:
    """(path regex, HTTP method, method name, allowed query parameters) from discovery."""
    users = GMAIL["resources"]["users"]
    events = CALENDAR["resources"]["events"]["methods"]
    wanted = {
        "getProfile": users["methods"]["getProfile"],
        "labels.list": users["resources"]["labels"]["methods"]["list"],
        "messages.list": users["resources"]["messages"]["methods"]["list"],
        "messages.get": users["resources"]["messages"]["methods"]["get"],
        "history.list": users["resources"]["history"]["methods"]["list"],
        **{
            f"events.{k}": events[k] for k in ("list", "insert", "patch", "get", "delete", "import")
        },
    }
    routes = []
    for name, m in wanted.items():
        prefix = CALENDAR["servicePath"] if name.startswith("events.") else ""
        pattern = "^/" + prefix + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", m["path"]) + "$"
        query = {p for p, spec in m.get("parameters", {}).items() if spec["location"] == "query"}
        query |= {"alt", "fields", "prettyPrint", "quotaUser", "key"}  # standard parameters
        routes.append((re.compile(pattern), m["httpMethod"], name, query))
    return routes


ROUTES = _routes()


@dataclass
class Message:
    id: str
    thread_id: str
    raw: bytes
    labels: set[str]
    internal_date_ms: int
    history_id: int


@dataclass
class Mailbox:
    email: str
    history_id: int = 1000
    messages: dict[str, Message] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    oldest_history: int = 1000  # older start ids answer 404, as Gmail does after a week
    units: deque[tuple[float, int]] = field(default_factory=deque)
    threads: dict[str, str] = field(default_factory=dict)  # Message-ID -> thread id
    labels: dict[str, str] = field(default_factory=dict)  # user labels: id -> name
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # primary calendar
    event_seq: int = 0  # bumped on every event change; sync tokens are positions in it
    oldest_sync: int = 0


class GmailError(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        domain: str = "global",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.domain = status, reason, message, domain
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"domain": self.domain, "reason": self.reason, "message": self.message}],
                "status": {
                    400: "INVALID_ARGUMENT",
                    401: "UNAUTHENTICATED",
                    403: "PERMISSION_DENIED",
                    404: "NOT_FOUND",
                    429: "RESOURCE_EXHAUSTED",
                }.get(self.status, "UNKNOWN"),
            }
        }


class GoogleEmulator:
    """State and behaviour; :meth:`start` serves it on 127.0.0.1 and a free port."""

    def __init__(self, units_per_minute: int = USER_UNITS_PER_MINUTE) -> None:
        self.lock = threading.RLock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user
        self.codes: dict[str, str] = {}  # authorization code -> user
        self.consenting: str | None = None  # the user who clicks "Allow" on the consent page
        self.clients: dict[str, str] = {}  # client id -> secret
        self.service_accounts: dict[str, tuple[Any, bool]] = {}  # email -> (public key, delegated)
        self.access: dict[str, tuple[str, float]] = {}  # access token -> (user, expiry)
        self.units_per_minute = units_per_minute
        self.faults: deque[dict[str, Any]] = deque()
        self.requests = 0  # HTTP requests (a batch is one)
        self.rejected = 0  # calls refused for quota (429)
        self.server: ThreadingHTTPServer | None = None

    # --- seeding -----------------------------------------------------------------------

    def add_user(self, address: str) -> Mailbox:
        with self.lock:
            return self.mailboxes.setdefault(address, Mailbox(address))

    def add_client(self, client_id: str, client_secret: str) -> None:
        self.clients[client_id] = client_secret

    def add_service_account(
        self, client_email: str, public_key: Any, delegated: bool = True
    ) -> None:
        """A service account whose JWTs verify with ``public_key``; ``delegated`` is whether
        the Workspace admin granted it domain-wide delegation."""
        self.service_accounts[client_email] = (public_key, delegated)

    def grant(self, user: str) -> str:
        """A refresh token for ``user`` (what a consent screen would give)."""
        token = "1//" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = user
        return token

    def revoke(self, refresh_token: str) -> None:
        self.refresh_tokens.pop(refresh_token, None)

    def add_label(self, user: str, name: str) -> str:
        """A user label, as the user makes it in Gmail; returns its id (``Label_<n>``), which
        is what messages carry. System label names are reserved, and names are unique
        [gmail/api/guides/labels: "no USER label can be created with the same name as any
        SYSTEM label"]."""
        with self.lock:
            box = self.add_user(user)
            taken = {n.lower() for n in box.labels.values()} | {n.lower() for n in SYSTEM_LABELS}
            if name.lower() in taken:
                raise ValueError(f"label name {name!r} exists or conflicts")
            label_id = f"Label_{len(box.labels) + 1}"
            box.labels[label_id] = name
            return label_id

    @staticmethod
    def _label_ids(box: Mailbox, labels: tuple[str, ...] | list[str]) -> set[str]:
        for label in labels:
            if label not in SYSTEM_LABELS and label not in box.labels:
                raise ValueError(
                    f"{label!r} is not a label id of {box.email}: messages carry label ids "
                    "(INBOX, SPAM, or the Label_<n> that add_label returns), never names"
                )
        return set(labels)

    def modify(
        self, user: str, message_id: str, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
    ) -> None:
        """Change a message's labels, as the web interface (or messages.modify) does: "Not
        spam" removes SPAM and adds INBOX, restoring from Trash removes TRASH. Each actual
        change is a history record with ``labelsAdded`` or ``labelsRemoved`` entries
        (message + labelIds) [History, HistoryLabelAdded/Removed in gmail.v1.json]."""
        with self.lock:
            box = self.mailboxes[user]
            m = box.messages[message_id]
            if set(add) & set(remove):
                raise ValueError("a label cannot be added and removed at once")
            added = sorted(self._label_ids(box, add) - m.labels)
            removed = sorted(self._label_ids(box, remove) & m.labels)
            m.labels = (m.labels | set(added)) - set(removed)
            ref = {"id": m.id, "threadId": m.thread_id}
            for key, ids in (("labelsRemoved", removed), ("labelsAdded", added)):
                if ids:
                    box.history_id += 1
                    m.history_id = box.history_id
                    change = {"message": {**ref, "labelIds": sorted(m.labels)}, "labelIds": ids}
                    box.history.append({"id": box.history_id, "messages": [ref], key: [change]})

    def deliver(
        self,
        user: str,
        raw: bytes,
        labels: tuple[str, ...] = ("INBOX", "UNREAD"),
        internal_date_ms: int | None = None,
    ) -> str:
        """A message arrives with ``labels`` (ids: see :meth:`add_label`)."""
        with self.lock:
            box = self.add_user(user)
            self._label_ids(box, labels)
            box.history_id += 1
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            refs = (msg.get("References", "") + " " + msg.get("In-Reply-To", "")).split()
            thread = next((box.threads[r] for r in refs if r in box.threads), None)
            mid = format(box.history_id * 7919, "x").rjust(16, "0")
            thread = thread or mid
            if msg.get("Message-ID"):
                box.threads[msg["Message-ID"].strip()] = thread
            when = internal_date_ms or int(time.time() * 1000)
            box.messages[mid] = Message(mid, thread, raw, set(labels), when, box.history_id)
            box.history.append(
                {
                    "id": box.history_id,
                    "messages": [{"id": mid, "threadId": thread}],
                    "messagesAdded": [
                        {"message": {"id": mid, "threadId": thread, "labelIds": sorted(labels)}}
                    ],
                }
            )
            return mid

    def expire_history(self) -> None:
        """Forget the history so far: older startHistoryIds now answer 404."""
        with self.lock:
            for box in self.mailboxes.values():
                box.oldest_history = box.history_id
                box.history.clear()

    def inject(self, **fault: Any) -> None:
        """Queue a fault for the next request: status=503, status=429 (retry_after=s),
        drop=True (close the connection), delay=seconds."""
        self.faults.append(fault)

    # --- serving -----------------------------------------------------------------------

    def start(self) -> str:
        emulator = self

        class Handler(_Handler):
            state = emulator

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}/"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # --- behaviour ---------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type")
        if grant == "refresh_token":
            if self.clients.get(form.get("client_id", "")) != form.get("client_secret"):
                return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
            user = self.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                }
        elif grant == "authorization_code":
            if self.clients.get(form.get("client_id", "")) != form.get("client_secret"):
                return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
            user = self.codes.pop(form.get("code", ""), "")
            if not user:
                return 400, {"error": "invalid_grant", "error_description": "Malformed auth code."}
            access = "ya29." + secrets.token_urlsafe(32)
            self.access[access] = (user, time.time() + 3600)
            return 200, {
                "access_token": access,
                "expires_in": 3599,
                "token_type": "Bearer",
                "refresh_token": self.grant(user),
                "scope": form.get("scope", ""),
            }
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            subject = self._jwt_subject(form.get("assertion", ""))
            if isinstance(subject, tuple):
                return subject
            user = subject
        else:
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": f"Invalid grant_type: {grant}",
            }
        access = "ya29." + secrets.token_urlsafe(32)
        self.access[access] = (user, time.time() + 3600)
        return 200, {
            "access_token": access,
            "expires_in": 3599,
            "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/gmail.readonly "
            "https://www.googleapis.com/auth/calendar.events",
        }

    def _jwt_subject(self, assertion: str) -> str | tuple[int, dict[str, Any]]:
        """Check a service account's RS256 JWT (RFC 7523); the user is its ``sub`` claim."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def unb64(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        invalid = (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            claims = json.loads(unb64(claims_b64))
        except ValueError:
            return invalid
        account = self.service_accounts.get(claims.get("iss", ""))
        if account is None:
            return 400, {
                "error": "invalid_client",
                "error_description": "The OAuth client was not found.",
            }
        public_key, delegated = account
        try:
            public_key.verify(
                unb64(signature_b64),
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return invalid
        if claims.get("exp", 0) < time.time():
            return 400, {
                "error": "invalid_grant",
                "error_description": "Invalid JWT: Token "
                "must be a short-lived token (60 minutes) and in a reasonable timeframe.",
            }
        subject = claims.get("sub")
        if not delegated or subject not in self.mailboxes:
            return 401, {
                "error": "unauthorized_client",
                "error_description": "Client is "
                "unauthorized to retrieve access tokens using this method, or client "
                "not authorized for any of the scopes requested.",
            }
        return str(subject)

    def authorize(self, header: str | None, user_id: str) -> Mailbox:
        token = (header or "").removeprefix("Bearer ").strip()
        user, expiry = self.access.get(token, ("", 0.0))
        if not user or expiry < time.time():
            raise GmailError(401, "authError", "Invalid Credentials")
        target = user if user_id == "me" else user_id
        if target != user:
            raise GmailError(403, "forbidden", "Delegation denied for " + user)
        return self.mailboxes[user]

    def charge(self, box: Mailbox, units: int) -> None:
        now = time.monotonic()
        while box.units and box.units[0][0] < now - 60:
            box.units.popleft()
        if sum(u for _, u in box.units) + units > self.units_per_minute:
            self.rejected += 1
            raise GmailError(
                403,  # the per-user quota [gmail/api/reference/quota, handle-errors]
                "userRateLimitExceeded",
                "User Rate Limit Exceeded",
                "usageLimits",
            )
        box.units.append((now, units))

    def call(
        self,
        name: str,
        box: Mailbox,
        params: dict[str, list[str]],
        path: dict[str, str],
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            self.charge(box, UNITS[name])
            handler = getattr(self, "_" + name.replace(".", "_"))
            if name.startswith("events."):
                return handler(box, params, path, body or {})  # type: ignore[no-any-return]
            return handler(box, params, path)  # type: ignore[no-any-return]

    def _getProfile(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str]
    ) -> dict[str, Any]:
        return {
            "emailAddress": box.email,
            "messagesTotal": len(box.messages),
            "threadsTotal": len({m.thread_id for m in box.messages.values()}),
            "historyId": str(box.history_id),
        }

    def _labels_list(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str]
    ) -> dict[str, Any]:
        """Each label with only id, name, messageListVisibility, labelListVisibility and type
        [ListLabelsResponse.labels in gmail.v1.json]; a user label's id is not its name."""
        system = [{"id": lab, "name": lab, "type": "system"} for lab in SYSTEM_LABELS]
        user = [
            {
                "id": label_id,
                "name": name,
                "messageListVisibility": "show",
                "labelListVisibility": "labelShow",
                "type": "user",
            }
            for label_id, name in box.labels.items()
        ]
        return {"labels": system + user}

    def _messages_list(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str]
    ) -> dict[str, Any]:
        size = min(int(params.get("maxResults", ["100"])[0]), 500)
        wanted = set(params.get("labelIds", []))
        hidden = (
            set() if params.get("includeSpamTrash", ["false"])[0] == "true" else {"SPAM", "TRASH"}
        )
        after = 0
        for term in params.get("q", [""])[0].split():
            if term.startswith("after:"):  # after:YYYY/MM/DD or after:<epoch seconds>
                value = term[6:]
                after = (
                    int(value) * 1000
                    if value.isdigit()
                    else int(time.mktime(time.strptime(value, "%Y/%m/%d")) * 1000)
                )
        found = sorted(
            (
                m
                for m in box.messages.values()
                if wanted <= m.labels and not (m.labels & hidden) and m.internal_date_ms > after
            ),
            key=lambda m: (m.internal_date_ms, m.id),
            reverse=True,
        )  # newest first
        start = int(params.get("pageToken", ["0"])[0])
        page = found[start : start + size]
        out: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if page:
            out["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
        if start + size < len(found):
            out["nextPageToken"] = str(start + size)
        return out

    def _messages_get(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str]
    ) -> dict[str, Any]:
        m = box.messages.get(path["id"])
        if m is None:
            raise GmailError(404, "notFound", "Requested entity was not found.")
        fmt = params.get("format", ["full"])[0]
        out: dict[str, Any] = {
            "id": m.id,
            "threadId": m.thread_id,
            "labelIds": sorted(m.labels),
            "historyId": str(m.history_id),
            "internalDate": str(m.internal_date_ms),
            "sizeEstimate": len(m.raw),
        }
        if fmt == "raw":
            out["raw"] = base64.urlsafe_b64encode(m.raw).decode()
        elif fmt in ("metadata", "full"):
            msg = email.message_from_bytes(m.raw, policy=email.policy.compat32)
            names = {h.lower() for h in params.get("metadataHeaders", [])}
            headers = [
                {"name": k, "value": str(v)}
                for k, v in msg.items()
                if fmt == "full" or not names or k.lower() in names
            ]
            out["payload"] = {"mimeType": msg.get_content_type(), "headers": headers}
            out["snippet"] = ""
        return out

    def _history_list(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str]
    ) -> dict[str, Any]:
        if "startHistoryId" not in params:
            raise GmailError(400, "invalidArgument", "Missing required parameter startHistoryId")
        start = int(params["startHistoryId"][0])
        if start < box.oldest_history:
            raise GmailError(404, "notFound", "Requested entity was not found.")
        size = min(int(params.get("maxResults", ["100"])[0]), 500)
        records = [r for r in box.history if r["id"] > start]
        types = params.get("historyTypes", [])
        unknown = sorted(set(types) - set(HISTORY_FIELDS))
        if unknown:
            raise GmailError(
                400, "invalidArgument", f"Invalid value for historyTypes: {unknown[0]}"
            )
        if types:  # "History types to be returned by the function" [history.list]
            records = [r for r in records if any(HISTORY_FIELDS[t] in r for t in types)]
        offset = int(params.get("pageToken", ["0"])[0])
        page = records[offset : offset + size]
        out: dict[str, Any] = {"historyId": str(box.history_id)}
        if page:
            out["history"] = [{**r, "id": str(r["id"])} for r in page]
        if offset + size < len(records):
            out["nextPageToken"] = str(offset + size)
        return out

    # --- Calendar v3 (primary calendar of each user) ------------------------------------

    def add_event(self, user: str, event: dict[str, Any]) -> dict[str, Any]:
        """Seed an event as another client would have created it."""
        with self.lock:
            box = self.add_user(user)
            return self._store_event(box, {"id": secrets.token_hex(10), **event})

    def expire_sync_tokens(self) -> None:
        with self.lock:
            for box in self.mailboxes.values():
                box.oldest_sync = box.event_seq

    def _store_event(self, box: Mailbox, event: dict[str, Any]) -> dict[str, Any]:
        box.event_seq += 1
        event.setdefault("status", "confirmed")
        event.setdefault("iCalUID", event["id"] + "@google.com")
        event["sequence_no"] = box.event_seq
        event["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        box.events[event["id"]] = event
        return self._public(event)

    @staticmethod
    def _public(event: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "calendar#event", **{k: v for k, v in event.items() if k != "sequence_no"}}

    def _events_list(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        token = params.get("syncToken", [None])[0]
        if token is not None:
            # "cannot be specified together with nextSyncToken", and showDeleted may not be
            # False [syncToken in calendar.v3.json events.list]
            banned = {
                "iCalUID",
                "orderBy",
                "q",
                "timeMin",
                "timeMax",
                "updatedMin",
                "privateExtendedProperty",
                "sharedExtendedProperty",
            } & set(params)
            if params.get("showDeleted") == ["false"]:
                banned.add("showDeleted")
            if banned:
                raise GmailError(
                    400, "invalid", f"{sorted(banned)[0]} cannot be used with syncToken", "calendar"
                )
            if not token.isdigit() or int(token) < box.oldest_sync:
                raise GmailError(
                    410,
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                    "calendar",
                )
            since = int(token)
            found = [e for e in box.events.values() if e["sequence_no"] > since]
        else:
            show_deleted = params.get("showDeleted", ["false"])[0] == "true"
            found = [e for e in box.events.values() if show_deleted or e["status"] != "cancelled"]
            for prop in params.get("privateExtendedProperty", []):
                key, _, value = prop.partition("=")
                found = [
                    e
                    for e in found
                    if e.get("extendedProperties", {}).get("private", {}).get(key) == value
                ]
            found = self._between(found, params)
        found.sort(key=lambda e: e["sequence_no"])
        size = min(int(params.get("maxResults", ["250"])[0]), 2500)
        offset = int(params.get("pageToken", ["0"])[0])
        page = found[offset : offset + size]
        out: dict[str, Any] = {
            "kind": "calendar#events",
            "items": [
                {"id": e["id"], "status": "cancelled"}
                if e["status"] == "cancelled" and token
                else self._public(e)
                for e in page
            ],
        }
        if offset + size < len(found):
            out["nextPageToken"] = str(offset + size)
        else:  # nextSyncToken only on the last page
            out["nextSyncToken"] = str(box.event_seq)
        return out

    @staticmethod
    def _between(found: list[dict[str, Any]], params: dict[str, list[str]]) -> list[dict[str, Any]]:
        """timeMin: "Lower bound (exclusive) for an event's end time"; timeMax: "Upper bound
        (exclusive) for an event's start time"; both RFC 3339 with an offset, timeMin before
        timeMax [events.list in calendar.v3.json]."""
        bounds: dict[str, float] = {}
        for name in ("timeMin", "timeMax"):
            if name in params:
                value = params[name][0]
                if not _RFC3339.match(value):
                    raise GmailError(400, "badRequest", "Bad Request", "calendar")
                bounds[name] = _epoch(value)
        if "timeMin" in bounds and "timeMax" in bounds and bounds["timeMin"] >= bounds["timeMax"]:
            raise GmailError(
                400, "timeRangeEmpty", "The specified time range is empty.", "calendar"
            )
        return [
            e
            for e in found
            if _event_epoch(e, "end") > bounds.get("timeMin", float("-inf"))
            and _event_epoch(e, "start") < bounds.get("timeMax", float("inf"))
        ]

    def _events_insert(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        event_id = body.get("id") or secrets.token_hex(10)
        if not _EVENT_ID.match(event_id):
            raise GmailError(400, "invalid", "Invalid resource id value.", "calendar")
        if event_id in box.events:  # even a deleted one keeps its id
            raise GmailError(
                409, "duplicate", "The requested identifier already exists.", "calendar"
            )
        return self._store_event(box, {**body, "id": event_id})

    def _events_import(
        self,
        box: Mailbox,
        params: dict[str, list[str]],
        path: dict[str, str],
        body: dict[str, Any],
    ) -> dict[str, Any]:
        """A private copy of an existing event, by iCalUID; importing one again is a
        duplicate, not an upsert (insanum/gcalcli#784)."""
        uid = body.get("iCalUID")
        if not uid:
            raise GmailError(400, "required", "Missing iCalUID.", "calendar")
        if any(e.get("iCalUID") == uid for e in box.events.values()):
            raise GmailError(
                409, "duplicate", "The requested identifier already exists.", "calendar"
            )
        return self._store_event(box, {**body, "id": secrets.token_hex(10)})

    def _existing_event(self, box: Mailbox, path: dict[str, str]) -> dict[str, Any]:
        event = box.events.get(path["eventId"])
        if event is None:
            raise GmailError(404, "notFound", "Not Found", "calendar")
        return event

    def _events_get(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._public(self._existing_event(box, path))

    def _events_patch(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        event = self._existing_event(box, path)
        return self._store_event(box, {**event, **body, "id": event["id"]})

    def _events_delete(
        self, box: Mailbox, params: dict[str, list[str]], path: dict[str, str], body: dict[str, Any]
    ) -> dict[str, Any]:
        event = self._existing_event(box, path)
        if event["status"] == "cancelled":
            raise GmailError(410, "deleted", "Resource has been deleted", "calendar")
        self._store_event(box, {**event, "status": "cancelled"})
        return {}


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _event_epoch(event: dict[str, Any], edge: str) -> float:
    """An event's start or end: a dateTime, or an all-day date (taken at UTC midnight)."""
    when = event.get(edge, {})
    if "dateTime" in when:
        return _epoch(when["dateTime"])
    if "date" in when:
        return datetime.fromisoformat(when["date"]).replace(tzinfo=UTC).timestamp()
    return 0.0


class _Handler(BaseHTTPRequestHandler):
    state: GoogleEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        body: dict[str, Any] | bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json; charset=UTF-8",
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _fault(self) -> bool:
        """Apply a queued fault; True when the request was answered (or dropped)."""
        if not self.state.faults:
            return False
        fault = self.state.faults.popleft()
        if fault.get("delay"):
            time.sleep(fault["delay"])
        if fault.get("drop"):
            self.close_connection = True
            self.connection.close()
            return True
        status = fault.get("status")
        if status:
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            reason = "rateLimitExceeded" if status == 429 else "backendError"
            self._send(status, GmailError(status, reason, "Injected fault").body(), headers)
            return True
        return False

    def dispatch(
        self, method: str, target: str, headers: Any, body: bytes = b""
    ) -> tuple[int, Any, dict[str, str]]:
        url = urlparse(target)
        params = parse_qs(url.query)
        for pattern, http_method, name, allowed in ROUTES:
            m = pattern.match(url.path)
            if not m or http_method != method:
                continue
            unknown = sorted(set(params) - allowed)
            if unknown:
                err = GmailError(
                    400,
                    "invalidParameter",
                    f'Invalid JSON payload received. Unknown name "{unknown[0]}"',
                )
                return 400, err.body(), {}
            groups = m.groupdict()
            owner = groups.get("userId") or (
                "me" if groups.get("calendarId") == "primary" else groups.get("calendarId", "")
            )
            try:
                box = self.state.authorize(headers.get("Authorization"), owner)
                payload = json.loads(body) if body else {}
                result = self.state.call(name, box, params, groups, payload)
                if name == "events.delete":
                    return 204, b"", {}
                return 200, result, {}
            except GmailError as err:
                return err.status, err.body(), err.headers
        return 404, GmailError(404, "notFound", f"Not Found: {url.path}").body(), {}

    def do_GET(self) -> None:
        self.state.requests += 1
        if self.path.startswith("/auth?"):
            self._consent()
            return
        if self._fault():
            return
        status, body, headers = self.dispatch("GET", self.path, self.headers)
        self._send(status, body, headers)

    def _consent(self) -> None:
        """The consent page, as if the user clicked "Allow": back to redirect_uri with a code."""
        from urllib.parse import urlencode

        query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        if query.get("client_id") not in self.state.clients or not self.state.consenting:
            self._send(400, {"error": "invalid_request"})
            return
        code = "4/" + secrets.token_urlsafe(16)
        self.state.codes[code] = self.state.consenting
        target = (
            query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})
        )
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.state.requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        if self.path == "/token":
            status, body = self.state.token({k: v[0] for k, v in parse_qs(data.decode()).items()})
            self._send(status, body)
            return
        if self._fault():
            return
        if self.path == "/batch/gmail/v1":
            self._batch(data)
            return
        status, body, headers = self.dispatch("POST", self.path, self.headers, data)
        self._send(status, body, headers)

    def do_PATCH(self) -> None:
        self.state.requests += 1
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self._fault():
            return
        status, body, headers = self.dispatch("PATCH", self.path, self.headers, data)
        self._send(status, body, headers)

    def do_DELETE(self) -> None:
        self.state.requests += 1
        if self._fault():
            return
        status, body, headers = self.dispatch("DELETE", self.path, self.headers)
        self._send(status, body, headers)

    def _batch(self, data: bytes) -> None:
        """multipart/mixed of application/http parts, answered in order [gmail/api/guides/batch]."""
        envelope = email.message_from_bytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + data,
            policy=email.policy.compat32,
        )
        parts = envelope.get_payload() if envelope.is_multipart() else []
        if len(parts) > 100:
            self._send(
                400,
                GmailError(
                    400, "invalidArgument", "Too many requests in batch; the maximum is 100"
                ).body(),
            )
            return
        out = []
        for part in parts:
            cid = re.search(r"<([^>]+)>", part.get("Content-ID", ""))
            inner = part.get_payload(decode=False)
            inner = inner.encode() if isinstance(inner, str) else b""
            request_line, _, rest = inner.replace(b"\r\n", b"\n").strip().partition(b"\n")
            method, target = request_line.decode().split(" ")[:2]
            inner_headers = email.message_from_bytes(rest.partition(b"\n\n")[0] + b"\n\n")
            if "Authorization" not in inner_headers:
                inner_headers["Authorization"] = self.headers.get("Authorization", "")
            status, body, _ = self.dispatch(method, target, inner_headers)
            payload = json.dumps(body).encode()
            out.append(
                b"--batch_boundary\r\nContent-Type: application/http\r\n"
                + (b"Content-ID: <response-" + cid.group(1).encode() + b">\r\n" if cid else b"")
                + b"\r\nHTTP/1.1 "
                + str(status).encode()
                + b" X\r\n"
                + b"Content-Type: application/json; charset=UTF-8\r\n"
                + b"Content-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
                + b"\r\n"
            )
        body = b"".join(out) + b"--batch_boundary--\r\n"
        self._send(200, body, content_type="multipart/mixed; boundary=batch_boundary")
