"""Transport rules every connector follows: where a password, a token or a client secret
may be sent, and how a secret is kept out of every message.

- A password or token travels over TLS, or in clear only to this machine (a loopback host):
  :func:`check_tls` for IMAP, :func:`check_url` for every HTTP endpoint a mailbox can be
  given (:data:`URL_SETTINGS`), checked by ``mailbox add``/``reauth`` and whenever a
  connector opens (:func:`check_endpoints`).
- No credential is stored or shown in a URL: :func:`split_credentials`, :func:`mask_urls`.
- A secret never reaches a log or an error: :func:`mask_secret` replaces every form a
  server or a library may echo it in.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import BaseModel

from syncd.connectors.base import ConnectorError
from syncd.secrets import Secret


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK = "127.0.0.1, ::1, localhost"


def check_tls(host: str, tls: str) -> None:
    """Refuse to send a password in clear anywhere but to this machine."""
    if tls not in ("implicit", "starttls", "none"):
        raise ConnectorError(f"tls {tls!r} is not one of implicit, starttls, none")
    if tls == "none" and not is_loopback(host):
        raise ConnectorError(
            f"--tls none would send the password to {host!r} in clear; it is allowed only "
            f"for a loopback host ({LOOPBACK}): use --tls implicit or starttls"
        )


# --- URLs: the same rule for every HTTP endpoint a mailbox can be given -------------------

# settings that hold an endpoint syncd sends a password, a token or a client secret to, and
# the option (or file) they come from, for messages
URL_SETTINGS: dict[str, str] = {
    "caldav_url": "--caldav",
    "api_endpoint": "--api-endpoint",
    "calendar_endpoint": "calendar_endpoint",
    "auth_uri": "the OAuth client's auth_uri",
    "token_uri": "the OAuth client's token_uri",
    "authority": "--authority",
    "graph_url": "--graph-url",
}
# a login or password in a URL (scheme://login:password@host/), wherever the URL is in a text
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@")


def mask_urls(text: str) -> str:
    """``text`` with the login and password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its login and password, and them (percent-decoded), if it held any."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    login, colon, password = userinfo.partition(":")
    return (
        urlunsplit(parts._replace(netloc=hostport)),
        unquote(login) or None,
        unquote(password) if colon else None,
    )


# query parameters that carry a credential (a URL is shown, logged and stored in clear)
_SECRET_QUERY = re.compile(r"pass|pwd|secret|token|key|auth|sig|credential|session", re.I)


def check_url(url: str, what: str) -> None:
    """Refuse an endpoint that would carry a password or token in clear: ``https://``, or
    ``http://`` to this machine only (the ``--tls none`` rule). The message names ``what``,
    the URL without its credentials, the rule and the fix."""
    shown = mask_urls(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        raise ConnectorError(
            f"{what} {shown!r} is not a URL ({exc}); give https://HOST/..."
        ) from None
    secret_keys = [k for k, _ in parse_qsl(parts.query, True) if _SECRET_QUERY.search(k)]
    if secret_keys:
        bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
        raise ConnectorError(
            f"{what} {bare!r} carries {', '.join(sorted(set(secret_keys)))} in its query: "
            "credentials never travel or are stored in a URL; give the URL without them and "
            "the secret through the mailbox's password or key options"
        )
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise ConnectorError(
            f"{what} {shown!r} is not an http(s) URL with a host; give https://HOST/..."
        )
    if scheme == "http" and not is_loopback(host):
        fixed = urlsplit(split_credentials(url)[0])._replace(scheme="https").geturl()
        raise ConnectorError(
            f"{what} {shown!r} would send the password or token to {host!r} in clear: plain "
            f"http is allowed only for a loopback host ({LOOPBACK}); use {fixed!r}"
        )


def check_endpoints(
    name: str, settings: Mapping[str, Any] | BaseModel, secret: Secret | None = None
) -> None:
    """Every endpoint of a mailbox's settings under :func:`check_url`: run by ``mailbox
    add``/``reauth`` and again whenever a connector opens (a row edited by hand). A secret
    that names its own token endpoint (a Google service account key) is checked too."""
    values = settings.model_dump() if isinstance(settings, BaseModel) else settings
    for key, option in URL_SETTINGS.items():
        value = values.get(key)
        if value:
            check_url(str(value), f"mailbox {name!r}: {option}")
    if secret is not None and secret.reveal().startswith("{"):
        try:
            token_uri = json.loads(secret.reveal()).get("token_uri")
        except (ValueError, AttributeError):
            token_uri = None
        if token_uri:
            check_url(str(token_uri), f"mailbox {name!r}: the stored key's token_uri")


def secret_forms(*secrets: str) -> list[str]:
    """The ways a secret can show up in a server's error or a library's message: as it is,
    quoted the IMAP way (``\\`` and ``"`` escaped), in a Python repr of the str or of its
    UTF-8 bytes (a list of server lines), decoded as Latin-1, and base64 (SASL); longest
    first, so that masking one never leaves part of another."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
        for text in (secret, quoted):
            raw = text.encode("utf-8")
            forms.update(
                (
                    text,
                    repr(text)[1:-1],
                    repr(raw)[2:-1],
                    raw.decode("latin-1"),
                    base64.b64encode(raw).decode(),
                )
            )
    return sorted((f for f in forms if len(f) >= 3 or f in secrets), key=len, reverse=True)


def mask_secret(text: str, *secrets: str) -> str:
    """``text`` with every form of the secrets (:func:`secret_forms`) replaced by ``***``."""
    for form in secret_forms(*secrets):
        text = text.replace(form, "***")
    return text
