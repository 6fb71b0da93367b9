"""Google's discovery documents, as shipped with google-api-python-client (``gmail.v1.json``,
``calendar.v3.json``): the routes the emulator serves, each with the query parameters its
method documents, and the quota cost of each method."""

from __future__ import annotations

import json
import re
from pathlib import Path

import googleapiclient

DISCOVERY = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
GMAIL = json.loads((DISCOVERY / "gmail.v1.json").read_text())
CALENDAR = json.loads((DISCOVERY / "calendar.v3.json").read_text())
EVENT_METHODS = ("list", "insert", "patch", "get", "delete", "import")
# quota units per method [gmail/api/reference/quota]
UNITS = {
    "getProfile": 1,
    "labels.list": 1,
    "messages.list": 5,
    "messages.get": 5,
    "history.list": 2,
    **{f"events.{m}": 1 for m in EVENT_METHODS},
}
USER_UNITS_PER_MINUTE = 15_000
# parameters every Google API method takes [system parameters]
STANDARD_PARAMETERS = {"alt", "fields", "prettyPrint", "quotaUser", "key"}


def _routes() -> list[tuple[re.Pattern[str], str, str, set[str]]]:
    """(path regex, HTTP method, method name, allowed query parameters) from discovery."""
    users = GMAIL["resources"]["users"]
    events = CALENDAR["resources"]["events"]["methods"]
    wanted = {
        "getProfile": users["methods"]["getProfile"],
        "labels.list": users["resources"]["labels"]["methods"]["list"],
        "messages.list": users["resources"]["messages"]["methods"]["list"],
        "messages.get": users["resources"]["messages"]["methods"]["get"],
        "history.list": users["resources"]["history"]["methods"]["list"],
        **{f"events.{k}": events[k] for k in EVENT_METHODS},
    }
    routes = []
    for name, m in wanted.items():
        prefix = CALENDAR["servicePath"] if name.startswith("events.") else ""
        pattern = "^/" + prefix + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", m["path"]) + "$"
        query = {p for p, spec in m.get("parameters", {}).items() if spec["location"] == "query"}
        routes.append((re.compile(pattern), m["httpMethod"], name, query | STANDARD_PARAMETERS))
    return routes


ROUTES = _routes()
