"""A service with the webhook and Web Push receivers configured against their fakes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from service.app import Service
from service.providers import vapid
from service.providers.log import LogProvider
from service.providers.registry import build_providers
from tests.conftest import Printed
from tests.fakes.webhook_receiver import FakeWebhookReceiver
from tests.fakes.webpush import FakeWebPush
from tests.integration.conftest import KEYS

SECRET = os.urandom(24).hex().encode()
HOME_RULES = Path(__file__).resolve().parents[1] / "deploy" / "rules" / "home.yaml"


def receiver_env(tmp_path: Path, push: FakeWebPush, hook: FakeWebhookReceiver) -> dict[str, str]:
    key = tmp_path / "vapid.pem"
    vapid.generate(key)
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    return {
        "TOCSIN_API__KEYS": KEYS,
        "TOCSIN_RULES__PATHS": json.dumps([str(HOME_RULES)]),
        "TOCSIN_PROVIDERS__WEBPUSH__VAPID_PRIVATE_KEY_PATH": str(key),
        "TOCSIN_PROVIDERS__WEBPUSH__SUBJECT": "mailto:ops@example.com",
        "TOCSIN_PROVIDERS__WEBPUSH__ALLOWED_HOSTS": json.dumps([push.host]),
        "TOCSIN_PROVIDERS__WEBPUSH__CA_FILE": str(push.ca_file),
        "TOCSIN_PROVIDERS__WEBHOOK__SECRET_PATH": str(secret),
        "TOCSIN_PROVIDERS__WEBHOOK__ALLOWED_HOSTS": json.dumps([hook.host]),
        "TOCSIN_PROVIDERS__WEBHOOK__CA_FILE": str(hook.ca.cert),
    }


async def start_with_receivers(config: Any) -> tuple[Service, Printed]:
    """The service with the providers its configuration builds (the log provider printing to a buffer)."""
    printed = Printed()
    providers = {**build_providers(config), "log": LogProvider(config.providers.log, stream=printed.stream)}
    service = Service(config, providers=providers)
    await service.__aenter__()
    return service, printed
