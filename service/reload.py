"""Rule reloads: on SIGHUP and when a rule file changes. A broken new rule set is refused with its errors and
the running one stays."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from rules.loader import rule_files

log = logging.getLogger("tocsin.rules")
Signature = tuple[tuple[str, int, int], ...]


def signature(paths: Iterable[Path]) -> Signature:
    """What changes when a rule file is added, removed or edited (name, mtime, size)."""
    out = []
    for f in rule_files(list(paths)):
        try:
            st = f.stat()
        except OSError:
            out.append((str(f), -1, -1))
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


async def watch(paths: list[Path], interval: float, on_change: Callable[[], object]) -> None:
    """Polls the rule files every ``interval`` seconds and calls ``on_change`` after a change (portable, and
    cheap for a handful of files; inotify would add a dependency for no gain here)."""
    seen = signature(paths)
    while True:
        await asyncio.sleep(interval)
        now = signature(paths)
        if now != seen:
            seen = now
            try:
                on_change()
            except Exception:
                log.exception("reloading rules failed")
