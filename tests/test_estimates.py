"""Live progress of the historical import (issue 12): each source says about how many items
it holds, so the progress shows a time left (IMAP STATUS MESSAGES, a Maildir's files,
Gmail's profile, a Graph folder's totalItemCount); a resumed import starts from what it had
read. Against Dovecot, the Gmail and Graph emulators and a Maildir, on both databases."""

from __future__ import annotations

from typing import Any

from syncd.connectors.base import MailboxSpec
from syncd.connectors.gmail.client import GmailClient
from syncd.connectors.gmail.mail import GmailMail
from syncd.connectors.local.maildir import MaildirFolder
from syncd.connectors.microsoft.client import GraphClient
from syncd.connectors.microsoft.mail import GraphMail
from syncd.harvest.decide import Policy
from syncd.harvest.run import ContactImport, Target

from . import test_gmail as gmail_test
from . import test_microsoft as ms_test
from .test_imap import add_imap_mailbox, append, new_login
from .test_import_contacts import ANA, conversation, write_maildir

google = gmail_test.google
microsoft = ms_test.microsoft


class Seen:
    """A progress that keeps what it was told."""

    def __init__(self) -> None:
        self.totals: dict[str, int | None] = {}
        self.last: dict[str, int] = {}

    def source(self, mailbox: str, source: str, total: int | None) -> None:
        self.totals[source] = total

    def read(self, mailbox: str, source: str, items: int, people: int) -> None:
        self.last[source] = items


def test_a_maildir_and_an_imap_folder_say_how_many_they_hold(
    sessions, settings, company, imap_server, tmp_path
):
    maildir = write_maildir(tmp_path / "m", conversation())
    folder = MaildirFolder("maildir:INBOX", maildir, 100)
    assert folder.estimate() == 11
    assert MaildirFolder("maildir:x", tmp_path / "none", 100).estimate() is None
    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", *conversation()[:5])
    add_imap_mailbox(sessions, settings, "ana-imap", ANA, imap_server, login)
    seen = Seen()
    ContactImport(
        sessions, settings, [Target("ana-imap", ANA)], since=None, policy=Policy(), progress=seen
    ).run(dry_run=True)
    assert seen.totals["imap:INBOX"] == 5 and seen.last["imap:INBOX"] == 5


def test_gmail_and_graph_say_how_many_they_hold(google, microsoft):
    emulator, base = google
    for i in range(3):
        gmail_test.deliver(emulator, gmail_test.ANA, i)
    values: dict[str, Any] = {
        "mode": "oauth",
        "client_id": "client-1",
        "token_uri": base + "token",
        "api_endpoint": base,
    }
    secret = {"refresh_token": emulator.grant(gmail_test.ANA), "client_secret": "secret-1"}
    import json

    from syncd.secrets import Secret

    spec = MailboxSpec.of("ana", "gmail", gmail_test.ANA, values, secret=Secret(json.dumps(secret)))
    assert GmailMail(GmailClient(spec), spec).estimate() == 3

    for i in range(4):
        ms_test.deliver(microsoft, i)
    graph = MailboxSpec.of(
        "ana",
        "microsoft",
        ms_test.ANA,
        {"mode": "app", "tenant": ms_test.TENANT, "client_id": "app-1", **ms_test.where(microsoft)},
        secret=Secret("secret-1"),
    )
    assert GraphMail(GraphClient(graph), graph, "inbox").estimate() == 4
