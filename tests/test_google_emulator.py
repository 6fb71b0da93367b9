"""The Google emulator against the API reference, through the real client libraries:
google-api-python-client (static discovery, only the endpoint changed) and google-auth."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import google_auth_httplib2
import httplib2
import pytest
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from syncd.demo import email_bytes

from .emulators.google import CALENDAR, GMAIL, ROUTES, GoogleEmulator

USER = "ana@northwind.test"


@pytest.fixture
def google() -> Iterator[tuple[GoogleEmulator, str]]:
    emulator = GoogleEmulator()
    emulator.add_client("client-1", "secret-1")
    emulator.add_user(USER)
    base = emulator.start()
    yield emulator, base
    emulator.stop()


def authorized(emulator: GoogleEmulator, base: str, refresh: str | None = None):
    """An HTTP client signed in as USER through the OAuth client (a fresh grant)."""
    creds = Credentials(
        None,
        refresh_token=refresh or emulator.grant(USER),
        token_uri=base + "token",
        client_id="client-1",
        client_secret="secret-1",
    )
    return google_auth_httplib2.AuthorizedHttp(creds, http=httplib2.Http())


def gmail(emulator: GoogleEmulator, base: str, refresh: str | None = None):
    return build(
        "gmail",
        "v1",
        http=authorized(emulator, base, refresh),
        client_options={"api_endpoint": base},
        static_discovery=True,
    )


def calendar_events(emulator: GoogleEmulator, base: str):
    """The Calendar API's events resource; its base must end in calendar/v3/."""
    return build(
        "calendar",
        "v3",
        http=authorized(emulator, base),
        static_discovery=True,
        client_options={"api_endpoint": base + "calendar/v3/"},
    ).events()


def seed(emulator: GoogleEmulator, n: int) -> list[bytes]:
    now = datetime.now(UTC)
    raws = [
        email_bytes(
            sender="carla@acme.test",
            to=[USER],
            subject=f"m{i}",
            when=now - timedelta(minutes=n - i),
            message_id=f"m{i}@acme.test",
        )
        for i in range(n)
    ]
    for i, raw in enumerate(raws):
        emulator.deliver(USER, raw, internal_date_ms=int((now.timestamp() - n + i) * 1000))
    return raws


def test_every_route_is_a_method_of_the_discovery_documents():
    documented = {
        m["path"]
        for r in GMAIL["resources"]["users"]["resources"].values()
        for m in r.get("methods", {}).values()
    }
    documented.add(GMAIL["resources"]["users"]["methods"]["getProfile"]["path"])
    documented |= {
        CALENDAR["servicePath"] + m["path"]
        for m in CALENDAR["resources"]["events"]["methods"].values()
    }
    for pattern, _method, name, params in ROUTES:
        assert any(
            pattern.match("/" + re.sub(r"\{\w+\}", "x", p).replace("users/x", "users/me"))
            for p in documented
        ), name
        assert not {"userId", "calendarId", "eventId", "id"} & params  # path, not query


def test_profile_list_get_and_paging_through_the_client_library(google):
    emulator, base = google
    raws = seed(emulator, 7)
    service = gmail(emulator, base)
    profile = service.users().getProfile(userId="me").execute()
    assert profile["emailAddress"] == USER and int(profile["historyId"]) > 1000
    request = service.users().messages().list(userId="me", labelIds=["INBOX"], maxResults=3)
    ids = []
    while request is not None:
        response = request.execute()
        ids += [m["id"] for m in response.get("messages", [])]
        request = service.users().messages().list_next(request, response)
    assert len(ids) == 7 and len(set(ids)) == 7
    raw = service.users().messages().get(userId="me", id=ids[0], format="raw").execute()["raw"]
    assert base64.urlsafe_b64decode(raw) == raws[-1]  # newest first
    meta = (
        service.users()
        .messages()
        .get(userId="me", id=ids[0], format="metadata", metadataHeaders=["Subject"])
        .execute()
    )
    assert [h["name"] for h in meta["payload"]["headers"]] == ["Subject"]
    empty = service.users().messages().list(userId="me", labelIds=["SENT"]).execute()
    assert empty == {"resultSizeEstimate": 0}  # no "messages" key when nothing matches


