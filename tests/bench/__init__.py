"""Benchmarks, run as ``scripts/bench NAME``: each prints what it measured and ends with one line of its
figures as a json object (never timed assertions in tests)."""
