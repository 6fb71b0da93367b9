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


class Truncating:
    """An HTTP proxy in front of Radicale that cuts a first sync-collection answer short as
    RFC 6578 §3.6 allows: ``keep`` of its responses, a 507 response for the collection
    itself, and a token of its own for the rest; a sync-collection with that token gets
    the rest and Radicale's token (Radicale itself never cuts an answer short)."""

    def __init__(self, target: str, keep: int) -> None:
        import http.server
        import threading
        import xml.etree.ElementTree as ET

        proxy = self
        self.rest: dict[str, tuple[list[bytes], str]] = {}
        self.continued = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path
                if self.command == "REPORT" and b"sync-collection" in body:
                    token = ET.fromstring(body).findtext("{DAV:}sync-token") or ""
                    if token in proxy.rest:
                        proxy.continued += 1
                        rest, real = proxy.rest.pop(token)
                        return self._answer(path, rest, real, cut=False)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                got = requests.request(self.command, target + path, data=body, headers=headers)
                if (
                    self.command == "REPORT"
                    and b"sync-collection" in body
                    and got.status_code == 207
                ):
                    tree = ET.fromstring(got.content)
                    responses = [ET.tostring(r) for r in tree.findall("{DAV:}response")]
                    real = tree.findtext("{DAV:}sync-token") or ""
                    if len(responses) > keep:
                        partial = f"urn:partial:{len(proxy.rest)}"
                        proxy.rest[partial] = (responses[keep:], real)
                        return self._answer(path, responses[:keep], partial, cut=True)
                self.send_response(got.status_code)
                for k, v in got.headers.items():
                    dropped = ("content-length", "content-encoding", "transfer-encoding")
                    if k.lower() not in (*dropped, "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(got.content)))
                self.end_headers()
                self.wfile.write(got.content)

            def _answer(self, path: str, responses: list[bytes], token: str, cut: bool) -> None:
                own = (
                    f"<D:response><D:href>{path}</D:href>"
                    "<D:status>HTTP/1.1 507 Insufficient Storage</D:status></D:response>"
                ).encode()
                body = (
                    b'<?xml version="1.0" encoding="utf-8"?><D:multistatus xmlns:D="DAV:">'
                    + b"".join(responses)
                    + (own if cut else b"")
                    + f"<D:sync-token>{token}</D:sync-token></D:multistatus>".encode()
                )
                self.send_response(207)
                self.send_header("Content-Type", "application/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PROPFIND = do_REPORT = do_GET = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_answer_cut_short_is_followed_by_the_rest(book):
    server, user, put, _remove = book
    for name in ("ann", "bo", "cy"):
        put(name, vcard(name, name.title(), [f"{name}@hooli.test"]))
    proxy = Truncating(server.url.rstrip("/"), keep=1)
    try:
        dav = CardDav("ana", proxy.url, user, "pw", 10, batch_size=10)
        (found,) = dav.books()
        batches = list(found.changes(None))
        dav.close()
    finally:
        proxy.close()
    assert proxy.continued == 1
    assert sorted(c.name for b in batches for c in b.cards) == ["Ann", "Bo", "Cy"]
    # the first answer's batch holds its own token: a pass stopped after it goes on from it
    assert batches[0].cursor.value.startswith("urn:partial:")
    assert not batches[-1].cursor.value.startswith("urn:partial:")
