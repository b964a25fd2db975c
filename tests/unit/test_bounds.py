"""Every map of the event path has a bound (issue 14, "Bounds"): tracked devices per rule, change-rule
values, the timer heap, open alerts, cooldowns, rate-limit windows, the dedup log, waiting deliveries."""

from __future__ import annotations

from pathlib import Path

from registrations.model import Registration
from registrations.sqlite_store import SqliteRegistrationStore
from rules.engine import EngineState, RuleEngine, compile_rules
from rules.event import Event
from rules.loader import parse_rule_text
from rules.state_codec import dump_alert, restore
from service.clock import SystemClock
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery
from service.notify.noise import Cooldown, NoiseControl, RateLimit
from service.notify.pipeline import to_notification
from service.notify.stages import NotificationLog
from service.outbox import Outbox
from service.providers.base import Outcome, Retry
from tests.push_support import notification
from tests.support import wait_until

AUD = "    audience: {tags: [home]}\n"
ABSENT = "rules:\n  - id: gone\n    topic: d/{device}/up\n    absent: {for: 1h}\n    title: t\n" + AUD
CHANGE = (
    "rules:\n  - id: door\n    topic: d/{device}/door\n    change: {value: state, to: [open]}\n    title: t\n"
    + AUD
)
BELL = "rules:\n  - id: bell\n    topic: b/{room}\n    title: ring\n    audience: {tags: [home]}\n"


def engine(text: str, limit: int, evicted: list[tuple[str, int]] | None = None) -> RuleEngine:
    rules, errors = parse_rule_text(text, "t.yaml")
    assert errors == [], errors
    hook = (lambda rule, n: evicted.append((rule, n))) if evicted is not None else None
    return RuleEngine(compile_rules(rules), max_tracked=limit, on_evict=hook)


def see(e: RuleEngine, state: EngineState, topic: str, now: float, payload: object = "1") -> list[object]:
    _, out = e.evaluate(Event(f"{topic}@{now}", "mqtt", topic, None, now, payload), state, now)
    return list(out)


def devices(state: EngineState) -> list[str]:
    return sorted(a.labels["device"] for a in state.alerts.values())


def test_an_absence_rule_forgets_its_least_recently_seen_device_at_the_limit() -> None:
    evicted: list[tuple[str, int]] = []
    e, state = engine(ABSENT, 3, evicted), EngineState()
    for i, dev in enumerate(["a", "b", "c", "a", "d", "e"]):  # 'a' seen again: 'b' is then the oldest
        see(e, state, f"d/{dev}/up", float(i))
    assert devices(state) == ["a", "d", "e"]
    assert state.evicted == {"gone": 2} and evicted == [("gone", 3), ("gone", 3)]
    assert len(state.tracked["gone"]) == 3
    # a forgotten device's alert is marked for the store to delete, and its stale timer never fires
    assert len([aid for aid in state.touched if aid not in state.alerts]) == 2
    _, fired = e.tick(state, 10_000.0)
    assert sorted(t.labels["device"] for t in fired) == ["a", "d", "e"]


def test_change_rule_values_are_bounded_per_rule() -> None:
    e, state = engine(CHANGE, 10, []), EngineState()
    for i in range(50):
        see(e, state, f"d/{i}/door", float(i), {"state": "closed"})
    assert len(state.values) == 10 and state.evicted == {"door": 40}
    assert see(e, state, "d/49/door", 60.0, {"state": "open"})  # the most recent device still changes


def test_the_timer_heap_does_not_grow_with_the_events_of_one_device() -> None:
    e, state = engine(ABSENT, 100, []), EngineState()
    for i in range(20_000):
        see(e, state, "d/a/up", float(i))
    assert len(state.alerts) == 1 and len(state.timers) <= 2 * 1 + 1024 + 1


def test_a_restored_state_keeps_the_order_devices_were_seen_in() -> None:
    e, state = engine(ABSENT, 3, []), EngineState()
    for i, dev in enumerate(["c", "a", "b"]):
        see(e, state, f"d/{dev}/up", float(i))
    stored = {aid: dump_alert(a) for aid, a in reversed(list(state.alerts.items()))}
    again = restore(stored, {"v-orphan": "on"}, {"gone"})
    assert list(again.tracked["gone"]) == list(state.tracked["gone"])
    see(e, again, "d/z/up", 10.0)
    assert devices(again) == ["a", "b", "z"]  # 'c' was the least recently seen before the restart
    assert list(again.tracked[""]) == ["v-orphan"]


