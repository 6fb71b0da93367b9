"""The historical import of contacts (issue 12), on SQLite and PostgreSQL: each skip rule and
the merge end up in the CRM as the report says, the dry run's report equals what the run
does, a second run creates nothing, ``import undo`` removes exactly what the import created,
a Takeout mbox and a folder of .eml files are read by path, and an import SIGKILLed at
random moments ends equal to an uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import Settings
from syncd.crm import mailboxes
from syncd.crm.database import make_engine, session_factory, upgrade
from syncd.crm.models import (
    Account,
    AccountDomain,
    Contact,
    ContactAddress,
    ContactKnowledge,
    Import,
    User,
)
from syncd.harvest.decide import Policy
from syncd.harvest.run import ContactImport, Target
from tests import test_gmail as gmail_test
from tests.helpers import sync
from tests.test_gmail import oauth_mailbox

S = sessionmaker[Session]
google = gmail_test.google  # the Gmail emulator, with Ana and Ben
ANA = "ana@northwind.test"
SYNCD = [sys.executable, "-m", "syncd"]
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def message(n: int, sender: str, to: str, subject: str, when: datetime, extra: str = "") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(when)}\r\nMessage-ID: <m{n}@test>\r\n{extra}\r\nHello\r\n"
    ).encode()


def conversation() -> list[bytes]:
    """Ana's mail: one person or rule each."""
    m = []
    t = T0
    # a two-way conversation with someone at a company the CRM does not know
    m.append(message(1, f"Ana Ruiz <{ANA}>", "Zoe Park <zoe@initech.test>", "Pilot", t))
    m.append(message(2, "Zoe Park <zoe@initech.test>", ANA, "Re: Pilot", t + timedelta(hours=2)))
    # written to, at an account the CRM has (Acme): joins it
    m.append(message(3, ANA, "FRED MILLER <fred@acme.test>", "Intro", t - timedelta(days=20)))
    # an existing contact: counts added, name untouched
    m.append(message(4, "Carla <carla@acme.test>", ANA, "Q", t - timedelta(days=2)))
    # free mail, two spellings of one Gmail address; never written to, wrote twice
    m.append(message(5, "Sam Roe <sam.roe@gmail.com>", ANA, "Hi", t - timedelta(days=5)))
    m.append(message(6, "Sam Roe <samroe+crm@googlemail.com>", ANA, "Hi2", t - timedelta(days=4)))
    # bulk mail only; an auto-reply only; a role address; one-off stranger; internal
    m.append(message(7, "Shop <news@shop.test>", ANA, "Sale", t, "List-Id: <news.shop.test>\r\n"))
    m.append(
        message(8, "Omar <omar@umbrella.test>", ANA, "Away", t, "Auto-Submitted: auto-replied\r\n")
    )
    m.append(message(9, "GitHub <noreply@github.test>", ANA, "PR", t))
    m.append(message(10, "Lee <lee@hooli.test>", ANA, "Buy", t))
    m.append(message(11, ANA, "Ben <ben@northwind.test>", "Lunch", t))
    return m


def write_maildir(root: Path, messages: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, raw in enumerate(messages):
        (root / "cur" / f"{1700000000 + n}.{n}.host:2,S").write_bytes(raw)
    return root


@pytest.fixture
def ana_maildir(tmp_path: Path, sessions: S, company) -> Path:
    path = write_maildir(tmp_path / "ana-mail", conversation())
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == ANA))
        assert user_id is not None
        mailboxes.add_mailbox(
            session, name="ana-mail", kind="local", user_id=user_id, settings={"maildir": str(path)}
        )
    return path


def run_import(sessions: S, settings: Settings, dry_run: bool = False, **policy: Any) -> Any:
    job = ContactImport(
        sessions, settings, [Target("ana-mail", ANA)], since=None, policy=Policy(**policy)
    )
    return job.run(dry_run=dry_run, report=settings.home / "report.csv")


