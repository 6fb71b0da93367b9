"""``kind = "imap"``: mail over IMAP and the same user's calendars over CalDAV; this module
holds the kind's settings and sign-in options, and its ``KIND``.

:mod:`.connector` the connector (``KIND.open``) · :mod:`.session` one IMAP connection
(login, retries) · :mod:`.folder` a folder as a mail source (its cursor, FETCH) ·
:mod:`.watch` IDLE pushes (``KIND.watch``) · :mod:`.caldav` CalDAV calendars and the task
writer · :mod:`.parse` what the servers send, read without a network · :mod:`.signin`
``mailbox add``/``reauth``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from syncd.connectors.kind import Kind, KindSettings, SignInOptions, option


class ImapSettings(KindSettings):
    host: str = Field(min_length=1, json_schema_extra=option("--host", "imap: the server."))
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        json_schema_extra=option("--port", "imap: default 993 (implicit TLS), else 143."),
    )
    tls: Literal["implicit", "starttls", "none"] = Field(
        "implicit",
        json_schema_extra=option("--tls", "imap: implicit, starttls, or none (loopback only)."),
    )
    login: str | None = Field(
        None, json_schema_extra=option("--login", "imap: the login (default: the user's email).")
    )
    auth: Literal["password", "xoauth2"] = Field(
        "password", json_schema_extra=option(None, "set by --xoauth2")
    )
    idle: bool = Field(
        False, json_schema_extra=option("--idle", "imap: push new INBOX mail with IDLE.")
    )
    folders: list[str] = Field(
        default_factory=list,
        json_schema_extra=option("--folder", "imap: another folder to read; repeatable."),
    )
    caldav_url: str | None = Field(
        None,
        json_schema_extra=option(
            "--caldav",
            "imap: the CalDAV server URL of the same user's calendars (same login and "
            "password): https://, or http:// to this machine only; never a password in it.",
        ),
    )
    caldav_login: str | None = Field(
        None, json_schema_extra=option(None, "the CalDAV login when it is not the IMAP one")
    )
    calendars: list[str] | None = Field(
        None, json_schema_extra=option(None, "the CalDAV calendars to read (default: all)")
    )
    carddav_url: str | None = Field(
        None,
        json_schema_extra=option(
            "--carddav",
            "imap: the CardDAV server URL of the same user's address books (default: the "
            "--caldav URL; same login and password), read by 'syncd import contacts'.",
        ),
    )


class ImapSignIn(SignInOptions):
    password_file: Path | None = Field(
        None,
        json_schema_extra=option(
            "--password-file", "imap: read the password (or token) from this file."
        ),
    )
    password_env: str | None = Field(
        None,
        json_schema_extra=option(
            "--password-env", "imap: read the password (or token) from this environment variable."
        ),
    )
    xoauth2: bool = Field(
        False, json_schema_extra=option("--xoauth2", "imap: the secret is an OAuth2 access token.")
    )


KIND = Kind(
    name="imap",
    summary="--host H [--port P] [--tls implicit|starttls|none] [--login L] [--xoauth2] "
    "[--password-file F | --password-env VAR | prompt] [--folder F ...] [--idle] [--caldav URL] "
    "[--carddav URL]",
    settings=ImapSettings,
    sign_in=ImapSignIn,
    open="syncd.connectors.imap.connector:ImapConnector",
    add="syncd.connectors.imap.signin:add",
    probe="syncd.connectors.imap.probe:probe",
    holdings="syncd.connectors.imap.probe:holdings",
    reauth="syncd.connectors.imap.signin:reauth",
    watch="syncd.connectors.imap.watch:watch",
)
