"""The Microsoft identity platform (v2.0), at ``https://127.0.0.1:PORT/{tenant}``: app
registrations, the OpenID configuration msal reads (``/v2.0/.well-known/openid-configuration``),
the token endpoint (client credentials with a secret or a certificate assertion, scope
``…/.default`` only; refresh token; device code) and the device authorization endpoint;
errors in Microsoft's shape (``invalid_client`` AADSTS7000215, ``unauthorized_client``
AADSTS700016, ``invalid_scope`` AADSTS1002012, ``invalid_grant`` AADSTS50173,
``authorization_pending``). Graph accepts the access tokens it issues (:meth:`authorize`)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import time
import uuid
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..http import Request, Response
from ..tls import make_self_signed
from .state import APP_PERMISSIONS, GRAPH_DEFAULT_SCOPE, App, Grant, GraphError, GraphState

IDENTITY_PATH = re.compile(
    r"^/(?P<tenant>[^/]+)/(?P<what>v2\.0/\.well-known/openid-configuration|"
    r"oauth2/v2\.0/token|oauth2/v2\.0/devicecode)$"
)


def _aad_error(status: int, error: str, code: int, text: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {uuid.uuid4()}",
        "error_codes": [code],
        "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }


def _no_client_credential(status: int) -> tuple[int, dict[str, Any]]:
    return _aad_error(
        status,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    )


def make_client_certificate() -> tuple[str, str]:
    """A self-signed certificate an admin would upload to the app registration:
    (private key PEM + certificate PEM, certificate PEM)."""
    return make_self_signed("syncd")


class Identity(GraphState):
    def add_app(
        self,
        tenant: str,
        client_id: str,
        secret: str | None = None,
        certificate: str | None = None,
        public: bool = False,
        permissions: frozenset[str] = APP_PERMISSIONS,
    ) -> App:
        """An app registration; ``certificate`` is the PEM of a certificate uploaded to it."""
        app = App(tenant, client_id, secret, public=public, permissions=permissions)
        if certificate:
            cert = x509.load_pem_x509_certificate(certificate.encode())
            app.certificate = cert.public_key()
            app.thumbprints = tuple(
                base64.urlsafe_b64encode(cert.fingerprint(h)).decode().rstrip("=")
                for h in (hashes.SHA1(), hashes.SHA256())
            )
        self.apps[client_id] = app
        return app

    def expire_access_tokens(self) -> None:
        with self.lock:
            for grant in self.grants.values():
                grant.expires = 0

    def revoke_consent(self, client_id: str) -> None:
        """An admin removes the app's consent: tokens still come, Graph refuses them."""
        self.apps[client_id].consented = False

    def delete_secret(self, client_id: str) -> None:
        self.apps[client_id].secret = None

    def revoke_refresh_tokens(self, user: str) -> None:
        with self.lock:
            for token, (_, who) in list(self.refresh_tokens.items()):
                if who == user:
                    del self.refresh_tokens[token]
            for token, grant in list(self.grants.items()):
                if grant.user == user:
                    del self.grants[token]

    def identity(self, request: Request) -> Response | None:
        """An identity platform request, or None for any other."""
        m = IDENTITY_PATH.match(request.path)
        if not m:
            return None
        tenant, what = m.group("tenant"), m.group("what")
        if what.startswith("v2.0") and request.method == "GET":
            return Response(*self.openid_configuration(tenant))
        if request.method != "POST":
            return None
        form = {k: v[-1] for k, v in request.form().items()}
        if what.endswith("token"):
            return Response(*self.token(tenant, form))
        return Response(*self.device_code(tenant, form))

    def openid_configuration(self, tenant: str) -> tuple[int, dict[str, Any]]:
        if not any(app.tenant == tenant for app in self.apps.values()):
            return _aad_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID",
            )
        root = f"{self.base}/{tenant}"
        return 200, {
            "issuer": f"{root}/v2.0",
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "jwks_uri": f"{root}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
        }

    def _client(self, tenant: str, form: dict[str, str]) -> App | tuple[int, dict[str, Any]]:
        client_id = form.get("client_id", "")
        app = self.apps.get(client_id)
        if app is None or app.tenant != tenant:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        if app.public:
            return app
        if "client_assertion" in form:
            return self._check_assertion(app, form, tenant)
        if not form.get("client_secret"):  # e.g. a device-code sign-in with a confidential app
            return _no_client_credential(401)
        if form.get("client_secret") != app.secret:
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                "is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )
        return app

    def _check_assertion(
        self, app: App, form: dict[str, str], tenant: str
    ) -> App | tuple[int, dict[str, Any]]:
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            sent = {str(header.get(k, "")).rstrip("=") for k in ("x5t", "x5t#S256")}
            if app.certificate is None or not sent & set(app.thumbprints):
                raise jwt.InvalidTokenError("no certificate with this thumbprint")
            claims = jwt.decode(
                assertion,
                app.certificate,
                algorithms=["RS256", "PS256"],
                audience=f"{self.base}/{tenant}/oauth2/v2.0/token",
            )
            if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
                raise jwt.InvalidTokenError("iss and sub must be the client id")
        except jwt.InvalidTokenError as exc:
            return _aad_error(
                401,
                "invalid_client",
                700027,
                f"The certificate with identifier used to sign the client assertion is not "
                f"registered on application. [Reason - {exc}]",
            )
        return app

    def _issue(self, app: App, user: str | None, scopes: frozenset[str]) -> dict[str, Any]:
        token = "eyJ0eXAi." + secrets.token_urlsafe(32)
        self.grants[token] = Grant(app, user, time.time() + 3599, scopes)
        reply: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }
        if user is not None:
            box = self.users[user]
            refresh = "0.AXo" + secrets.token_urlsafe(40)
            self.refresh_tokens[refresh] = (app.client_id, user)
            claims = {
                "aud": app.client_id,
                "iss": f"{self.base}/{app.tenant}/v2.0",
                "iat": int(time.time()),
                "nbf": int(time.time()),
                "exp": int(time.time()) + 3600,
                "name": user.split("@")[0].title(),
                "oid": box.object_id,
                "preferred_username": user,
                "sub": box.object_id,
                "tid": app.tenant,
                "ver": "2.0",
            }
            reply.update(
                refresh_token=refresh,
                scope=" ".join(sorted(scopes)),
                id_token=jwt.encode(
                    claims, "syncd-emulator-id-token-signing-key-32b", algorithm="HS256"
                ),
                client_info=base64.urlsafe_b64encode(
                    json.dumps({"uid": box.object_id, "utid": app.tenant}).encode()
                )
                .decode()
                .rstrip("="),
            )
        else:
            reply["scope"] = GRAPH_DEFAULT_SCOPE
        return reply

    def token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.token_requests += 1
            app = self._client(tenant, form)
            if isinstance(app, tuple):
                return app
            grant = form.get("grant_type")
            scopes = frozenset(form.get("scope", "").split())
            if grant == "client_credentials":
                if app.public:
                    return _no_client_credential(400)
                if scopes != {GRAPH_DEFAULT_SCOPE}:
                    return _aad_error(
                        400,
                        "invalid_scope",
                        1002012,
                        f"The provided value for scope {form.get('scope', '')} is not valid. "
                        "Client credential flows must have a scope value with /.default "
                        "suffixed to the resource identifier (application ID URI).",
                    )
                return 200, self._issue(app, None, frozenset())
            if grant == "refresh_token":
                owner = self.refresh_tokens.get(form.get("refresh_token", ""))
                if owner is None or owner[0] != app.client_id:
                    return _aad_error(
                        400,
                        "invalid_grant",
                        50173,
                        "The provided grant has expired due to it being revoked, a fresh auth "
                        "token is needed. The user might have changed or reset their password.",
                    )
                del self.refresh_tokens[form["refresh_token"]]  # refresh tokens rotate
                return 200, self._issue(app, owner[1], self._delegated(scopes))
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                flow = self.device_codes.get(form.get("device_code", ""))
                if flow is None or flow["expires"] < time.time():
                    return _aad_error(
                        400,
                        "expired_token",
                        70020,
                        "The provided authorization "
                        "code or refresh token has expired due to inactivity.",
                    )
                if flow["user"] is None and self.auto_approve:
                    flow["user"] = self.auto_approve
                if flow["user"] is None:
                    return _aad_error(
                        400,
                        "authorization_pending",
                        70016,
                        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                    )
                del self.device_codes[form["device_code"]]
                return 200, self._issue(app, flow["user"], flow["scopes"])
            return _aad_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
            )

    @staticmethod
    def _delegated(scopes: frozenset[str]) -> frozenset[str]:
        short = {s.rsplit("/", 1)[-1] for s in scopes}
        return frozenset(short | {"openid", "profile", "offline_access"})

    def device_code(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            app = self.apps.get(form.get("client_id", ""))
            if app is None or app.tenant != tenant:
                return _aad_error(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{form.get('client_id')}' was not found.",
                )
            user_code = "".join(
                self._random.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9)
            )
            code = secrets.token_urlsafe(32)
            self.device_codes[code] = {
                "user_code": user_code,
                "user": None,
                "expires": time.time() + 900,
                "scopes": self._delegated(frozenset(form.get("scope", "").split())),
            }
            url = f"{self.base}/devicelogin"
            return 200, {
                "user_code": user_code,
                "device_code": code,
                "verification_uri": url,
                "expires_in": 900,
                "interval": 1,
                "message": f"To sign in, use a web browser to open the page {url} and enter "
                f"the code {user_code} to authenticate.",
            }

    def approve(self, user_code: str, user: str) -> None:
        """``user`` signs in at the device page and enters ``user_code``."""
        with self.lock:
            for flow in self.device_codes.values():
                if flow["user_code"] == user_code:
                    flow["user"] = user
                    return
            raise KeyError(user_code)

    def authorize(self, header: str | None) -> Grant:
        """The grant of a Graph request's bearer token: 401 unknown or expired, 403 when the
        app's consent was removed."""
        token = (header or "").removeprefix("Bearer ").strip()
        grant = self.grants.get(token)
        if grant is None or grant.expires < time.time():
            raise GraphError(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."
            )
        if not grant.app.consented:
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return grant
