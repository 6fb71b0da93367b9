"""Mailbox secrets are encrypted at rest with a key under SYNCD_HOME and never shown."""

from __future__ import annotations

import multiprocessing
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, text

from syncd.crm import mailboxes
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
    SecretBox(tmp_path / "b").encrypt(Secret("other"))  # b has a key of its own
    with pytest.raises(SecretsError) as info:
        SecretBox(tmp_path / "b").decrypt(token, "mailbox 'ana'")
    message = str(info.value)
    assert message.startswith("mailbox 'ana': the stored secret does not open with the key")
    assert str(tmp_path / "b" / "secret.key") in message
    assert "'syncd mailbox reauth ana'" in message and "mailbox add" not in message
    (tmp_path / "b" / "secret.key").chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        SecretBox(tmp_path / "b").encrypt(Secret("pw"))


def test_a_missing_key_names_the_file_and_reauth_and_creates_nothing(tmp_path):
    token = SecretBox(tmp_path / "a").encrypt(Secret("pw"))
    (tmp_path / "a" / "secret.key").unlink()
    with pytest.raises(SecretsError) as info:
        SecretBox(tmp_path / "a").decrypt(token, "mailbox 'ana'")
    message = str(info.value)
    assert f"the secret key '{tmp_path / 'a' / 'secret.key'}' is missing" in message
    assert "restore the key file from a backup" in message
    assert "'syncd mailbox reauth ana'" in message and "mailbox add" not in message
    # a key made up now would not open the stored secret: none is created by a decrypt ...
    assert not (tmp_path / "a" / "secret.key").exists()
    # ... and storing the secret again (what reauth does) creates a new one
    new = SecretBox(tmp_path / "a").encrypt(Secret("pw2"))
    assert SecretBox(tmp_path / "a").decrypt(new, "mailbox 'ana'").reveal() == "pw2"


@pytest.mark.parametrize("content", [b"", b"not a key\n", b"\xff\xfe" * 40, b"A" * 44], ids=repr)
def test_a_damaged_key_names_the_file_and_the_fix_for_every_use(tmp_path, content):
    token = SecretBox(tmp_path).encrypt(Secret("pw"))
    key = tmp_path / "secret.key"
    key.write_bytes(content)
    for use in (
        lambda: SecretBox(tmp_path).encrypt(Secret("pw")),  # mailbox add / reauth
        lambda: SecretBox(tmp_path).decrypt(token, "mailbox 'ana'"),  # sync
    ):
        with pytest.raises(SecretsError) as info:
            use()
        message = str(info.value)
        assert str(key) in message, message
        assert "restore" in message and "syncd mailbox reauth" in message, message


def test_a_key_that_is_no_regular_file_is_refused_and_never_followed(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_bytes(b"planted")
    (home / "secret.key").symlink_to(elsewhere)
    with pytest.raises(SecretsError, match="is a symbolic link"):
        SecretBox(home).encrypt(Secret("pw"))
    assert elsewhere.read_bytes() == b"planted"
    (home / "secret.key").unlink()
    (home / "secret.key").mkdir()
    with pytest.raises(SecretsError, match=r"secret key .* (not a regular file|cannot read)"):
        SecretBox(home).encrypt(Secret("pw"))


def test_a_key_that_cannot_be_created_is_an_error_naming_the_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SecretsError, match=r"cannot create the secret key .*set SYNCD_HOME"):
        SecretBox(tmp_path / "file" / "home").encrypt(Secret("pw"))


def test_a_token_that_is_not_one_is_refused_with_the_fix(tmp_path):
    box = SecretBox(tmp_path)
    box.encrypt(Secret("pw"))
    for token in ("garbage", "gAAAA\u00e9"):
        with pytest.raises(SecretsError, match="does not open with the key"):
            box.decrypt(token, "mailbox 'ana'")


def _encrypt_in_a_process(home: str) -> str:
    return SecretBox(Path(home)).encrypt(Secret("pw"))


def test_processes_creating_the_key_at_once_all_end_with_the_one_key(tmp_path):
    home = tmp_path / "home"
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        tokens = list(pool.map(_encrypt_in_a_process, [str(home)] * 8))
    box = SecretBox(home)
    assert [box.decrypt(t, "x").reveal() for t in tokens] == ["pw"] * 8
    assert [p.name for p in home.iterdir()] == ["secret.key"]  # no temp file left behind


def test_a_mailbox_secret_is_stored_encrypted_and_reaches_its_connector(
    sessions, settings, company
):
    token = SecretBox(settings.home).encrypt(Secret("imap-password-1"))
    with sessions.begin() as session:
        user_id = session.scalar(select(User.id).where(User.email == "ana@northwind.test"))
        mailboxes.add_mailbox(
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
    # without its key the mailbox is parked, with the fix in its status
    other = settings.model_copy(update={"home": settings.home.parent / "elsewhere"})
    report = sync_mailbox(sessions, other, "ana")
    assert report.state == "parked" and "is missing" in (report.error or "")
    assert "'syncd mailbox reauth ana'" in (report.error or "")
    # with another key too
    SecretBox(other.home).encrypt(Secret("something else"))
    report = sync_mailbox(sessions, other, "ana")
    assert report.state == "parked" and "does not open with the key" in (report.error or "")
    assert "'syncd mailbox reauth ana'" in (report.error or "")
