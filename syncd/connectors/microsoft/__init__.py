"""``kind = "microsoft"``: Exchange Online mail, calendar and To Do through Microsoft Graph.

This module holds the kind's settings (``KIND``) and stays light. The rest loads on use:
:mod:`.connector` (``MicrosoftConnector``: the sources and the task writer) over
:mod:`.client` (the Graph session: msal tokens, retries, the mailbox's four slots,
``$batch``); :mod:`.mail`, :mod:`.calendar` and :mod:`.tasks` (the message delta, the
calendarView delta, To Do tasks or task events); :mod:`.parse` (Graph JSON -> items, and the
quarantine's re-parsers); :mod:`.signin` (``mailbox add``/``reauth``: a client secret or a
certificate for the admin mode, the device-code flow for the user mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from syncd.connectors.kind import BackfillSettings, BackfillSignIn, Kind, option


class MicrosoftSettings(BackfillSettings):
    tenant: str = Field(
        min_length=1,
        json_schema_extra=option("--tenant", "microsoft: the Entra ID tenant (id or domain)."),
    )
    client_id: str = Field(
        min_length=1,
        json_schema_extra=option("--client-id", "microsoft: the app registration's client id."),
    )
    mode: Literal["app", "device"] = Field(
        "app", json_schema_extra=option(None, "set by --device-code or the admin-mode options")
    )
    tasks: Literal["todo", "events"] = Field(
        "todo",
        json_schema_extra=option(
            "--tasks", "microsoft: write follow-ups as To Do tasks or events."
        ),
    )
    todo_list: str = Field(
        "CRM follow-ups", json_schema_extra=option(None, "the To Do list of follow-ups")
    )
    ca_bundle: Path | None = Field(
        None,
        json_schema_extra=option(
            "--ca-bundle",
            "microsoft: a PEM file of CAs to trust instead of the system's "
            "(a TLS-inspecting proxy).",
        ),
    )
    authority: str | None = Field(
        None,
        json_schema_extra=option("--authority", "microsoft: another sign-in host.", hidden=True),
    )
    graph_url: str | None = Field(
        None,
        json_schema_extra=option("--graph-url", "microsoft: another Graph base URL.", hidden=True),
    )
    page_size: int | None = Field(
        None, ge=1, le=1000, json_schema_extra=option(None, "messages a delta page")
    )
    backoff: float = Field(
        0.5, gt=0, le=60, json_schema_extra=option(None, "seconds before the first retry")
    )


class MicrosoftSignIn(BackfillSignIn):
    client_secret_file: Path | None = Field(
        None,
        json_schema_extra=option(
            "--client-secret-file",
            "microsoft (admin mode): a file holding the app's client secret.",
        ),
    )
    certificate: Path | None = Field(
        None,
        json_schema_extra=option(
            "--certificate",
            "microsoft (admin mode): a PEM file with the private key and the certificate "
            "uploaded to the app registration.",
        ),
    )
    device_code: bool = Field(
        False,
        json_schema_extra=option(
            "--device-code",
            "microsoft (user mode): sign in as the user now (prints a code to enter).",
        ),
    )


KIND = Kind(
    name="microsoft",
    summary="--tenant T --client-id C (--client-secret-file F | --certificate PEM "
    "| --device-code) [--tasks todo|events] [--since DATE] [--ca-bundle PEM]",
    settings=MicrosoftSettings,
    sign_in=MicrosoftSignIn,
    open="syncd.connectors.microsoft.connector:MicrosoftConnector",
    add="syncd.connectors.microsoft.signin:add",
    reauth="syncd.connectors.microsoft.signin:reauth",
    probe="syncd.connectors.microsoft.probe:probe",
    holdings="syncd.connectors.microsoft.probe:holdings",
    formats={
        "graph-message": "syncd.connectors.microsoft.parse:reread_message",
        "graph-event": "syncd.connectors.microsoft.parse:reread_event",
    },
)
