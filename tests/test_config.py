"""Config validation: every error names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import ConfigError, load_settings


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
