"""Benchmarks, run as ``scripts/bench NAME``: each prints what it measured and ends with one JSON line of its
figures (never timed assertions in tests)."""
