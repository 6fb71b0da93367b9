"""Google People API v1, each user's two address books: ``people.connections.list`` (the
contacts the user saved, ``people/me`` only) and ``otherContacts.list`` (the "Other
contacts" Google made from the user's interactions).

Everything checkable comes from the discovery document shipped with
google-api-python-client (``people.v1.json``): the two routes and the query parameters each
takes (others are refused with 400), the fields ``personFields`` and ``readMask`` may name
(read from the parameters' descriptions), the ``Person`` properties a seeded person may
have, and the OAuth scopes each method needs. The sync semantics are the methods' own
descriptions [connections.list, otherContacts.list in people.v1.json]:

- ``requestSyncToken`` asks for a ``nextSyncToken``, given on the last page only
  [ListConnectionsResponse.nextSyncToken];
- with a ``syncToken`` only the people changed since come back, the deleted ones as a person
  with ``metadata.deleted`` true;
- "Sync tokens expire 7 days after the full sync": a token descends from the full sync that
  began its chain and expires with it (``sync_token_ttl``, settable; ``age_sync_tokens``);
  an expired or unknown token is refused with 400, status ``FAILED_PRECONDITION`` and an
  ``ErrorInfo`` with reason ``EXPIRED_SYNC_TOKEN`` and the message "Sync token is expired.
  Clear local cache and retry call without the sync token." (../shared/PROVIDER-APIS.md,
  People; garrytan/gbrain#5127 shows the 400 and the message from the live service);
- "When the page_token or sync_token is specified, all other request parameters must match
  the first call": a different field mask, ``sources`` or ``sortOrder`` is a 400.

Scopes: an access token carries the scopes its token request asked for (the refresh grant's
``scope``, the JWT's ``scope`` claim; every scope when it asked for none), less those the
user did not grant (:meth:`People.decline`: unticked at consent, or left out of a domain-wide
delegation). A method called without one of its discovery scopes is refused with 403
``PERMISSION_DENIED`` "Request had insufficient authentication scopes." and a
``WWW-Authenticate`` header with ``error="insufficient_scope"`` (googleworkspace/php-samples#49,
kwent/react-google-contacts#6). People has its own quotas: calls are not charged to Gmail's.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from ..http import ApiError, Request, Response
from .discovery import DISCOVERY, STANDARD_PARAMETERS
from .oauth import SCOPES as GMAIL_SCOPES
from .oauth import OAuth
from .state import GmailError

PEOPLE = json.loads((DISCOVERY / "people.v1.json").read_text())
_RESOURCES = PEOPLE["resources"]
_METHODS = {
    "connections.list": _RESOURCES["people"]["resources"]["connections"]["methods"]["list"],
    "otherContacts.list": _RESOURCES["otherContacts"]["methods"]["list"],
}
# each method's book, also the name of the list its answer holds [List*Response]
BOOKS = {"connections.list": "connections", "otherContacts.list": "otherContacts"}
MASKS = {"connections.list": "personFields", "otherContacts.list": "readMask"}
TOTAL = {"connections.list": "totalItems", "otherContacts.list": "totalSize"}
# what a page or sync token binds: "all other request parameters must match the first call"
BOUND = {name: {mask, "sources", "sortOrder"} for name, mask in MASKS.items()}
QUERY = {
    name: {p for p, spec in m["parameters"].items() if spec["location"] == "query"}
    for name, m in _METHODS.items()
}
PERSON_FIELDS = frozenset(PEOPLE["schemas"]["Person"]["properties"])
PEOPLE_SCOPES = frozenset(s for m in _METHODS.values() for s in m["scopes"])
SYNC_TOKEN_TTL = 7 * 86400.0  # "Sync tokens expire 7 days after the full sync"
PAGE_SIZE, MOST = 100, 1000  # pageSize: "between 1 and 1000 ... Defaults to 100"
EXPIRED = "Sync token is expired. Clear local cache and retry call without the sync token."


def _valid_fields(method: dict[str, Any], mask: str) -> frozenset[str]:
    """The field names a mask may hold, as the parameter's description lists them (for
    ``readMask``, those of the default source, READ_SOURCE_TYPE_CONTACT)."""
    text = method["parameters"][mask]["description"]
    text = text.split("If READ_SOURCE_TYPE_PROFILE")[0]
    return frozenset(re.findall(r"\* (\w+)", text))


VALID_FIELDS = {name: _valid_fields(m, MASKS[name]) for name, m in _METHODS.items()}


def _route(method: dict[str, Any]) -> re.Pattern[str]:
    """The path regex of a method: ``{+name}`` takes its parameter's pattern."""

    def group(m: re.Match[str]) -> str:
        name = m.group(1)
        pattern = method["parameters"][name].get("pattern", "^[^/]+$").strip("^$")
        return f"(?P<{name}>{pattern})"

    return re.compile("^/" + re.sub(r"\{\+?(\w+)\}", group, method["path"]) + "$")