def crm(sessions: S) -> dict[str, tuple[str, str | None, str | None]]:
    """Every contact address -> (contact name, account name, the import that created it)."""
    with sessions() as session:
        rows = session.execute(
            select(ContactAddress.address, Contact.name, Account.name, Contact.import_id)
            .join(Contact, ContactAddress.contact_id == Contact.id)
            .outerjoin(Account, Contact.account_id == Account.id)
        )
        return {a: (n, acc, "import" if imp else None) for a, n, acc, imp in rows}


def report_rows(settings: Settings) -> dict[str, dict[str, str]]:
    with (settings.home / "report.csv").open(encoding="utf-8") as handle:
        return {row["address"]: row for row in csv.DictReader(handle)}


def test_each_rule_the_merge_and_the_dry_run_report_equal_to_the_run(
    sessions, settings, ana_maildir
):
    settings.home.mkdir(parents=True, exist_ok=True)
    before = crm(sessions)
    dry = run_import(sessions, settings, dry_run=True)
    assert crm(sessions) == before  # a dry run changes nothing
    rows = report_rows(settings)
    decisions = {a: (r["decision"], r["reason"]) for a, r in rows.items()}
    assert decisions == {
        "zoe@initech.test": ("import", ""),
        "fred@acme.test": ("import", ""),
        "carla@acme.test": ("update", ""),
        "sam.roe@gmail.com": ("import", ""),
        "news@shop.test": ("skip", "bulk only"),
        "omar@umbrella.test": ("skip", "auto-reply only"),
        "noreply@github.test": ("skip", "role address"),
        "lee@hooli.test": ("skip", "one-off stranger"),
        "ben@northwind.test": ("skip", "internal"),
    }
    assert rows["sam.roe@gmail.com"]["other_addresses"] == "samroe+crm@googlemail.com"
    assert rows["sam.roe@gmail.com"]["received_from"] == "2"
    assert (rows["fred@acme.test"]["first_name"], rows["fred@acme.test"]["last_name"]) == (
        "Fred",
        "Miller",
    )
    assert rows["zoe@initech.test"]["new_account"] == "yes"
    assert next(iter(rows)) == "zoe@initech.test"  # two-way first
    assert dry.summary()["to_import"] == 3

    done = run_import(sessions, settings)
    assert done.summary()["resumed"]  # the dry run's harvest is applied
    after = crm(sessions)
    created = {a for a, (_, _, imp) in after.items() if imp}
    planned = {
        a
        for a, r in rows.items()
        if r["decision"] == "import"
        for a in [a, *r["other_addresses"].split()]
    }
    assert created == planned
    assert after["zoe@initech.test"] == ("Zoe Park", "Initech", "import")
    assert after["fred@acme.test"] == ("Fred Miller", "Acme Corp", "import")
    assert after["samroe+crm@googlemail.com"] == ("Sam Roe", None, "import")
    assert after["carla@acme.test"] == before["carla@acme.test"]  # name and account kept
    with sessions() as session:
        initech = session.scalar(
            select(Account).join(AccountDomain).where(AccountDomain.domain == "initech.test")
        )
        assert initech is not None and initech.import_id == done.import_id
        carla = session.scalar(
            select(ContactKnowledge)
            .join(ContactAddress, ContactAddress.contact_id == ContactKnowledge.contact_id)
            .where(ContactAddress.address == "carla@acme.test")
        )
        assert carla is not None and (carla.received, carla.mailbox) == (1, "ana-mail")


