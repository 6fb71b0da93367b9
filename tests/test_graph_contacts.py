"""Graph contacts (issue 12) against the Microsoft emulator, through msal, O365's connection
and the mailbox's GraphClient: the default Contacts folder found from /contacts, read whole
by contact delta in pages, then incrementally (a changed contact, a new one, an @removed
one), a forgotten delta token (410 syncStateNotFound) read as CursorExpired, an app without
Contacts.Read refused, and the emulator's checks from the documentation and msgraph-sdk's
contact model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from syncd.connectors.base import AuthError, ConnectorError, CursorExpired, MailboxSpec
from syncd.connectors.contacts import CardBatch
from syncd.connectors.microsoft import MicrosoftSettings
from syncd.connectors.microsoft.client import GraphClient
from syncd.connectors.microsoft.contacts import GraphContacts
from syncd.items import Cursor
from syncd.secrets import Secret

from .emulators.microsoft import APP_PERMISSIONS, GraphError, MicrosoftEmulator

ANA = "ana@northwind.test"
TENANT = "northwind.onmicrosoft.com"


@pytest.fixture
def microsoft() -> Iterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator()
    emulator.add_app(TENANT, "app-1", secret="s1", permissions=APP_PERMISSIONS | {"Contacts.Read"})
    emulator.add_app(TENANT, "app-2", secret="s2")  # no Contacts.Read
    emulator.add_user(ANA)
    emulator.start()
    yield emulator
    emulator.stop()


def book(emulator: MicrosoftEmulator, app: str = "app-1", page_size: int = 2) -> GraphContacts:
    settings = MicrosoftSettings.model_validate(
        {
            "mode": "app",
            "tenant": TENANT,
            "client_id": app,
            "authority": emulator.base,
            "graph_url": emulator.base + "/",
            "ca_bundle": str(emulator.ca_pem),
            "backoff": 0.02,
            "page_size": page_size,
        }
    )
    secret = Secret("s1" if app == "app-1" else "s2")
    spec = MailboxSpec("ana", "microsoft", ANA, settings, secret=secret)
    return GraphContacts(GraphClient(spec), spec)


def contact(name: str, *addresses: str, **fields: Any) -> dict[str, Any]:
    return {
        "displayName": name,
        "emailAddresses": [{"name": name, "address": a} for a in addresses],
        **fields,
    }


def test_contacts_read_whole_by_delta_then_incrementally(microsoft):
    zoe = microsoft.add_contact(
        ANA,
        **contact("Zoe  Park", "Zoe@Initech.test", "zoe.park@gmail.com", givenName="Zoe"),
        surname="Park",
        companyName="Initech",
    )
    sam = microsoft.add_contact(ANA, **contact("Sam Roe", "sam@hooli.test"))
    microsoft.add_contact(ANA, **contact("No Address"))
    contacts = book(microsoft)
    batches = list(contacts.changes(None))
    assert len(batches) == 2  # three contacts, two a page
    cards = {c.provider_id: c for b in batches for c in b.cards}
    assert set(cards) == {zoe, sam}  # immutable ids; a contact with no address is no card
    assert (cards[zoe].name, cards[zoe].first_name, cards[zoe].last_name) == (
        "Zoe Park",
        "Zoe",
        "Park",
    )
    assert (cards[zoe].addresses, cards[zoe].organization) == (
        ("zoe@initech.test", "zoe.park@gmail.com"),
        "Initech",
    )
    # each page carries its link: the next page's, then the delta link
    links = [json.loads(b.cursor.value)["link"] for b in batches]
    assert "skiptoken=" in links[0] and "deltatoken=" in links[1]
    assert "/contactFolders/" in links[1] and "/contacts/delta" in links[1]

    microsoft.update_contact(ANA, sam, displayName="Samuel Roe")
    ben = microsoft.add_contact(ANA, **contact("Ben Ito", "ben@hooli.test"))
    microsoft.delete_contact(ANA, zoe)
    delta = list(contacts.changes(batches[-1].cursor))
    assert {c.provider_id: c.name for b in delta for c in b.cards} == {
        sam: "Samuel Roe",
        ben: "Ben Ito",
    }
    assert [r for b in delta for r in b.removed] == [zoe]  # @removed
    assert list(contacts.changes(delta[-1].cursor)) == []  # a quiet poll stores nothing


def test_a_pass_stopped_before_a_last_page_of_no_cards_stores_the_delta_link_once(microsoft):
    for name in ("Ann One", "Bo Two"):
        microsoft.add_contact(ANA, **contact(name, f"{name.split()[0].lower()}@hooli.test"))
    microsoft.add_contact(ANA, **contact("No Address"))  # no card: the last page holds none
    contacts = book(microsoft)  # two a page
    first = next(iter(contacts.changes(None)))  # the pass stopped after the first page
    assert len(first.cards) == 2 and "skiptoken=" in json.loads(first.cursor.value)["link"]
    (last,) = list(contacts.changes(first.cursor))
    assert not last.cards and "deltatoken=" in json.loads(last.cursor.value)["link"]
    assert list(contacts.changes(last.cursor)) == []  # from there on, a quiet poll


def test_a_delta_read_over_pages_ending_in_no_cards_stores_its_new_delta_link(microsoft):
    microsoft.add_contact(ANA, **contact("Ann One", "ann@hooli.test"))
    contacts = book(microsoft)
    (whole,) = list(contacts.changes(None))
    for name in ("Bo Two", "Cy Three"):
        microsoft.add_contact(ANA, **contact(name, f"{name.split()[0].lower()}@hooli.test"))
    microsoft.add_contact(ANA, **contact("No Address"))  # the last page: no card
    delta = list(contacts.changes(whole.cursor))
    assert sorted(c.name for b in delta for c in b.cards) == ["Bo Two", "Cy Three"]
    assert "deltatoken=" in json.loads(delta[-1].cursor.value)["link"]


def test_a_forgotten_delta_token_is_cursor_expired_and_the_book_is_read_again(microsoft):
    microsoft.add_contact(ANA, **contact("Zoe Park", "zoe@initech.test"))
    contacts = book(microsoft, page_size=10)
    (whole,) = contacts.changes(None)
    microsoft.expire_delta_tokens()
    with pytest.raises(CursorExpired, match="syncStateNotFound"):
        list(contacts.changes(whole.cursor))
    (again,) = contacts.changes(None)
    assert [c.name for c in again.cards] == ["Zoe Park"]


def test_an_empty_folder_has_nothing_to_read_until_a_contact_is_saved(microsoft):
    contacts = book(microsoft)
    assert list(contacts.changes(None)) == []
    microsoft.add_contact(ANA, **contact("Zoe Park", "zoe@initech.test"))
    batches: list[CardBatch] = list(contacts.changes(None))
    assert [c.name for b in batches for c in b.cards] == ["Zoe Park"]


def test_an_older_cursor_reads_the_folder_again_with_the_current_properties(microsoft):
    microsoft.add_contact(ANA, **contact("Zoe Park", "zoe@initech.test"))
    contacts = book(microsoft, page_size=10)
    (whole,) = contacts.changes(None)
    older = Cursor(json.dumps({"link": json.loads(whole.cursor.value)["link"]}))
    (again,) = contacts.changes(older)  # no "select": made by another query
    assert [c.name for c in again.cards] == ["Zoe Park"]


def test_an_app_without_contacts_read_is_refused(microsoft):
    microsoft.add_contact(ANA, **contact("Zoe Park", "zoe@initech.test"))
    with pytest.raises(AuthError) as refused:
        list(book(microsoft, app="app-2").changes(None))
    text = str(refused.value)
    assert "403 ErrorAccessDenied" in text and "Contacts.Read" in text and "s2" not in text


def test_the_emulator_serves_only_the_documented_paths_and_the_contact_model(microsoft):
    client = book(microsoft).client
    with pytest.raises(ConnectorError, match="400"):  # undocumented: no folder
        client.request("GET", client.user_url("/contacts/delta"))
    with pytest.raises(ConnectorError, match="404 ErrorItemNotFound"):
        client.request("GET", client.user_url("/contactFolders/AAMkOther/contacts/delta"))
    with pytest.raises(ConnectorError, match="Could not find a property named 'sensitivity'"):
        client.request("GET", client.user_url("/contacts?$select=sensitivity"))
    with pytest.raises(GraphError):  # seeding: only the contact type's properties
        microsoft.add_contact(ANA, displayName="X", emails=["x@y.test"])
