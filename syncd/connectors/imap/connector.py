"""IMAP mail (imapclient): INBOX, the Sent folder and configured extras, incrementally.

Each folder is a source; its cursor is UIDVALIDITY + the last UID stored (RFC 3501 §2.3.1.1)
+ HIGHESTMODSEQ where the server has CONDSTORE (RFC 7162). A poll of an unchanged folder is
one STATUS command. A changed UIDVALIDITY raises :class:`CursorExpired`: the folder is read
again and item keys keep anything from being logged twice. syncd only ever sends
``BODY.PEEK``, so it never marks mail as read, and it fetches only what the mailbox's body
policy needs: headers (``metadata``), headers and the start of the text (``snippet``), or
the whole message (``full``).

Settings of a ``kind = "imap"`` mailbox: ``host``, ``port``, ``tls`` (implicit, starttls,
none: loopback only), ``login``, ``auth`` (password or xoauth2), ``folders`` (extras),
``idle``, ``caldav_url``; the password or token is the mailbox's encrypted secret.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import tenacity
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from syncd.batching import by_size
from syncd.connectors.base import (
    AuthError,
    CalendarSource,
    ConnectorError,
    CursorExpired,
    MailboxSpec,
    MailSource,
    TaskWriter,
    too_large,
)
from syncd.connectors.ical import describe
from syncd.connectors.imap import ImapSettings
from syncd.connectors.kind import typed
from syncd.connectors.mime import read_message
from syncd.connectors.transport import check_tls, secret_forms
from syncd.items import Batch, Cursor, MailItem, Quarantined

log = logging.getLogger("syncd.imap")
_PROTOCOL_LOG = logging.getLogger("imapclient.imaplib")  # every line, at DEBUG (--verbose)

SENT_NAMES = ("Sent", "Sent Items", "Sent Messages", "INBOX.Sent", "INBOX/Sent", "Sent Mail")
SNIPPET_BYTES = 16384
MAX_UIDS_PER_COMMAND = 1000  # keeps a FETCH well under Dovecot's 64 KB command line
TRANSIENT = (OSError, imaplib.IMAP4.abort, ssl.SSLError, EOFError)


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


class ImapSession:
    """One authenticated IMAP connection, reopened when it drops."""

    def __init__(self, spec: MailboxSpec) -> None:
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

    def _where(self) -> str:
        return f"mailbox {self.spec.name!r}: IMAP {self.host}:{self.port}"

    def connect(self) -> IMAPClient:
        if self._client is not None:
            return self._client
        if self.spec.secret is None:
            raise AuthError(
                f"{self._where()} has no password or token stored; "
                f"run 'syncd mailbox reauth {self.spec.name}'"
            )
        context = ssl.create_default_context() if self.tls != "none" else None
        try:
            client = IMAPClient(
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
        client.normalise_times = False
        secret = self.spec.secret.reveal()
        # what a server may echo: the password as LOGIN sends it (quoted, escaped), and
        # the SASL PLAIN message that carries it; masked in the protocol log too
        forms = secret_forms(secret, f"\0{self.login}\0{secret}")
        _mask_protocol_log(client, forms)
        try:
            self._authenticate(client, secret)
        except _CannotCarry as exc:
            client.shutdown()
            raise AuthError(
                f"{self._where()}: cannot log in as {self.login!r}: {exc}; give the mailbox a "
                f"password of ASCII characters with 'syncd mailbox reauth {self.spec.name}'"
            ) from None
        except (LoginError, imaplib.IMAP4.error) as exc:
            client.shutdown()
            if isinstance(exc, imaplib.IMAP4.abort) or isinstance(
                exc.__context__, imaplib.IMAP4.abort
            ):  # the connection dropped (imapclient wraps it): try again later
                reason = _masked(str(exc), forms)
                raise ConnectorError(
                    f"{self._where()}: the login was cut short ({reason})"
                ) from None
            reason = _masked(str(exc), forms)
            raise AuthError(
                f"{self._where()} refused the login {self.login!r} ({reason}); set the right "
                f"password with 'syncd mailbox reauth {self.spec.name}'"
            ) from None
        self.condstore = client.has_capability("CONDSTORE")
        if self.condstore:
            client.enable("CONDSTORE")  # before any SELECT (RFC 7162 §3.1)
        self._client = client
        return client

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

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.logout()
            except Exception:
                client.shutdown()

    def retrying(self, what: str) -> tenacity.Retrying:
        """Retry a dropped connection with backoff, reconnecting before each new try."""

        def reconnect(state: tenacity.RetryCallState) -> None:
            log.info(
                "%s: %s failed (%s); reconnecting",
                self._where(),
                what,
                state.outcome.exception() if state.outcome else "",
            )
            self.drop()

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TRANSIENT),
            stop=tenacity.stop_after_attempt(self.settings.retries or 5),
            wait=tenacity.wait_exponential(multiplier=0.2, max=10),
            before_sleep=reconnect,
            reraise=True,
        )

    def call(self, what: str, fn: Callable[[IMAPClient], Any]) -> Any:
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


def _has_calendar_part(structure: Any) -> bool:
    if isinstance(structure, (list, tuple)):
        if (
            len(structure) >= 2
            and isinstance(structure[0], bytes)
            and isinstance(structure[1], bytes)
            and structure[0].lower() == b"text"
            and structure[1].lower() == b"calendar"
        ):
            return True
        return any(_has_calendar_part(part) for part in structure)
    return False


class ImapFolder:
    """One IMAP folder as a mail source."""

    def __init__(self, session: ImapSession, folder: str, spec: MailboxSpec) -> None:
        self.session = session
        self.folder = folder
        self.name = f"imap:{folder}"
        self.batch_size = min(spec.batch_size, MAX_UIDS_PER_COMMAND)
        self.policy = spec.body_policy
        self.limits = spec.limits

    def _attributes(self) -> list[bytes]:
        if self.policy == "full":
            return [b"BODY.PEEK[]", b"INTERNALDATE"]
        if self.policy == "snippet":
            return [
                b"BODY.PEEK[HEADER]",
                f"BODY.PEEK[TEXT]<0.{SNIPPET_BYTES}>".encode(),
                b"INTERNALDATE",
                b"BODYSTRUCTURE",
            ]
        return [b"BODY.PEEK[HEADER]", b"INTERNALDATE", b"BODYSTRUCTURE"]

    def _status(self, client: IMAPClient) -> dict[bytes, int]:
        what = ["UIDVALIDITY", "UIDNEXT"] + (["HIGHESTMODSEQ"] if self.session.condstore else [])
        status: dict[bytes, int] = client.folder_status(self.folder, what)
        return status

    def _new_uids(self, client: IMAPClient, after: int) -> list[int]:
        client.select_folder(self.folder, readonly=True)
        return sorted(u for u in client.search(["UID", f"{after + 1}:*"]) if u > after)

    def _select(self, client: IMAPClient, uidvalidity: int) -> None:
        selected = client.select_folder(self.folder, readonly=True)
        if selected[b"UIDVALIDITY"] != uidvalidity:
            raise CursorExpired(f"UIDVALIDITY of {self.folder!r} changed during the sync")

    def _sizes(self, client: IMAPClient, uids: list[int], uidvalidity: int) -> dict[int, int]:
        """RFC822.SIZE of each message: what it would cost to fetch, before any body is."""
        self._select(client, uidvalidity)
        sizes: dict[int, int] = {}
        for uid, d in client.fetch(uids, [b"RFC822.SIZE"]).items():
            size = d.get(b"RFC822.SIZE")
            sizes[uid] = size if isinstance(size, int) else 0  # unknown: checked once read
        return sizes

    def _fetch(self, client: IMAPClient, uids: list[int], uidvalidity: int) -> dict[int, Any]:
        self._select(client, uidvalidity)
        data: dict[int, Any] = client.fetch(uids, self._attributes())
        if self.policy != "full":  # invitations need their text/calendar part: whole message
            whole = [u for u, d in data.items() if _has_calendar_part(d.get(b"BODYSTRUCTURE"))]
            if whole:
                for uid, d in client.fetch(whole, [b"BODY.PEEK[]"]).items():
                    data[uid][b"BODY[]"] = d[b"BODY[]"]
        return data

    def _item(self, uid: int, d: dict[bytes, Any], uidvalidity: int) -> MailItem | Quarantined:
        provider_id = f"{self.folder}/{uidvalidity}/{uid}"
        try:
            raw = d.get(b"BODY[]")
            if raw is None:
                raw = (d.get(b"BODY[HEADER]") or b"") + (d.get(b"BODY[TEXT]<0>") or b"")
            if not isinstance(raw, (bytes, bytearray)):
                raise TypeError(f"the message is a {type(raw).__name__}, not bytes")
            if len(raw) > self.limits.message_bytes:  # larger than its RFC822.SIZE said
                return Quarantined(provider_id, too_large(len(raw), self.limits.message_bytes))
            when = d.get(b"INTERNALDATE")
            if not isinstance(when, datetime):
                when = datetime.now(UTC)
            elif when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
        except Exception as exc:  # a FETCH answer of an unexpected shape: this message only
            return Quarantined(provider_id, f"unexpected FETCH response: {describe(exc)}")
        return read_message(bytes(raw), provider_id, when, limits=self.limits)

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[MailItem]]:
        state = json.loads(cursor.value) if cursor else {}
        status = self.session.call(f"STATUS {self.folder}", self._status)
        uidvalidity = int(status[b"UIDVALIDITY"])
        modseq = status.get(b"HIGHESTMODSEQ")
        uidnext = int(status[b"UIDNEXT"])
        if state and state["uv"] != uidvalidity:
            raise CursorExpired(
                f"UIDVALIDITY of {self.folder!r} changed from {state['uv']} to {uidvalidity}"
            )
        if state and (
            (modseq is not None and state.get("ms") == modseq) or state.get("next") == uidnext
        ):
            return  # unchanged since the last poll: one STATUS round trip
        last = int(state.get("uid", 0))
        uids = self.session.call(f"SEARCH {self.folder}", lambda c: self._new_uids(c, last))

        def cursor_at(uid: int, final: bool) -> Cursor:
            return Cursor(
                json.dumps(
                    {
                        "uv": uidvalidity,
                        "uid": uid,
                        "ms": modseq if final else state.get("ms"),
                        "next": uidnext if final else state.get("next"),
                    }
                )
            )

        if not uids:
            yield Batch((), cursor_at(last, True))
            return
        limit = self.limits.message_bytes
        for group_start in range(0, len(uids), MAX_UIDS_PER_COMMAND):
            group = uids[group_start : group_start + MAX_UIDS_PER_COMMAND]
            sizes: dict[int, int] = self.session.call(
                f"FETCH {self.folder} RFC822.SIZE",
                partial(self._sizes, uids=group, uidvalidity=uidvalidity),
            )
            # what each message holds in memory once fetched; one over the limit is not
            weights = [n if (n := sizes.get(u, 0)) <= limit else 0 for u in group]
            for start, end in by_size(weights, self.batch_size, self.limits.batch_bytes):
                chunk = group[start:end]
                wanted = [u for u in chunk if u in sizes and sizes[u] <= limit]
                data: dict[int, Any] = (
                    self.session.call(
                        f"FETCH {self.folder}",
                        partial(self._fetch, uids=wanted, uidvalidity=uidvalidity),
                    )
                    if wanted
                    else {}
                )
                results: list[MailItem | Quarantined] = []
                for u in chunk:
                    if sizes.get(u, 0) > limit:  # its body is never fetched
                        pid = f"{self.folder}/{uidvalidity}/{u}"
                        results.append(Quarantined(pid, too_large(sizes[u], limit)))
                    elif u in data:
                        results.append(self._item(u, data[u], uidvalidity))
                final = group_start + end >= len(uids)
                yield Batch(
                    items=tuple(r for r in results if isinstance(r, MailItem)),
                    cursor=cursor_at(chunk[-1], final),
                    quarantined=tuple(r for r in results if isinstance(r, Quarantined)),
                )


class ImapConnector:
    def __init__(self, spec: MailboxSpec) -> None:
        self.spec = spec
        self.settings = typed(spec.settings, ImapSettings)
        self.session = ImapSession(spec)
        self._caldav: Any = None

    def folders(self) -> list[str]:
        """INBOX, the \\Sent folder (RFC 6154, else a common name), and configured extras."""

        def discover(client: IMAPClient) -> list[str]:
            listed = client.list_folders()
            names = {name for _flags, _sep, name in listed}
            sent = next((name for flags, _sep, name in listed if b"\\Sent" in flags), None)
            if sent is None:
                sent = next((n for n in SENT_NAMES if n in names), None)
            wanted = ["INBOX", *([sent] if sent else [])]
            for extra in self.settings.folders:
                if extra not in names:
                    raise ConnectorError(
                        f"mailbox {self.spec.name!r}: folder {extra!r} does not exist on the "
                        f"server; folders there: {', '.join(sorted(names))}"
                    )
                wanted.append(extra)
            excluded = {f.lower() for f in self.settings.excluded_folders}
            return [f for f in dict.fromkeys(wanted) if f == "INBOX" or f.lower() not in excluded]

        folders: list[str] = self.session.call("LIST", discover)
        return folders

    def mail_sources(self) -> list[MailSource]:
        return [ImapFolder(self.session, f, self.spec) for f in self.folders()]

    def _calendar(self) -> Any:
        if self._caldav is None and self.settings.caldav_url:
            from syncd.connectors.imap.caldav import CalDavAccount

            self._caldav = CalDavAccount(self.spec)
        return self._caldav

    def calendar_sources(self) -> list[CalendarSource]:
        account = self._calendar()
        return account.sources() if account else []

    def task_writer(self) -> TaskWriter | None:
        account = self._calendar()
        return account.task_writer() if account else None

    def close(self) -> None:
        self.session.close()
        account, self._caldav = self._caldav, None
        if account is not None:
            account.close()


class IdleWatcher(threading.Thread):
    """IMAP IDLE (RFC 2177) on INBOX: calls ``on_change`` when mail arrives. Re-issues IDLE
    every few minutes (servers drop it after 29 min, Gmail sooner) and reconnects on error."""

    REISSUE = 300.0

    def __init__(
        self, spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event
    ) -> None:
        super().__init__(name=f"idle-{spec.name}", daemon=True)
        self.spec = spec
        self.on_change = on_change
        self.stopping = stop

    def _watch_once(self) -> None:
        session = ImapSession(self.spec)
        try:
            client = session.connect()
            client.select_folder("INBOX", readonly=True)
            while not self.stopping.is_set():
                client.idle()
                started = datetime.now(UTC)
                try:
                    while not self.stopping.is_set():
                        responses = client.idle_check(timeout=1.0)
                        if any(
                            r[1] in (b"EXISTS", b"RECENT")
                            for r in responses
                            if isinstance(r, tuple) and len(r) > 1
                        ):
                            self.on_change(self.spec.name)
                        if (datetime.now(UTC) - started).total_seconds() > self.REISSUE:
                            break
                finally:
                    client.idle_done()
        finally:
            session.close()

    def run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._watch_once()
                delay = 1.0
            except AuthError as exc:
                log.warning("IDLE for %r stopped: %s", self.spec.name, exc)
                return
            except Exception as exc:  # dropped: back off and watch again
                log.info("IDLE for %r dropped (%s); again in %.0f s", self.spec.name, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 60.0)


def watch(spec: MailboxSpec, on_change: Callable[[str], None], stop: threading.Event) -> Any:
    """Start watching the mailbox for new mail when its settings ask for ``idle``."""
    if not typed(spec.settings, ImapSettings).idle:
        return None
    watcher = IdleWatcher(spec, on_change, stop)
    watcher.start()
    return watcher