def test_a_second_run_creates_nothing_and_undo_removes_exactly_what_the_import_made(
    sessions, settings, ana_maildir, company
):
    settings.home.mkdir(parents=True, exist_ok=True)
    time.sleep(1.1)  # a Maildir file is read past only once it is a second old
    sync(sessions, settings, "ana-mail")  # the past is logged before the import
    before = crm(sessions)
    first = run_import(sessions, settings)
    after_first = crm(sessions)
    second = run_import(sessions, settings)
    assert second.import_id != first.import_id
    assert second.applied is not None and second.applied.contacts_created == 0
    assert second.applied.accounts_created == 0
    assert crm(sessions) == after_first
    with sessions() as session:
        knowledge = session.scalar(select(func.count()).select_from(ContactKnowledge))
    assert knowledge == 4  # set, not added to: one row a contact and mailbox

    # Zoe writes again after the import: an activity of her own, so undo keeps her
    new = message(20, "Zoe Park <zoe@initech.test>", ANA, "Order", datetime.now(UTC))
    (ana_maildir / "new" / "1800000000.20.host").write_bytes(new)
    sync(sessions, settings, "ana-mail")
    from syncd.harvest.apply import undo

    with sessions.begin() as session:
        started = session.get(Import, first.import_id)
        assert started is not None
        result = undo(session, first.import_id, started.started_at)
    assert result.contacts_kept == ["Zoe Park"]
    assert result.accounts_kept == ["Initech"]  # Zoe still works there
    assert result.contacts_removed == 2  # Fred, Sam
    remaining = crm(sessions)
    assert set(remaining) == set(before) | {"zoe@initech.test"}
    assert remaining["carla@acme.test"] == before["carla@acme.test"]


# --- by path and through the command line --------------------------------------------------


def cli_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {**os.environ, "SYNCD_HOME": str(tmp_path / "home"), "SYNCD_DATABASE_URL": db_url}


