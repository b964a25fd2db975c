"""``store:`` in the configuration: SQLite by default, a libpq URL for PostgreSQL (short or long form), the
password from a secret file only."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrations.pg_store import PgRegistrationStore
from registrations.sqlite_store import SqliteRegistrationStore
from service.app import open_store
from service.config import ConfigError, load_config


def test_the_short_form_long_form_and_environment_all_name_the_database(tmp_path: Path) -> None:
    short = tmp_path / "short.yaml"
    short.write_text("store: postgresql://tocsin@db.example/tocsin\n")
    assert load_config(short, {}).store.url == "postgresql://tocsin@db.example/tocsin"
    secret = tmp_path / "pw"
    secret.write_text("pa55word\n")
    long = tmp_path / "long.yaml"
    long.write_text(f"store:\n  url: postgres://tocsin@db/t?sslmode=require\n  password_file: {secret}\n")
    config = load_config(long, {})
    assert config.store.postgresql and config.store.password is not None
    assert config.store.password.get_secret_value() == "pa55word" and "pa55word" not in repr(config)
    env = load_config(None, {"TOCSIN_STORE__URL": "postgresql://u@h/d", "TOCSIN_STORE__POOL_SIZE": "3"})
    assert (env.store.url, env.store.pool_size, env.store.synchronous) == ("postgresql://u@h/d", 3, "normal")
    assert not load_config(None, {}).store.postgresql


async def test_the_store_follows_the_configuration(tmp_path: Path) -> None:
    sqlite = open_store(load_config(None, {"TOCSIN_DATA_DIR": str(tmp_path)}))
    assert isinstance(sqlite, SqliteRegistrationStore) and sqlite.path == str(tmp_path / "tocsin.db")
    await sqlite.close()
    pg = open_store(load_config(None, {"TOCSIN_STORE__URL": "postgresql://u@127.0.0.1:1/d"}))
    assert isinstance(pg, PgRegistrationStore)  # not connected until opened


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://u@h/d", "a libpq URL starting with postgresql://"),
        (
            "postgresql://u:pw-in-url@h/d",
            "the URL must not hold the password: give it as store.password_file",
        ),
    ],
)
def test_bad_urls_are_located_errors_without_the_secret(tmp_path: Path, url: str, reason: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"store: {url}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert f"{path}:1: store.url: {reason}" in str(err.value)
    assert "pw-in-url" not in str(err.value)
