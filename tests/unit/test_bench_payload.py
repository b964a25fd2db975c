"""The payload benchmark at its smoke size, so the suite keeps it working (no timed assertions)."""

from __future__ import annotations

from tests.bench.payload import CASES, bench


def test_the_benchmark_measures_every_parser_and_nothing_escapes() -> None:
    said: list[str] = []
    figures = bench(0.001, said.append)
    assert len(said) == len([k for k in figures if k.endswith("_us")]) >= 2 * len(CASES)
    assert not [k for k, v in figures.items() if isinstance(v, str) and v.startswith("escaped")]
    hostile = [c for c in CASES if c not in ("typical_100B", "text_ON", "array_10KB")]
    assert all(figures[f"orjson_{c}"] == "refused" for c in hostile)
    assert all(figures[f"orjson_{c}_us"] > 0 for c in CASES)