def test_history_lists_changes_and_a_stale_start_is_404(google):
    emulator, base = google
    seed(emulator, 2)
    service = gmail(emulator, base)
    start = service.users().getProfile(userId="me").execute()["historyId"]
    seed(emulator, 3)
    history = (
        service.users()
        .history()
        .list(userId="me", startHistoryId=start, historyTypes=["messageAdded"])
        .execute()
    )
    assert len(history["history"]) == 3 and int(history["historyId"]) > int(start)
    emulator.expire_history()
    with pytest.raises(HttpError) as err:
        service.users().history().list(userId="me", startHistoryId=start).execute()
    assert err.value.resp.status == 404


def test_an_undocumented_parameter_is_refused(google):
    emulator, base = google
    service = gmail(emulator, base)
    service.users().getProfile(userId="me").execute()  # gets a token
    http = service._http
    resp, body = http.request(base + "gmail/v1/users/me/messages?sortOrder=asc")
    assert resp.status == 400 and b"sortOrder" in body


def test_batch_answers_in_order_and_caps_at_100(google):
    emulator, base = google
    seed(emulator, 3)
    service = gmail(emulator, base)
    ids = [m["id"] for m in service.users().messages().list(userId="me").execute()["messages"]]
    got: list[str] = []
    batch = BatchHttpRequest(batch_uri=base + "batch/gmail/v1")
    for i in ids:
        batch.add(
            service.users().messages().get(userId="me", id=i, format="minimal"),
            callback=lambda _rid, resp, exc: got.append(resp["id"]),
        )
    batch.execute(http=service._http)
    assert got == ids
    big = BatchHttpRequest(batch_uri=base + "batch/gmail/v1")
    for _ in range(101):
        big.add(service.users().getProfile(userId="me"))
    with pytest.raises(HttpError) as err:
        big.execute(http=service._http)
    assert err.value.resp.status == 400


def test_revoked_grant_quota_and_injected_faults(google):
    emulator, base = google
    refresh = emulator.grant(USER)
    emulator.revoke(refresh)
    with pytest.raises(RefreshError, match="invalid_grant"):
        gmail(emulator, base, refresh).users().getProfile(userId="me").execute()
    emulator.units_per_minute = 3
    service = gmail(emulator, base)
    service.users().getProfile(userId="me").execute()
    service.users().getProfile(userId="me").execute()
    service.users().getProfile(userId="me").execute()
    with pytest.raises(HttpError) as err:
        service.users().getProfile(userId="me").execute()
    assert err.value.resp.status == 403 and b"userRateLimitExceeded" in err.value.content
    emulator.units_per_minute = 10_000
    emulator.inject(status=503)
    with pytest.raises(HttpError) as err:
        service.users().getProfile(userId="me").execute()
    assert err.value.resp.status == 503
    assert service.users().getProfile(userId="me").execute()["emailAddress"] == USER


def service_account_key(base: str) -> tuple[dict[str, str], object]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "syncd@p.iam.gserviceaccount.test",
        "client_id": "1",
        "token_uri": base + "token",
    }
    return info, key.public_key()


def test_service_account_with_domain_wide_delegation(google):
    from google.oauth2 import service_account

    emulator, base = google
    info, public = service_account_key(base)
    emulator.add_service_account(info["client_email"], public)
    scopes = ["https://www.googleapis.com/auth/gmail.readonly"]
    creds = service_account.Credentials.from_service_account_info(info, scopes=scopes)
    http = google_auth_httplib2.AuthorizedHttp(creds.with_subject(USER), http=httplib2.Http())
    service = build(
        "gmail", "v1", http=http, client_options={"api_endpoint": base}, static_discovery=True
    )
    assert service.users().getProfile(userId="me").execute()["emailAddress"] == USER
    emulator.add_service_account(info["client_email"], public, delegated=False)
    http = google_auth_httplib2.AuthorizedHttp(
        creds.with_subject("bob@northwind.test"), http=httplib2.Http()
    )
    service = build(
        "gmail", "v1", http=http, client_options={"api_endpoint": base}, static_discovery=True
    )
    with pytest.raises(RefreshError, match="unauthorized_client"):
        service.users().getProfile(userId="me").execute()


