import asyncio
from pathlib import Path

import pytest

from registrations.auth import Principal, digest
from registrations.model import Registration
from registrations.store import RegistrationStore
from registrations.writer import BatchWriter
from service.app import keyring
from service.config import ConfigError, load_config

SECRET = "s3cret-admin-key-0123456789"


def test_keys_from_files_and_digests_are_held_hashed_only(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text(SECRET + "\n")
    app_digest = digest("app-key-0123456789abcdef")
    cfg = tmp_path / "tocsin.yaml"
    cfg.write_text(
        "api:\n  keys:\n"
        f"    - {{name: ops, role: admin, api_key_file: {key_file}}}\n"
        f"    - {{name: alarms, role: app, app: com.example.alarms, api_key_sha256: {app_digest}}}\n"
    )
    config = load_config(cfg, {})
    assert SECRET not in repr(config) and SECRET not in str(config.api)
    ring = keyring(config)
    assert ring.keys == {
        digest(SECRET): Principal("ops", admin=True),
        app_digest: Principal("alarms", admin=False, app="com.example.alarms"),
    }
    assert not ring.open_loopback  # keys configured: nobody is admin for free


def test_keys_from_the_environment_and_open_loopback_without_keys() -> None:
    env = {"TOCSIN_API__KEYS": f"[{{name: ops, role: admin, api_key: {SECRET}}}]"}
    assert digest(SECRET) in keyring(load_config(None, env)).keys
    assert keyring(load_config(None, {})).open_loopback
    assert not keyring(load_config(None, {"TOCSIN_HTTP__HOST": "0.0.0.0"})).open_loopback


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("{name: a, role: admin}", "give exactly one of api_key"),
        ("{name: a, role: app, api_key: 0123456789abcdefgh}", "an app key names its app"),
        ("{name: a, role: admin, app: x, api_key: 0123456789abcdefgh}", "an app key names its app"),
        ("{name: a, role: admin, api_key: short}", "at least 16 characters"),
        ("{name: a, role: admin, api_key_sha256: nothex}", "api_key_sha256"),
        ("{name: a, role: root, api_key: 0123456789abcdefgh}", "role"),
    ],
)
def test_bad_key_entries_name_the_problem_and_never_the_key(tmp_path: Path, entry: str, reason: str) -> None:
    cfg = tmp_path / "tocsin.yaml"
    cfg.write_text(f"api:\n  keys:\n    - {entry}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, {})
    assert f"{cfg}:3: api.keys.0" in str(err.value) and reason in str(err.value)
    assert "0123456789abcdefgh" not in str(err.value)


async def test_writer_commits_a_turn_at_once_and_a_bad_one_fails_alone(
    registry_store: RegistrationStore,
) -> None:
    store = registry_store
    writer = BatchWriter(store, lambda: 5.0)
    bad = Registration("log", "bad")
    bad.state = None  # type: ignore[assignment]  # violates NOT NULL
    results = await asyncio.gather(
        *(writer.upsert(Registration("log", f"t{i}")) for i in range(10)),
        writer.upsert(bad),
        return_exceptions=True,
    )
    assert all(isinstance(r, Registration) for r in results[:10])
    assert isinstance(results[10], Exception)
    assert await store.count() == 10
    await asyncio.gather(*(writer.upsert(Registration("log", f"u{i}")) for i in range(20)))
    assert writer.batches == 1  # the twenty shared one transaction (the failed batch was retried one by one)
    await writer.close()
