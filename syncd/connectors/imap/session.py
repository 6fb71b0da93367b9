"""One authenticated IMAP connection (imapclient), reopened when it drops.

It connects as the mailbox's ``tls`` setting says (implicit TLS, STARTTLS, or none: loopback
only), logs in with LOGIN, AUTHENTICATE PLAIN or XOAUTH2, masks the secret in imapclient's
protocol log, and runs every command under the shared retry policy
(:mod:`syncd.connectors.retry`): a dropped connection is reconnected and the command tried
again, with backoff. A refused login is an :class:`~syncd.connectors.base.AuthError` naming
the fix (:func:`~syncd.connectors.base.refused`).

A sync connection holds one of the server's slots (:mod:`syncd.connectors.throttle`, keyed
by ``host:port``, ``spec.server_connections`` of them: ``sync.imap_connections``) from its
connect to its close, so that the passes of one process never open more than that to one
server at once. Servers refuse connections over their own limits, per account and per
client address: Gmail allows 15 simultaneous IMAP connections per account (Gmail Help,
"Too many simultaneous connections", support.google.com/mail/answer/97150), Dovecot 10
per user and client IP by default (its core setting ``mail_max_userip_connections``,
doc.dovecot.org); a pass uses one connection per mailbox, and the cap bounds what all the
mailboxes on one server add up to from this machine's address. A push
watcher's IDLE connection (``counted=False``) takes no slot: it is held for as long as the
daemon runs, so counted it would starve the polls; there is one per mailbox that asks for
``idle``, so a mailbox never holds more than two connections (its IDLE and its pass).

A folder read in parallel by the parse pool (:mod:`syncd.connectors.imap.folder`) takes more
of the server's slots for the workers' connections (:meth:`ImapSession.extra_slots`), as
many as are free at that moment and no more than asked, without waiting for one: a pass
that waited while holding its own slot could wait forever on passes doing the same.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import tenacity
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from syncd.connectors import retry, throttle
from syncd.connectors.base import ConnectorError, MailboxSpec, refused
from syncd.connectors.imap import ImapSettings
from syncd.connectors.kind import typed
from syncd.connectors.transport import check_tls, secret_forms

log = logging.getLogger("syncd.imap")
_PROTOCOL_LOG = logging.getLogger("imapclient.imaplib")  # every line, at DEBUG (--verbose)

TRANSIENT = (OSError, imaplib.IMAP4.abort, ssl.SSLError, EOFError)
FIRST_WAIT = 0.2  # seconds before the second try of a command, doubling
MAX_WAIT = 10.0  # seconds: the longest wait between two tries
ATTEMPTS = 5  # tries of one command, where the mailbox sets no ``retries``


class Client(IMAPClient):
    """imapclient's client, knowing which folder it has selected, readonly or not, and its
    UIDVALIDITY (:attr:`selected`), so that a command on the folder selected already is not
    preceded by another SELECT (on a large folder a SELECT costs more than a FETCH of
    hundreds of messages: the server checks the folder against its index)."""

    selected: tuple[str, bool, int | None] | None = None

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
        self.selected = None  # whatever happens: a failed SELECT leaves none selected
        answer: dict[bytes, Any] = super().select_folder(folder, readonly=readonly)
        uidvalidity = answer.get(b"UIDVALIDITY")
        self.selected = (folder, readonly, uidvalidity if isinstance(uidvalidity, int) else None)
        return answer

    def unselect_folder(self) -> Any:
        self.selected = None
        return super().unselect_folder()

    def close_folder(self) -> Any:
        self.selected = None
        return super().close_folder()


class _CannotCarry(LoginError):
    """A login that no command the server offers can carry."""


def _masked(text: str, forms: list[str]) -> str:
    for form in forms:
        text = text.replace(form, "***")
    return text


def _mask_protocol_log(client: IMAPClient, forms: list[str]) -> None:
    """imapclient logs every line the server sends at DEBUG (it redacts only what it sends
    itself): a server that echoes the login would put the password in the log."""
    imap = client._imap
    write = imap._mesg

    def mesg(text: Any) -> None:
        if _PROTOCOL_LOG.isEnabledFor(logging.DEBUG):
            write(_masked(str(text), forms))

    imap._mesg = mesg


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


def _dropped(exc: BaseException) -> bool:
    """Whether a failed login is a dropped connection (imapclient wraps the abort)."""
    return isinstance(exc, imaplib.IMAP4.abort) or isinstance(exc.__context__, imaplib.IMAP4.abort)


class Slots:
    """Slots taken for a pass's extra connections (:meth:`ImapSession.extra_slots`):
    ``taken`` of them, given back when the block ends or at ``until`` (monotonic) when that
    is later."""

    def __init__(self, taken: int) -> None:
        self.taken = taken
        self.until = 0.0


def _release(key: str, count: int) -> None:
    for _ in range(count):
        throttle.release(key)


class ImapSession:
    """One authenticated IMAP connection, reopened when it drops."""

    def __init__(self, spec: MailboxSpec, *, counted: bool = True) -> None:
        s = self.settings = typed(spec.settings, ImapSettings)
        self.spec = spec
        self.host = s.host
        self.tls = s.tls
        self.port = s.port or (993 if self.tls == "implicit" else 143)
        self.login = s.login or spec.user_email
        self.auth = s.auth
        self.timeout = s.timeout
        check_tls(self.host, self.tls)
        self._client: IMAPClient | None = None
        self.condstore = False
        cap = spec.server_connections if counted else None
        self._cap = (f"imap {self.host}:{self.port}", cap) if cap else None
        self._holding = False  # one of the server's slots (_cap), while connected

    def _where(self) -> str:
        return f"mailbox {self.spec.name!r}: IMAP {self.host}:{self.port}"

    def connect(self) -> IMAPClient:
        """The open connection, or a new one: connected, logged in, CONDSTORE enabled where
        the server has it."""
        if self._client is not None:
            return self._client
        secret = self._secret()
        self._take_slot()
        try:
            client = self._open()
            client.normalise_times = False
            # what a server may echo: the password as LOGIN sends it (quoted, escaped), and
            # the SASL PLAIN message that carries it; masked in the protocol log too
            forms = secret_forms(secret, f"\0{self.login}\0{secret}")
            _mask_protocol_log(client, forms)
            self._log_in(client, secret, forms)
            self.condstore = client.has_capability("CONDSTORE")
            if self.condstore:
                client.enable("CONDSTORE")  # before any SELECT (RFC 7162 §3.1)
        except BaseException:
            self._give_slot()
            raise
        self._client = client
        return client

    def _take_slot(self) -> None:
        """One of the server's sync connections (waits while all are open)."""
        if self._cap is not None and not self._holding:
            throttle.acquire(*self._cap)
            self._holding = True

    def _give_slot(self) -> None:
        if self._cap is not None and self._holding:
            self._holding = False
            throttle.release(self._cap[0])

    @contextlib.contextmanager
    def extra_slots(self, wanted: int) -> Iterator[Slots]:
        """Up to ``wanted`` more of the server's slots, those free now (all of them when the
        server has no cap), for connections other processes open for this session's pass;
        yields how many were taken (:class:`Slots`), and gives them back when the block
        ends, or at ``Slots.until`` when that is later (connections of the workers that
        are still being closed), from a timer, without holding the block up."""
        held = Slots(wanted if self._cap is None else 0)
        try:
            if self._cap is not None:
                key, cap = self._cap
                while held.taken < wanted and throttle.try_acquire(key, cap):
                    held.taken += 1
            yield held
        finally:
            if self._cap is not None and held.taken:
                key, count = self._cap[0], held.taken
                wait = held.until - time.monotonic()
                if wait > 0:
                    timer = threading.Timer(wait, _release, (key, count))
                    timer.daemon = True
                    timer.start()
                else:
                    _release(key, count)

    def _secret(self) -> str:
        if self.spec.secret is None:
            raise refused(self.spec.name, f"{self._where()} has no password or token stored")
        return self.spec.secret.reveal()

    def _open(self) -> IMAPClient:
        """A connection, TLS as the settings say (STARTTLS: RFC 3501 §6.2.1)."""
        context = ssl.create_default_context() if self.tls != "none" else None
        try:
            client = Client(
                self.host,
                port=self.port,
                ssl=self.tls == "implicit",
                ssl_context=context,
                timeout=self.timeout,
            )
            if self.tls == "starttls":
                client.starttls(context)
        except TRANSIENT as exc:
            raise ConnectorError(f"{self._where()}: cannot connect ({exc})") from exc
        return client

    def _log_in(self, client: IMAPClient, secret: str, forms: list[str]) -> None:
        """Log in, or close the connection and say why not: a login no command can carry
        and a refused one are AuthErrors (the fix is a reauth), a dropped connection is
        tried again at the next poll. The secret is masked in any echo of it."""
        try:
            self._authenticate(client, secret)
        except _CannotCarry as exc:
            client.shutdown()
            raise refused(
                self.spec.name,
                f"{self._where()}: cannot log in as {self.login!r}: {exc}",
                "give the mailbox a password of ASCII characters",
            ) from None
        except (LoginError, imaplib.IMAP4.error) as exc:
            client.shutdown()
            reason = _masked(str(exc), forms)
            if _dropped(exc):  # the connection dropped: try again later
                raise ConnectorError(
                    f"{self._where()}: the login was cut short ({reason})"
                ) from None
            raise refused(
                self.spec.name,
                f"{self._where()} refused the login {self.login!r} ({reason})",
                "set the right password",
            ) from None

    def _authenticate(self, client: IMAPClient, secret: str) -> None:
        """LOGIN, where it can carry the login and password: ASCII only (RFC 3501). Anything
        else goes as UTF-8 in AUTHENTICATE PLAIN (RFC 4616), which IMAP servers offer."""
        if self.auth == "xoauth2":
            client.oauth2_login(self.login, secret)
        elif (self.login + secret).isascii():
            client.login(self.login, secret)
        elif client.has_capability("AUTH=PLAIN"):
            client.plain_login(self.login, secret)
        else:
            raise _CannotCarry(
                "the login or password holds characters beyond ASCII, which the LOGIN "
                "command cannot carry, and the server offers no AUTHENTICATE PLAIN"
            )

    def drop(self) -> None:
        """Forget a broken connection; the next call reconnects."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # it is broken already
                client.shutdown()
        self._give_slot()

    def close(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                try:
                    client.logout()
                except Exception:
                    client.shutdown()
        finally:
            self._give_slot()

    def retrying(self, what: str) -> tenacity.Retrying:
        """The shared retry policy for a dropped connection, reconnecting before each new
        try: ``retries`` tries (default 5), 0.2 s doubling up to 10 s between them."""

        def reconnect(state: tenacity.RetryCallState) -> None:
            log.info(
                "%s: %s failed (%s); reconnecting",
                self._where(),
                what,
                state.outcome.exception() if state.outcome else "",
            )
            self.drop()

        return retry.retrying(
            transient=_transient,
            attempts=self.settings.retries or ATTEMPTS,
            first=FIRST_WAIT,
            cap=MAX_WAIT,
            before_sleep=reconnect,
        )

    def call(self, what: str, fn: Callable[[IMAPClient], Any]) -> Any:
        """``fn`` on the connection, retried; a connection that keeps dropping ends the pass
        with a ConnectorError (the next poll resumes from the last stored batch)."""
        try:
            for attempt in self.retrying(what):
                with attempt:
                    return fn(self.connect())
        except TRANSIENT as exc:
            self.drop()
            raise ConnectorError(
                f"{self._where()}: the connection keeps dropping during {what} ({exc}); "
                "the next poll resumes from the last stored batch"
            ) from exc
        raise AssertionError("unreachable")
