"""Rule engine benchmark: 1,000 rules, a realistic mix of topics, one core, no I/O.

Rules: 400 event rules with payload conditions (doorbells, buttons, leaks) over 40 sites, 300 thresholds
with ``for`` and hysteresis, 150 absence rules, 100 state-change rules, 50 Cumulocity alarm rules. Events:
device topics drawn from 20,000 distinct topics, a fifth of them on topics no rule watches; timers are
run when one is due, as the service's timer task does. A tenth of button messages are presses (the rest
are status reports; ``--firing`` changes that); with thresholds, absence, crashes and alarms about one event
in six opens or closes an alert. Measures evaluations/s (events through ``evaluate`` and
``tick``) and the latency each event adds (mean and p99 of one evaluation).
Usage: scripts/bench rules [--events 200000]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time

from rules.cumulocity import alarm_topic
from rules.engine import EngineState, RuleEngine, compile_rules
from rules.event import Event
from rules.loader import parse_rule_text

SITES = 40


def rules_yaml() -> str:
    out = ["rules:"]
    aud = "    audience: {tags: [ops]}"
    for i in range(400):
        site, kind = i % SITES, ("doorbell", "button", "leak", "smoke")[i // SITES % 4]
        n = i // (SITES * 4)
        out += [
            f"  - id: ev-{i}",
            f"    topic: site{site}/{{room}}/{kind}{n}",
            "    when: {event: {in: [ring, press, wet, alarm]}, battery: {gt: 5}}",
            f"    title: '{kind} in {{{{ room }}}}'",
            "    body: 'at site " + str(site) + " ({{ room }})'",
            aud,
        ]
    for i in range(300):
        out += [
            f"  - id: th-{i}",
            f"    topic: fleet{i % 30}/{{host}}/metric{i // 30}",
            "    threshold: {value: value, above: 90, clear: 80, for: 2m}",
            "    title: '{{ host }} hot'",
            aud,
        ]
    for i in range(150):
        out += [
            f"  - id: ab-{i}",
            f"    topic: beat{i}/{{device}}/heartbeat",
            "    absent: {for: 5m}",
            "    title: '{{ device }} missing'",
            aud,
        ]
    for i in range(100):
        out += [
            f"  - id: ch-{i}",
            f"    topic: proc{i}/{{host}}/{{name}}",
            "    change: {value: state, from: [running], to: [crashed]}",
            "    title: '{{ name }} crashed'",
            aud,
        ]
    for i in range(50):
        out += [
            f"  - id: al-{i}",
            f"    topic: cumulocity/{{tenant}}/alarm/{{device}}/c8y_Type{i}",
            "    alarm: {severity: [CRITICAL, MAJOR]}",
            "    title: '{{ type }}'",
            aud,
        ]
    return "\n".join(out) + "\n"


def make_events(n: int, rng: random.Random, firing: float = 0.1) -> list[tuple[str, object]]:
    """``firing``: the share of button/doorbell messages that are presses (the rest are status reports)."""
    topics: list[tuple[str, str]] = []
    for i in range(20_000):
        r = i % 10
        if r < 3:
            site, kind = rng.randrange(SITES), rng.choice(("doorbell", "button", "leak", "smoke"))
            topics.append((f"site{site}/room{i % 7}/{kind}{rng.randrange(3)}", "event"))
        elif r < 5:
            topics.append((f"fleet{rng.randrange(30)}/h{i}/metric{rng.randrange(10)}", "metric"))
        elif r < 6:
            topics.append((f"beat{rng.randrange(150)}/d{i}/heartbeat", "beat"))
        elif r < 7:
            topics.append((f"proc{rng.randrange(100)}/h{i % 50}/svc{i % 9}", "proc"))
        elif r < 8:
            topics.append((alarm_topic("t1", str(i), f"c8y_Type{rng.randrange(60)}"), "alarm"))
        else:
            topics.append((f"telemetry/{i}/temperature", "other"))  # no rule watches these
    events: list[tuple[str, object]] = []
    for _ in range(n):
        topic, kind = rng.choice(topics)
        payload: object
        if kind == "event":
            pressed = rng.random() < firing
            payload = {
                "event": rng.choice(("ring", "press")) if pressed else "idle",
                "battery": rng.randrange(100),
            }
        elif kind == "metric":
            payload = {"value": rng.randrange(60, 100)}
        elif kind == "beat":
            payload = {"uptime": rng.randrange(10**6)}
        elif kind == "proc":
            payload = {"state": rng.choice(("running", "running", "running", "crashed"))}
        elif kind == "alarm":
            payload = {
                "type": topic.rsplit("/", 1)[1],
                "severity": rng.choice(("CRITICAL", "MAJOR", "MINOR")),
                "status": rng.choice(("ACTIVE", "ACTIVE", "CLEARED")),
                "text": "x",
                "source": {"id": "1"},
            }
        else:
            payload = {"t": rng.random() * 30}
        events.append((topic, payload))
    return events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--firing", type=float, default=0.1, help="share of button messages that are presses")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = parser.parse_args()
    if args.smoke:
        args.events = 2000
    rules, errors = parse_rule_text(rules_yaml(), "bench.yaml")
    assert not errors, errors[:3]
    ruleset = compile_rules(rules)
    print(f"{len(ruleset.rules)} rules, {len(ruleset.subscriptions())} subscriptions", flush=True)
    rng = random.Random(7)
    raw = make_events(args.events, rng, args.firing)
    events = [
        Event(f"e{i}", "mqtt", topic, None, 1_700_000_000.0 + i * 0.01, p) for i, (topic, p) in enumerate(raw)
    ]

    engine = RuleEngine(ruleset)
    # warm-up: the per-topic caches fill as they do in a running service (then a fresh alert state)
    warm = EngineState()
    for e in events[: min(len(events), 50_000)]:
        warm, _ = engine.tick(warm, e.time)
        warm, _ = engine.evaluate(e, warm, e.time)
    state = EngineState()
    gc.collect()
    transitions = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for e in events:
        # as in the service: timers run when one is due (its timer task), every event is evaluated
        if state.timers and state.timers[0][0] <= e.time:
            state, fired = engine.tick(state, e.time)
            transitions += len(fired)
        state, out = engine.evaluate(e, state, e.time)
        transitions += len(out)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU time, not wall time: on a shared machine the wall clock also counts other processes' turns
    rate = len(events) / cpu

    samples = []
    clock = time.perf_counter_ns
    for e in events[:50_000]:
        a = clock()
        if state.timers and state.timers[0][0] <= e.time:
            state, _ = engine.tick(state, e.time)
        state, _ = engine.evaluate(e, state, e.time)
        samples.append((clock() - a) / 1000)
    samples.sort()
    mean = statistics.fmean(samples)
    p99 = samples[int(len(samples) * 0.99)]
    print(
        f"{len(events)} events in {elapsed:.2f} s wall, {cpu:.2f} s CPU: "
        f"{rate:,.0f} evaluations/s on one core ({len(events) / elapsed:,.0f}/s by the wall clock), "
        f"{transitions} transitions, {len(state.alerts)} open alerts"
    )
    print(
        "wall-clock time per event (includes waiting for the CPU on a shared machine): "
        f"mean {mean:.1f} us, p50 {samples[len(samples) // 2]:.1f} us, p99 {p99:.1f} us"
    )
    cpu_us = cpu / len(events) * 1e6
    print(f"CPU per event: {cpu_us:.1f} us (the latency an event adds on an idle core)")
    print(json.dumps({"evaluations_per_s": round(rate), "added_latency_us": round(cpu_us, 2)}))


if __name__ == "__main__":
    main()
