"""``syncd mailbox``: connect, list, remove and resume mailboxes.

``mailbox add`` and ``mailbox reauth`` know no provider: their options are generated from
every kind's settings and sign-in models (:mod:`syncd.connectors.kind`), and the kind's
own sign-in runs them. A new kind gets its options here without this file changing.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from syncd.cli.common import _json, fail, mailbox_app, out, say, state
from syncd.connectors import registry
from syncd.connectors.base import ConnectorError
from syncd.connectors.kind import (
    Kind,
    SettingsError,
    SignedIn,
    SignInContext,
    SignInError,
    describe,
)
from syncd.connectors.options import OptionSpec, options
from syncd.connectors.transport import check_endpoints, mask_urls
from syncd.crm import mailboxes, reports
from syncd.crm.models import Mailbox, User
from syncd.matching.addresses import normalize_address
from syncd.secrets import Secret, SecretBox, SecretsError, token_cache_path


def _shown(value: Any) -> Any:
    """A mailbox setting as it may be shown: a URL's login and password masked (a row
    written by an older syncd or edited by hand may hold them)."""
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    return value


# --- options generated from the kinds' models ------------------------------------------------


def _a(kind: str) -> str:
    """The article a kind's name takes: "an imap mailbox", "a local mailbox"."""
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


_TYPES: dict[str, Any] = {"int": int, "float": float, "text": str, "date": str, "path": Path}


def _choice(name: str, choices: Sequence[str]) -> Any:
    """An Enum of ``choices``: Typer offers and checks an Enum's values."""
    return StrEnum(name.title().replace("_", ""), {c: c for c in choices})


