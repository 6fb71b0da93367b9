"""A local Microsoft emulator: the identity platform (v2.0) and Microsoft Graph v1.0, over TLS.

Written from the public reference (``../shared/PROVIDER-APIS.md`` collects the semantics and
their sources), not from what syncd sends:

- Identity, at ``https://127.0.0.1:PORT/{tenant}``: the OpenID configuration msal reads
  (``/v2.0/.well-known/openid-configuration``), the token endpoint (client credentials with
  a secret or a certificate assertion, scope ``…/.default`` only; refresh token; device
  code) and the device authorization endpoint; errors in Microsoft's shape
  (``invalid_client`` AADSTS7000215, ``unauthorized_client`` AADSTS700016, ``invalid_scope``
  AADSTS1002012, ``invalid_grant`` AADSTS50173, ``authorization_pending``).
- Graph, at ``https://127.0.0.1:PORT/v1.0``: message delta per mail folder (``$select``,
  ``$expand``, ``$orderby=receivedDateTime desc``, ``Prefer: odata.maxpagesize``,
  ``@odata.nextLink``/``@odata.deltaLink``, ``@removed``, 410 ``syncStateNotFound`` for a
  token it no longer knows, pages in no particular order), ``calendarView/delta`` (400 without
  a window), events (``POST`` idempotent by ``transactionId``, ``PATCH``, ``GET`` with
  ``$expand=singleValueExtendedProperties``), To Do lists and tasks, ``$batch`` (at most 20,
  unique ids, ``dependsOn`` only on earlier ids, fully parallel or fully sequential, 424 after
  a failure, answers in any order), ``/me`` refused to app tokens.
- Graph's schema comes from Microsoft's generated models (``graph_schema.py``, msgraph-sdk):
  a ``$select``, ``$expand``, ``$filter`` or ``$orderby`` naming a property the entity does
  not have, and a request body property the type does not have (also inside ``$batch``), are
  refused with 400 in Graph's error shape. A message has no ``sensitivity``: it is served only
  as the MAPI property PidTagSensitivity through ``$expand=singleValueExtendedProperties``.
- Bodies: ``body`` is HTML unless ``Prefer: outlook.body-content-type="text"`` (echoed in
  ``Preference-Applied``); ``bodyPreview`` is the first 255 characters of the text body.
- Item ids: each message has a REST id that changes when it moves to another folder and an
  immutable id that does not; answers carry the immutable one only to requests that send
  ``Prefer: IdType="ImmutableId"``.
- Throttling per mailbox, as documented: a fifth concurrent request to one mailbox gets
  429 ``ApplicationThrottled`` with Retry-After (batch items count one each), and an optional
  request-rate window (``rate_limit``). Faults can be queued: a status (5xx, 429, 503 with
  Retry-After), a dropped connection, a slow answer.

Not here: recurring-series expansion (every event is a single instance), attachments,
subscriptions, mail folders other than the well-known ones syncd reads.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import ipaddress
import json
import random
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse
from zoneinfo import ZoneInfo

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from . import graph_schema as schema

GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
WELL_KNOWN_FOLDERS = ("inbox", "sentitems", "drafts", "deleteditems", "archive")
DEFAULT_PAGE = 10  # delta's default page size [message-delta]
DELTA_QUERY = {
    "$select",
    "$top",
    "$filter",
    "$orderby",
    "$expand",
    "changeType",
    "$deltatoken",
    "$skiptoken",
}
# Outlook-backed types: Graph relays their query errors from Exchange, which names the type
# in its own namespace ("… on type 'Microsoft.OutlookServices.Message'", PROVIDER-APIS.md,
# microsoft-graph-docs #8359); other services answer in Graph's ("… on type
# 'microsoft.graph.mailFolder'", mguessan/davmail #451 and #488)
OUTLOOK_TYPES = frozenset({"message", "event"})
# PidTagSensitivity: identifier 0x0036, PT_LONG (an "Integer" extended property), values
# SENSITIVITY_NONE, _PERSONAL, _PRIVATE, _COMPANY_CONFIDENTIAL (MicrosoftDocs/
# office-developer-client-docs docs/outlook/mapi/pidtagsensitivity-canonical-property.md);
# read through Graph as "{type} {proptag}" [MGD resources/extended-properties-overview.md]
SENSITIVITY_TAG = 0x36
SENSITIVITIES = {"normal": 0, "personal": 1, "private": 2, "confidential": 3}
PREVIEW_CHARS = 255  # bodyPreview: "The first 255 characters of the message body. It is in
# text format." [MGD api-reference/v1.0/resources/message.md]
TODO_QUERY = {"$select", "$expand", "$top", "$skip", "$filter", "$orderby", "$count"}
MAX_BATCH = 20  # [json-batching]
MAILBOX_CONCURRENCY = 4  # [throttling-limits: Outlook service]
APP_PERMISSIONS = frozenset({"Mail.Read", "Calendars.ReadWrite", "Tasks.ReadWrite.All"})
# Windows zone names Graph accepts beside IANA ones (a few; enough for the tests)
WINDOWS_ZONES = {
    "UTC": "UTC",
    "Pacific Standard Time": "America/Los_Angeles",
    "Eastern Standard Time": "America/New_York",
    "W. Europe Standard Time": "Europe/Berlin",
    "GMT Standard Time": "Europe/London",
}


class GraphError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

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


def _aad_error(status: int, error: str, code: int, text: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {uuid.uuid4()}",
        "error_codes": [code],
        "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }


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
class User:
    address: str
    object_id: str
    collections: dict[str, dict[str, Record]] = field(default_factory=dict)
    todo_lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    todo_tasks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    transactions: dict[str, str] = field(default_factory=dict)  # transactionId -> event id
    inflight: int = 0
    peak_inflight: int = 0  # the most requests that were in flight at once (incl. refused)
    recent: deque[float] = field(default_factory=deque)  # request times, for the rate limit

    def collection(self, name: str) -> dict[str, Record]:
        return self.collections.setdefault(name, {})


def _windows_or_iana(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(WINDOWS_ZONES.get(name, name))
    except Exception:
        raise GraphError(
            400,
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. "
            f"The following TimeZone value is not supported: '{name}'.",
        ) from None


def _parse_graph_time(value: dict[str, str]) -> dt.datetime:
    zone = _windows_or_iana(value.get("timeZone", "UTC"))
    stamp = dt.datetime.fromisoformat(value["dateTime"][:26].rstrip("Z"))
    return stamp.replace(tzinfo=zone) if stamp.tzinfo is None else stamp


def _graph_time(when: dt.datetime, zone: str) -> dict[str, str]:
    local = when.astimezone(_windows_or_iana(zone))
    return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone}


def _prefer(headers: Any) -> dict[str, str]:
    """``Prefer`` preferences (several headers or comma-separated) -> {name: value}."""
    found: dict[str, str] = {}
    values = headers.get_all("Prefer", []) if hasattr(headers, "get_all") else []
    if not values and headers.get("Prefer"):
        values = [headers.get("Prefer")]
    for value in values:
        for part in value.split(","):
            name, _, arg = part.strip().partition("=")
            if name:
                found[name.strip().lower()] = arg.strip().strip('"')
    return found


def _schema_error(err: schema.SchemaError, root: str) -> GraphError:
    """A schema refusal in Graph's shape. Query options: "Could not find a property named 'X'
    on type 'T'." (code RequestBroker--ParseUri for Outlook types, PROVIDER-APIS.md; BadRequest
    "Parsing OData Select and Expand failed: …" elsewhere, davmail #451); expanding a
    non-navigation property: OData's "… is not a navigation property or complex property. Only
    navigation properties can be expanded."; a body property: RequestBodyRead "The property 'X'
    does not exist on type 'T'. Make sure to only use property names that are defined by the
    type or mark the type as open type." (msgraph-sdk-dotnet #450, microsoft-graph-docs #6428)."""
    outlook = root in OUTLOOK_TYPES
    qualified = (
        f"Microsoft.OutlookServices.{err.type_name[:1].upper()}{err.type_name[1:]}"
        if outlook
        else f"microsoft.graph.{err.type_name}"
    )
    if err.where == "body":
        return GraphError(
            400,
            "RequestBodyRead",
            f"The property '{err.prop}' does not exist on type '{qualified}'. Make sure to only "
            "use property names that are defined by the type or mark the type as open type.",
        )
    if err.reason == "not-navigation":
        text = (
            f"Property '{err.prop}' on type '{qualified}' is not a navigation property or "
            "complex property. Only navigation properties can be expanded."
        )
    else:
        text = f"Could not find a property named '{err.prop}' on type '{qualified}'."
    if outlook:
        return GraphError(400, "RequestBroker--ParseUri", text)
    if err.where in ("select", "expand"):
        text = "Parsing OData Select and Expand failed: " + text
    return GraphError(400, "BadRequest", text)