def test_event_rule_alerts_are_not_open_alerts() -> None:
    e, state, noise = engine(BELL, 10), EngineState(), NoiseControl()
    for t in see(e, state, "b/hall", 0.0):
        noise.before_target(to_notification(t, 0.0), 0.0)  # type: ignore[arg-type]
    assert dict(noise.open_alerts()) == {}


def test_an_event_rule_with_escalation_is_open_until_its_last_step() -> None:
    rules = BELL + "    escalate:\n      - {after: 10m, audience: {tags: [boss]}}\n"
    e, state, noise = engine(rules, 10), EngineState(), NoiseControl()
    for t in see(e, state, "b/hall", 0.0):
        noise.before_target(to_notification(t, 0.0), 0.0)  # type: ignore[arg-type]
    assert len(noise.open_alerts()) == 1  # acknowledgeable: an acknowledgement stops the escalation
    assert [n.audience.tags for n in noise.due(600.0).notifications] == [("boss",)]
    assert dict(noise.open_alerts()) == {}


def test_an_alert_the_rules_forgot_without_a_notice_is_no_longer_open() -> None:
    text = "rules:\n  - id: hot\n    topic: t/{room}\n    threshold: {above: 5}\n    resolve_notice: false\n"
    e, state, noise = engine(text + "    title: t\n" + AUD, 10), EngineState(), NoiseControl()
    noise.acks.live = lambda aid: aid in state.alerts
    for t in see(e, state, "t/a", 0.0, 9):
        noise.before_target(to_notification(t, 0.0), 0.0)  # type: ignore[arg-type]
    assert len(noise.open_alerts()) == 1
    assert see(e, state, "t/a", 1.0, 1) == []  # cleared, without a resolve notice
    assert dict(noise.open_alerts()) == {}


def test_cooldowns_rate_limit_windows_and_the_dedup_log_are_bounded() -> None:
    cooldown = Cooldown(max_entries=1000)
    rules, _ = parse_rule_text(BELL + "    cooldown: 1m\n", "t.yaml")
    e = RuleEngine(compile_rules(rules))
    for i in range(5000):
        for t in see(e, EngineState(), f"b/{i}", float(i)):
            cooldown.admit(to_notification(t, float(i)), float(i))  # type: ignore[arg-type]
    assert len(cooldown._last) <= 1000

    limit = RateLimit(1, 10.0)
    n = notification("n")
    for i in range(50_000):
        limit.allows(n, Registration("log", f"tok{i}"), float(i))  # each window ends, nothing held
    assert len(limit) <= 20_001

    log = NotificationLog(3600.0, max_entries=1000)
    for i in range(5000):
        log.record(f"n{i}", 0.0)
    assert len(log) == 1000 and not log.seen("n0", 1.0) and log.seen("n4999", 1.0)


async def test_deliveries_waiting_for_a_retry_are_bounded_and_the_rest_fail_counted(tmp_path: Path) -> None:
    class Down:
        name, degraded = "log", None

        async def send(self, delivery: Delivery) -> Outcome:
            return Retry("down", after=3600.0)

        def credential_for(self, registration: Registration) -> str:
            return ""

        async def close(self) -> None:
            pass

    store = SqliteRegistrationStore(tmp_path / "r.db")
    outbox = Outbox(tmp_path / "r.db")
    metrics = Metrics()
    d = Dispatcher({"log": Down()}, store, metrics, SystemClock(), outbox=outbox, workers=2, max_waiting=5)
    d.start()
    try:
        for i in range(8):
            reg = await store.upsert(Registration("log", f"t{i}"), 0.0)
            await d.submit(Delivery(notification(f"nid-{i}", ttl=86_400.0), reg))
        await wait_until(lambda: metrics.notifications.get("log", "overflow") == 3, 5, "the overflow")
        assert d.waiting == 5
        await outbox.settle()
        reports = [outbox.report(f"nid-{i}") or {} for i in range(8)]
        assert sum(r["failed"].get("overflow", 0) for r in reports) == 3, reports
    finally:
        await d.stop()
        outbox.close()
        await store.close()
