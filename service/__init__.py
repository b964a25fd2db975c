"""The running service: config, sources, cluster, notify stages, outbox, providers, HTTP API, CLI."""

__version__ = "0.1.0"