def test_a_takeout_mbox_and_a_folder_of_eml_files_by_path(tmp_path, db_url, sessions, company):
    mbox = tmp_path / "takeout.mbox"
    with mbox.open("wb") as handle:
        for raw in conversation()[:4]:
            handle.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n" + raw + b"\n")
    emls = tmp_path / "saved"
    emls.mkdir()
    for n, raw in enumerate(conversation()[4:6]):
        (emls / f"{n}.eml").write_bytes(raw)
    env = cli_env(tmp_path, db_url)
    args = ["import", "contacts", "--path", str(mbox), "--path", str(emls), "--user", ANA]
    proc = subprocess.run(
        [*SYNCD, *args, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["items_read"], summary["to_import"], summary["to_update"]) == (6, 3, 1)
    after = crm(sessions)
    assert after["sam.roe@gmail.com"][2] == "import"
    assert after["zoe@initech.test"] == ("Zoe Park", "Initech", "import")
    listed = subprocess.run(
        [*SYNCD, "import", "list", "--json"], env=env, capture_output=True, text=True
    )
    (row,) = json.loads(listed.stdout)
    assert row["state"] == "done" and row["import"] == summary["import"]
    undone = subprocess.run(
        [*SYNCD, "import", "undo", summary["import"]], env=env, capture_output=True, text=True
    )
    assert undone.returncode == 0 and "3 contacts, 1 accounts" in undone.stdout
    assert "zoe@initech.test" not in crm(sessions)
    bad = subprocess.run(
        [*SYNCD, "import", "contacts", "--path", str(mbox)], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--path needs --user EMAIL" in bad.stderr


# --- killed at random moments ----------------------------------------------------------------


def big_maildir(root: Path, count: int) -> Path:
    rng = random.Random(7)
    messages = []
    for n in range(count):
        who = rng.randrange(count // 3)
        domain = rng.choice(["initech.test", "hooli.test", "gmail.com", "acme.test"])
        person = f"Person {who} <p{who}@{domain}>"
        when = T0 - timedelta(hours=n)
        if rng.random() < 0.4:
            messages.append(message(1000 + n, ANA, person, f"S{n}", when))
        else:
            messages.append(message(1000 + n, person, ANA, f"R{n}", when))
    return write_maildir(root, messages)


def contacts_of(url: str) -> set[tuple[str, str, str | None]]:
    sessions = session_factory(make_engine(url))
    with sessions() as session:
        rows = session.execute(
            select(ContactAddress.address, Contact.name, Account.name)
            .join(Contact, ContactAddress.contact_id == Contact.id)
            .outerjoin(Account, Contact.account_id == Account.id)
        )
        return {(a, n, acc) for a, n, acc in rows}


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_import(
    tmp_path, db_url, sessions, company
):
    maildir = big_maildir(tmp_path / "big", 1500)
    config = tmp_path / "syncd.toml"
    config.write_text("[sync]\nbatch_size = 50\n")
    env = cli_env(tmp_path, db_url)
    cmd = [*SYNCD, "--config", str(config), "import", "contacts", "--path", str(maildir)]
    cmd += ["--user", ANA, "--min-messages", "1"]
    rng = random.Random(11)
    kills = 0
    for _attempt in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.7, 2.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert kills >= 1  # the test killed it at least once
    # the same import, uninterrupted, into a fresh database
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(make_engine(fresh))
    from syncd.demo import load_company

    load_company(session_factory(make_engine(fresh)), company.root / "crm")
    env2 = {**env, "SYNCD_DATABASE_URL": fresh, "SYNCD_HOME": str(tmp_path / "home2")}
    again = subprocess.run(
        [*cmd[:-4], "--path", str(maildir), "--user", ANA, "--min-messages", "1"],
        env=env2,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert contacts_of(db_url) == contacts_of(fresh)
    with sessions() as session:
        created = session.scalar(select(func.count()).select_from(Contact))
    assert created and created > 300


# --- an IMAP mailbox and its CardDAV address book -----------------------------------------


def test_an_imap_mailbox_and_its_carddav_address_book(
    sessions, settings, company, imap_server, dav_server
):
    """Dovecot for the mail, Radicale for the address book: a person Ana only saved is
    imported with the name she gave them; a card's second address is the same contact."""
    import requests

    from tests.servers import Dovecot
    from tests.test_carddav import MKCOL, vcard
    from tests.test_imap import add_imap_mailbox, append, new_login

    login = new_login(imap_server, "ana")
    append(imap_server, login, "INBOX", *conversation()[:2])  # Zoe, two-way
    dav_server.add_user(login, Dovecot.PASSWORD)  # one login and password for both
    http = requests.Session()
    http.auth = (login, Dovecot.PASSWORD)
    book = f"{dav_server.url}{login}/contacts/"
    assert http.request("MKCOL", book, data=MKCOL).status_code == 201
    card = vcard(
        "vic", "Dr. Victoria Lang", ["vic@umbrella.test", "v.lang@gmail.com"], "Lang;Victoria;;;"
    )
    assert http.put(f"{book}vic.vcf", data=card.encode()).status_code == 201
    add_imap_mailbox(
        sessions, settings, "ana-imap", ANA, imap_server, login, carddav_url=dav_server.url
    )
    job = ContactImport(sessions, settings, [Target("ana-imap", ANA)], since=None, policy=Policy())
    outcome = job.run(dry_run=False)
    assert not outcome.failed, outcome.failed
    after = crm(sessions)
    assert after["vic@umbrella.test"] == ("Dr. Victoria Lang", "Umbrella", "import")
    assert after["v.lang@gmail.com"] == ("Dr. Victoria Lang", "Umbrella", "import")
    assert after["zoe@initech.test"] == ("Zoe Park", "Initech", "import")
    with sessions() as session:
        vic = session.scalar(
            select(Contact)
            .join(ContactAddress)
            .where(ContactAddress.address == "vic@umbrella.test")
        )
        assert vic is not None and (vic.first_name, vic.last_name) == ("Victoria", "Lang")


# --- Gmail and Microsoft 365 mailboxes: Google People, Graph contacts ------------------------


def test_a_gmail_mailbox_and_its_google_contacts(sessions, settings, company, google):
    """The user's contacts and "Other contacts" are read through the Gmail mailbox (the
    emulator speaks People v1 from its discovery document); a declined contacts scope leaves
    the address book out with a warning, and the mail is imported all the same."""
    emulator, _ = google
    emulator.add_person(ANA, "Victoria Lang", ["vic@umbrella.test"], "Victoria", "Lang")
    emulator.add_person(ANA, "Lee Chan", ["lee@hooli.test"], other=True)
    emulator.add_person(ANA, "Ben (colleague)", ["ben@northwind.test"])
    oauth_mailbox(sessions, settings, google, name="ana-gmail")
    outcome = ContactImport(
        sessions, settings, [Target("ana-gmail", ANA)], since=None, policy=Policy()
    ).run(dry_run=False)
    assert not outcome.failed and not outcome.warnings, (outcome.failed, outcome.warnings)
    after = crm(sessions)
    assert after["vic@umbrella.test"] == ("Victoria Lang", "Umbrella", "import")
    assert after["lee@hooli.test"] == ("Lee Chan", "Hooli", "import")
    assert "ben@northwind.test" not in after or after["ben@northwind.test"][2] is None
    reasons = {v.person.key: v.reason for v in outcome.verdicts}
    assert reasons["ben@northwind.test"] == "internal"

    emulator.decline(ANA, "https://www.googleapis.com/auth/contacts.readonly")
    again = ContactImport(
        sessions, settings, [Target("ana-gmail", ANA)], since=None, policy=Policy()
    ).run(dry_run=False)
    assert not again.failed
    assert "contacts.readonly" in again.warnings["ana-gmail"]
    assert "syncd mailbox reauth ana-gmail" in again.warnings["ana-gmail"]


def test_a_microsoft_mailbox_and_its_graph_contacts(sessions, settings, company):
    """The default Contacts folder, read by delta through the Graph client (the emulator's
    contact entity is msgraph-sdk's); an app without Contacts.Read leaves the address book
    out with a warning naming the permission, and the mail is imported all the same."""
    from tests.emulators.microsoft import APP_PERMISSIONS, MicrosoftEmulator
    from tests.test_microsoft import TENANT
    from tests.test_microsoft import add_mailbox as add_graph_mailbox

    emulator = MicrosoftEmulator()
    emulator.add_app(
        TENANT, "app-1", secret="secret-1", permissions=APP_PERMISSIONS | {"Contacts.Read"}
    )
    emulator.add_app(TENANT, "app-2", secret="secret-2")  # no Contacts.Read
    emulator.add_user(ANA)
    emulator.start()
    try:
        emulator.add_contact(
            ANA,
            displayName="Victoria Lang",
            givenName="Victoria",
            surname="Lang",
            emailAddresses=[{"name": "Vic", "address": "vic@umbrella.test"}],
        )
        add_graph_mailbox(sessions, settings, emulator, name="ana-365")
        add_graph_mailbox(
            sessions, settings, emulator, name="ana-365b", secret="secret-2", client_id="app-2"
        )
        outcome = ContactImport(
            sessions, settings, [Target("ana-365", ANA)], since=None, policy=Policy()
        ).run(dry_run=False)
        assert not outcome.failed and not outcome.warnings, (outcome.failed, outcome.warnings)
        assert crm(sessions)["vic@umbrella.test"] == ("Victoria Lang", "Umbrella", "import")
        other = ContactImport(
            sessions, settings, [Target("ana-365b", ANA)], since=None, policy=Policy()
        ).run(dry_run=True)
        assert not other.failed and "Contacts.Read" in other.warnings["ana-365b"]
    finally:
        emulator.stop()


def test_the_daemon_adds_people_saved_later_when_contacts_sync_is_on(
    sessions, settings, company, google
):
    """contacts.sync = true: each pass reads the address books from their sync tokens and
    adds the people saved since, under the import's skip rules; off, nothing is added."""
    from syncd.config import ContactsSettings

    emulator, _ = google
    emulator.add_person(ANA, "Victoria Lang", ["vic@umbrella.test"], "Victoria", "Lang")
    oauth_mailbox(sessions, settings, google, name="ana-gmail")
    assert sync(sessions, settings, "ana-gmail").contacts_added == 0  # off by default
    assert "vic@umbrella.test" not in crm(sessions)
    on = settings.model_copy(update={"contacts": ContactsSettings(sync=True)})
    assert sync(sessions, on, "ana-gmail").contacts_added == 1
    assert crm(sessions)["vic@umbrella.test"] == ("Victoria Lang", "Umbrella", None)
    assert sync(sessions, on, "ana-gmail").contacts_added == 0  # from the sync token
    emulator.add_person(ANA, "Hugo Berg", ["hugo@initech.test"])
    emulator.add_person(ANA, "No Reply", ["noreply@initech.test"])
    emulator.add_person(ANA, "Ben", ["ben@northwind.test"])
    report = sync(sessions, on, "ana-gmail")
    assert report.contacts_added == 1
    after = crm(sessions)
    assert after["hugo@initech.test"] == ("Hugo Berg", "Initech", None)
    assert "noreply@initech.test" not in after  # a role address, as in the import


def test_an_import_whose_sync_token_expired_is_given_up_and_started_anew(
    sessions, settings, company, google
):
    """Resumed after Google's sync tokens expired (7 days), the import cannot go on where it
    stopped: it says so, is given up without applying anything, and the same command then
    starts a new import that completes."""
    from syncd.crm.models import ImportCursor

    emulator, _ = google
    emulator.add_person(ANA, "Victoria Lang", ["vic@umbrella.test"], "Victoria", "Lang")
    oauth_mailbox(sessions, settings, google, name="ana-gmail")

    def run() -> Any:
        return ContactImport(
            sessions, settings, [Target("ana-gmail", ANA)], since=None, policy=Policy()
        ).run(dry_run=True)

    first = run()
    assert not first.failed
    with sessions.begin() as session:  # as if killed before the book's last page
        mark = session.get(ImportCursor, (first.import_id, "ana-gmail", "gpeople:contacts"))
        assert mark is not None and mark.value
        mark.done = False
    emulator.age_sync_tokens(8 * 86400.0)
    second = run()
    assert second.import_id == first.import_id
    assert "run the same command again" in second.failed["ana-gmail"]
    assert second.applied is None
    third = run()
    assert third.import_id != first.import_id and not third.failed
    assert {v.person.key for v in third.verdicts} >= {"vic@umbrella.test"}


def test_the_crm_read_for_some_people_decides_as_the_whole_crm_does(sessions, settings, company):
    """The daemon's card batches and the import read only the contacts of the people's
    addresses and the accounts of their domains: the verdicts are the same."""
    from syncd.harvest.decide import decide
    from syncd.harvest.known import known_crm
    from syncd.harvest.people import People

    with sessions() as session:
        contact_addresses = list(session.scalars(select(ContactAddress.address)))
    people = People()
    for n, address in enumerate(contact_addresses[:3]):
        people.see("sent", address.upper(), f"Known {n}", T0, "ana")
    domain = contact_addresses[0].rpartition("@")[2]
    people.see("sent", f"newcomer@{domain}", "New Comer", T0, "ana")  # an account's domain
    people.see("sent", "pat@gmail.com", "Pat", T0, "ana")
    people.see("sent", "lee@nowhere.test", "Lee", T0, "ana")
    people.see("received", "noreply@nowhere.test", "", T0, "ana")
    with sessions() as session:
        whole = decide(people, Policy(), known_crm(session, settings))
        some = decide(people, Policy(), known_crm(session, settings, people=people))
    assert some == whole
    assert {v.action for v in whole} == {"update", "import", "skip"}
