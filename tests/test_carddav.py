"""CardDAV address books on a real Radicale (issue 12): found from the server's root, read
whole, then incrementally with sync-collection (a changed card, a new one, a removed one),
an expired sync token read as such, a refused login, and vCards in 3.0 and 4.0 with several
addresses and a structured name, read by vobject."""

from __future__ import annotations

import uuid

import pytest
import requests

from syncd.connectors.base import AuthError, CursorExpired
from syncd.connectors.contacts import cards_from_vcard
from syncd.connectors.imap.carddav import CardDav
from syncd.items import Cursor

MKCOL = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<d:mkcol xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:set><d:prop>'
    "<d:resourcetype><d:collection/><c:addressbook/></d:resourcetype>"
    "<d:displayname>Contacts</d:displayname></d:prop></d:set></d:mkcol>"
)


def vcard(uid: str, fn: str, emails: list[str], n: str = "", version: str = "3.0") -> str:
    lines = ["BEGIN:VCARD", f"VERSION:{version}", f"UID:{uid}", f"FN:{fn}"]
    if n:
        lines.append(f"N:{n}")
    lines += [f"EMAIL;TYPE=work:{e}" for e in emails]
    lines += ["ORG:Initech;Sales", "END:VCARD"]
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
def book(dav_server):
    user = f"u{uuid.uuid4().hex[:8]}"
    dav_server.add_user(user, "pw")
    http = requests.Session()
    http.auth = (user, "pw")
    url = f"{dav_server.url}{user}/contacts/"
    made = http.request("MKCOL", url, data=MKCOL, headers={"Content-Type": "application/xml"})
    assert made.status_code == 201, made.text

    def put(uid: str, text: str) -> None:
        done = http.put(
            f"{url}{uid}.vcf", data=text.encode(), headers={"Content-Type": "text/vcard"}
        )
        assert done.status_code in (201, 204), done.text

    def remove(uid: str) -> None:
        assert http.delete(f"{url}{uid}.vcf").status_code in (200, 204)

    return dav_server, user, put, remove


def test_books_are_found_read_whole_then_incrementally(book):
    server, user, put, remove = book
    put("zoe", vcard("zoe", "Zoe Park", ["Zoe@Initech.test", "zoe.park@gmail.com"], "Park;Zoe;;;"))
    put("sam", vcard("sam", "Sam Roe", ["sam@hooli.test"], version="4.0"))
    put("nobody", vcard("nobody", "No Address", []))
    dav = CardDav("ana", server.url, user, "pw", 10, batch_size=1)
    (found,) = dav.books()
    assert found.name == f"carddav:/{user}/contacts"
    batches = list(found.changes(None))
    cards = {c.provider_id.rsplit("/", 1)[-1]: c for b in batches for c in b.cards}
    assert set(cards) == {"zoe.vcf", "sam.vcf"}  # a card with no address is no person
    zoe = cards["zoe.vcf"]
    assert zoe.addresses == ("zoe@initech.test", "zoe.park@gmail.com")
    assert (zoe.name, zoe.first_name, zoe.last_name, zoe.organization) == (
        "Zoe Park",
        "Zoe",
        "Park",
        "Initech",
    )
    # only the last batch carries the new token: a pass killed before it reads them again
    assert batches[0].cursor == Cursor("") and batches[-1].cursor.value
    token = batches[-1].cursor

    put("sam", vcard("sam", "Samuel Roe", ["sam@hooli.test"]))
    put("lee", vcard("lee", "Lee Chan", ["lee@hooli.test"]))
    remove("zoe")
    delta = list(found.changes(token))
    assert {c.name for b in delta for c in b.cards} == {"Samuel Roe", "Lee Chan"}
    assert [r.rsplit("/", 1)[-1] for b in delta for r in b.removed] == ["zoe.vcf"]
    (quiet,) = list(found.changes(delta[-1].cursor))
    assert quiet.cards == () and quiet.removed == ()

    with pytest.raises(CursorExpired):
        list(found.changes(Cursor("http://radicale.org/ns/sync/nonsense")))
    dav.close()


def test_a_wrong_password_is_a_refused_login(book):
    server, user, _put, _remove = book
    with pytest.raises(AuthError) as refused:
        CardDav("ana", server.url, user, "wrong", 10, batch_size=10).books()
    assert "refused the login" in str(refused.value) and "wrong" not in str(refused.value)


def test_vcards_vobject_reads_and_those_it_cannot():
    text = vcard("a", "Ann Lee", ["ann@x.test"]) + vcard("b", "Bo", ["BO@X.test", "bo@x.test"])
    cards = cards_from_vcard(text, "/book/two.vcf")
    assert [(c.provider_id, c.addresses) for c in cards] == [
        ("/book/two.vcf", ("ann@x.test",)),
        ("/book/two.vcf#1", ("bo@x.test",)),
    ]
    assert cards_from_vcard("BEGIN:VCARD\r\nthis is not a card", "/x") == []