def test_calendar_events_through_the_client_library(google):
    emulator, base = google
    events = calendar_events(emulator, base)
    body = {
        "summary": "x",
        "start": {"dateTime": "2026-11-20T10:00:00Z"},
        "end": {"dateTime": "2026-11-20T10:30:00Z"},
        "extendedProperties": {"private": {"crm": "k1"}},
    }
    events.insert(calendarId="primary", body={**body, "id": "abcde12345"}).execute()
    with pytest.raises(HttpError) as err:
        events.insert(calendarId="primary", body={**body, "id": "abcde12345"}).execute()
    assert err.value.resp.status == 409 and b"duplicate" in err.value.content
    events.insert(calendarId="primary", body={**body, "extendedProperties": {}}).execute()
    first = events.list(calendarId="primary", maxResults=1).execute()
    assert "nextPageToken" in first and "nextSyncToken" not in first  # only on the last page
    found = events.list(calendarId="primary", privateExtendedProperty="crm=k1").execute()
    assert [e["id"] for e in found["items"]] == ["abcde12345"]
    token = found["nextSyncToken"]
    events.delete(calendarId="primary", eventId="abcde12345").execute()
    changed = events.list(calendarId="primary", syncToken=token).execute()
    assert changed["items"] == [{"id": "abcde12345", "status": "cancelled"}]  # a tombstone
    with pytest.raises(HttpError) as err:
        events.list(calendarId="primary", syncToken=token, timeMin="2026-01-01T00:00:00Z").execute()
    assert err.value.resp.status == 400
    emulator.expire_sync_tokens()
    with pytest.raises(HttpError) as err:
        events.list(calendarId="primary", syncToken=token).execute()
    assert err.value.resp.status == 410 and b"fullSyncRequired" in err.value.content
    imported = events.import_(calendarId="primary", body={**body, "iCalUID": "u1@x"}).execute()
    assert imported["iCalUID"] == "u1@x"
    with pytest.raises(HttpError) as err:
        events.import_(calendarId="primary", body={**body, "iCalUID": "u1@x"}).execute()
    assert err.value.resp.status == 409


def test_user_labels_have_ids_unlike_their_names_and_messages_carry_the_ids(google):
    emulator, base = google
    no_crm = emulator.add_label(USER, "No CRM")
    assert no_crm.startswith("Label_") and no_crm != "No CRM"
    with pytest.raises(ValueError, match="never names"):
        emulator.deliver(USER, b"From: a@x.test\r\n\r\nx", labels=("INBOX", "No CRM"))
    with pytest.raises(ValueError):
        emulator.add_label(USER, "Inbox")  # system label names are reserved
    seed(emulator, 1)
    (mid,) = emulator.mailboxes[USER].messages
    emulator.modify(USER, mid, add=(no_crm,))
    service = gmail(emulator, base)
    labels = service.users().labels().list(userId="me").execute()["labels"]
    # each label of the list holds only these fields [ListLabelsResponse in gmail.v1.json]
    listed = {"id", "name", "messageListVisibility", "labelListVisibility", "type"}
    assert listed <= set(GMAIL["schemas"]["Label"]["properties"])
    assert all(set(label) <= listed for label in labels)
    by_id = {label["id"]: label for label in labels}
    assert by_id[no_crm]["name"] == "No CRM" and by_id[no_crm]["type"] == "user"
    assert by_id["INBOX"] == {"id": "INBOX", "name": "INBOX", "type": "system"}
    got = service.users().messages().get(userId="me", id=mid, format="minimal").execute()
    assert no_crm in got["labelIds"] and "No CRM" not in got["labelIds"]


