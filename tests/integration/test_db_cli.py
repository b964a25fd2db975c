"""``tocsin db upgrade`` as a process, on SQLite and on the private PostgreSQL server, with the password read
from a secret file (a role that must authenticate), and the errors an operator meets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

from registrations.pg_store import MIGRATIONS as PG_MIGRATIONS
from registrations.sqlite_store import MIGRATIONS
from tests.pg_support import PostgresServer

PASSWORD = "s3cret-db-password-for-tests"


def upgrade(config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


def test_db_upgrade_on_sqlite_creates_the_schema(tmp_path: Path) -> None:
    config = tmp_path / "tocsin.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    done = upgrade(config, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == f"registrations schema at version {len(MIGRATIONS)} ({tmp_path}/data/tocsin.db)"
    )


def test_db_upgrade_on_postgresql_with_the_password_from_a_file(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    postgres.add_password_user("tocsin_app", PASSWORD)
    url = postgres.create_database()
    url = url.replace(postgres.url("", user="tocsin"), postgres.url("", user="tocsin_app"))
    secret = tmp_path / "db.password"
    secret.write_text(PASSWORD + "\n")
    config = tmp_path / "tocsin.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nstore:\n  url: {url}\n  password_file: {secret}\n")
    for _ in range(2):  # the second run finds nothing to do
        done = upgrade(config, tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"registrations schema at version {len(PG_MIGRATIONS)} (PostgreSQL)"
    with psycopg.connect(url.replace("tocsin_app", "tocsin")) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == list(range(1, len(PG_MIGRATIONS) + 1))
        assert conn.execute("SELECT count(*) FROM registrations").fetchone() == (0,)

    secret.write_text("not-the-password\n")
    done = upgrade(config, tmp_path)
    assert done.returncode == 1
    assert "db upgrade failed: cannot connect to PostgreSQL" in done.stderr
    assert "not-the-password" not in done.stderr + done.stdout


def test_a_password_inside_the_url_is_refused_with_the_way_to_give_it(tmp_path: Path) -> None:
    config = tmp_path / "tocsin.yaml"
    config.write_text("store: postgresql://tocsin:hunter2-in-url@db.example/tocsin\n")
    done = upgrade(config, tmp_path)
    assert done.returncode == 2
    assert "store.url: the URL must not hold the password: give it as store.password_file" in done.stderr
    assert "hunter2-in-url" not in done.stderr