ROUTES = [(_route(m), m["httpMethod"], name) for name, m in _METHODS.items()]


class PeopleError(ApiError):
    """Google's error shape with a google.rpc status and, for some, an ErrorInfo."""

    def __init__(
        self,
        status: int,
        rpc: str,
        message: str,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.rpc, self.reason = rpc, reason

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.status, "message": self.message, "status": self.rpc}
        if self.reason:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "people.googleapis.com",
                }
            ]
        return {"error": error}


def _invalid(message: str) -> PeopleError:
    return PeopleError(400, "INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class Card:
    """What a test gives of a person."""

    name: str
    emails: list[str]
    given: str = ""
    family: str = ""
    organization: str = ""


@dataclass
class Entry:
    """One person of a book: its resource (without ``metadata.deleted``), the change number
    that last touched it, and whether it was deleted."""

    person: dict[str, Any]
    card: Card
    seq: int
    deleted: bool = False


@dataclass(frozen=True)
class Chain:
    """What a sync token stands for: a user's book read up to change ``upto``, under the
    request's parameters, in a chain begun by a full sync at ``full_at``."""

    user: str
    book: str
    upto: int
    params: tuple[tuple[str, tuple[str, ...]], ...]
    full_at: float


@dataclass(frozen=True)
class Listing:
    """A listing being paged: the resource names it returns, in order, and the chain its
    sync token continues."""

    chain: Chain
    names: tuple[str, ...]


class People(OAuth):
    """The People API over the emulator's users, and the scopes of OAuth's access tokens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.books: dict[tuple[str, str], dict[str, Entry]] = {}  # (user, book) -> by name
        self.people_seq = 0
        self.sync_tokens: dict[str, Chain] = {}
        self.page_tokens: dict[str, tuple[Listing, int]] = {}  # token -> (listing, offset)
        self.sync_token_ttl = SYNC_TOKEN_TTL  # seconds after the full sync
        self.token_scopes: dict[str, frozenset[str]] = {}  # access token -> its scopes
        self.declined: dict[str, set[str]] = {}  # user -> scopes not granted

    # --- seeding -------------------------------------------------------------------------

    def add_person(
        self,
        user: str,
        name: str,
        emails: list[str],
        given: str = "",
        family: str = "",
        organization: str = "",
        other: bool = False,
    ) -> str:
        """A contact the user saved (``other``: one of their "Other contacts"); returns its
        resource name (``people/c…`` or ``otherContacts/c…``)."""
        book = "otherContacts" if other else "connections"
        with self.lock:
            self.add_user(user)
            resource = f"{'otherContacts' if other else 'people'}/c{secrets.randbelow(10**18)}"
            self._store(user, book, resource, Card(name, emails, given, family, organization))
            return resource

    def change_person(self, user: str, resource: str, **fields: Any) -> None:
        """Change a person's ``name``, ``emails``, ``given``, ``family`` or
        ``organization``."""
        with self.lock:
            book, entry = self._find(user, resource)
            self._store(user, book, resource, replace(entry.card, **fields))

    def delete_person(self, user: str, resource: str) -> None:
        with self.lock:
            _, entry = self._find(user, resource)
            self.people_seq += 1
            entry.seq, entry.deleted = self.people_seq, True

    def age_sync_tokens(self, seconds: float) -> None:
        """Make the full sync behind every sync token ``seconds`` older."""
        with self.lock:
            for token, chain in list(self.sync_tokens.items()):
                self.sync_tokens[token] = replace(chain, full_at=chain.full_at - seconds)

    def decline(self, user: str, scope: str) -> None:
        """The user did not grant ``scope``: tokens issued from now on lack it."""
        self.declined.setdefault(user, set()).add(scope)

    def _find(self, user: str, resource: str) -> tuple[str, Entry]:
        for (owner, book), entries in self.books.items():
            entry = entries.get(resource)
            if owner == user and entry is not None and not entry.deleted:
                return book, entry
        raise KeyError(resource)

    def _store(self, user: str, book: str, resource: str, card: Card) -> None:
        self.people_seq += 1
        kind = "CONTACT" if book == "connections" else "OTHER_CONTACT"
        meta = {"primary": True, "source": {"type": kind, "id": resource}}
        name = {"displayName": card.name, "givenName": card.given, "familyName": card.family}
        person: dict[str, Any] = {
            "resourceName": resource,
            "etag": "%" + base64.b64encode(str(self.people_seq).encode()).decode(),
            "metadata": {"sources": [meta["source"]], "objectType": "PERSON"},
            "names": [{**{k: v for k, v in name.items() if v}, "metadata": meta}],
            "emailAddresses": [
                {"value": e, "type": "work", "metadata": {**meta, "primary": i == 0}}
                for i, e in enumerate(card.emails)
            ],
        }
        if card.organization:
            person["organizations"] = [{"name": card.organization, "metadata": meta}]
        unknown = set(person) - PERSON_FIELDS
        if unknown:
            raise ValueError(f"not Person fields [people.v1.json]: {sorted(unknown)}")
        self.books.setdefault((user, book), {})[resource] = Entry(person, card, self.people_seq)

    # --- scopes --------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint, then the scopes of the access token it issued."""
        status, answer = super().token(form)
        if status == 200:
            asked = form.get("scope") or _claims(form.get("assertion", "")).get("scope", "")
            scopes = set(asked.split()) or set(GMAIL_SCOPES.split()) | PEOPLE_SCOPES
            user = self.access[answer["access_token"]][0]
            granted = frozenset(scopes - self.declined.get(user, set()))
            self.token_scopes[answer["access_token"]] = granted
            answer["scope"] = " ".join(sorted(granted))
        return status, answer

    # --- the API -------------------------------------------------------------------------

    def people_api(self, request: Request) -> Response | None:
        """A People request; None for any other path."""
        for pattern, http_method, name in ROUTES:
            m = pattern.match(request.path)
            if not m or http_method != request.method:
                continue
            try:
                unknown = sorted(set(request.query) - QUERY[name] - STANDARD_PARAMETERS)
                if unknown:
                    raise _invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}"')
                header = request.headers.get("Authorization")
                box = self.authorize(header, "me")
                self._scoped(header, name)
                with self.flight(box), self.lock:
                    answer = self._list(name, box.email, request.query, m.groupdict())
            except GmailError as err:  # refused credentials, in Gmail's shape
                return self.error(err)
            except PeopleError as err:
                return self.error(err)
            return Response(200, answer)
        return None

    def _scoped(self, header: str | None, name: str) -> None:
        """403 unless the token carries one of the method's scopes [people.v1.json]."""
        token = (header or "").removeprefix("Bearer ").strip()
        needed = _METHODS[name]["scopes"]
        if not self.token_scopes.get(token, frozenset()) & set(needed):
            challenge = (
                'Bearer realm="https://accounts.google.com/", error="insufficient_scope", '
                f'scope="{" ".join(needed)}"'
            )
            raise PeopleError(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                {"WWW-Authenticate": challenge},
            )

    def _list(
        self, name: str, user: str, params: dict[str, list[str]], path: dict[str, str]
    ) -> dict[str, Any]:
        if path.get("resourceName", "people/me") != "people/me":
            raise _invalid("Only people/me is valid.")  # [resourceName, connections.list]
        mask = MASKS[name]
        fields = _mask(params, mask, VALID_FIELDS[name])
        key = tuple(sorted((k, tuple(v)) for k, v in params.items() if k in BOUND[name]))
        size = int(params.get("pageSize", ["0"])[0]) or PAGE_SIZE
        if not 1 <= size <= MOST:
            raise _invalid("pageSize must be between 1 and 1000.")
        listing, offset = self._listing(name, user, params, key)
        chunk = listing.names[offset : offset + size]
        entries = self.books.get((user, BOOKS[name]), {})
        out: dict[str, Any] = {
            BOOKS[name]: [_shown(entries[n], fields) for n in chunk],
            TOTAL[name]: len(listing.names),
        }
        if offset + size < len(listing.names):
            token = secrets.token_urlsafe(16)
            self.page_tokens[token] = (listing, offset + size)
            out["nextPageToken"] = token
        elif params.get("requestSyncToken") == ["true"]:  # on the last page only
            token = secrets.token_urlsafe(24)
            self.sync_tokens[token] = listing.chain
            out["nextSyncToken"] = token
        return out

    def _listing(
        self, name: str, user: str, params: dict[str, list[str]], key: tuple[Any, ...]
    ) -> tuple[Listing, int]:
        """The listing a request continues (pageToken) or starts (full, or by syncToken),
        and where its page starts."""
        book = BOOKS[name]
        if "pageToken" in params:
            found = self.page_tokens.get(params["pageToken"][0])
            if found is None or found[0].chain.user != user or found[0].chain.params != key:
                raise _invalid("Request contains an invalid argument.")
            return found
        ordered = sorted(self.books.get((user, book), {}).values(), key=lambda e: e.seq)
        now = time.time()
        if "syncToken" in params:
            chain = self.sync_tokens.get(params["syncToken"][0])
            if chain is None or now - chain.full_at > self.sync_token_ttl:
                raise PeopleError(400, "FAILED_PRECONDITION", EXPIRED, "EXPIRED_SYNC_TOKEN")
            if (chain.user, chain.book) != (user, book) or chain.params != key:
                raise _invalid("Request contains an invalid argument.")
            names = tuple(e.person["resourceName"] for e in ordered if e.seq > chain.upto)
            return Listing(replace(chain, upto=self.people_seq), names), 0
        names = tuple(e.person["resourceName"] for e in ordered if not e.deleted)
        return Listing(Chain(user, book, self.people_seq, key, now), names), 0


def _mask(params: dict[str, list[str]], mask: str, valid: frozenset[str]) -> list[str]:
    """The fields a request's mask names; a missing mask or an unknown field is a 400."""
    value = params.get(mask, [""])[0]
    if not value:
        raise _invalid(f"{mask} mask is required. Please specify one or more valid paths.")
    fields = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in fields if f not in valid]
    if bad:
        raise _invalid(f'Invalid {mask} mask path: "{bad[0]}".')
    return fields


def _shown(entry: Entry, fields: list[str]) -> dict[str, Any]:
    """A person as the answer carries it: the masked fields; a deleted one is a stub."""
    person = entry.person
    head = {"resourceName": person["resourceName"], "etag": person["etag"]}
    if entry.deleted:
        return {**head, "metadata": {**person["metadata"], "deleted": True}}
    return {**head, **{f: person[f] for f in fields if f in person}}


def _claims(assertion: str) -> dict[str, Any]:
    """The claims of a service account's JWT (already verified by the token endpoint)."""
    try:
        part = assertion.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
    except (IndexError, ValueError):
        return {}
