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
    "e2e": {"qos", "max_events_per_s", "cpu_s_per_1k_events", "rate_1k_p99_ms"},
    "e2e_apns": {"qos", "max_events_per_s", "cpu_s_per_1k_events", "rate_1k_p99_ms"},
    "transports": {"h2_requests_per_s", "h2_cpu_us_per_request", "aioapns_requests_per_s"},
    "rules": {"evaluations_per_s", "added_latency_us"},
    "registry": {"upserts_per_s", "first_batch_ms", "peak_rss_mb"},
    "outage": {"delivered", "drain_after_outage_s"},
    "cumulocity": {"alarms_per_s", "p99_ms", "created_per_s"},
    "failover": {"register_then_kill"},
    "stages": {"events_per_s", "cpu_us_per_event", "samples"},
    "clients": {"messages", "tocsin", "paho", "gmqtt", "aiomqtt"},
}
HOSTILE = {"good_events", "notified", "malformed_counted", "peak_rss_mb", "loop_stall_max_ms"}


RUNS = [(name, ()) for name in sorted(EXPECTED)] + [("registry", ("--store", "postgresql"))]


@pytest.mark.parametrize(("name", "options"), RUNS, ids=[" ".join((n, *o)) for n, o in RUNS])
def test_benchmark_smoke_size_ends_with_its_json_line(name: str, options: tuple[str, ...]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{name}", "--smoke", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert EXPECTED[name] <= set(figures), figures
    assert all(
        (isinstance(figures[k], int | float) and figures[k] > 0)
        or (isinstance(figures[k], dict) and figures[k])
        for k in EXPECTED[name]
    )


def test_kill9_and_sigterm_mid_stream_lose_nothing() -> None:
    """The short version of `scripts/bench crash`: one kill -9 and one SIGTERM half way through a QoS 1
    stream of numbered events; every event is notified, SIGTERM repeats none, kill -9 repeats at most what
    the restarted service found pending (sends that may have left before the kill)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.crash", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["kill9_lost"] == 0 and figures["sigterm_lost"] == 0, done.stdout
    assert figures["sigterm_duplicates"] == 0, done.stdout
    assert figures["kill9_duplicates"] <= figures["kill9_in_flight"], done.stdout
    assert "did not log 'stopped'" not in done.stdout


def test_receivers_fanout_smoke_reports_each_provider() -> None:
    """``scripts/bench fanout --providers webpush,webhook --smoke``: figures per provider, every one sent."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.fanout", "--providers", "webpush,webhook", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for provider in ("webpush", "webhook"):
        got = figures[provider]
        assert {"notifications_per_s", "cpu_us_per_notification"} <= set(got), figures
        assert got["n"] == 200 and got["notifications_per_s"] > 0 and got["cpu_us_per_notification"] > 0


def test_hostile_input_loses_no_good_event_and_counts_every_malformed_one() -> None:
    """The short version of `scripts/bench hostile`: every good message notified once, its template syntax
    arriving as text, every malformed one counted (figures of time and memory are the benchmark's)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.hostile", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(figures) >= HOSTILE and figures["peak_rss_mb"] > 0, figures
    assert figures["notified"] == figures["good_events"] > 0, done.stdout
    assert figures["malformed_counted"] == figures["malformed_sent"] > 0, done.stdout