def _parameter(spec: OptionSpec, stored: bool) -> inspect.Parameter:
    """A Typer option for one field. A stored yes/no setting can be turned either way
    (``--idle/--no-idle``); a sign-in switch (``--device-code``) only on. Every option
    defaults to None: "not given", so the model's default applies."""
    flags = [spec.flag]
    base: Any = _TYPES.get(spec.kind)
    if spec.kind == "bool":
        base = bool
        if stored:
            flags = [f"{spec.flag}/--no-{spec.flag[2:]}"]
    elif spec.kind == "choice":
        base = _choice(_param(spec.flag), spec.choices)
    if spec.multiple:
        base = list[base]
    annotation = Annotated[base | None, typer.Option(*flags, help=spec.help, hidden=spec.hidden)]
    return inspect.Parameter(
        _param(spec.flag), inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def _kind_options(k: Kind, settings: bool = True) -> dict[str, tuple[str, OptionSpec]]:
    """The options of kind ``k``: param name -> (``settings`` or ``sign_in``, its spec)."""
    found: dict[str, tuple[str, OptionSpec]] = {}
    models: list[tuple[str, type[BaseModel]]] = [("sign_in", k.sign_in)]
    if settings:
        models.insert(0, ("settings", k.settings))
    for where, model in models:
        for spec in options(model):
            found[_param(spec.flag)] = (where, spec)
    return found


def _all_options(settings: bool) -> list[inspect.Parameter]:
    """Every kind's options once (a flag two kinds share must mean the same to both)."""
    seen: dict[str, tuple[str, OptionSpec]] = {}
    for name in registry.kinds(hidden=False):
        for param, (where, spec) in _kind_options(registry.kind(name), settings).items():
            other = seen.setdefault(param, (where, spec))
            if (other[0], other[1].kind, other[1].multiple, other[1].choices) != (
                where,
                spec.kind,
                spec.multiple,
                spec.choices,
            ):
                raise AssertionError(f"{spec.flag} means two things to two kinds")
    return [_parameter(spec, where == "settings") for where, spec in seen.values()]


def _command(run: Callable[..., None], params: list[inspect.Parameter]) -> Callable[..., None]:
    """``run`` with the signature Typer reads its options from."""

    def command(**values: Any) -> None:
        run(**{k: v.value if isinstance(v, StrEnum) else v for k, v in values.items()})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = run.__doc__
    return command


def _given(
    k: Kind, values: dict[str, Any], settings: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The values given on the command line, split into the kind's settings and sign-in
    options; an option of another kind is refused, naming the kind's own."""
    own = _kind_options(k, settings)
    stored: dict[str, Any] = {}
    sign_in: dict[str, Any] = {}
    stray = []
    for param, value in values.items():
        if value is None or value == ():
            continue
        if param not in own:
            stray.append("--" + param.replace("_", "-"))
            continue
        where, spec = own[param]
        (stored if where == "settings" else sign_in)[spec.field] = (
            list(value) if spec.multiple else value
        )
    if stray:
        flags = ", ".join(sorted(spec.flag for _, spec in own.values() if not spec.hidden))
        fail(
            f"{', '.join(stray)}: not an option of {_a(k.name)} mailbox; its options: "
            f"{flags or 'none'}",
            2,
        )
    return stored, sign_in


def _validated(model: type[BaseModel], values: dict[str, Any], kind: str) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        missing = [
            registry_flag(model, str(e["loc"][0])) for e in exc.errors() if e["type"] == "missing"
        ]
        if missing:
            fail(f"{_a(kind)} mailbox needs {' and '.join(missing)}", 2)
        fail(describe(exc, model), 2)


def registry_flag(model: type[BaseModel], field: str) -> str:
    for spec in options(model):
        if spec.field == field:
            return spec.flag
    return field


def _context(name: str, email: str) -> SignInContext:
    def prompt(what: str) -> str:
        return str(typer.prompt(what, hide_input=True))

    return SignInContext(
        name=name,
        email=email,
        home=state.settings().home,
        show=lambda text: say(text, sys.stderr),
        prompt=prompt if sys.stdin.isatty() else None,
    )


def _signed(run: Callable[[], SignedIn]) -> SignedIn:
    try:
        return run()
    except SignInError as exc:
        fail(str(exc), exc.code)
    except (ConnectorError, SecretsError) as exc:
        fail(str(exc))


def _new_mailbox_owner(session: Session, name: str, user: str) -> int:
    """The id of the CRM user who will own mailbox ``name``, which must be a new name."""
    owner = session.scalar(select(User.id).where(User.email == normalize_address(user)))
    if owner is None:
        fail(f"no CRM user {user!r}; load users first with 'syncd crm load users FILE.csv'")
    if session.scalar(select(Mailbox.id).where(Mailbox.name == name)) is not None:
        fail(f"a mailbox named {name!r} exists already; remove it or pick another name")
    return owner


def mailbox_add(name: str, kind: str, user: str, **values: Any) -> None:
    k = registry.kind(kind)
    stored, given = _given(k, values, settings=True)
    settings = _validated(k.settings, stored, kind)
    sign_in = _validated(k.sign_in, given, kind)
    email = normalize_address(user)
    with state.sessions()() as session:  # before any sign-in or consent is asked for
        _new_mailbox_owner(session, name, user)
    ctx = _context(name, email)
    add = k.load("add")
    signed = _signed(lambda: add(ctx, settings, sign_in) if add else SignedIn(settings, None))
    try:
        # what the sign-in filled in is checked as every sync will check the stored row
        k.read_settings(signed.settings.model_dump(), f"mailbox {name!r}")
        check_endpoints(name, signed.settings, signed.secret)
    except (ConnectorError, SettingsError) as exc:
        fail(str(exc), 2)
    box = SecretBox(state.settings().home)
    token = box.encrypt(signed.secret) if signed.secret else None
    with state.sessions().begin() as session:
        mailboxes.add_mailbox(
            session,
            name=name,
            kind=kind,
            user_id=_new_mailbox_owner(session, name, user),
            # what was given or signed in, even where it equals a default: a value given
            # explicitly wins over the config's, as the option promises
            settings=signed.settings.model_dump(mode="json", exclude_unset=True),
            secret_token=token,
        )
    say(f"mailbox {name!r} added for {email}")


def mailbox_reauth(name: str, **values: Any) -> None:
    box = SecretBox(state.settings().home)
    with state.sessions()() as session:
        mailbox = session.scalar(select(Mailbox).where(Mailbox.name == name))
        if mailbox is None:
            fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
        kind, stored, token, email = (
            mailbox.kind,
            dict(mailbox.settings),
            mailbox.secret,
            mailbox.user.email,
        )
    try:
        k = registry.kind(kind)
        settings = k.read_settings(stored, f"mailbox {name!r}")
        check_endpoints(name, settings)
    except (ConnectorError, SettingsError) as exc:
        fail(f"{exc}; fix the mailbox's settings (or remove it and add it again)", 2)
    _, given = _given(k, values, settings=False)
    sign_in = _validated(k.sign_in, given, kind)
    reauth = k.load("reauth")
    if reauth is None:
        fail(f"{_a(kind)} mailbox has no credentials to renew")
    old: Secret | None = None
    unreadable = ""
    if token:
        try:
            old = box.decrypt(token, f"mailbox {name!r}")
        except SecretsError as exc:
            unreadable = str(exc)  # a new sign-in replaces it; a kind that needs it says so
    try:
        signed = reauth(_context(name, email), settings, old, sign_in)
    except SignInError as exc:
        fail(f"{exc} ({unreadable})" if unreadable else str(exc), exc.code)
    except (ConnectorError, SecretsError) as exc:
        fail(str(exc))
    if signed.secret is None:
        fail(f"mailbox {name!r}: the sign-in gave no credentials")
    try:
        check_endpoints(name, {}, signed.secret)  # a new key names its own token endpoint
    except ConnectorError as exc:
        fail(str(exc), 2)
    with state.sessions().begin() as session:
        mailboxes.store_secret(session, name, box.encrypt(signed.secret))
    say(f"mailbox {name!r}: new {signed.what} stored; it will be synced at the next poll")


def _usage(settings: bool) -> str:
    lines = []
    for name in registry.kinds(hidden=False):
        k = registry.kind(name)
        lines.append(f"{name + ':':10} {k.summary}")
    if settings:
        lines.append(
            "all:       [--exclude-folder F ...] [--poll-interval S] "
            "[--body metadata|snippet|full] [--calendar-past-days N] [--calendar-future-days N]"
        )
    return "\n".join(lines)


Name = Annotated[str, typer.Argument(help="The mailbox name, e.g. the address.")]
KindOption: Any = Annotated[
    _choice("kind", registry.kinds(hidden=False)),
    typer.Option("--kind", help="The provider kind."),
]
UserOption = Annotated[str, typer.Option("--user", help="The CRM user who owns it (email).")]

mailbox_app.command(
    "add",
    help="Connect a mailbox of a CRM user.\n\n\b\n" + _usage(True),
    short_help="Connect a mailbox of a CRM user.",
)(
    _command(
        mailbox_add,
        [
            inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, annotation=Name),
            inspect.Parameter("kind", inspect.Parameter.KEYWORD_ONLY, annotation=KindOption),
            inspect.Parameter("user", inspect.Parameter.KEYWORD_ONLY, annotation=UserOption),
            *_all_options(settings=True),
        ],
    )
)
mailbox_app.command(
    "reauth",
    help="Give a mailbox new credentials and retry it at the next poll.\n\n\b\n"
    "imap:      a new password or token (--password-file, --password-env or a prompt)\n"
    "gmail:     user mode runs the consent again; admin mode takes --service-account KEYFILE\n"
    "microsoft: user mode signs in again (device code); admin mode takes\n"
    "           --client-secret-file F or --certificate PEM",
    short_help="Give a mailbox new credentials.",
)(
    _command(
        mailbox_reauth,
        [
            inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, annotation=Name),
            *_all_options(settings=False),
        ],
    )
)


