"""Google People address books (issue 12) against the Google emulator, through
google-api-python-client and google-auth: the contacts and the "Other contacts" read whole
in pages, then incrementally by sync token (a changed person, a new one, a deleted one), an
expired sync token (7 days after the full sync, or settable) read as CursorExpired, a sign-in
without the contacts scopes refused, and the emulator's checks taken from people.v1.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import google_auth_httplib2
import httplib2
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from syncd.connectors.base import AuthError, CursorExpired, MailboxSpec
from syncd.connectors.contacts import AddressBook, CardBatch
from syncd.connectors.gmail import GmailSettings, people
from syncd.connectors.gmail.client import GmailClient
from syncd.connectors.gmail.people import people_books
from syncd.connectors.gmail.signin import CONTACT_SCOPES
from syncd.items import Cursor
from syncd.secrets import Secret

from .emulators.google import GoogleEmulator
from .test_google_emulator import service_account_key

ANA = "ana@northwind.test"
DAY = 86400.0
CONTACTS, OTHER = CONTACT_SCOPES


@pytest.fixture
def google() -> Iterator[tuple[GoogleEmulator, str]]:
    emulator = GoogleEmulator()
    emulator.add_client("client-1", "secret-1")
    emulator.add_user(ANA)
    base = emulator.start()
    yield emulator, base
    emulator.stop()


def books(google: tuple[GoogleEmulator, str], **settings: Any) -> dict[str, AddressBook]:
    """Ana's two People books, signed in through the OAuth client (or as given)."""
    emulator, base = google
    secret = settings.pop("secret", None) or {
        "refresh_token": emulator.grant(ANA),
        "client_secret": "secret-1",
    }
    values = {"mode": "oauth", "client_id": "client-1", "token_uri": base + "token"}
    spec = MailboxSpec(
        "ana",
        "gmail",
        ANA,
        GmailSettings.model_validate({**values, "api_endpoint": base, **settings}),
        secret=Secret(json.dumps(secret)),
    )
    return {book.name: book for book in people_books(GmailClient(spec))}


def read(book: AddressBook, cursor: Cursor | None) -> list[CardBatch]:
    return list(book.changes(cursor))


def test_contacts_read_whole_in_pages_then_incrementally(google, monkeypatch):
    emulator, _ = google
    monkeypatch.setattr(people, "PAGE", 2)
    zoe = emulator.add_person(
        ANA, "Zoe  Park", ["Zoe@Initech.test", "zoe.park@gmail.com"], "Zoe", "Park", "Initech"
    )
    sam = emulator.add_person(ANA, "Sam Roe", ["sam@hooli.test"])
    emulator.add_person(ANA, "No Address", [])
    emulator.add_person(ANA, "Lee Chan", ["lee@hooli.test"], other=True)
    book = books(google)["gpeople:contacts"]

    batches = read(book, None)
    assert len(batches) == 2  # two pages of two
    cards = {c.provider_id: c for b in batches for c in b.cards}
    assert set(cards) == {zoe, sam}  # a person with no address is no card; other contacts apart
    assert (cards[zoe].name, cards[zoe].first_name, cards[zoe].last_name) == (
        "Zoe Park",
        "Zoe",
        "Park",
    )
    assert cards[zoe].addresses == ("zoe@initech.test", "zoe.park@gmail.com")
    assert cards[zoe].organization == "Initech"
    # only the last batch carries the new cursor: a pass stopped before it reads it all again
    assert batches[0].cursor == Cursor("")
    token = batches[-1].cursor
    assert json.loads(token.value)["token"]

    emulator.change_person(ANA, sam, name="Samuel Roe")
    ben = emulator.add_person(ANA, "Ben Ito", ["ben@hooli.test"])
    emulator.delete_person(ANA, zoe)
    delta = read(book, token)
    assert {c.provider_id: c.name for b in delta for c in b.cards} == {
        sam: "Samuel Roe",
        ben: "Ben Ito",
    }
    assert [r for b in delta for r in b.removed] == [zoe]  # metadata.deleted
    (quiet,) = read(book, delta[-1].cursor)
    assert (quiet.cards, quiet.removed) == ((), ())
    assert quiet.cursor.value and quiet.cursor != delta[-1].cursor


def test_a_failing_page_is_asked_again_and_a_stopped_pass_reads_the_book_again(google, monkeypatch):
    emulator, _ = google
    monkeypatch.setattr(people, "PAGE", 1)
    emulator.add_person(ANA, "Zoe Park", ["zoe@initech.test"])
    emulator.add_person(ANA, "Sam Roe", ["sam@hooli.test"])
    book = books(google)["gpeople:contacts"]
    emulator.inject(status=503, retry_after=0, path="/v1/people/me/connections")
    emulator.inject(status=429, retry_after=0, path="pageToken=")
    whole = read(book, None)
    assert [c.name for b in whole for c in b.cards] == ["Zoe Park", "Sam Roe"]
    assert not emulator.faults  # both were met, and the pages asked again


