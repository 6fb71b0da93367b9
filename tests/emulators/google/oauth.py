"""Google's OAuth 2.0 side: clients and service accounts, the consent page, the token endpoint
(authorization code, refresh token and JWT-bearer grants) and the access tokens the APIs
accept."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ..http import Request, Response
from .state import GmailError, GoogleState, Mailbox

SCOPES = (
    "https://www.googleapis.com/auth/gmail.readonly https://www.googleapis.com/auth/calendar.events"
)


class OAuth(GoogleState):
    def add_client(self, client_id: str, client_secret: str) -> None:
        self.clients[client_id] = client_secret

    def add_service_account(
        self, client_email: str, public_key: Any, delegated: bool = True
    ) -> None:
        """A service account whose JWTs verify with ``public_key``; ``delegated`` is whether
        the Workspace admin granted it domain-wide delegation."""
        self.service_accounts[client_email] = (public_key, delegated)

    def grant(self, user: str) -> str:
        """A refresh token for ``user`` (what a consent screen would give)."""
        token = "1//" + secrets.token_urlsafe(24)
        self.refresh_tokens[token] = user
        return token

    def revoke(self, refresh_token: str) -> None:
        self.refresh_tokens.pop(refresh_token, None)

    def consent(self, request: Request) -> Response:
        """The consent page, as if the user clicked "Allow": back to redirect_uri with a code."""
        query = {k: v[0] for k, v in request.query.items()}
        if query.get("client_id") not in self.clients or not self.consenting:
            return Response(400, {"error": "invalid_request"})
        code = "4/" + secrets.token_urlsafe(16)
        self.codes[code] = self.consenting
        target = (
            query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})
        )
        return Response(302, headers={"Location": target})

    def _issue(self, user: str, **extra: str) -> dict[str, Any]:
        access = "ya29." + secrets.token_urlsafe(32)
        self.access[access] = (user, time.time() + 3600)
        return {"access_token": access, "expires_in": 3599, "token_type": "Bearer", **extra}

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type")
        if grant in ("refresh_token", "authorization_code") and self.clients.get(
            form.get("client_id", "")
        ) != form.get("client_secret"):
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        if grant == "refresh_token":
            user = self.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                }
        elif grant == "authorization_code":
            user = self.codes.pop(form.get("code", ""), "")
            if not user:
                return 400, {"error": "invalid_grant", "error_description": "Malformed auth code."}
            return 200, self._issue(
                user, refresh_token=self.grant(user), scope=form.get("scope", "")
            )
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            subject = self._jwt_subject(form.get("assertion", ""))
            if isinstance(subject, tuple):
                return subject
            user = subject
        else:
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": f"Invalid grant_type: {grant}",
            }
        return 200, self._issue(user, scope=SCOPES)

    def _jwt_subject(self, assertion: str) -> str | tuple[int, dict[str, Any]]:
        """Check a service account's RS256 JWT (RFC 7523); the user is its ``sub`` claim."""

        def unb64(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        invalid = (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            claims = json.loads(unb64(claims_b64))
        except ValueError:
            return invalid
        account = self.service_accounts.get(claims.get("iss", ""))
        if account is None:
            return 400, {
                "error": "invalid_client",
                "error_description": "The OAuth client was not found.",
            }
        public_key, delegated = account
        try:
            public_key.verify(
                unb64(signature_b64),
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return invalid
        if claims.get("exp", 0) < time.time():
            return 400, {
                "error": "invalid_grant",
                "error_description": "Invalid JWT: Token "
                "must be a short-lived token (60 minutes) and in a reasonable timeframe.",
            }
        subject = claims.get("sub")
        if not delegated or subject not in self.mailboxes:
            return 401, {
                "error": "unauthorized_client",
                "error_description": "Client is "
                "unauthorized to retrieve access tokens using this method, or client "
                "not authorized for any of the scopes requested.",
            }
        return str(subject)

    def authorize(self, header: str | None, user_id: str) -> Mailbox:
        token = (header or "").removeprefix("Bearer ").strip()
        user, expiry = self.access.get(token, ("", 0.0))
        if not user or expiry < time.time():
            raise GmailError(401, "authError", "Invalid Credentials")
        target = user if user_id == "me" else user_id
        if target != user:
            raise GmailError(403, "forbidden", "Delegation denied for " + user)
        return self.mailboxes[user]
