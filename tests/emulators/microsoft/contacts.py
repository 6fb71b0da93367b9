"""Graph personal contacts of each user, in the default Contacts folder: seeded, listed and
tracked by delta.

- A contact holds only properties of Graph's ``contact`` type (msgraph-sdk's generated
  model, :mod:`.schema`): displayName, givenName, surname, emailAddresses (emailAddress:
  name, address), companyName, ...; seeding anything else is refused.
- ``GET /users/{id}/contacts``: "a contact collection from the default contacts folder"
  [MGD api-reference/v1.0/api/user-list-contacts.md], with ``$select`` (checked against the
  schema), ``$top`` and ``$skip``, paged with ``@odata.nextLink``.
- ``GET /users/{id}/contactFolders/{id}/contacts/delta``: the documented delta of contacts,
  per folder only [MGD api-reference/v1.0/api/contact-delta.md: "GET
  /users/{id}/contactFolders/{id}/contacts/delta"; ``/contacts/delta`` without a folder is
  not documented (Microsoft Q&A 1634378) and is refused here]. ``$select`` only, besides
  the state tokens; ``Prefer: odata.maxpagesize``; ``@odata.nextLink`` ($skiptoken) until
  ``@odata.deltaLink`` ($deltatoken); a deleted contact as ``{"id", "@removed":
  {"reason": "deleted"}}``; a token the emulator forgot (:meth:`Delta.expire_delta_tokens`)
  answers 410 ``syncStateNotFound`` ("The sync state generation is not found. The delta
  token is expired and data must be synchronized again." [MGD concepts/errors.md]; "In case
  of an expired token, the service should respond with a 40X-series error with error codes
  such as syncStateNotFound" [MGD concepts/delta-query-overview.md]).
- Both need ``Contacts.Read`` (or ``Contacts.ReadWrite``) [contact-delta.md, Permissions].
- Ids: an immutable id to requests that send ``Prefer: IdType="ImmutableId"``, else the
  REST id.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any
from urllib.parse import quote, urlencode

from ..http import Response
from .delta import _sync_state_not_found
from .odata import check_body, check_query, selected
from .state import GraphCall, GraphError, GraphState, Record, User

COLLECTION = "contacts"
DEFAULT_PAGE = 10  # contacts a page holds unless $top or odata.maxpagesize says otherwise
LIST_QUERY = {"$select", "$top", "$skip", "$filter", "$orderby", "$count", "$expand"}
DELTA_QUERY = {"$select", "$deltatoken", "$skiptoken"}
PERMISSIONS = ("Contacts.Read", "Contacts.ReadWrite")


class Contacts(GraphState):
    # --- seeding -------------------------------------------------------------------------

    def contacts_folder(self, user: str) -> str:
        """The id of the user's default Contacts folder."""
        return "AAMkAGContacts" + uuid.uuid5(uuid.NAMESPACE_URL, "contacts:" + user).hex

    def add_contact(self, user: str, **fields: Any) -> str:
        """A contact in the user's default folder, as Outlook would save it (``fields`` are
        contact properties: displayName, givenName, surname, emailAddresses as
        ``[{"name", "address"}]``, companyName ...); returns its immutable id."""
        check_body("contact", fields)
        with self.lock:
            box = self.add_user(user)
            immutable = "AAkALgContact" + secrets.token_urlsafe(18)
            rest = "AAMkAGContact" + secrets.token_urlsafe(18)
            resource = {**fields, "parentFolderId": self.contacts_folder(user)}
            box.collection(COLLECTION)[immutable] = Record(immutable, rest, resource, self._next())
            return immutable

    def update_contact(self, user: str, contact_id: str, **fields: Any) -> None:
        check_body("contact", fields)
        with self.lock:
            record = self._find_contact(self.users[user], contact_id)
            record.resource.update(fields)
            record.seq = self._next()

    def delete_contact(self, user: str, contact_id: str) -> None:
        with self.lock:
            record = self._find_contact(self.users[user], contact_id)
            record.removed, record.seq = True, self._next()

    @staticmethod
    def _find_contact(box: User, contact_id: str) -> Record:
        record = box.collection(COLLECTION).get(contact_id)
        if record is None or record.removed:
            raise KeyError(contact_id)
        return record

    # --- the API -------------------------------------------------------------------------

    def _contacts_route(self, call: GraphCall) -> Response | None:
        prefix = f"/contactFolders/{self.contacts_folder(call.box.address)}"
        if call.method != "GET":
            return None
        if call.rest == "/contacts":
            call.need(*PERMISSIONS)
            check_query(call.params, LIST_QUERY, "contact")
            return Response(200, self._contacts_list(call))
        if call.rest.startswith("/contactFolders/") and call.rest.endswith("/contacts/delta"):
            call.need(*PERMISSIONS)
            check_query(call.params, DELTA_QUERY, "contact")
            if call.rest != prefix + "/contacts/delta":
                raise GraphError(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            with self.lock:
                page, size = self._contacts_delta(call)
            return Response(200, page, {"Preference-Applied": f"odata.maxpagesize={size}"})
        return None

    def _contact_shown(self, record: Record, query: dict[str, str], prefer: dict[str, str]) -> Any:
        rid = record.immutable_id if prefer.get("idtype") == "ImmutableId" else record.rest_id
        if record.removed:
            return {"id": rid, "@removed": {"reason": "deleted"}}
        keys = selected("contact", record.resource, query)
        shown = {k: record.resource[k] for k in keys if k in record.resource}
        return {"@odata.etag": f'W/"{record.seq}"', "id": rid, **shown}

    def _contacts_list(self, call: GraphCall) -> dict[str, Any]:
        records = sorted(
            (r for r in call.box.collection(COLLECTION).values() if not r.removed),
            key=lambda r: r.seq,
        )
        top = int(call.params.get("$top", DEFAULT_PAGE))
        skip = int(call.params.get("$skip", 0))
        out: dict[str, Any] = {
            "value": [
                self._contact_shown(r, call.params, call.prefer) for r in records[skip : skip + top]
            ]
        }
        if skip + top < len(records):
            query = {**call.params, "$skip": str(skip + top), "$top": str(top)}
            out["@odata.nextLink"] = f"{self._contacts_link(call.box)}/contacts?{urlencode(query)}"
        return out

    def _contacts_link(self, box: User) -> str:
        return f"{self.base}/v1.0/users/{quote(box.address)}"

    def _contacts_delta(self, call: GraphCall) -> tuple[dict[str, Any], int]:
        """One page of a contacts delta round (a new round, the next after a deltaLink, or
        the next page of one), kept under the opaque token of each link."""
        box, params = call.box, call.params
        if "$deltatoken" in params or "$skiptoken" in params:
            token = params.get("$deltatoken") or params["$skiptoken"]
            state = self.delta_tokens.get(token)
            if state is None or (state["user"], state["coll"]) != (box.address, COLLECTION):
                raise _sync_state_not_found()
            if "$deltatoken" in params:
                state = {**state, "since": state["upto"], "upto": self.seq, "offset": 0}
        else:
            select = params.get("$select")
            state = {
                "user": box.address,
                "coll": COLLECTION,
                "since": None,
                "upto": self.seq,
                "offset": 0,
                "query": {"$select": select} if select else {},  # kept in the links' tokens
            }
        records = sorted(box.collection(COLLECTION).values(), key=lambda r: r.seq)
        since, upto = state["since"], state["upto"]
        changes = [
            r
            for r in records
            if r.seq <= upto and (r.seq > since if since is not None else not r.removed)
        ]
        size = int(call.prefer.get("odata.maxpagesize", DEFAULT_PAGE))
        offset = state["offset"]
        link = f"{self._contacts_link(box)}/contactFolders/{self.contacts_folder(box.address)}"
        link += "/contacts/delta"
        token = secrets.token_urlsafe(24)
        out: dict[str, Any] = {"@odata.context": link}
        if offset + size < len(changes):
            self.delta_tokens[token] = {**state, "offset": offset + size}
            out["@odata.nextLink"] = f"{link}?{urlencode({'$skiptoken': token})}"
        else:
            self.delta_tokens[token] = {**state, "offset": 0}
            out["@odata.deltaLink"] = f"{link}?{urlencode({'$deltatoken': token})}"
        page = changes[offset : offset + size]
        out["value"] = [self._contact_shown(r, state["query"], call.prefer) for r in page]
        return out, size
