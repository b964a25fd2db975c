"""The ``tocsin`` command: run the service, check a configuration and its rules."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from rules.loader import RuleLoadError, load_rules
from service import __version__
from service.app import Service, rule_paths
from service.cli import api as cli_api
from service.cli import operator, webpush
from service.cli.rules import add_rules_commands
from service.config import Config, ConfigError, load_config
from service.cumulocity.env import PlatformEnv, PlatformEnvError
from service.providers.registry import credential_problems


def _config_path(arg: str | None) -> Path | None:
    value = arg or os.environ.get("TOCSIN_CONFIG")
    return Path(value) if value else None


def _load(arg: str | None) -> Config:
    return load_config(_config_path(arg))


def _load_checked(arg: str | None) -> Config:
    """The configuration, with every enabled provider's credential files read and parsed: a missing or
    malformed key is an error now, with its path, not a degraded provider at the first send."""
    config = _load(arg)
    problems = credential_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def platform_of(config: Config, environ: Mapping[str, str]) -> PlatformEnv | None:
    """The Cumulocity microservice environment when the Cumulocity source is to run; ConfigError when it
    is required (``cumulocity.enabled: on``) and missing, or set only in part."""
    if config.cumulocity.enabled == "off":
        return None
    try:
        platform = PlatformEnv.from_environ(environ)
    except PlatformEnvError as exc:
        raise ConfigError([f"environment: {exc}"]) from None
    if platform is None and config.cumulocity.enabled == "on":
        raise ConfigError(["environment C8Y_BASEURL: cumulocity.enabled is 'on', but C8Y_BASEURL is not set"])
    return platform


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config) if args.skip_credentials else _load_checked(args.config)
        platform = platform_of(config, os.environ)
    except ConfigError as exc:
        print(f"configuration is not valid:\n{exc}", file=sys.stderr)
        return 2
    try:
        ruleset = load_rules(rule_paths(config, platform is not None))
    except RuleLoadError as exc:
        print(f"rules are not valid:\n{exc}", file=sys.stderr)
        return 2
    source = _config_path(args.config) or "embedded defaults"
    print(
        f"ok: configuration {source}, {len(ruleset.rules)} rules "
        f"({', '.join(str(p) for p in rule_paths(config, platform is not None))})"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = _load_checked(args.config)
        logging.basicConfig(
            level=config.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        platform = platform_of(config, os.environ)
        if _config_path(args.config) is None:
            logging.getLogger("tocsin").info("no configuration given: running on embedded defaults")
        return asyncio.run(_run(config, platform))
    except ConfigError as exc:
        print(f"configuration is not valid, not starting:\n{exc}", file=sys.stderr)
        return 2
    except RuleLoadError as exc:
        print(f"rules are not valid, not starting:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _run(config: Config, platform: PlatformEnv | None) -> int:
    async with Service(config, platform=platform) as service:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop)
        loop.add_signal_handler(signal.SIGHUP, service.reload_rules)
        await service.wait()
        logging.getLogger("tocsin").info("stopping")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tocsin", description="IoT events to push notifications.")
    parser.add_argument("--version", action="version", version=f"tocsin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the service (embedded defaults when no configuration is given)")
    run.add_argument("--config", "-c", help="YAML configuration file (or TOCSIN_CONFIG), e.g. -c tocsin.yaml")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a configuration and its rules without starting")
    check.add_argument("config", nargs="?", help="YAML configuration file (or TOCSIN_CONFIG)")
    check.add_argument(
        "--skip-credentials",
        action="store_true",
        help="do not read the credential files it names (an example, or a file for another machine)",
    )
    check.set_defaults(func=cmd_check)
    add_rules_commands(sub)
    cli_api.add_commands(sub, _load)
    operator.add_commands(sub, _load)
    webpush.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command in ("registrations", "push", "alerts", "ack", "silence", "report", "cluster"):
        return cli_api.run(args)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
