"""``mailbox add --kind imap`` and ``reauth``: the TLS rule, the CalDAV and CardDAV URLs, the
password.

The password (or OAuth2 token) comes from ``--password-file``, ``--password-env`` or a
hidden prompt, never the command line; a URL never carries one (it is stored in clear)."""

from __future__ import annotations

from syncd.connectors.base import ConnectorError
from syncd.connectors.imap import ImapSettings, ImapSignIn
from syncd.connectors.kind import SignedIn, SignInContext, SignInError, since_days
from syncd.connectors.transport import check_tls, check_url, mask_urls, split_credentials
from syncd.secrets import Secret


def _dav_url(url: str, option: str = "--caldav") -> tuple[str, str | None]:
    """``--caldav`` or ``--carddav``: the URL without credentials, and the login when the URL
    named only one (``https://ana@dav.example/``). A password in it is refused: it would be
    stored in clear, and DAV uses the mailbox's own (encrypted) password."""
    bare, login, password = split_credentials(url)
    if password is not None:
        raise SignInError(
            f"{option} {mask_urls(url)!r} holds a password; a URL is stored and shown in "
            f"clear, so syncd takes none in it: give {option} {bare!r}. It logs in with "
            "the mailbox's login (--login) and its password (--password-file, --password-env "
            "or the prompt), which is stored encrypted",
            2,
        )
    try:
        check_url(bare, option)
    except ConnectorError as exc:
        raise SignInError(str(exc), 2) from None
    return bare, login


def add(ctx: SignInContext, settings: ImapSettings, options: ImapSignIn) -> SignedIn:
    try:
        check_tls(settings.host, settings.tls)
    except ConnectorError as exc:
        raise SignInError(str(exc), 2) from None
    update: dict[str, object] = {"auth": "xoauth2" if options.xoauth2 else "password"}
    if options.since is not None:
        update["since_days"] = since_days(options.since, None)
    if settings.caldav_url:
        url, login = _dav_url(settings.caldav_url)
        update["caldav_url"] = url
        if login and login != (settings.login or ctx.email):
            update["caldav_login"] = login
    if settings.carddav_url:
        update["carddav_url"] = _dav_url(settings.carddav_url, "--carddav")[0]
    what = "token" if options.xoauth2 else "password"
    secret = Secret(ctx.read_secret(options.password_file, options.password_env, what))
    return SignedIn(settings.model_copy(update=update), secret, what)


def reauth(
    ctx: SignInContext, settings: ImapSettings, old: Secret | None, options: ImapSignIn
) -> SignedIn:
    what = "token" if settings.auth == "xoauth2" else "password"
    secret = Secret(ctx.read_secret(options.password_file, options.password_env, what))
    return SignedIn(settings, secret, what)
