"""The Graph emulator itself, checked against the documented behaviour (PROVIDER-APIS.md) through
msal and plain requests: what a faithful fake must reproduce, so connector tests mean something."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msal
import pytest
import requests

from syncd.connectors.microsoft import _Http

from .emulators.microsoft import MicrosoftEmulator, make_client_certificate

TENANT = "contoso.onmicrosoft.com"
ANA = "ana@contoso.test"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def em() -> Iterator[MicrosoftEmulator]:
    emulator = MicrosoftEmulator()
    emulator.add_app(TENANT, "app-1", secret="secret-1")
    emulator.add_app(TENANT, "public-1", public=True)
    emulator.add_user(ANA)
    emulator.start()
    yield emulator
    emulator.stop()


def confidential(em: MicrosoftEmulator, credential: Any, client: str = "app-1") -> Any:
    return msal.ConfidentialClientApplication(
        client,
        client_credential=credential,
        authority=f"{em.base}/{TENANT}",
        instance_discovery=False,
        http_client=_Http(str(em.ca_pem), 30),
    )


class Graph:
    def __init__(self, em: MicrosoftEmulator, token: str) -> None:
        self.em, self.token = em, token

    def __call__(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        url = path if path.startswith("https://") else f"{self.em.base}/v1.0{path}"
        return requests.request(
            method, url, headers=headers, verify=str(self.em.ca_pem), timeout=30, **kw
        )


@pytest.fixture
def graph(em: MicrosoftEmulator) -> Graph:
    result = confidential(em, "secret-1").acquire_token_for_client(
        scopes=["https://graph.microsoft.com/.default"]
    )
    return Graph(em, result["access_token"])


def test_client_credentials_through_msal_and_the_documented_errors(em):
    app = confidential(em, "secret-1")
    first = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert first["token_type"] == "Bearer" and "refresh_token" not in first
    again = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert again["access_token"] == first["access_token"]  # msal's cache
    assert em.token_requests == 1
    scope = confidential(em, "secret-1").acquire_token_for_client(scopes=["Mail.Read"])
    assert scope["error"] == "invalid_scope" and "AADSTS1002012" in scope["error_description"]
    wrong = confidential(em, "nope").acquire_token_for_client(
        scopes=["https://graph.microsoft.com/.default"]
    )
    assert wrong["error"] == "invalid_client" and 7000215 in wrong["error_codes"]
    unknown = confidential(em, "x", client="app-9").acquire_token_for_client(
        scopes=["https://graph.microsoft.com/.default"]
    )
    assert unknown["error"] == "unauthorized_client" and 700016 in unknown["error_codes"]


def test_certificate_assertions_are_verified(em):
    pem, certificate = make_client_certificate()
    em.add_app(TENANT, "app-cert", certificate=certificate)
    key = pem[: pem.index("-----BEGIN CERTIFICATE-----")]
    good = confidential(em, {"private_key": key, "public_certificate": certificate}, "app-cert")
    assert "access_token" in good.acquire_token_for_client(
        scopes=["https://graph.microsoft.com/.default"]
    )
    other_pem, other_cert = make_client_certificate()
    other_key = other_pem[: other_pem.index("-----BEGIN CERTIFICATE-----")]
    bad = confidential(em, {"private_key": other_key, "public_certificate": other_cert}, "app-cert")
    refused = bad.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert refused["error"] == "invalid_client" and 700027 in refused["error_codes"]


def test_an_http_authority_is_refused_by_msal(em):
    with pytest.raises(ValueError):
        msal.ConfidentialClientApplication(
            "app-1",
            client_credential="secret-1",
            authority=f"http://127.0.0.1:1/{TENANT}",
            instance_discovery=False,
        )


def test_device_code_pending_then_approved_and_refresh_tokens_rotate(em):
    app = msal.PublicClientApplication(
        "public-1",
        authority=f"{em.base}/{TENANT}",
        instance_discovery=False,
        http_client=_Http(str(em.ca_pem), 30),
    )
    flow = app.initiate_device_flow(scopes=["Mail.Read"])
    assert flow["user_code"] in flow["message"]
    threading.Timer(1.5, em.approve, (flow["user_code"], ANA)).start()
    result = app.acquire_token_by_device_flow(flow)  # polls: authorization_pending, then done
    assert result["id_token_claims"]["preferred_username"] == ANA
    (account,) = app.get_accounts()
    em.expire_access_tokens()
    app.token_cache.remove_at(
        next(iter(app.token_cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)))
    )
    refreshed = app.acquire_token_silent_with_error(["Mail.Read"], account=account)
    assert refreshed and "access_token" in refreshed
    graph = Graph(em, refreshed["access_token"])
    assert graph("GET", "/me/mailFolders/inbox/messages/delta").status_code == 200
    assert graph("GET", "/users/someone@contoso.test/todo/lists").status_code in (403, 404)
    # the refresh token used above was rotated: the first one is now refused
    form = {
        "client_id": "public-1",
        "grant_type": "refresh_token",
        "refresh_token": result["refresh_token"],
        "scope": "Mail.Read offline_access",
    }
    reuse = requests.post(
        f"{em.base}/{TENANT}/oauth2/v2.0/token", data=form, verify=str(em.ca_pem), timeout=30
    )
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"


def test_me_is_refused_to_an_app_token_and_a_bad_token_is_401(em, graph):
    me = graph("GET", "/me/todo/lists")
    assert me.status_code == 400 and "delegated" in me.json()["error"]["message"]
    assert Graph(em, "forged")("GET", f"/users/{ANA}/todo/lists").status_code == 401


def test_message_delta_pages_removals_select_and_410(em, graph):
    ids = [
        em.deliver(ANA, subject=f"s{i}", sender=("C", "c@x.test"), to=[("A", ANA)])
        for i in range(5)
    ]
    prefer = {"Prefer": 'odata.maxpagesize=2, IdType="ImmutableId"'}
    link = f"/users/{ANA}/mailFolders/inbox/messages/delta?$select=subject,internetMessageHeaders"
    seen: list[dict[str, Any]] = []
    pages = 0
    while True:
        page = graph("GET", link, headers=prefer)
        assert page.headers["Preference-Applied"] == "odata.maxpagesize=2"
        body = page.json()
        pages += 1
        seen += body["value"]
        if "@odata.nextLink" in body:
            link = body["@odata.nextLink"]
            continue
        delta = body["@odata.deltaLink"]
        break
    assert pages == 3 and [m["id"] for m in seen] == ids
    assert set(seen[0]) == {"@odata.etag", "id", "subject", "internetMessageHeaders"}
    em.delete_message(ANA, ids[0])
    em.deliver(ANA, subject="new", sender=("C", "c@x.test"), to=[("A", ANA)])
    changes = graph("GET", delta, headers=prefer).json()
    assert changes["value"][0] == {"id": ids[0], "@removed": {"reason": "deleted"}}
    assert changes["value"][1]["subject"] == "new" and "@odata.deltaLink" in changes
    em.expire_delta_tokens()
    gone = graph("GET", changes["@odata.deltaLink"])
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "syncStateNotFound"
    em.expire_delta_tokens(maintenance=True)
    moved = graph("GET", changes["@odata.deltaLink"], allow_redirects=False)
    assert moved.status_code == 410 and moved.headers["Location"].endswith("$deltatoken=")


def test_unknown_properties_and_unsupported_options_are_refused(em, graph):
    delta = f"/users/{ANA}/mailFolders/inbox/messages/delta"
    typo = graph("GET", delta + "?$select=subject,internetMessageHeader")
    assert typo.status_code == 400 and "internetMessageHeader'" in typo.json()["error"]["message"]
    assert graph("GET", delta + "?$search=renewal").status_code == 400
    assert graph("GET", delta + "?$filter=subject eq 'x'").status_code == 400
    window = "startDateTime=2029-12-01T00:00:00Z&endDateTime=2030-02-01T00:00:00Z"
    assert (
        graph("GET", f"/users/{ANA}/calendarView/delta?{window}&$select=subject").status_code == 400
    )


def test_ids_change_on_a_move_unless_immutable_ids_are_asked_for(em, graph):
    mid = em.deliver(ANA, subject="s", sender=("C", "c@x.test"), to=[("A", ANA)])
    url = f"/users/{ANA}/messages/{mid}?$select=subject"
    rest_before = graph("GET", url).json()["id"]
    em.move(ANA, mid, "archive")
    rest_after = graph("GET", url).json()["id"]
    immutable = graph("GET", url, headers={"Prefer": 'IdType="ImmutableId"'}).json()["id"]
    assert rest_before != rest_after and immutable == mid


def test_calendar_delta_needs_a_window_and_transaction_ids_do_not_duplicate(em, graph):
    missing = graph("GET", f"/users/{ANA}/calendarView/delta")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "ErrorInvalidParameter"
    body = {
        "subject": "Follow up",
        "start": {"dateTime": "2030-01-02T10:00:00", "timeZone": "W. Europe Standard Time"},
        "end": {"dateTime": "2030-01-02T10:15:00", "timeZone": "W. Europe Standard Time"},
        "transactionId": "syncd-x-1",
    }
    first = graph("POST", f"/users/{ANA}/events", json=body)
    second = graph("POST", f"/users/{ANA}/events", json=body)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"] and len(em.events(ANA)) == 1
    utc = graph(
        "GET",
        f"/users/{ANA}/events/{first.json()['id']}",
        headers={"Prefer": 'outlook.timezone="UTC"'},
    ).json()
    assert utc["start"] == {"dateTime": "2030-01-02T09:00:00.0000000", "timeZone": "UTC"}
    window = "startDateTime=2029-12-01T00:00:00Z&endDateTime=2030-02-01T00:00:00Z"
    listed = graph("GET", f"/users/{ANA}/calendarView/delta?{window}").json()
    assert [e["subject"] for e in listed["value"]] == ["Follow up"]


def test_todo_create_is_201_and_tasks_list_with_linked_resources(em, graph):
    lists = graph("GET", f"/users/{ANA}/todo/lists").json()["value"]
    assert lists[0]["wellknownListName"] == "defaultList"
    made = graph(
        "POST",
        f"/users/{ANA}/todo/lists/{lists[0]['id']}/tasks",
        json={"title": "t", "linkedResources": [{"applicationName": "a", "externalId": "e"}]},
    )
    assert made.status_code == 201 and made.json()["status"] == "notStarted"
    listed = graph(
        "GET", f"/users/{ANA}/todo/lists/{lists[0]['id']}/tasks?$expand=linkedResources"
    ).json()
    assert listed["value"][0]["linkedResources"][0]["externalId"] == "e"


def test_a_fifth_concurrent_request_to_a_mailbox_is_throttled(em, graph):
    em.latency = 0.5
    answers: list[requests.Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(graph("GET", f"/users/{ANA}/todo/lists")))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    throttled = [a for a in answers if a.status_code == 429]
    assert len(throttled) == 2 and sum(a.status_code == 200 for a in answers) == 4
    assert throttled[0].headers["Retry-After"] == "1"
    assert throttled[0].json()["error"]["code"] == "ApplicationThrottled"
    assert em.peak_inflight()[ANA] == 5  # a fifth arrived while four were in flight


def test_batch_limits_dependencies_and_per_item_throttling(em, graph):
    call = {"method": "GET", "url": f"/users/{ANA}/todo/lists"}
    too_many = graph(
        "POST", "/$batch", json={"requests": [{**call, "id": str(i)} for i in range(21)]}
    )
    assert too_many.status_code == 400
    twice = graph("POST", "/$batch", json={"requests": [{**call, "id": "1"}, {**call, "id": "1"}]})
    assert twice.status_code == 400
    chained = graph(
        "POST",
        "/$batch",
        json={
            "requests": [
                {"id": "a", "method": "GET", "url": f"/users/{ANA}/events/nope"},
                {**call, "id": "b", "dependsOn": ["a"]},
                {**call, "id": "c"},
            ]
        },
    ).json()["responses"]
    status = {r["id"]: r["status"] for r in chained}
    assert status == {"a": 404, "b": 424, "c": 200}
    em.latency = 0.3  # eight parallel items to one mailbox: four are refused with 429
    burst = graph("POST", "/$batch", json={"requests": [{**call, "id": str(i)} for i in range(8)]})
    statuses = sorted(r["status"] for r in burst.json()["responses"])
    assert statuses == [200] * 4 + [429] * 4


def test_injected_faults(em, graph):
    em.inject(status=503, retry_after=2)
    first = graph("GET", f"/users/{ANA}/todo/lists")
    assert first.status_code == 503 and first.headers["Retry-After"] == "2"
    em.inject(drop=True)
    with pytest.raises(requests.ConnectionError):
        graph("GET", f"/users/{ANA}/todo/lists")
    assert graph("GET", f"/users/{ANA}/todo/lists").status_code == 200
    em.rate_limit = (2, 60.0)
    codes = [graph("GET", f"/users/{ANA}/todo/lists").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_events_outside_the_window_are_not_listed(em, graph):
    em.add_event(
        ANA,
        subject="far",
        start=NOW + timedelta(days=400),
        end=NOW + timedelta(days=400, hours=1),
        organizer=("A", ANA),
        attendees=[],
    )
    start = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (NOW + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    listed = graph(
        "GET", f"/users/{ANA}/calendarView/delta?startDateTime={start}&endDateTime={end}"
    )
    assert listed.json()["value"] == []