@mailbox_app.command("list")
def mailbox_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List connected mailboxes."""
    with state.sessions()() as session:
        rows = reports.mailbox_report(session)
    for r in rows:
        r["settings"] = _shown(r["settings"])
    if as_json:
        _json(rows)
        return
    table = Table("mailbox", "kind", "user", "settings")
    for r in rows:
        table.add_row(
            r["mailbox"],
            r["kind"],
            r["user"],
            ", ".join(f"{k}={v}" for k, v in r["settings"].items()),
        )
    out.print(table)


@mailbox_app.command("remove")
def mailbox_remove(name: Annotated[str, typer.Argument(help="The mailbox name.")]) -> None:
    """Disconnect a mailbox; its activities stay in the CRM."""
    with state.sessions().begin() as session:
        if not mailboxes.remove_mailbox(session, name):
            fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
    token_cache_path(state.settings().home, name).unlink(missing_ok=True)
    say(f"mailbox {name!r} removed")


@mailbox_app.command("resume")
def mailbox_resume(name: Annotated[str, typer.Argument(help="The mailbox name.")]) -> None:
    """Retry a parked or failing mailbox at the next poll."""
    with state.sessions().begin() as session:
        if not mailboxes.resume_mailbox(session, name):
            fail(f"no mailbox named {name!r}; see 'syncd mailbox list'")
    say(f"mailbox {name!r} will be synced at the next poll")