def test_other_contacts_are_their_own_book(google):
    emulator, _ = google
    emulator.add_person(ANA, "Saved One", ["saved@acme.test"])
    lee = emulator.add_person(ANA, "Lee Chan", ["Lee@Hooli.test"], "Lee", "Chan", other=True)
    book = books(google)["gpeople:other-contacts"]
    (whole,) = read(book, None)
    ((only),) = whole.cards
    assert (only.provider_id, only.name, only.addresses) == (lee, "Lee Chan", ("lee@hooli.test",))
    emulator.delete_person(ANA, lee)
    (delta,) = read(book, whole.cursor)
    assert (delta.cards, delta.removed) == ((), (lee,))


def test_sync_tokens_expire_seven_days_after_the_full_sync(google):
    emulator, _ = google
    emulator.add_person(ANA, "Zoe Park", ["zoe@initech.test"])
    book = books(google)["gpeople:contacts"]
    first = read(book, None)[-1].cursor
    emulator.age_sync_tokens(6 * DAY)
    later = read(book, first)[-1].cursor  # six days on: still taken
    emulator.age_sync_tokens(1.5 * DAY)
    # the incremental token expires with the full sync its chain began with
    with pytest.raises(CursorExpired, match=r"\(gpeople:contacts\): the sync token expired"):
        read(book, later)
    (again,) = read(book, None)  # read whole again: a new chain
    assert [c.name for c in again.cards] == ["Zoe Park"]
    emulator.sync_token_ttl = 0.0  # the expiry is settable
    with pytest.raises(CursorExpired):
        read(book, again.cursor)
    with pytest.raises(CursorExpired):  # a token the service never gave
        read(book, Cursor(json.dumps({"token": "nonsense", "fields": people.CONTACT_FIELDS})))


def test_a_cursor_of_other_fields_reads_the_book_whole(google):
    emulator, _ = google
    emulator.add_person(ANA, "Zoe Park", ["zoe@initech.test"])
    book = books(google)["gpeople:contacts"]
    token = json.loads(read(book, None)[-1].cursor.value)["token"]
    # a sync token must go with the fields of the call that made it: an older syncd's cursor
    (whole,) = read(book, Cursor(json.dumps({"token": token, "fields": "names"})))
    assert [c.name for c in whole.cards] == ["Zoe Park"]


def test_a_sign_in_without_the_contacts_scopes_is_refused(google):
    emulator, _ = google
    emulator.add_person(ANA, "Zoe Park", ["zoe@initech.test"])
    emulator.add_person(ANA, "Lee Chan", ["lee@hooli.test"], other=True)
    emulator.decline(ANA, OTHER)  # unticked at consent
    found = books(google)
    assert [c.name for b in read(found["gpeople:contacts"], None) for c in b.cards] == ["Zoe Park"]
    with pytest.raises(AuthError) as refused:
        read(found["gpeople:other-contacts"], None)
    text = str(refused.value)
    assert "access denied (403" in text and OTHER in text and "syncd mailbox reauth ana" in text
    assert "secret-1" not in text


def test_a_service_account_reads_with_the_scopes_its_jwt_asks_for(google):
    emulator, base = google
    emulator.add_person(ANA, "Zoe Park", ["zoe@initech.test"])
    info, public = service_account_key(base)
    emulator.add_service_account(info["client_email"], public)
    found = books(google, mode="service_account", secret=info)
    assert [c.name for c in read(found["gpeople:contacts"], None)[0].cards] == ["Zoe Park"]
    emulator.decline(ANA, CONTACTS)  # left out of the domain-wide delegation
    with pytest.raises(AuthError, match=r"contacts\.readonly"):
        read(books(google, mode="service_account", secret=info)["gpeople:contacts"], None)


def test_the_emulator_follows_the_discovery_document(google):
    """Unknown parameters, a missing or wrong field mask, other parameters with a sync token
    and a resource other than people/me are refused with 400, as people.v1.json says."""
    emulator, base = google
    creds = Credentials(
        None,
        refresh_token=emulator.grant(ANA),
        token_uri=base + "token",
        client_id="client-1",
        client_secret="secret-1",
        scopes=list(CONTACT_SCOPES),
    )
    service = build(
        "people",
        "v1",
        http=google_auth_httplib2.AuthorizedHttp(creds, http=httplib2.Http()),
        client_options={"api_endpoint": base},
        static_discovery=True,
    )
    connections = service.people().connections()

    def status(request: Any) -> int:
        with pytest.raises(HttpError) as refused:
            request.execute()
        return int(refused.value.resp.status)

    assert status(connections.list(resourceName="people/me")) == 400  # personFields required
    assert status(connections.list(resourceName="people/me", personFields="nope")) == 400
    assert status(connections.list(resourceName="people/c1", personFields="names")) == 400
    # otherContacts' readMask takes no organizations from the contact source
    assert status(service.otherContacts().list(readMask="names,organizations")) == 400
    token = connections.list(
        resourceName="people/me", personFields="names", requestSyncToken=True
    ).execute()["nextSyncToken"]
    assert (
        "nextSyncToken"
        not in connections.list(resourceName="people/me", personFields="names").execute()
    )  # only when asked for
    other = connections.list(
        resourceName="people/me", personFields="emailAddresses", syncToken=token
    )
    assert status(other) == 400  # all other parameters must match the first call
    raw, body = httplib2.Http().request(base + "v1/otherContacts?readMask=names&foo=1")
    assert raw.status == 400 and b'Unknown name \\"foo\\"' in body
