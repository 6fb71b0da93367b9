"""Config validation: every error names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import ConfigError, load_settings, mask_url


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "syncd.toml"
    p.write_text(text)
    return p


def test_the_example_config_is_valid_and_equals_the_defaults(monkeypatch):
    monkeypatch.delenv("SYNCD_HOME", raising=False)
    example = Path(__file__).parent.parent / "config" / "syncd.example.toml"
    assert load_settings(example) == load_settings(None)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[company]\ntimezone = "Mars/Olympus"', "key 'company.timezone': value 'Mars/Olympus'"),
        ('[company]\nworking_hours = "9-5"', "is not a range like '09:00-17:30'"),
        ('[company]\nworking_days = ["mon", "funday"]', "key 'company.working_days.1'"),
        ("[sync]\nbatch_size = 0", "key 'sync.batch_size': value 0 is not allowed"),
        ('[exclusions]\naddresses = ["nobody"]', "'nobody' is not an email address"),
        ("[sink]\nx = 1", "unknown key 'sink'"),
        ("[sync\n", "not valid TOML"),
    ],
)
def test_bad_values_are_named(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert expected in str(info.value)


def test_database_url_comes_from_env_or_file_never_only_the_toml(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    secret = tmp_path / "db-url"
    secret.write_text("postgresql+psycopg://syncd:pw@db/crm\n")
    s = load_settings(write(tmp_path, f'[database]\nurl_file = "{secret}"'))
    assert s.database_url() == "postgresql+psycopg://syncd:pw@db/crm"
    s = load_settings(write(tmp_path, '[database]\nurl_env = "CRM_URL"'))
    with pytest.raises(ConfigError, match="'CRM_URL' is not set"):
        s.database_url()
    monkeypatch.setenv("CRM_URL", "sqlite:///x.db")
    assert s.database_url() == "sqlite:///x.db"


def test_state_lives_under_syncd_home(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    monkeypatch.setenv("SYNCD_HOME", str(tmp_path / "state"))
    assert load_settings(None).database_url() == f"sqlite:///{tmp_path / 'state' / 'syncd.db'}"


# --- secrets in database URLs (issue 10) ------------------------------------------------

SECRET_URL = "postgresql+psycopg://syncd:s3cret-pw@crm-db.internal/crm?password=s3cret-q"


def assert_hidden(text: str) -> None:
    assert "s3cret" not in text and "crm-db.internal" not in text, text


def test_a_url_put_in_url_env_is_refused_without_echoing_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f'[database]\nurl_env = "{SECRET_URL}"'))
    message = str(info.value)
    assert "key 'database.url_env'" in message and "looks like a database URL" in message
    assert "name of an environment" in message or "*name* of an" in message
    assert_hidden(message)
    # something else that is no variable name (a password pasted there) is not echoed either
    with pytest.raises(ConfigError, match="not the name of an environment variable") as info:
        load_settings(write(tmp_path, '[database]\nurl_env = "s3cret pw!"'))
    assert_hidden(str(info.value))


def test_a_url_put_in_url_file_is_refused_without_echoing_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f'[database]\nurl_file = "{SECRET_URL}"'))
    message = str(info.value)
    assert "key 'database.url_file'" in message and "looks like a database URL" in message
    assert_hidden(message)


@pytest.mark.parametrize(
    "toml",
    [
        f'[database]\nurl = ["{SECRET_URL}"]',  # the wrong type
        f'[database]\npassword = "{SECRET_URL}"',  # an unknown key under [database]
        '[sync]\npassword = "s3cret-pw"',  # an unknown key named like a secret
    ],
)
def test_a_bad_key_that_may_hold_a_secret_is_named_but_its_value_never_shown(
    tmp_path, monkeypatch, toml
):
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml))
    assert "not shown" in str(info.value)
    assert_hidden(str(info.value))


@pytest.mark.parametrize(
    "value, hint",
    [
        ("postgresql+psycopg//syncd:s3cret-pw@crm-db.internal/crm", ""),  # no ':' after the scheme
        ("s3cret_pw", "looks like the name of an environment variable"),
        ("   ", "is empty"),
    ],
)
def test_every_path_to_the_url_refuses_a_value_that_is_no_url_without_echoing_it(
    tmp_path, monkeypatch, value, hint
):
    monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
    url_file = tmp_path / "db-url"
    url_file.write_text(value + "\n")
    monkeypatch.setenv("CRM_URL", value)
    paths = [
        ("the environment variable SYNCD_DATABASE_URL", None),
        ("the environment variable 'CRM_URL' (key 'database.url_env')", 'url_env = "CRM_URL"'),
        (f"the file '{url_file}' (key 'database.url_file')", f'url_file = "{url_file}"'),
        ("key 'database.url'", f'url = "{value}"'),
    ]
    for where, key in paths:
        if key is None:
            monkeypatch.setenv("SYNCD_DATABASE_URL", value)
            settings = load_settings(None)
        else:
            monkeypatch.delenv("SYNCD_DATABASE_URL", raising=False)
            settings = load_settings(write(tmp_path, f"[database]\n{key}"))
        with pytest.raises(ConfigError) as info:
            settings.database_url()
        message = str(info.value)
        assert message.startswith(where), message
        assert hint in message and "sqlite:////var/lib/syncd/syncd.db" in message
        if value.strip():
            assert value not in message and "s3cret" not in message, message


def test_a_database_syncd_does_not_run_on_is_named_by_its_kind_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCD_DATABASE_URL", "mysql://syncd:s3cret-pw@crm-db.internal/crm")
    with pytest.raises(ConfigError, match="database 'mysql' is not supported") as info:
        load_settings(None).database_url()
    assert_hidden(str(info.value))


def test_mask_url_hides_the_password_and_every_secret_query_parameter():
    shown = mask_url(
        "postgresql+psycopg://syncd:s3cret-pw@db/crm?password=s3cret-q&sslmode=require"
        "&sslpassword=s3cret-k&application_name=syncd%20worker"
    )
    assert "s3cret" not in shown
    assert shown == (
        "postgresql+psycopg://syncd:***@db/crm?password=***&sslmode=require&sslpassword=***"
        "&application_name=syncd%20worker"
    )
    assert mask_url("sqlite:////var/lib/syncd/syncd.db") == "sqlite:////var/lib/syncd/syncd.db"
    assert "s3cret" not in mask_url("postgres ql://u:s3cret@h/db")
