"""Benchmarks that cannot rot: each one's ``--smoke`` size runs here as a subprocess and must end with its
JSON line of figures (no timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "fanout": {"notifications_per_s", "cpu_us_per_notification", "aioapns_notifications_per_s"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_smoke_size_ends_with_its_json_line(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{name}", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert EXPECTED[name] <= set(figures), figures
    assert all(isinstance(figures[k], int | float) and figures[k] > 0 for k in EXPECTED[name])
