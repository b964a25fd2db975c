"""The Cumulocity benchmark's core with tiny numbers, so the suite keeps it working (no timed assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.cumulocity import bench


@pytest.mark.parametrize("register_by", ["api", "inventory"])
async def test_the_benchmark_matches_every_alarm_to_its_push(tmp_path: Path, register_by: str) -> None:
    said: list[str] = []
    figures = await bench(
        tenants=3, rate=20, seconds=0.5, grace=10, workdir=tmp_path, say=said.append, register_by=register_by
    )
    assert figures["tenants"] == 3 and figures["alarms"] == 10
    assert figures["lost"] == 0 and figures["duplicates"] == 0 and figures["misrouted"] == 0
    assert figures["errors"] == 0
    assert figures["p99_ms"] > 0 and figures["alarms_per_s"] > 0
    assert (tmp_path / "latencies.csv").read_text().count("\n") == 11
    assert any("created 10 alarms" in line for line in said)