def _check_body(type_name: str, payload: Any) -> None:
    try:
        schema.check_body(type_name, payload)
    except schema.SchemaError as err:
        raise _schema_error(err, type_name) from None


def _property_key(prop_id: str) -> tuple[str, ...]:
    """An extended property id in a comparable form. Proptag ids (``Integer 0x0036``) compare
    by type and number; in named ids the type and GUID are case-insensitive, the name is not
    ("Filtering the string name (Name) in the id of an extended property is case-sensitive",
    [MGD api-reference/v1.0/api/singlevaluelegacyextendedproperty-get.md])."""
    parts = prop_id.split()
    if len(parts) == 2 and parts[1].lower().startswith("0x"):
        try:
            return (parts[0].lower(), str(int(parts[1], 16)))
        except ValueError:
            pass
    if len(parts) >= 4 and parts[2].lower() == "id":
        try:
            return (parts[0].lower(), parts[1].lower(), "id", str(int(parts[3], 16)))
        except ValueError:
            pass
    if len(parts) >= 4:
        return (parts[0].lower(), parts[1].lower(), parts[2].lower(), " ".join(parts[3:]))
    return tuple(parts)


def _echoed_id(prop_id: str) -> str:
    """The id as Graph writes it back: a proptag's number in lower-case hex without leading
    zeros, whatever was asked (``Integer 0x0036`` -> ``Integer 0x36``; a live check recorded
    in valter-araujo/outlook-mac-mcp, email size mapper)."""
    parts = prop_id.split()
    if len(parts) == 2 and parts[1].lower().startswith("0x"):
        try:
            return f"{parts[0]} 0x{int(parts[1], 16):x}"
        except ValueError:
            pass
    return prop_id


def _id_filter(type_name: str, flt: str | None) -> list[str] | None:
    """The ids an extended property expansion asks for: ``$filter=id eq 'A' or id eq 'B'``,
    "currently the only way" to get one [singlevaluelegacyextendedproperty-get.md]; None
    without a filter (every property the item has)."""
    if not flt:
        return None
    terms = re.split(r"\s+or\s+", flt.strip(), flags=re.IGNORECASE)
    ids = []
    for term in terms:
        m = re.fullmatch(r"\(?\s*id\s+eq\s+'((?:[^']|'')*)'\s*\)?", term, re.IGNORECASE)
        if not m:
            raise GraphError(
                400,
                "ErrorInvalidUrlQueryFilter",
                f"An extended property of a {type_name} is expanded with a $filter of "
                "id eq '…' terms only.",
            )
        ids.append(m.group(1).replace("''", "'"))
    return ids


def _body_fields(text: str) -> dict[str, Any]:
    """A message body written as ``text``: served as HTML by default, as the text itself with
    ``Prefer: outlook.body-content-type="text"`` [MGD api-reference/v1.0/api/message-get.md],
    and its first 255 characters as ``bodyPreview`` [resources/message.md]."""
    markup = html.escape(text).replace("\n", "<br>\r\n")
    return {
        "body": {
            "contentType": "html",
            "content": f'<html>\r\n<head>\r\n<meta http-equiv="Content-Type" '
            f'content="text/html; charset=utf-8">\r\n</head>\r\n<body>\r\n{markup}\r\n'
            "</body>\r\n</html>\r\n",
        },
        "_text": text,
        "bodyPreview": text[:PREVIEW_CHARS],
    }


def _sensitivity_property(level: str | int) -> dict[str, str]:
    """PidTagSensitivity as a single-value extended property: the value is a string, as Graph
    sends every extended property's value [resources/singlevaluelegacyextendedproperty.md]."""
    number = SENSITIVITIES[level.lower()] if isinstance(level, str) else int(level)
    if number not in SENSITIVITIES.values():
        raise ValueError(f"PidTagSensitivity is 0-3, not {level!r}")
    return {"id": f"Integer 0x{SENSITIVITY_TAG:04x}", "value": str(number)}


