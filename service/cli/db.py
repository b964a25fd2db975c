"""``tocsin db upgrade``: bring the registrations store's schema up to date (the service also does at start).

For PostgreSQL this is the step to run once before rolling out a new version to several instances."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from registrations.pg_store import PgRegistrationStore, SchemaTooNew
from registrations.sqlite_store import MIGRATIONS, SqliteRegistrationDb
from registrations.store import StoreUnavailable
from service.config import Config, ConfigError


def add_commands(sub: Any, load: Callable[[str | None], Config]) -> None:
    db = sub.add_parser("db", help="the registrations store's schema")
    actions = db.add_subparsers(dest="action", required=True)
    upgrade = actions.add_parser(
        "upgrade", help="apply the migrations not applied yet, then print the version"
    )
    upgrade.add_argument("--config", "-c", help="YAML configuration file (or TOCSIN_CONFIG)")
    upgrade.set_defaults(func=lambda args: cmd_upgrade(args, load))


def cmd_upgrade(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"configuration is not valid:\n{exc}", file=sys.stderr)
        return 2
    try:
        if config.store.url is not None:
            version, where = asyncio.run(_upgrade_postgresql(config)), "PostgreSQL"
        else:
            db = SqliteRegistrationDb(config.store_path)  # opening migrates
            version, where = db.schema_version, str(config.store_path)
            db.close()
            if version > len(MIGRATIONS):
                raise SchemaTooNew(f"the database's schema is at version {version}, newer than this tocsin")
    except (StoreUnavailable, SchemaTooNew) as exc:
        print(f"db upgrade failed: {exc}", file=sys.stderr)
        return 1
    print(f"registrations schema at version {version} ({where})")
    return 0


async def _upgrade_postgresql(config: Config) -> int:
    password = config.store.password.get_secret_value() if config.store.password else None
    assert config.store.url is not None
    store = PgRegistrationStore(config.store.url, password, pool_size=1)
    try:
        await store.open()  # connects and migrates
        return await store.schema_version()
    finally:
        await store.close()
