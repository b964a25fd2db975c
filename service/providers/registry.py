"""Which providers run: the log provider always, APNs when apps are configured, FCM with a service account."""

from __future__ import annotations

from service.config import Config
from service.providers.apns import ApnsProvider
from service.providers.base import Provider
from service.providers.fcm import FcmProvider
from service.providers.log import LogProvider


def build_providers(config: Config) -> dict[str, Provider]:
    providers: dict[str, Provider] = {"log": LogProvider(config.providers.log)}
    if config.providers.apns.apps:
        providers["apns"] = ApnsProvider(config.providers.apns)
    if config.providers.fcm.configured:
        providers["fcm"] = FcmProvider(config.providers.fcm)
    return providers