def _body_applied(prefer: dict[str, str], applied: dict[str, str]) -> dict[str, str]:
    """Echo ``Prefer: outlook.body-content-type`` in ``Preference-Applied`` ("A
    Preference-Applied header is returned as confirmation if this Prefer header is
    specified", [MGD api-reference/v1.0/api/message-get.md])."""
    kind = prefer.get("outlook.body-content-type")
    if kind in ("text", "html"):
        done = [applied["Preference-Applied"]] if applied.get("Preference-Applied") else []
        applied["Preference-Applied"] = ", ".join([*done, f'outlook.body-content-type="{kind}"'])
    return applied


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 and localhost signed by it:
    (ca.pem, server.pem, server.key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, cert_pem, key_pem


def make_client_certificate() -> tuple[str, str]:
    """A self-signed certificate an admin would upload to the app registration:
    (private key PEM + certificate PEM, certificate PEM)."""
    now = dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncd")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem + cert_pem, cert_pem


class MicrosoftEmulator:
    """State and behaviour; :meth:`start` serves it over TLS on 127.0.0.1 and a free port."""

    def __init__(
        self,
        mailbox_concurrency: int = MAILBOX_CONCURRENCY,
        throttle_retry_after: int = 1,
        rate_limit: tuple[int, float] | None = None,
        shuffle_seed: int | None = 1,
    ) -> None:
        """``shuffle_seed``: message delta results come in an order drawn from this seed (the
        same every run, never oldest first); None serves them in the order they changed."""
        self.lock = threading.RLock()
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
        self.faults: deque[dict[str, Any]] = deque()
        self.requests = 0  # HTTP requests to Graph (a $batch is one)
        self.throttled = 0  # 429s answered (batch items included)
        self.token_requests = 0
        self.server: ThreadingHTTPServer | None = None
        self.base = ""
        self.tls_dir = Path(tempfile.mkdtemp(prefix="syncd-msft-"))
        self.ca_pem, self._cert, self._key = make_tls(self.tls_dir)
        self._random = random.Random(7)

    # --- seeding -----------------------------------------------------------------------

    def add_app(
        self,
        tenant: str,
        client_id: str,
        secret: str | None = None,
        certificate: str | None = None,
        public: bool = False,
        permissions: frozenset[str] = APP_PERMISSIONS,
    ) -> App:
        """An app registration; ``certificate`` is the PEM of a certificate uploaded to it."""
        app = App(tenant, client_id, secret, public=public, permissions=permissions)
        if certificate:
            cert = x509.load_pem_x509_certificate(certificate.encode())
            app.certificate = cert.public_key()
            app.thumbprints = tuple(
                base64.urlsafe_b64encode(cert.fingerprint(h)).decode().rstrip("=")
                for h in (hashes.SHA1(), hashes.SHA256())
            )
        self.apps[client_id] = app
        return app

    def add_user(self, address: str) -> User:
        with self.lock:
            if address not in self.users:
                self.users[address] = User(address, str(uuid.uuid5(uuid.NAMESPACE_URL, address)))
                self.todo_list(address, "Tasks", wellknown="defaultList")
            return self.users[address]

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def deliver(
        self,
        user: str,
        folder: str = "inbox",
        *,
        subject: str,
        sender: tuple[str, str],
        to: list[tuple[str, str]],
        cc: list[tuple[str, str]] = (),  # type: ignore[assignment]
        message_id: str | None = None,
        conversation_id: str | None = None,
        sent: dt.datetime | None = None,
        body: str = "",
        sensitivity: str | int | None = None,
        categories: list[str] = (),  # type: ignore[assignment]
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        is_draft: bool = False,
    ) -> str:
        """A message in ``folder``; returns its immutable id. Internet headers exist only on
        messages that came from outside (not in Sent Items), as in Exchange Online. ``body`` is
        the text the sender wrote (served as HTML, or as text on request). ``sensitivity``
        (normal, personal, private, confidential, or 0-3) is set as the MAPI property
        PidTagSensitivity, never as a property of the message; None leaves it unset."""
        with self.lock:
            box = self.add_user(user)
            when = (sent or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
            iso = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            mid = message_id or f"<{uuid.uuid4().hex}@emulator.test>"

            def recipient(pair: tuple[str, str]) -> dict[str, Any]:
                return {"emailAddress": {"name": pair[0], "address": pair[1]}}

            resource: dict[str, Any] = {
                "createdDateTime": iso,
                "lastModifiedDateTime": iso,
                "receivedDateTime": iso,
                "sentDateTime": iso,
                "hasAttachments": False,
                "internetMessageId": mid,
                "subject": subject,
                **_body_fields(body),
                "importance": "normal",
                "conversationId": conversation_id or "AAQk" + uuid.uuid4().hex,
                "isRead": False,
                "isDraft": is_draft,
                "categories": list(categories),
                "sender": recipient(sender),
                "from": recipient(sender),
                "toRecipients": [recipient(p) for p in to],
                "ccRecipients": [recipient(p) for p in cc],
                "bccRecipients": [],
            }
            if folder != "sentitems":
                resource["internetMessageHeaders"] = [
                    {"name": "Message-ID", "value": mid},
                    {"name": "Subject", "value": subject},
                    {"name": "From", "value": f'"{sender[0]}" <{sender[1]}>'},
                    *({"name": n, "value": v} for n, v in headers),
                ]
            if sensitivity is not None:
                resource["_extended"] = [_sensitivity_property(sensitivity)]
            immutable = "AAkAL" + secrets.token_urlsafe(24)
            rest = "AAMkA" + secrets.token_urlsafe(24)
            box.collection(folder)[immutable] = Record(immutable, rest, resource, self._next())
            return immutable

    def move(self, user: str, immutable_id: str, to_folder: str) -> None:
        """Move a message: the old folder reports it removed, the new one has it with a new
        REST id (the immutable id stays)."""
        with self.lock:
            box = self.users[user]
            for name, coll in box.collections.items():
                record = coll.get(immutable_id)
                if record and not record.removed and name in WELL_KNOWN_FOLDERS:
                    record.removed, record.seq = True, self._next()
                    box.collection(to_folder)[immutable_id] = Record(
                        immutable_id,
                        "AAMkA" + secrets.token_urlsafe(24),
                        dict(record.resource),
                        self._next(),
                    )
                    return
            raise KeyError(immutable_id)

    def update_message(self, user: str, immutable_id: str, **changes: Any) -> None:
        """Change a message's properties (``body`` as text, ``sensitivity`` as for
        :meth:`deliver`, None to unset it)."""
        if "body" in changes and isinstance(changes["body"], str):
            changes.update(_body_fields(changes.pop("body")))
        with self.lock:
            for coll in self.users[user].collections.values():
                record = coll.get(immutable_id)
                if record and not record.removed:
                    if "sensitivity" in changes:
                        level = changes.pop("sensitivity")
                        others = [
                            p
                            for p in record.resource.get("_extended") or []
                            if _property_key(p["id"]) != ("integer", str(SENSITIVITY_TAG))
                        ]
                        if level is not None:
                            others.append(_sensitivity_property(level))
                        record.resource["_extended"] = others
                    record.resource.update(changes)
                    record.seq = self._next()

    def delete_message(self, user: str, immutable_id: str) -> None:
        with self.lock:
            for coll in self.users[user].collections.values():
                record = coll.get(immutable_id)
                if record and not record.removed:
                    record.removed, record.seq = True, self._next()

    def add_event(
        self,
        user: str,
        *,
        subject: str,
        start: dt.datetime,
        end: dt.datetime,
        organizer: tuple[str, str],
        attendees: list[tuple[str, str]],
        uid: str | None = None,
        zone: str = "UTC",
        sensitivity: str = "normal",
        categories: list[str] = (),  # type: ignore[assignment]
        cancelled: bool = False,
    ) -> str:
        """An event on ``user``'s primary calendar (times kept in ``zone``); returns its id."""
        return self._store_event(
            user,
            {
                "subject": subject,
                "iCalUId": uid or "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex.upper(),
                "organizer": {"emailAddress": {"name": organizer[0], "address": organizer[1]}},
                "attendees": [
                    {
                        "type": "required",
                        "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
                        "emailAddress": {"name": n, "address": a},
                    }
                    for n, a in attendees
                ],
                "start": _graph_time(start, zone),
                "end": _graph_time(end, zone),
                "isCancelled": cancelled,
                "sensitivity": sensitivity,
                "categories": list(categories),
            },
        )

    def _store_event(self, user: str, event: dict[str, Any]) -> str:
        with self.lock:
            box = self.add_user(user)
            eid = "AAMkAE" + secrets.token_urlsafe(24)
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
            resource = {
                "createdDateTime": now,
                "lastModifiedDateTime": now,
                "type": "singleInstance",
                "showAs": "busy",
                "isAllDay": False,
                "isCancelled": False,
                "isOrganizer": True,
                "sensitivity": "normal",
                "categories": [],
                "attendees": [],
                "bodyPreview": "",
                "location": {"displayName": ""},
                "transactionId": None,
                **event,
            }
            resource["iCalUId"] = resource.get("iCalUId") or (
                "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex.upper()
            )
            box.collection("calendar")[eid] = Record(eid, eid, resource, self._next())
            return eid

    def update_event(self, user: str, event_id: str, **changes: Any) -> None:
        with self.lock:
            record = self.users[user].collection("calendar")[event_id]
            record.resource.update(changes)
            record.seq = self._next()

    def delete_event(self, user: str, event_id: str) -> None:
        with self.lock:
            record = self.users[user].collection("calendar")[event_id]
            record.removed, record.seq = True, self._next()

    def events(self, user: str) -> list[dict[str, Any]]:
        """The user's calendar as Outlook shows it (no deleted events)."""
        with self.lock:
            return [
                {"id": r.immutable_id, **r.resource}
                for r in self.users[user].collection("calendar").values()
                if not r.removed
            ]

    def todo_list(self, user: str, name: str, wellknown: str = "none") -> str:
        with self.lock:
            box = self.users[user]
            for lid, info in box.todo_lists.items():
                if info["displayName"] == name:
                    return lid
            lid = "AQMkAD" + secrets.token_urlsafe(18)
            box.todo_lists[lid] = {
                "id": lid,
                "displayName": name,
                "isOwner": True,
                "isShared": False,
                "wellknownListName": wellknown,
            }
            box.todo_tasks[lid] = {}
            return lid

    def tasks(self, user: str) -> list[dict[str, Any]]:
        """Every To Do task of ``user`` with its list's name, as the To Do app shows them."""
        with self.lock:
            box = self.users[user]
            return [
                {**task, "list": box.todo_lists[lid]["displayName"]}
                for lid, tasks in box.todo_tasks.items()
                for task in tasks.values()
            ]

    def complete_task(self, user: str, task_id: str) -> None:
        """The user ticks the task off in To Do."""
        with self.lock:
            for tasks in self.users[user].todo_tasks.values():
                if task_id in tasks:
                    now = dt.datetime.now(dt.UTC)
                    tasks[task_id]["status"] = "completed"
                    tasks[task_id]["completedDateTime"] = _graph_time(now, "UTC")
                    tasks[task_id]["lastModifiedDateTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
                    return
            raise KeyError(task_id)

    def expire_delta_tokens(self, maintenance: bool = False) -> None:
        """Forget every sync state: stored delta links now answer 410 syncStateNotFound, or
        with ``maintenance`` 410 with a ``Location`` header (an empty $deltatoken: start
        over), as during a mailbox's maintenance."""
        with self.lock:
            self.delta_tokens.clear()
            self.maintenance = maintenance

    def expire_access_tokens(self) -> None:
        with self.lock:
            for grant in self.grants.values():
                grant.expires = 0

    def revoke_consent(self, client_id: str) -> None:
        """An admin removes the app's consent: tokens still come, Graph refuses them."""
        self.apps[client_id].consented = False

    def delete_secret(self, client_id: str) -> None:
        self.apps[client_id].secret = None

    def revoke_refresh_tokens(self, user: str) -> None:
        with self.lock:
            for token, (_, who) in list(self.refresh_tokens.items()):
                if who == user:
                    del self.refresh_tokens[token]
            for token, grant in list(self.grants.items()):
                if grant.user == user:
                    del self.grants[token]

    def inject(self, **fault: Any) -> None:
        """Queue a fault for the next Graph request: status=503 (retry_after=s), status=429,
        drop=True (close the connection unanswered), delay=seconds before answering;
        path="…" limits it to requests whose path contains that text."""
        self.faults.append(fault)

    def peak_inflight(self) -> dict[str, int]:
        return {u.address: u.peak_inflight for u in self.users.values()}

    # --- serving -----------------------------------------------------------------------

    def start(self) -> str:
        emulator = self

        class Handler(_Handler):
            state = emulator

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert, self._key)
        # the handshake runs in the request's thread, so one slow client cannot stall accept()
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.base = f"https://127.0.0.1:{server.server_port}"
        return self.base

    @property
    def graph_url(self) -> str:
        return self.base + "/v1.0/"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        shutil.rmtree(self.tls_dir, ignore_errors=True)

    # --- identity ----------------------------------------------------------------------

    def openid_configuration(self, tenant: str) -> tuple[int, dict[str, Any]]:
        if not any(app.tenant == tenant for app in self.apps.values()):
            return _aad_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID",
            )
        root = f"{self.base}/{tenant}"
        return 200, {
            "issuer": f"{root}/v2.0",
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "jwks_uri": f"{root}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
        }

    def _client(self, tenant: str, form: dict[str, str]) -> App | tuple[int, dict[str, Any]]:
        client_id = form.get("client_id", "")
        app = self.apps.get(client_id)
        if app is None or app.tenant != tenant:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        if app.public:
            return app
        if "client_assertion" in form:
            return self._check_assertion(app, form, tenant)
        if not form.get("client_secret"):  # e.g. a device-code sign-in with a confidential app
            return _aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        if form.get("client_secret") != app.secret:
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                "is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )
        return app

    def _check_assertion(
        self, app: App, form: dict[str, str], tenant: str
    ) -> App | tuple[int, dict[str, Any]]:
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            sent = {str(header.get(k, "")).rstrip("=") for k in ("x5t", "x5t#S256")}
            if app.certificate is None or not sent & set(app.thumbprints):
                raise jwt.InvalidTokenError("no certificate with this thumbprint")
            claims = jwt.decode(
                assertion,
                app.certificate,
                algorithms=["RS256", "PS256"],
                audience=f"{self.base}/{tenant}/oauth2/v2.0/token",
            )
            if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
                raise jwt.InvalidTokenError("iss and sub must be the client id")
        except jwt.InvalidTokenError as exc:
            return _aad_error(
                401,
                "invalid_client",
                700027,
                f"The certificate with identifier used to sign the client assertion is not "
                f"registered on application. [Reason - {exc}]",
            )
        return app

    def _issue(self, app: App, user: str | None, scopes: frozenset[str]) -> dict[str, Any]:
        token = "eyJ0eXAi." + secrets.token_urlsafe(32)
        self.grants[token] = Grant(app, user, time.time() + 3599, scopes)
        reply: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }
        if user is not None:
            box = self.users[user]
            refresh = "0.AXo" + secrets.token_urlsafe(40)
            self.refresh_tokens[refresh] = (app.client_id, user)
            claims = {
                "aud": app.client_id,
                "iss": f"{self.base}/{app.tenant}/v2.0",
                "iat": int(time.time()),
                "nbf": int(time.time()),
                "exp": int(time.time()) + 3600,
                "name": user.split("@")[0].title(),
                "oid": box.object_id,
                "preferred_username": user,
                "sub": box.object_id,
                "tid": app.tenant,
                "ver": "2.0",
            }
            reply.update(
                refresh_token=refresh,
                scope=" ".join(sorted(scopes)),
                id_token=jwt.encode(
                    claims, "syncd-emulator-id-token-signing-key-32b", algorithm="HS256"
                ),
                client_info=base64.urlsafe_b64encode(
                    json.dumps({"uid": box.object_id, "utid": app.tenant}).encode()
                )
                .decode()
                .rstrip("="),
            )
        else:
            reply["scope"] = GRAPH_DEFAULT_SCOPE
        return reply

    def token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.token_requests += 1
            app = self._client(tenant, form)
            if isinstance(app, tuple):
                return app
            grant = form.get("grant_type")
            scopes = frozenset(form.get("scope", "").split())
            if grant == "client_credentials":
                if app.public:
                    return _aad_error(
                        400,
                        "invalid_client",
                        7000218,
                        "The request body must contain the "
                        "following parameter: 'client_assertion' or 'client_secret'.",
                    )
                if scopes != {GRAPH_DEFAULT_SCOPE}:
                    return _aad_error(
                        400,
                        "invalid_scope",
                        1002012,
                        f"The provided value for scope {form.get('scope', '')} is not valid. "
                        "Client credential flows must have a scope value with /.default "
                        "suffixed to the resource identifier (application ID URI).",
                    )
                return 200, self._issue(app, None, frozenset())
            if grant == "refresh_token":
                owner = self.refresh_tokens.get(form.get("refresh_token", ""))
                if owner is None or owner[0] != app.client_id:
                    return _aad_error(
                        400,
                        "invalid_grant",
                        50173,
                        "The provided grant has expired due to it being revoked, a fresh auth "
                        "token is needed. The user might have changed or reset their password.",
                    )
                del self.refresh_tokens[form["refresh_token"]]  # refresh tokens rotate
                return 200, self._issue(app, owner[1], self._delegated(scopes))
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                flow = self.device_codes.get(form.get("device_code", ""))
                if flow is None or flow["expires"] < time.time():
                    return _aad_error(
                        400,
                        "expired_token",
                        70020,
                        "The provided authorization "
                        "code or refresh token has expired due to inactivity.",
                    )
                if flow["user"] is None and self.auto_approve:
                    flow["user"] = self.auto_approve
                if flow["user"] is None:
                    return _aad_error(
                        400,
                        "authorization_pending",
                        70016,
                        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                    )
                del self.device_codes[form["device_code"]]
                return 200, self._issue(app, flow["user"], flow["scopes"])
            return _aad_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
            )

    @staticmethod
    def _delegated(scopes: frozenset[str]) -> frozenset[str]:
        short = {s.rsplit("/", 1)[-1] for s in scopes}
        return frozenset(short | {"openid", "profile", "offline_access"})

    def device_code(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            app = self.apps.get(form.get("client_id", ""))
            if app is None or app.tenant != tenant:
                return _aad_error(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{form.get('client_id')}' was not found.",
                )
            user_code = "".join(
                self._random.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9)
            )
            code = secrets.token_urlsafe(32)
            self.device_codes[code] = {
                "user_code": user_code,
                "user": None,
                "expires": time.time() + 900,
                "scopes": self._delegated(frozenset(form.get("scope", "").split())),
            }
            url = f"{self.base}/devicelogin"
            return 200, {
                "user_code": user_code,
                "device_code": code,
                "verification_uri": url,
                "expires_in": 900,
                "interval": 1,
                "message": f"To sign in, use a web browser to open the page {url} and enter "
                f"the code {user_code} to authenticate.",
            }

    def approve(self, user_code: str, user: str) -> None:
        """``user`` signs in at the device page and enters ``user_code``."""
        with self.lock:
            for flow in self.device_codes.values():
                if flow["user_code"] == user_code:
                    flow["user"] = user
                    return
            raise KeyError(user_code)

    # --- Graph -------------------------------------------------------------------------

    def authorize(self, header: str | None) -> Grant:
        token = (header or "").removeprefix("Bearer ").strip()
        grant = self.grants.get(token)
        if grant is None or grant.expires < time.time():
            raise GraphError(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        if not grant.app.consented:
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return grant

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

    @staticmethod
    def _need(grant: Grant, *permissions: str) -> None:
        have = grant.app.permissions if grant.user is None else grant.scopes
        if not any(p in have for p in permissions):
            raise GraphError(
                403,
                "ErrorAccessDenied",
                f"Access is denied. Check credentials and try again. (needs {permissions[0]})",
            )

    def enter(self, box: User) -> None:
        """A request to ``box`` starts: refused past the mailbox's concurrency or rate."""
        with self.lock:
            box.peak_inflight = max(box.peak_inflight, box.inflight + 1)
            if box.inflight >= self.mailbox_concurrency:
                self.throttled += 1
                raise GraphError(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": str(self.throttle_retry_after)},
                )
            if self.rate_limit:
                count, window = self.rate_limit
                now = time.monotonic()
                while box.recent and box.recent[0] <= now - window:
                    box.recent.popleft()
                if len(box.recent) >= count:
                    self.throttled += 1
                    wait = max(1, int(box.recent[0] + window - now + 0.999))
                    raise GraphError(
                        429,
                        "ApplicationThrottled",
                        "Application is over its MailboxRequests limit.",
                        {"Retry-After": str(wait)},
                    )
                box.recent.append(now)
            box.inflight += 1

    def leave(self, box: User) -> None:
        with self.lock:
            box.inflight -= 1

    def graph(
        self, method: str, target: str, headers: Any, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """One Graph request (also one item of a $batch): (status, body, headers)."""
        url = urlparse(target)
        path = unquote(url.path).removeprefix("/v1.0")
        if not path.startswith("/"):
            path = "/" + path
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        prefer = _prefer(headers)
        try:
            grant = self.authorize(headers.get("Authorization"))
            m = re.match(r"^/(users/(?P<user>[^/]+)|me)(?P<rest>/.*)?$", path)
            if not m:
                raise GraphError(400, "BadRequest", f"Resource not found for the segment '{path}'.")
            box = self.resolve_user(grant, m.group("user") or "me")
            rest = m.group("rest") or ""
            self.enter(box)
            try:
                if self.latency:
                    time.sleep(self.latency)
                return self._route(grant, box, method, rest, params, prefer, body)
            finally:
                self.leave(box)
        except GraphError as err:
            return err.status, err.body(), err.headers

    def _route(
        self,
        grant: Grant,
        box: User,
        method: str,
        rest: str,
        params: dict[str, str],
        prefer: dict[str, str],
        body: bytes,
    ) -> tuple[int, Any, dict[str, str]]:
        payload = json.loads(body) if body else {}
        applied: dict[str, str] = {}
        m = re.match(r"^/mailFolders/(?P<folder>[^/]+)/messages/delta$", rest)
        if m and method == "GET":
            self._need(grant, "Mail.Read", "Mail.ReadBasic.All", "Mail.ReadWrite")
            self._check_query(params, DELTA_QUERY, "message")
            self._delta_limits(params)
            folder = m.group("folder").lower()
            if folder not in WELL_KNOWN_FOLDERS:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            return 200, self._delta(box, folder, params, prefer, applied), applied
        m = re.match(r"^/messages/(?P<id>[^/]+)$", rest)
        if m and method == "GET":
            self._need(grant, "Mail.Read", "Mail.ReadWrite")
            self._check_query(params, {"$select", "$expand"}, "message")
            record = self._find_message(box, m.group("id"))
            return 200, self._message(record, params, prefer), _body_applied(prefer, applied)
        if rest == "/calendarView/delta" and method == "GET":
            self._need(grant, "Calendars.Read", "Calendars.ReadWrite")
            # [event-delta]: no $select, $filter, $orderby, $expand or $search
            self._check_query(params, {"startDateTime", "endDateTime", "$deltatoken", "$skiptoken"})
            return 200, self._delta(box, "calendar", params, prefer, applied), applied
        if rest == "/events" and method == "POST":
            self._need(grant, "Calendars.ReadWrite")
            _check_body("event", payload)
            return 201, self._create_event(box, payload, prefer), {}
        m = re.match(r"^/events/(?P<id>[^/]+)$", rest)
        if m and method in ("GET", "PATCH", "DELETE"):
            self._need(
                grant,
                "Calendars.ReadWrite" if method != "GET" else "Calendars.Read",
                "Calendars.ReadWrite",
            )
            if method == "GET":
                self._check_query(params, {"$select", "$expand"}, "event")
            event = box.collection("calendar").get(m.group("id"))
            if event is None or event.removed:
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            if method == "DELETE":
                event.removed, event.seq = True, self._next()
                return 204, b"", {}
            if method == "PATCH":
                _check_body("event", payload)
                with self.lock:
                    event.resource.update(self._event_fields(payload))
                    event.seq = self._next()
            return 200, self._event(event, prefer, params), {}
        if rest.startswith("/todo/"):
            self._need(grant, "Tasks.ReadWrite.All", "Tasks.ReadWrite")
            return self._todo(box, method, rest, params, payload)
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest}'.")

    @staticmethod
    def _check_query(params: dict[str, str], allowed: set[str], entity: str | None = None) -> None:
        """Unsupported query options are refused, and so is any property that ``entity`` (its
        schema from msgraph-sdk's models) does not have in $select, $expand, $filter or
        $orderby, as Graph does."""
        for name in params:
            if name not in allowed:
                raise GraphError(
                    400,
                    "BadRequest",
                    f"The query parameter '{name}' is not supported with this request.",
                )
        if entity:
            try:
                schema.check_query(entity, params)
            except schema.SchemaError as err:
                raise _schema_error(err, entity) from None
            for item in schema.check_expand(entity, params.get("$expand")):
                if item.name == "singleValueExtendedProperties":
                    _id_filter(entity, item.options.get("$filter"))

    @staticmethod
    def _delta_limits(params: dict[str, str]) -> None:
        """Message delta's own limits: "The only supported $filter expressions are
        receivedDateTime ge|gt {value}"; "the only supported $orderby expression is
        receivedDateTime desc" [MGD api-reference/v1.0/api/message-delta.md,
        concepts/delta-query-messages.md]."""
        flt = params.get("$filter")
        if flt and not re.fullmatch(r"\s*receivedDateTime (ge|gt) \S+\s*", flt):
            raise GraphError(
                400, "ErrorInvalidProperty", "The property is not supported in a delta $filter."
            )
        order = params.get("$orderby")
        if order and not re.fullmatch(r"\s*receivedDateTime desc\s*", order):
            raise GraphError(
                400, "ErrorInvalidProperty", "The property is not supported in a delta $orderby."
            )

    # messages and events as answers

    def _find_message(self, box: User, some_id: str) -> Record:
        for coll_name, coll in box.collections.items():
            if coll_name == "calendar":
                continue
            for record in coll.values():
                if not record.removed and some_id in (record.immutable_id, record.rest_id):
                    return record
        raise GraphError(
            404, "ErrorItemNotFound", "The specified object was not found in the store."
        )

    @staticmethod
    def _id(record: Record, prefer: dict[str, str]) -> str:
        return record.immutable_id if prefer.get("idtype") == "ImmutableId" else record.rest_id

    @staticmethod
    def _selected(type_name: str, resource: dict[str, Any], query: dict[str, str]) -> list[str]:
        """The properties an answer carries: those of $select, else the stored ones (internal
        keys start with ``_``; a message's internet headers only on request [message-get.md])."""
        select = schema.check_select(type_name, query.get("$select"))
        if select and "*" not in select:
            return select
        hidden = {"internetMessageHeaders"} if type_name == "message" else set()
        return [k for k in resource if not k.startswith("_") and k not in hidden]

    def _expanded(
        self, type_name: str, record: Record, expand: str | None
    ) -> dict[str, list[dict[str, Any]]]:
        """The navigation properties $expand asks for. An extended property appears only when
        the item has it ("expanded with the matching extended property"
        [singlevaluelegacyextendedproperty-get.md]); with none of them the key is left out."""
        out: dict[str, list[dict[str, Any]]] = {}
        for item in schema.check_expand(type_name, expand):
            if item.name == "singleValueExtendedProperties":
                stored = record.resource.get("_extended") or []
                wanted = _id_filter(type_name, item.options.get("$filter"))
                keys = None if wanted is None else {_property_key(i) for i in wanted}
                matched = [
                    {"id": _echoed_id(p["id"]), "value": p["value"]}
                    for p in stored
                    if keys is None or _property_key(p["id"]) in keys
                ]
                if matched:
                    out[item.name] = matched
            else:  # attachments, extensions, …: the emulator keeps none
                out[item.name] = list(record.resource.get("_" + item.name) or [])
        return out

    def _message(
        self, record: Record, query: dict[str, str], prefer: dict[str, str]
    ) -> dict[str, Any]:
        resource = record.resource
        out: dict[str, Any] = {}
        for key in self._selected("message", resource, query):
            if key == "body" and prefer.get("outlook.body-content-type") == "text":
                out[key] = {"contentType": "text", "content": resource.get("_text", "")}
            elif key in resource:
                out[key] = resource[key]
        out.update(self._expanded("message", record, query.get("$expand")))
        return {"@odata.etag": f'W/"{record.seq}"', "id": self._id(record, prefer), **out}

    def _event(
        self, record: Record, prefer: dict[str, str], query: dict[str, str] | None = None
    ) -> dict[str, Any]:
        query = query or {}
        resource = {
            k: record.resource[k]
            for k in self._selected("event", record.resource, query)
            if k in record.resource
        }
        zone = prefer.get("outlook.timezone")
        if zone:
            for key in ("start", "end"):
                if key in resource:
                    resource[key] = _graph_time(_parse_graph_time(resource[key]), zone)
        resource.update(self._expanded("event", record, query.get("$expand")))
        return {"@odata.etag": f'W/"{record.seq}"', "id": record.immutable_id, **resource}

    @staticmethod
    def _event_fields(payload: dict[str, Any]) -> dict[str, Any]:
        fields = {
            k: v for k, v in payload.items() if k not in ("id", "singleValueExtendedProperties")
        }
        for key in ("start", "end"):
            if key in fields:
                _parse_graph_time(fields[key])  # refuse an unknown zone as Graph does
        if "singleValueExtendedProperties" in payload:
            fields["_extended"] = payload["singleValueExtendedProperties"] or []
        return fields

    def _create_event(
        self, box: User, payload: dict[str, Any], prefer: dict[str, str]
    ) -> dict[str, Any]:
        for key in ("start", "end"):
            if key not in payload:
                raise GraphError(
                    400,
                    "ErrorInvalidRequest",
                    f"Your request can't be completed. The '{key}' property is required.",
                )
        with self.lock:
            transaction = payload.get("transactionId")
            if transaction and transaction in box.transactions:  # a client's retry
                record = box.collection("calendar")[box.transactions[transaction]]
                return self._event(record, prefer)
            eid = self._store_event(box.address, self._event_fields(payload))
            if transaction:
                box.transactions[transaction] = eid
            return self._event(box.collection("calendar")[eid], prefer)

    # delta

    def _delta(
        self,
        box: User,
        coll: str,
        params: dict[str, str],
        prefer: dict[str, str],
        applied: dict[str, str],
    ) -> dict[str, Any]:
        with self.lock:
            if "$deltatoken" in params:
                state = self.delta_tokens.get(params["$deltatoken"])
                if state is None or state["user"] != box.address or state["coll"] != coll:
                    if self.maintenance:
                        here = f"{self.base}/v1.0/users/{quote(box.address)}" + (
                            f"/mailFolders/{coll}/messages/delta?$deltatoken="
                            if coll != "calendar"
                            else "/calendarView/delta?$deltatoken="
                        )
                        raise GraphError(
                            410, "resyncRequired", "Resync required.", {"Location": here}
                        )
                    raise GraphError(
                        410,
                        "syncStateNotFound",
                        "The sync state generation is not found. Resync required.",
                    )
                state = {
                    **state,
                    "since": state["upto"],
                    "upto": self.seq,
                    "offset": 0,
                    "empty": self.empty_pages,
                }
            elif "$skiptoken" in params:
                state = self.delta_tokens.get(params["$skiptoken"])
                if state is None or state["user"] != box.address:
                    raise GraphError(
                        410,
                        "syncStateNotFound",
                        "The sync state generation is not found. Resync required.",
                    )
            else:
                state = {
                    "user": box.address,
                    "coll": coll,
                    "since": None,
                    "upto": self.seq,
                    "offset": 0,
                    "empty": self.empty_pages,
                }
                if coll == "calendar":
                    if "startDateTime" not in params or "endDateTime" not in params:
                        raise GraphError(
                            400,
                            "ErrorInvalidParameter",
                            "This request requires a time window specified by the query "
                            "string parameters StartDateTime and EndDateTime.",
                        )
                    state["window"] = (params["startDateTime"], params["endDateTime"])
                else:  # the query options are kept in the links' tokens [message-delta]
                    state["query"] = {
                        k: v
                        for k, v in params.items()
                        if k in ("$select", "$expand", "$filter", "$orderby")
                    }
            size = int(prefer.get("odata.maxpagesize", DEFAULT_PAGE))
            applied["Preference-Applied"] = f"odata.maxpagesize={size}"
            if coll != "calendar":
                _body_applied(prefer, applied)
            link = f"{self.base}/v1.0/users/{quote(box.address)}" + (
                f"/mailFolders/{coll}/messages/delta"
                if coll != "calendar"
                else "/calendarView/delta"
            )
            if state.get("empty"):  # an empty page that still carries a nextLink
                token = secrets.token_urlsafe(24)
                self.delta_tokens[token] = {**state, "empty": False}
                return {
                    "value": [],
                    "@odata.nextLink": f"{link}?{urlencode({'$skiptoken': token})}",
                }
            changes = self._changes(box, coll, state)
            page = changes[state["offset"] : state["offset"] + size]
            token = secrets.token_urlsafe(24)
            out: dict[str, Any] = {"@odata.context": f"{link}"}
            if state["offset"] + size < len(changes):
                self.delta_tokens[token] = {**state, "offset": state["offset"] + size}
                out["@odata.nextLink"] = f"{link}?{urlencode({'$skiptoken': token})}"
            else:
                self.delta_tokens[token] = {**state, "offset": 0}
                out["@odata.deltaLink"] = f"{link}?{urlencode({'$deltatoken': token})}"
            out["value"] = [self._delta_entry(r, coll, state, prefer) for r in page]
            return out

    def _in_window(self, record: Record, state: dict[str, Any]) -> bool:
        start, end = (dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in state["window"])
        if start.tzinfo is None:
            start, end = start.replace(tzinfo=dt.UTC), end.replace(tzinfo=dt.UTC)
        return (
            _parse_graph_time(record.resource["start"]) < end
            and _parse_graph_time(record.resource["end"]) > start
        )

    def _changes(self, box: User, coll: str, state: dict[str, Any]) -> list[Record]:
        records = sorted(box.collection(coll).values(), key=lambda r: r.seq)
        since, upto = state["since"], state["upto"]
        query = state.get("query") or {}
        flt = query.get("$filter") or ""
        m = re.match(r"receivedDateTime (ge|gt) (\S+)", flt)
        floor = m.group(2) if m else None
        if since is None:
            found = [r for r in records if not r.removed and r.seq <= upto]
            if floor:
                found = [r for r in found if r.resource["receivedDateTime"] >= floor]
                found = found[-5000:]  # [message-delta: $filter caps the results at 5,000]
        else:
            found = [r for r in records if since < r.seq <= upto]
            if self.replays:  # order is not guaranteed and changes may come again
                found = [r for r in records if r.seq <= since][-2:] + found
        if coll == "calendar":
            return [r for r in found if r.removed or self._in_window(r, state)]
        if query.get("$orderby"):  # receivedDateTime desc, the only order delta supports
            return sorted(
                found, key=lambda r: r.resource.get("receivedDateTime") or "", reverse=True
            )
        return self._shuffled(found, f"{box.address}:{coll}:{since}:{upto}")

    def _shuffled(self, records: list[Record], round_key: str) -> list[Record]:
        """A delta round's messages in no particular order: "If you don't include an $orderby
        expression, the return order isn't guaranteed" [MGD concepts/delta-query-messages.md,
        api-reference/v1.0/api/message-delta.md]. The order is drawn from ``shuffle_seed`` and
        the round (so every page of a round agrees, and runs repeat), and is never oldest
        first."""
        if self.shuffle_seed is None or len(records) < 2:
            return records
        out = list(records)
        random.Random(f"{self.shuffle_seed}:{round_key}").shuffle(out)

        def age(r: Record) -> tuple[str, int]:
            return (r.resource.get("receivedDateTime") or "", r.seq)

        if out == sorted(out, key=age):  # drawn oldest first after all: rotate it
            out = out[1:] + out[:1]
        return out

    def _delta_entry(
        self, record: Record, coll: str, state: dict[str, Any], prefer: dict[str, str]
    ) -> dict[str, Any]:
        if record.removed:
            rid = record.immutable_id if coll == "calendar" else self._id(record, prefer)
            return {"id": rid, "@removed": {"reason": "deleted"}}
        if coll == "calendar":
            return self._event(record, prefer)
        return self._message(record, state.get("query") or {}, prefer)

    # To Do

    def _todo(
        self, box: User, method: str, rest: str, params: dict[str, str], payload: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        entity = "todoTaskList" if rest == "/todo/lists" else "todoTask"
        if method == "GET":
            self._check_query(params, TODO_QUERY, entity)
            if params.get("$filter") or params.get("$orderby"):  # known properties, but…
                raise GraphError(
                    501, "NotImplemented", "The emulator does not evaluate $filter or $orderby."
                )
        elif method in ("POST", "PATCH"):
            _check_body(entity, payload)
        with self.lock:
            if rest == "/todo/lists":
                if method == "GET":
                    return 200, {"value": list(box.todo_lists.values())}, {}
                if method == "POST":
                    if not payload.get("displayName"):
                        raise GraphError(400, "invalidRequest", "displayName is required")
                    lid = "AQMkAD" + secrets.token_urlsafe(18)
                    box.todo_lists[lid] = {
                        "id": lid,
                        "displayName": payload["displayName"],
                        "isOwner": True,
                        "isShared": False,
                        "wellknownListName": "none",
                    }
                    box.todo_tasks[lid] = {}
                    return 201, box.todo_lists[lid], {}
            m = re.match(r"^/todo/lists/(?P<list>[^/]+)/tasks(?:/(?P<task>[^/]+))?$", rest)
            if not m or m.group("list") not in box.todo_lists:
                raise GraphError(404, "NotFound", "The requested resource was not found.")
            tasks = box.todo_tasks[m.group("list")]
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
            expand = any(
                e.name == "linkedResources"
                for e in schema.check_expand(entity, params.get("$expand"))
            )
            if m.group("task") is None:
                if method == "GET":
                    items = sorted(tasks.values(), key=lambda t: t["createdDateTime"])
                    skip, top = int(params.get("$skip", 0)), int(params.get("$top", 100))
                    out: dict[str, Any] = {
                        "value": [self._task(t, expand) for t in items[skip : skip + top]]
                    }
                    if skip + top < len(items):
                        query = {**params, "$skip": str(skip + top), "$top": str(top)}
                        out["@odata.nextLink"] = (
                            f"{self.base}/v1.0/users/{quote(box.address)}{rest}?{urlencode(query)}"
                        )
                    return 200, out, {}
                if method == "POST":
                    if not payload.get("title"):
                        raise GraphError(400, "invalidRequest", "title is required")
                    tid = "AAkALg" + secrets.token_urlsafe(24)
                    task = {
                        "importance": "normal",
                        "status": "notStarted",
                        "isReminderOn": False,
                        "categories": [],
                        "body": {"content": "", "contentType": "text"},
                        **payload,
                        "id": tid,
                        "createdDateTime": now,
                        "lastModifiedDateTime": now,
                    }
                    task["linkedResources"] = [
                        {"id": str(uuid.uuid4()), **r} for r in payload.get("linkedResources") or []
                    ]
                    tasks[tid] = task
                    return 201, self._task(task, True), {}
            else:
                found = tasks.get(m.group("task"))
                if found is None:
                    raise GraphError(404, "NotFound", "The requested resource was not found.")
                if method == "GET":
                    return 200, self._task(found, expand), {}
                if method == "PATCH":
                    found.update({k: v for k, v in payload.items() if k != "linkedResources"})
                    found["lastModifiedDateTime"] = now
                    if payload.get("status") == "completed":
                        found["completedDateTime"] = {"dateTime": now[:-1], "timeZone": "UTC"}
                    return 200, self._task(found, False), {}
                if method == "DELETE":
                    del tasks[m.group("task")]
                    return 204, b"", {}
        raise GraphError(405, "MethodNotAllowed", f"{method} is not allowed on {rest}")

    @staticmethod
    def _task(task: dict[str, Any], expand: bool) -> dict[str, Any]:
        return {k: v for k, v in task.items() if expand or k != "linkedResources"}

    # $batch

    def batch(self, headers: Any, body: bytes) -> tuple[int, Any]:
        """``POST /$batch`` [MGD concepts/json-batching.md]: at most 20 requests, each with an
        id ("Not case-sensitive. Must be unique in the batch, otherwise, the batch request
        fails with a 400"), a method and a relative url; ``dependsOn`` names only earlier ids
        (msgraph-sdk-java-core #71: a batch out of order is thrown back); "Batch should be
        either fully sequential or fully parallel" (a mix is 400, microsoft-graph-docs #16280).
        Parallel requests all run at once (each holds one of the mailbox's slots); sequential
        ones one after the other, and after a failure every later one is 424 ("any request
        that depends on that request fails with status code 424"). Answers in any order."""
        try:
            requests = json.loads(body)["requests"]
            if not isinstance(requests, list) or not all(
                isinstance(r, dict) and r.get("method") and r.get("url") for r in requests
            ):
                raise TypeError("requests")
        except (ValueError, KeyError, TypeError):
            return 400, GraphError(400, "BadRequest", "Invalid batch payload format.").body()
        if len(requests) > MAX_BATCH:
            return 400, GraphError(
                400,
                "MaximumRequestsExceeded",
                f"The number of requests in the batch exceeds the limit of {MAX_BATCH}.",
            ).body()
        ids = [str(r.get("id") or "").lower() for r in requests]
        if len(set(ids)) != len(ids) or not all(ids):
            return 400, GraphError(
                400, "BadRequest", "Batch request contains duplicate or missing ids."
            ).body()
        position = {rid: i for i, rid in enumerate(ids)}
        depends: list[list[str]] = []
        for i, r in enumerate(requests):
            named = r.get("dependsOn") or []
            if not isinstance(named, list):
                return 400, GraphError(400, "BadRequest", "Invalid batch payload format.").body()
            found = [str(d).lower() for d in named]
            if any(position.get(d, len(ids)) >= i for d in found):
                return 400, GraphError(
                    400,
                    "BadRequest",
                    "dependsOn refers to an id that is not an earlier request of the batch.",
                ).body()
            depends.append(found)
        parallel = not any(depends)
        sequential = all(d == ([ids[i - 1]] if i else []) for i, d in enumerate(depends))
        if not (parallel or sequential):
            return 400, GraphError(
                400, "BadRequest", "Batch should be either fully sequential or fully parallel."
            ).body()
        auth = headers.get("Authorization")

        def run(r: dict[str, Any]) -> dict[str, Any]:
            inner = _Headers({**(r.get("headers") or {}), "Authorization": auth})
            data = json.dumps(r["body"]).encode() if r.get("body") is not None else b""
            status, answer, extra = self.graph(str(r["method"]).upper(), r["url"], inner, data)
            item: dict[str, Any] = {"id": r["id"], "status": status, "headers": extra}
            if answer != b"":
                item["body"] = answer
            return item

        answers: list[dict[str, Any]] = []
        if parallel:
            with ThreadPoolExecutor(max_workers=max(1, len(requests))) as pool:
                answers = list(pool.map(run, requests))
        else:
            failed = False
            for r in requests:
                if failed:
                    answers.append(
                        {
                            "id": r["id"],
                            "status": 424,
                            "headers": {},
                            "body": GraphError(
                                424, "FailedDependency", "Failed dependency."
                            ).body(),
                        }
                    )
                    continue
                answers.append(run(r))
                failed = answers[-1]["status"] >= 400
        self._random.shuffle(answers)  # "responses might appear in a different order"
        return 200, {"responses": answers}


class _Headers(dict[str, Any]):
    """Case-insensitive ``get`` for a batch item's headers."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in values.items() if v is not None})

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class _Handler(BaseHTTPRequestHandler):
    state: MicrosoftEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json; odata.metadata=minimal")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _fault(self) -> bool:
        """Apply the next queued fault that fits this request; True when it answered."""
        faults = self.state.faults
        with self.state.lock:
            fault = next((f for f in faults if f.get("path", "") in self.path), None)
            if fault is None:
                return False
            faults.remove(fault)
        if fault.get("delay"):
            time.sleep(fault["delay"])
        if fault.get("drop"):
            self.close_connection = True
            self.connection.close()
            return True
        status = fault.get("status")
        if status:
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            if status == 429:
                self.state.throttled += 1
                err = GraphError(429, "TooManyRequests", "Too many requests.")
            else:
                err = GraphError(
                    status,
                    "serviceNotAvailable" if status == 503 else "generalException",
                    "The service is temporarily unavailable.",
                )
            self._send(status, err.body(), headers)
            return True
        return False

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _identity(self, method: str) -> bool:
        m = re.match(
            r"^/(?P<tenant>[^/]+)/(?P<what>v2\.0/\.well-known/openid-configuration|"
            r"oauth2/v2\.0/token|oauth2/v2\.0/devicecode)$",
            urlparse(self.path).path,
        )
        if not m:
            return False
        tenant, what = m.group("tenant"), m.group("what")
        if what.startswith("v2.0") and method == "GET":
            self._send(*self.state.openid_configuration(tenant))
            return True
        if method != "POST":
            return False
        form = {k: v[-1] for k, v in parse_qs(self._body().decode()).items()}
        if what.endswith("token"):
            self._send(*self.state.token(tenant, form))
        else:
            self._send(*self.state.device_code(tenant, form))
        return True

    def _handle(self, method: str) -> None:
        if self._identity(method):
            return
        if not self.path.startswith("/v1.0/"):
            self._send(404, GraphError(404, "NotFound", "Not found").body())
            return
        body = self._body() if method in ("POST", "PATCH") else b""
        with self.state.lock:
            self.state.requests += 1
        if self._fault():
            return
        if self.path.split("?")[0] == "/v1.0/$batch" and method == "POST":
            self._send(*self.state.batch(self.headers, body))
            return
        status, answer, headers = self.state.graph(method, self.path, self.headers, body)
        self._send(status, answer, headers)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