def test_label_changes_are_history_records_filtered_by_history_types(google):
    emulator, base = google
    service = gmail(emulator, base)
    start = service.users().getProfile(userId="me").execute()["historyId"]
    raw = email_bytes(
        sender="carla@acme.test", to=[USER], subject="s", when=datetime.now(UTC), message_id="s@x"
    )
    mid = emulator.deliver(USER, raw, labels=("SPAM",))
    emulator.modify(USER, mid, add=("INBOX",), remove=("SPAM",))  # "Not spam"
    emulator.modify(USER, mid, remove=("SPAM",))  # nothing left to remove: no record

    def history(*types: str) -> list[dict]:
        response = (
            service.users()
            .history()
            .list(userId="me", startHistoryId=start, historyTypes=list(types) or None)
            .execute()
        )
        return list(response.get("history", []))

    everything = history()
    assert len(everything) == 3
    fields = set(GMAIL["schemas"]["History"]["properties"])
    assert all(set(record) <= fields for record in everything)
    ids = [int(r["id"]) for r in everything]
    assert ids == sorted(ids)  # chronological [history.list]
    (removed,) = history("labelRemoved")
    (change,) = removed["labelsRemoved"]
    assert change["labelIds"] == ["SPAM"] and change["message"]["id"] == mid
    assert change["message"]["labelIds"] == ["INBOX"]  # what the message has now
    (added,) = history("labelAdded")
    assert added["labelsAdded"][0]["labelIds"] == ["INBOX"]
    assert [r["id"] for r in history("messageAdded", "labelRemoved")] == [
        everything[0]["id"],
        removed["id"],
    ]
    # the field's name is not a history type (the client library refuses it before sending)
    resp, body = service._http.request(
        base + f"gmail/v1/users/me/history?startHistoryId={start}&historyTypes=labelsRemoved"
    )
    assert resp.status == 400 and b"historyTypes" in body


def test_calendar_time_bounds_and_what_a_sync_token_refuses(google):
    emulator, base = google
    events = calendar_events(emulator, base)

    def at(day: int, hours: int = 1, summary: str = "") -> dict:
        start = datetime(2026, 12, day, 10, tzinfo=UTC)
        return {
            "summary": summary or f"d{day}",
            "start": {"dateTime": start.isoformat()},
            "end": {"dateTime": (start + timedelta(hours=hours)).isoformat()},
        }

    for day in (1, 10, 20):
        emulator.add_event(USER, at(day))
    emulator.add_event(
        USER, {"summary": "all day", "start": {"date": "2026-12-15"}, "end": {"date": "2026-12-16"}}
    )

    def summaries(**bounds: str) -> list[str]:
        return [
            e["summary"] for e in events.list(calendarId="primary", **bounds).execute()["items"]
        ]

    # timeMin bounds the end, timeMax the start, both exclusive
    assert summaries(timeMin="2026-12-01T11:00:00Z") == ["d10", "d20", "all day"]
    assert summaries(timeMin="2026-12-01T10:59:59+00:00", timeMax="2026-12-10T10:00:00Z") == ["d1"]
    assert summaries(timeMin="2026-12-14T00:00:00Z", timeMax="2026-12-16T00:00:00Z") == ["all day"]
    for bad in (
        {"timeMin": "2026-12-01T10:00:00"},  # the offset is mandatory
        {"timeMin": "2026-12-10T00:00:00Z", "timeMax": "2026-12-01T00:00:00Z"},
    ):
        with pytest.raises(HttpError) as err:
            events.list(calendarId="primary", **bad).execute()
        assert err.value.resp.status == 400
    token = events.list(calendarId="primary").execute()["nextSyncToken"]
    for refused in (
        {"timeMax": "2027-01-01T00:00:00Z"},
        {"timeMin": "2026-01-01T00:00:00Z"},
        {"showDeleted": False},
    ):
        with pytest.raises(HttpError) as err:
            events.list(calendarId="primary", syncToken=token, **refused).execute()
        assert err.value.resp.status == 400
    emulator.add_event(USER, at(25))
    changed = events.list(calendarId="primary", syncToken=token, showDeleted=True).execute()
    assert [e["summary"] for e in changed["items"]] == ["d25"]
