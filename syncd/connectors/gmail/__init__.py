"""``kind = "gmail"``: Gmail and Google Calendar through google-api-python-client.

This module holds only the kind's models (light: ``mailbox add --help`` reads them).
:mod:`.connector` opens a mailbox; :mod:`.client` is the session with Google (credentials,
quota, retries, labels, raw fetches); :mod:`.mail` the source ``gmail:mail``;
:mod:`.calendar` the source ``gcal:primary`` and the task writer; :mod:`.parse` reads
Google's JSON (pure); :mod:`.signin` is ``mailbox add``/``reauth`` (the service account key
of the admin mode, the installed-app consent of the user mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from syncd.connectors.kind import BackfillSettings, BackfillSignIn, Kind, option


class GmailSettings(BackfillSettings):
    mode: Literal["service_account", "oauth"] = Field(
        "service_account", json_schema_extra=option(None, "set by --service-account/--oauth-client")
    )
    client_id: str | None = Field(None, json_schema_extra=option(None, "the OAuth client's id"))
    auth_uri: str | None = Field(None, json_schema_extra=option(None, "the OAuth client's"))
    token_uri: str | None = Field(None, json_schema_extra=option(None, "the OAuth client's"))
    api_endpoint: str | None = Field(
        None,
        json_schema_extra=option(
            "--api-endpoint", "gmail: another API base URL (a proxy, a test server).", hidden=True
        ),
    )
    calendar_endpoint: str | None = Field(
        None, json_schema_extra=option(None, "another Calendar API base URL")
    )
    quota_units_per_minute: int = Field(
        15_000, ge=1, json_schema_extra=option(None, "Gmail's per-user quota")
    )


class GmailSignIn(BackfillSignIn):
    service_account: Path | None = Field(
        None,
        json_schema_extra=option(
            "--service-account",
            "gmail: a service account key (JSON) with domain-wide delegation: the admin mode.",
        ),
    )
    oauth_client: Path | None = Field(
        None,
        json_schema_extra=option(
            "--oauth-client",
            "gmail: an OAuth 'Desktop app' client file: the user mode (prints a consent URL).",
        ),
    )


KIND = Kind(
    name="gmail",
    summary="--service-account KEYFILE | --oauth-client FILE [--since DATE]",
    settings=GmailSettings,
    sign_in=GmailSignIn,
    open="syncd.connectors.gmail.connector:GmailConnector",
    add="syncd.connectors.gmail.signin:add",
    reauth="syncd.connectors.gmail.signin:reauth",
    probe="syncd.connectors.gmail.probe:probe",
    holdings="syncd.connectors.gmail.probe:holdings",
)
