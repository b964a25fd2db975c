"""The ``tocsin`` command: ``commands`` (run, check, the parser), ``rules`` (rules check|test) and ``api``
(clients of a running service's HTTP API)."""

from service.cli.commands import main, platform_of

__all__ = ["main", "platform_of"]
