"""Graph's JSON batching: ``POST /$batch``."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..http import Headers, Request, Response
from .state import GraphError, GraphState

MAX_BATCH = 20  # [json-batching]


def _invalid(
    message: str = "Invalid batch payload format.", code: str = "BadRequest"
) -> GraphError:
    return GraphError(400, code, message)


def _requests(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    """A batch's requests, and whether they run in parallel (else one after the other);
    400 for a batch Graph refuses."""
    try:
        requests = json.loads(body)["requests"]
        if not isinstance(requests, list) or not all(
            isinstance(r, dict) and r.get("method") and r.get("url") for r in requests
        ):
            raise TypeError("requests")
    except (ValueError, KeyError, TypeError):
        raise _invalid() from None
    if len(requests) > MAX_BATCH:
        raise _invalid(
            f"The number of requests in the batch exceeds the limit of {MAX_BATCH}.",
            "MaximumRequestsExceeded",
        )
    ids = [str(r.get("id") or "").lower() for r in requests]
    if len(set(ids)) != len(ids) or not all(ids):
        raise _invalid("Batch request contains duplicate or missing ids.")
    position = {rid: i for i, rid in enumerate(ids)}
    depends: list[list[str]] = []
    for i, r in enumerate(requests):
        named = r.get("dependsOn") or []
        if not isinstance(named, list):
            raise _invalid()
        found = [str(d).lower() for d in named]
        if any(position.get(d, len(ids)) >= i for d in found):
            raise _invalid("dependsOn refers to an id that is not an earlier request of the batch.")
        depends.append(found)
    parallel = not any(depends)
    sequential = all(d == ([ids[i - 1]] if i else []) for i, d in enumerate(depends))
    if not (parallel or sequential):
        raise _invalid("Batch should be either fully sequential or fully parallel.")
    return requests, parallel


class Batch(GraphState):
    def batch(self, request: Request) -> Response:
        """``POST /$batch`` [MGD concepts/json-batching.md]: at most 20 requests, each with an
        id ("Not case-sensitive. Must be unique in the batch, otherwise, the batch request
        fails with a 400"), a method and a relative url; ``dependsOn`` names only earlier ids
        (msgraph-sdk-java-core #71: a batch out of order is thrown back); "Batch should be
        either fully sequential or fully parallel" (a mix is 400, microsoft-graph-docs #16280).
        Parallel requests all run at once (each holds one of the mailbox's slots); sequential
        ones one after the other, and after a failure every later one is 424 ("any request
        that depends on that request fails with status code 424"). Answers in any order."""
        try:
            requests, parallel = _requests(request.body)
        except GraphError as err:
            return self.error(err)
        auth = request.headers.get("Authorization")

        def run(r: dict[str, Any]) -> dict[str, Any]:
            inner = Headers({**(r.get("headers") or {}), "Authorization": auth})
            data = json.dumps(r["body"]).encode() if r.get("body") is not None else b""
            answer = self.graph(Request(str(r["method"]).upper(), r["url"], inner, data))
            item: dict[str, Any] = {
                "id": r["id"],
                "status": answer.status,
                "headers": answer.headers,
            }
            if answer.body != b"":
                item["body"] = answer.body
            return item

        answers: list[dict[str, Any]] = []
        if parallel:
            with ThreadPoolExecutor(max_workers=max(1, len(requests))) as pool:
                answers = list(pool.map(run, requests))
        else:
            failed = False
            for r in requests:
                if failed:
                    error = GraphError(424, "FailedDependency", "Failed dependency.")
                    answers.append(
                        {"id": r["id"], "status": 424, "headers": {}, "body": error.body()}
                    )
                    continue
                answers.append(run(r))
                failed = answers[-1]["status"] >= 400
        self._random.shuffle(answers)  # "responses might appear in a different order"
        return Response(200, {"responses": answers})
