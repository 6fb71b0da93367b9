"""``mailbox add --kind gmail`` and ``reauth``: the two ways to reach a Gmail mailbox.

- Admin mode, ``--service-account KEYFILE``: a service account key with domain-wide
  delegation; the secret stored is the key (JSON).
- User mode, ``--oauth-client FILE``: the installed-app consent (RFC 8252, a loopback
  redirect): syncd shows a URL, the user allows access, and the secret stored is
  ``{"refresh_token", "client_secret"}`` (JSON). ``reauth`` runs the consent again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncd.connectors.base import AuthError, ConnectorError
from syncd.connectors.gmail import GmailSettings, GmailSignIn
from syncd.connectors.kind import SignedIn, SignInContext, SignInError, checked_url, since_days
from syncd.secrets import Secret, SecretsError

SCOPES = [
    "https://www.googleapis.com/auth/gmail.readonly",
    "https://www.googleapis.com/auth/calendar.events",
]
# the address books (Google People), asked for at sign-in beside SCOPES but used by tokens of
# their own: a grant (or a domain-wide delegation) without them stops only the address books
CONTACT_SCOPES = [
    "https://www.googleapis.com/auth/contacts.readonly",
    "https://www.googleapis.com/auth/contacts.other.readonly",
]


def _consent(ctx: SignInContext, client: dict[str, str]) -> str:
    return oauth_consent(
        client,
        lambda url: ctx.show(f"Open this URL, sign in as {ctx.email} and allow access:\n{url}"),
        login_hint=ctx.email,
    )


def add(ctx: SignInContext, settings: GmailSettings, options: GmailSignIn) -> SignedIn:
    if settings.api_endpoint:
        checked_url(settings.api_endpoint, "--api-endpoint")
    days = since_days(options.since, settings.since_days)
    try:
        if options.service_account is not None and options.oauth_client is None:
            key = read_service_account(str(options.service_account))
            token_uri = json.loads(key).get("token_uri")
            if token_uri:  # where the signed assertion goes, for an access token
                checked_url(
                    str(token_uri), f"--service-account {str(options.service_account)!r}: token_uri"
                )
            typed = settings.model_copy(update={"mode": "service_account", "since_days": days})
            return SignedIn(typed, Secret(key))
        if options.oauth_client is not None and options.service_account is None:
            client = read_oauth_client(str(options.oauth_client))
            for key in ("auth_uri", "token_uri"):
                checked_url(
                    str(client[key]), f"--oauth-client {str(options.oauth_client)!r}: {key}"
                )
            typed = settings.model_copy(
                update={
                    "mode": "oauth",
                    "since_days": days,
                    "client_id": client["client_id"],
                    "auth_uri": client["auth_uri"],
                    "token_uri": client["token_uri"],
                }
            )
            refresh = _consent(ctx, client)
            secret = json.dumps(
                {"refresh_token": refresh, "client_secret": client["client_secret"]}
            )
            return SignedIn(typed, Secret(secret))
    except ConnectorError as exc:
        raise SignInError(str(exc)) from None
    raise SignInError(
        "a gmail mailbox needs --service-account KEYFILE (admin mode) or --oauth-client FILE "
        "(user mode), one of them",
        2,
    )


def reauth(
    ctx: SignInContext, settings: GmailSettings, old: Secret | None, options: GmailSignIn
) -> SignedIn:
    try:
        if settings.mode == "oauth":
            if old is None:
                raise SignInError(
                    f"mailbox {ctx.name!r} has no stored client secret; remove it and add it "
                    "again with --oauth-client FILE"
                )
            client_secret = json.loads(old.reveal())["client_secret"]
            client = {
                "client_id": str(settings.client_id),
                "client_secret": client_secret,
                "auth_uri": str(settings.auth_uri),
                "token_uri": str(settings.token_uri),
            }
            refresh = _consent(ctx, client)
            secret = json.dumps({"refresh_token": refresh, "client_secret": client_secret})
            return SignedIn(settings, Secret(secret))
        if options.service_account is not None:
            return SignedIn(settings, Secret(read_service_account(str(options.service_account))))
    except (ConnectorError, SecretsError) as exc:
        raise SignInError(str(exc)) from None
    except (ValueError, KeyError, TypeError):
        raise SignInError(
            f"mailbox {ctx.name!r}: the stored OAuth secret cannot be read; remove the mailbox "
            "and add it again with --oauth-client FILE"
        ) from None
    raise SignInError("this gmail mailbox runs in admin mode: give --service-account KEYFILE", 2)


def read_oauth_client(path: str) -> dict[str, str]:
    """An OAuth client file as Google's console writes it ({"installed": {...}})."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConnectorError(f"--oauth-client {path!r}: cannot read it ({exc})") from None
    client = data.get("installed") or data.get("web")
    if not client or not {"client_id", "client_secret", "auth_uri", "token_uri"} <= set(client):
        raise ConnectorError(
            f"--oauth-client {path!r} is not an OAuth client file; download the 'Desktop app' "
            "client JSON from the Google Cloud console"
        )
    return {k: str(client[k]) for k in ("client_id", "client_secret", "auth_uri", "token_uri")}


def oauth_consent(
    client: dict[str, str], show: Callable[[str], None], login_hint: str, timeout: float = 600.0
) -> str:
    """The installed-app consent (loopback redirect, RFC 8252): show the URL, wait for the
    browser to come back with a code, trade it for a refresh token, and return that."""
    import secrets as _secrets
    import urllib.parse
    import urllib.request
    from http.server import BaseHTTPRequestHandler, HTTPServer

    state = _secrets.token_urlsafe(16)
    got: dict[str, str] = {}

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
            got.update(query)
            body = b"syncd has the consent; you can close this window."
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    server.timeout = timeout
    redirect = f"http://127.0.0.1:{server.server_port}/"
    url = (
        client["auth_uri"]
        + "?"
        + urllib.parse.urlencode(
            {
                "client_id": client["client_id"],
                "redirect_uri": redirect,
                "response_type": "code",
                "scope": " ".join(SCOPES + CONTACT_SCOPES),
                "access_type": "offline",
                "prompt": "consent",
                "state": state,
                "login_hint": login_hint,
            }
        )
    )
    show(url)
    try:
        server.handle_request()
    finally:
        server.server_close()
    if got.get("state") != state or "code" not in got:
        raise AuthError(f"the consent did not complete ({got.get('error', 'no code came back')})")
    form = urllib.parse.urlencode(
        {
            "grant_type": "authorization_code",
            "code": got["code"],
            "redirect_uri": redirect,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        }
    ).encode()
    try:
        with urllib.request.urlopen(client["token_uri"], data=form, timeout=60) as response:
            tokens = json.loads(response.read())
    except OSError as exc:
        raise AuthError(f"Google refused the consent code: {exc}") from None
    if "refresh_token" not in tokens:
        raise AuthError("Google gave no refresh token; run the consent again")
    return str(tokens["refresh_token"])


def read_service_account(path: str) -> str:
    """A service account key file (JSON), checked; returned as the secret to store."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConnectorError(f"--service-account {path!r}: cannot read it ({exc})") from None
    if info.get("type") != "service_account" or "private_key" not in info:
        raise ConnectorError(
            f"--service-account {path!r} is not a service account key; create a JSON key for "
            "a service account with domain-wide delegation in the Google Cloud console"
        )
    return json.dumps(info)
