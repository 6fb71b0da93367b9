"""``mailbox add --kind microsoft`` and ``reauth``.

- Admin mode (``mode = "app"``): one app registration with application permissions serves
  every mailbox of the tenant; the secret is its client secret (``--client-secret-file``)
  or a certificate (``--certificate PEM``: ``{"private_key", "public_certificate"}``).
- User mode (``mode = "device"``, ``--device-code``): the user signs in once with the
  device-code flow; the secret is msal's token cache (it holds the refresh token).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msal
import requests

from syncd.connectors.base import AuthError, ConnectorError
from syncd.connectors.kind import SignedIn, SignInContext, SignInError, checked_url, since_days
from syncd.connectors.microsoft import MicrosoftSettings, MicrosoftSignIn
from syncd.connectors.microsoft.client import AUTHORITY, USER_SCOPES, _Http
from syncd.secrets import Secret, reauth_command, token_cache_path


def _secret(ctx: SignInContext, settings: MicrosoftSettings, options: MicrosoftSignIn) -> Secret:
    """A client secret, a certificate (admin mode), or the token cache of a device-code
    sign-in (user mode, run now)."""
    given = (options.client_secret_file, options.certificate)
    if settings.mode == "device":
        if any(g is not None for g in given):
            raise SignInError(
                "this mailbox signs in as its user (--device-code): --client-secret-file and "
                f"--certificate are for the admin mode; run '{reauth_command(ctx.name)}' "
                "alone to sign in again",
                2,
            )
        try:
            return Secret(
                sign_in_with_device_code(
                    settings, lambda text: ctx.show(f"{text} (sign in as {ctx.email})")
                )
            )
        except ConnectorError as exc:
            raise SignInError(str(exc)) from None
    if sum(g is not None for g in given) != 1:
        raise SignInError(
            "a microsoft mailbox in admin mode needs one of --client-secret-file FILE or "
            "--certificate PEM (or --device-code for the user mode)",
            2,
        )
    try:
        if options.certificate is not None:
            return Secret(read_certificate(str(options.certificate)))
        assert options.client_secret_file is not None
        value = options.client_secret_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SignInError(
            f"--client-secret-file {str(options.client_secret_file)!r}: {exc.strerror}"
        ) from None
    except ConnectorError as exc:
        raise SignInError(str(exc)) from None
    if not value:
        raise SignInError(f"--client-secret-file {str(options.client_secret_file)!r} is empty")
    return Secret(value)


def add(ctx: SignInContext, settings: MicrosoftSettings, options: MicrosoftSignIn) -> SignedIn:
    modes = sum((options.client_secret_file is not None, options.certificate is not None))
    if modes + options.device_code != 1:
        raise SignInError(
            "a microsoft mailbox needs one of --client-secret-file FILE or --certificate PEM "
            "(admin mode, application permissions) or --device-code (user mode)",
            2,
        )
    for url, flag in ((settings.authority, "--authority"), (settings.graph_url, "--graph-url")):
        if url is not None:
            checked_url(url, flag)  # before the device-code sign-in sends anything
    update: dict[str, object] = {
        "mode": "device" if options.device_code else "app",
        "since_days": since_days(options.since, settings.since_days),
    }
    if settings.ca_bundle:
        update["ca_bundle"] = settings.ca_bundle.resolve()
    typed = settings.model_copy(update=update)
    secret = _secret(ctx, typed, options)
    return SignedIn(typed, secret, "sign-in" if options.device_code else "credentials")


def reauth(
    ctx: SignInContext, settings: MicrosoftSettings, old: Secret | None, options: MicrosoftSignIn
) -> SignedIn:
    secret = _secret(ctx, settings, options)
    token_cache_path(ctx.home, ctx.name).unlink(missing_ok=True)
    return SignedIn(settings, secret, "sign-in" if settings.mode == "device" else "credentials")


def sign_in_with_device_code(settings: MicrosoftSettings, show: Callable[[str], None]) -> str:
    """The device-code flow (user mode): show the sign-in message, wait for the user, and
    return the msal token cache to store (it holds the refresh token)."""
    cache = msal.SerializableTokenCache()
    try:
        app = msal.PublicClientApplication(
            settings.client_id,
            authority=f"{(settings.authority or AUTHORITY).rstrip('/')}/{settings.tenant}",
            instance_discovery=False,
            token_cache=cache,
            http_client=_Http(
                str(settings.ca_bundle) if settings.ca_bundle else None, settings.timeout
            ),
        )
        flow = app.initiate_device_flow(scopes=USER_SCOPES)
    except (ValueError, requests.RequestException) as exc:
        raise ConnectorError(f"cannot reach the Microsoft sign-in service: {exc}") from None
    if "user_code" not in flow:
        raise AuthError(
            f"Microsoft refused the device sign-in ({flow.get('error')}: "
            f"{str(flow.get('error_description', '')).splitlines()[0]}); check --tenant and "
            "--client-id and that the app registration allows public client flows"
        )
    show(str(flow["message"]))
    result = app.acquire_token_by_device_flow(flow)
    if "access_token" not in result:
        fix = (
            "; the app registration must allow public client flows (Entra ID: the app > "
            "Authentication > Allow public client flows)"
            if result.get("error") in ("invalid_client", "unauthorized_client")
            else "; run it again"
        )
        raise AuthError(
            f"the device sign-in did not complete ({result.get('error')}: "
            f"{str(result.get('error_description', '')).splitlines()[0]}){fix}"
        )
    return str(cache.serialize())


def read_certificate(path: str) -> str:
    """A PEM file holding the private key and the certificate uploaded to the app
    registration -> the secret to store: {"private_key", "public_certificate"} (JSON); msal
    signs its assertions with the certificate's SHA-256 thumbprint (x5t#S256, PS256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConnectorError(
            f"--certificate {path!r}: cannot read a private key and a certificate from it "
            f"({exc}); give one PEM file holding both (unencrypted)"
        ) from None
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = cert.public_bytes(serialization.Encoding.PEM).decode()
    return json.dumps({"private_key": pem, "public_certificate": public})
