"""Mailbox secrets are encrypted at rest with a key under SYNCD_HOME and never shown."""

from __future__ import annotations

import stat

import pytest
from sqlalchemy import select, text

from syncd.crm import recorder
from syncd.crm.models import Mailbox, User
from syncd.secrets import Secret, SecretBox, SecretsError
from syncd.sync import mailbox_spec, sync_mailbox


def test_the_key_is_created_private_and_secrets_round_trip(tmp_path):
    box = SecretBox(tmp_path / "home")
    token = box.encrypt(Secret("hunter2"))
    assert "hunter2" not in token
    assert stat.S_IMODE((tmp_path / "home" / "secret.key").stat().st_mode) == 0o600
    assert SecretBox(tmp_path / "home").decrypt(token, "x").reveal() == "hunter2"
    assert "hunter2" not in repr(Secret("hunter2")) + str(Secret("hunter2"))


def test_an_unsafe_or_foreign_key_is_refused_with_the_fix(tmp_path):
    token = SecretBox(tmp_path / "a").encrypt(Secret("pw"))
    with pytest.raises(SecretsError, match=r"does not open with .*give the secret again"):
        SecretBox(tmp_path / "b").decrypt(token, "mailbox 'ana'")
    (tmp_path / "b" / "secret.key").chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        SecretBox(tmp_path / "b").encrypt(Secret("pw"))


def test_a_mailbox_secret_is_stored_encrypted_and_reaches_its_connector(
    sessions, settings, company
):
    token = SecretBox(settings.home).encrypt(Secret("imap-password-1"))
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == "ana@northwind.test"))
        recorder.add_mailbox(
            session,
            name="ana",
            kind="local",
            user_id=user_id,
            settings={"maildir": str(company.maildirs["ana"])},
            secret_token=token,
        )
    with sessions() as session:
        dump = " ".join(
            str(v) for row in session.execute(text("SELECT * FROM mailboxes")) for v in row
        )
        assert "imap-password-1" not in dump
        mailbox = session.scalars(select(Mailbox)).one()
        spec = mailbox_spec(mailbox, settings)
    assert spec.secret is not None and spec.secret.reveal() == "imap-password-1"
    assert "imap-password-1" not in repr(spec)
    # with another key the mailbox is parked, with the fix in its status
    other = settings.model_copy(update={"home": settings.home.parent / "elsewhere"})
    report = sync_mailbox(sessions, other, "ana")
    assert report.state == "parked" and "give the secret again" in (report.error or "")
