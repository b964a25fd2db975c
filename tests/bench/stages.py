"""Where one event's time goes: the e2e burst, sampled with py-spy, split into the stages of the event path.

The service runs as its own process (as in `scripts/bench e2e`: MQTT QoS 1 → real Mosquitto → tocsin →
log provider). py-spy samples every thread of it during a full-speed burst; each sample is given to the
innermost stage its stack is in:
  - receive:  paho reading and decoding PUBLISH packets (``Client.loop_read``);
  - parse:    the payload's JSON (``parse_payload``);
  - rules:    the rule engine (``RuleEngine.evaluate``);
  - notify:   the notify pipeline's stages and the delivery's outbox row (``Pipeline.handle``);
  - commit:   the journal: buffers handed over on the loop, the transaction in the writer thread, WAL
              checkpoints;
  - ack:      PUBACKs queued and written (``MqttIntake._settle``, ``Client.loop_write``);
  - dispatch: the delivery queue and its workers, outbox settle (``Dispatcher``);
  - provider: the provider's send (the log provider's JSON line here);
  - loop:     everything else on the event loop (the intake's own bookkeeping, callbacks, timers).
Waiting (the selector, idle threads) is not counted.
µs per event = the stage's share of the samples times the process's CPU seconds per event (psutil).
Usage: scripts/bench stages [--burst 30000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.bench.e2e import Service, publisher, run_burst, run_rate
from tests.support import Mosquitto

STAGES = ("receive", "parse", "rules", "notify", "commit", "ack", "dispatch", "provider", "loop")
# Frame name (py-spy's "function (file:line)" without the location) → stage; the innermost match wins.
MARKERS = {
    "Client.loop_read": "receive",
    "parse_payload": "parse",
    "RuleEngine.evaluate": "rules",
    "RuleEngine.tick": "rules",
    "Pipeline.handle": "notify",
    "Journal._run": "commit",
    "Outbox.checkpoint": "commit",
    "Journal.commit": "commit",
    "Journal._start_commit": "commit",
    "MqttIntake._settle": "ack",
    "Client.loop_write": "ack",
    "Dispatcher._work": "dispatch",
    "Dispatcher.submit": "notify",
    "LogProvider.send": "provider",
}
# Innermost frames of a thread that waits (py-spy does not always tell a wait in a syscall from work).
IDLE = frozenset(("Journal._write_loop", "_worker", "EpollSelector.select"))


def stage_of(frames: list[str]) -> str | None:
    """``frames`` root first, as py-spy writes them; None for a thread waiting for work."""
    if not frames or frames[-1].split(" (", 1)[0] in IDLE:
        return None
    for frame in reversed(frames):
        stage = MARKERS.get(frame.split(" (", 1)[0])
        if stage is not None:
            return stage
    return "loop"


def attribute(raw: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the thread
        stage = stage_of(frames)
        if stage is not None:
            counts[stage] += int(n)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--burst", type=int, default=30_000, help="events in the sampled full-speed burst")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--samples", type=Path, help="also keep py-spy's raw samples in this file")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = ap.parse_args()
    if args.smoke:
        args.burst = 2000
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        service = Service(work / "service", broker.port)
        out = work / "samples.txt"
        try:
            service.wait_ready()
            client = publisher(broker.port)
            print("warming up ...", flush=True)
            run_rate(service, client, 1000, 1.0, 0)
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    *("record", "--pid", str(service.proc.pid), "--rate", str(args.rate)),
                    *("--format", "raw", "--output", str(out), "--threads", "--nonblocking"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            # The burst starts once py-spy samples ("py-spy> Sampling process ..."): a short one could be
            # over before py-spy attached, and then there is nothing to record.
            assert spy.stdout is not None
            if b"Sampling process" not in spy.stdout.readline():
                _, err = spy.communicate(timeout=30)
                raise RuntimeError(f"py-spy did not start: {err.decode(errors='replace').strip()}")
            print(f"full speed, sampled: {args.burst} events ...", flush=True)
            burst = run_burst(service, client, args.burst, 2_000_000)
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
            if not out.exists():
                raise RuntimeError(f"py-spy wrote no samples: {err.decode(errors='replace').strip()}")
            client.loop_stop()
            client.disconnect()
        finally:
            service.stop()
            broker.stop()
        raw = out.read_text()
        if args.samples is not None:
            args.samples.write_text(raw)
        counts = attribute(raw)
    total = sum(counts.values())
    if total == 0:
        raise RuntimeError("py-spy recorded no samples of the service")
    per_event_us = burst["cpu_s_per_1k"] * 1000  # CPU µs per event
    figures = {stage: per_event_us * counts[stage] / total for stage in STAGES}
    print(
        f"  {burst['events_per_s']:.0f} events/s, {per_event_us:.1f} µs of service CPU per event,"
        f" {total} samples"
    )
    print(f"  {'stage':<10}{'µs/event':>10}{'share':>8}")
    for stage in STAGES:
        print(f"  {stage:<10}{figures[stage]:>10.1f}{100 * counts[stage] / total:>7.1f}%")
    print(
        json.dumps(
            {
                "events": args.burst,
                "events_per_s": round(burst["events_per_s"]),
                "cpu_us_per_event": round(per_event_us, 1),
                **{f"{stage}_us": round(figures[stage], 1) for stage in STAGES},
                "samples": total,
            }
        )
    )


if __name__ == "__main__":
    main()
