"""Noise control stages on simulated time: each decision is checked at the moment it is made."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from registrations.model import Audience, Registration
from rules.engine import EngineState, RuleEngine, Transition, compile_rules
from rules.event import Event
from rules.loader import parse_rule_text
from service.notify.model import Notification
from service.notify.noise import NoiseControl, QuietHours, RateLimit, Silence
from service.notify.pipeline import to_notification


def engine_for(yaml_text: str) -> RuleEngine:
    rules, errors = parse_rule_text(yaml_text, "t.yaml")
    assert errors == [], errors
    return RuleEngine(compile_rules(rules))


class Sim:
    """Events through the engine and the noise stages, with due work collected at each step."""

    def __init__(self, rules: str, **noise: object) -> None:
        self.engine, self.state = engine_for(rules), EngineState()
        self.noise = NoiseControl(**noise)  # type: ignore[arg-type]
        self.sent: list[tuple[float, Notification]] = []

    def _admit(self, ts: list[Transition], now: float) -> None:
        for t in ts:
            for n in self.noise.before_target(to_notification(t, now), now):
                self.sent.append((now, n))

    def until(self, now: float) -> None:
        while (d := self.noise.next_deadline()) is not None and d <= now:
            due = self.noise.due(d)
            self.sent += [(d, n) for n in due.notifications]
            self.sent += [(d, n) for n, _ in due.deliveries]
        self.state, fired = self.engine.tick(self.state, now)
        self._admit(fired, now)

    def event(self, topic: str, payload: object, now: float) -> None:
        self.until(now)
        self.state, out = self.engine.evaluate(
            Event(f"{topic}@{now}", "mqtt", topic, None, now, payload), self.state, now
        )
        self._admit(out, now)


AUD = "    audience: {tags: [home]}\n"


def test_cooldown_holds_back_repeat_rings() -> None:
    sim = Sim("rules:\n  - id: bell\n    topic: d/{room}\n    cooldown: 1m\n    title: ring\n" + AUD)
    for t in (0, 10, 20, 59, 61, 100, 130):
        sim.event("d/back" if t == 20 else "d/front", "x", t)  # 'back' is another alert: its own cooldown
    assert [(t, n.labels["room"]) for t, n in sim.sent] == [
        (0, "front"),
        (20, "back"),
        (61, "front"),
        (130, "front"),
    ]
    assert sim.noise.suppressed == {"cooldown": 3}


def test_repeat_until_resolved_and_acknowledgement_stops_repeats() -> None:
    rules = (
        "rules:\n  - id: leak\n    topic: l/{room}\n    threshold: {above: 0}\n    repeat: 10m\n"
        "    title: 'leak {{ room }}'\n" + AUD
    )
    sim = Sim(rules)
    sim.event("l/cellar", 1, 0)
    sim.event("l/attic", 1, 0)
    sim.until(25 * 60)
    cellar = next(n for n in sim.noise.open_alerts().values() if n.labels["room"] == "cellar")
    assert sim.noise.ack(cellar.alert_id, "ann", "on it", 25 * 60) is not None
    sim.event("l/attic", 0, 35 * 60)  # resolved
    sim.until(3600)
    got = [(t / 60, n.labels["room"], n.state) for t, n in sim.sent]
    assert got == [
        (0, "cellar", "firing"),
        (0, "attic", "firing"),
        (10, "cellar", "firing"),
        (10, "attic", "firing"),
        (20, "cellar", "firing"),
        (20, "attic", "firing"),
        (30, "attic", "firing"),  # cellar acknowledged at 25
        (35, "attic", "resolved"),
    ]
    assert len({n.nid for _, n in sim.sent}) == len(sim.sent)  # each repeat is its own notification


def test_escalation_chain_unless_acknowledged() -> None:
    rules = (
        "rules:\n  - id: pump\n    topic: p/{n}\n    severity: critical\n    title: 'pump {{ n }}'\n"
        "    audience: {tags: [a]}\n"
        "    escalate:\n      - {after: 10m, audience: {tags: [b]}}\n"
        "      - {after: 30m, audience: {users: [boss]}}\n"
    )
    sim = Sim(rules)
    sim.event("p/1", "down", 0)
    sim.event("p/2", "down", 0)
    sim.until(15 * 60)
    p2 = next(n for n in sim.noise.open_alerts().values() if n.labels["n"] == "2")
    sim.noise.ack(p2.alert_id, "bob", "", 15 * 60)
    sim.until(3600)
    got = [(t / 60, n.labels["n"], n.audience) for t, n in sim.sent]
    assert got == [
        (0, "1", Audience(tags=("a",))),
        (0, "2", Audience(tags=("a",))),
        (10, "1", Audience(tags=("b",))),
        (10, "2", Audience(tags=("b",))),
        (30, "1", Audience(users=("boss",))),
    ]


def test_grouping_sends_one_notification_per_group_after_the_wait() -> None:
    rules = (
        "rules:\n  - id: offline\n    topic: s/{room}/{sensor}\n    change: {to: [offline]}\n"
        "    group: {by: [room], wait: 30s, title: '{{ count }} sensors offline in the {{ room }}',"
        ' body: "{% for a in alerts %}{{ a.labels.sensor }} {% endfor %}"}\n'
        "    title: '{{ sensor }} offline'\n" + AUD
    )
    sim = Sim(rules)
    for s in ("t1", "t2", "t3"):
        sim.event(f"s/cellar/{s}", "online", 0)
        sim.event(f"s/cellar/{s}", "offline", 5 + int(s[1]))
    sim.event("s/attic/h1", "online", 0)
    sim.event("s/attic/h1", "offline", 20)
    sim.until(100)
    got = [(t, n.title, n.body, n.count) for t, n in sim.sent]
    assert got == [
        (36, "3 sensors offline in the cellar", "t1 t2 t3 ", 3),
        (50, "h1 offline", "", 1),  # a group of one goes out as it is
    ]


def reg(tz: str | None, rid: str = "r1") -> Registration:
    return Registration("log", "tok", user_id="ann", timezone=tz, id=rid)


def n_of(rules: str, topic: str = "x") -> Notification:
    e = engine_for(rules)
    _, [t] = e.evaluate(Event("e", "mqtt", topic, None, 0, 1), EngineState(), 0)
    return to_notification(t, 0)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_quiet_hours_in_the_recipients_time_zone_with_override_for_critical() -> None:
    qh = QuietHours("22:00", "07:00", "UTC")
    plain = n_of("rules:\n  - id: a\n    topic: x\n    title: t\n" + AUD)
    critical = n_of(
        "rules:\n  - id: b\n    topic: x\n    severity: critical\n    quiet_hours: {override: true}\n"
        "    title: t\n" + AUD
    )
    now = at("2024-05-01T21:30:00")  # 21:30 UTC = 23:30 in Berlin (summer), 14:30 in Los Angeles
    assert qh.allows(plain, reg("America/Los_Angeles"), now)
    assert not qh.allows(plain, reg("Europe/Berlin"), now)
    assert qh.allows(plain, reg(None), now)  # UTC default: 21:30 is not quiet yet
    assert not qh.allows(plain, reg(None), at("2024-05-01T06:59:00"))
    assert qh.allows(plain, reg("Not/AZone"), now)  # unknown zone: the default
    assert qh.allows(critical, reg("Europe/Berlin"), now)


def test_silence_matches_labels_and_regex_within_its_time() -> None:
    rules = "rules:\n  - id: bell\n    topic: d/{room}\n    title: ring\n" + AUD
    sim = Sim(rules)
    sim.noise.silences.add(Silence({"rule": "bell", "room": "~^(front|back)$"}, 10, 20, "party"))
    for t, room in ((5, "front"), (12, "front"), (13, "back"), (14, "side"), (25, "back")):
        sim.event(f"d/{room}", "x", t)
    assert [(t, n.labels["room"]) for t, n in sim.sent] == [(5, "front"), (14, "side"), (25, "back")]
    assert sim.noise.suppressed == {"silence": 2}


def test_rate_limit_per_recipient_ends_with_one_summary() -> None:
    rl = RateLimit(3, 60)
    n = n_of("rules:\n  - id: a\n    topic: x\n    title: t\n" + AUD)
    ann, bob = reg(None, "ann"), reg(None, "bob")
    allowed = [rl.allows(n, ann, t) for t in range(10)]
    assert allowed == [True] * 3 + [False] * 7
    assert rl.allows(n, bob, 5)  # per recipient
    assert rl.due(59) == []
    [(summary, to)] = rl.due(60)
    assert (to.id, summary.title, summary.count) == ("ann", "… and 7 more", 7)
    assert rl.allows(n, ann, 61) and rl.next_deadline() is None


def test_a_rules_own_quiet_hours_replace_the_configured_ones() -> None:
    own = n_of(
        "rules:\n  - id: a\n    topic: x\n    quiet_hours: {start: '12:00', end: '13:00'}\n    title: t\n"
        + AUD
    )
    plain = n_of("rules:\n  - id: b\n    topic: x\n    title: t\n" + AUD)
    noise = NoiseControl()  # no configured quiet hours
    berlin = reg("Europe/Berlin")
    assert not noise.for_recipient(own, berlin, at("2024-01-10T11:30:00"))  # 12:30 in Berlin (winter)
    assert noise.for_recipient(own, berlin, at("2024-01-10T12:30:00"))
    assert noise.for_recipient(plain, berlin, at("2024-01-10T11:30:00"))
    configured = QuietHours("22:00", "07:00")
    assert configured.allows(own, reg(None), at("2024-01-10T23:00:00"))  # the rule's window, not 22-07
    _, errors = parse_rule_text(
        "rules:\n  - id: c\n    topic: x\n    quiet_hours: {start: '25:00'}\n    title: t\n" + AUD, "q.yaml"
    )
    assert {e.reason for e in errors} >= {"'25:00' is not a time of day such as 22:00"}


def test_shared_state_moves_to_another_instance_and_a_new_leader_keeps_the_old_schedule() -> None:
    """What the leader's noise control exports (``on_state``) and another instance imports: a cooldown that
    admits the same notification again (a takeover re-handing it) but holds a new one, and repeats and
    escalation on the old leader's schedule, only the latest repeat when behind."""
    rules = (
        "rules:\n  - id: leak\n    topic: l/{room}\n    threshold: {above: 0}\n    cooldown: 1h\n"
        "    repeat: 10m\n    escalate:\n      - {after: 15m, audience: {users: [boss]}}\n"
        "    title: 'leak {{ room }}'\n" + AUD
    )
    old = Sim(rules)
    changes: list[tuple[str, str, object]] = []
    old.noise.on_state = lambda kind, key, value: changes.append((kind, key, value))
    old.event("l/cellar", 1, 100)
    [(_, first)] = old.sent
    assert sorted(kind for kind, _, _ in changes) == ["cooldown", "followup"]
    new = NoiseControl()
    new.observe(first)  # a follower computed the same transition
    for kind, key, value in changes:
        new.import_state(kind, key, value)
    assert new.export_state() == old.noise.export_state()
    assert new.before_target(first, 200) == [first]  # the same notification: the ledger decides
    due = new.due(100 + 45 * 60)  # the new leader 45 minutes on: the escalation and the latest repeat only
    kinds = sorted((n.audience.users, round((n.created - 100) / 60)) for n in due.notifications)
    assert kinds == [((), 40), (("boss",), 0)]
    old_due = old.noise.due(100 + 15 * 60)
    assert [n.nid for n in old_due.notifications if n.audience.users] == [
        n.nid for n in due.notifications if n.audience.users
    ]  # the same key on both: the send ledger skips what the old leader sent
    later = dataclasses.replace(first, nid="n2", episode="e2")  # fires again within the cooldown: held
    assert new.before_target(later, 100 + 50 * 60) == []


def test_a_restored_alert_resumes_the_escalation_steps_not_sent_yet() -> None:
    rules = (
        "rules:\n  - id: pump\n    topic: p/{n}\n    threshold: {above: 0}\n    title: 'pump {{ n }}'\n"
        "    audience: {tags: [a]}\n"
        "    escalate:\n      - {after: 10m, audience: {tags: [b]}}\n"
        "      - {after: 30m, audience: {users: [boss]}}\n"
    )
    before = Sim(rules)
    before.event("p/1", 1, 0)
    ((alert_id, alert),) = before.state.alerts.items()
    # a new process: the alert comes back from storage, its first step was sent before the restart
    after = Sim(rules)
    transition = after.engine.reopened(alert_id, alert)
    assert transition is not None and transition.state == "firing" and transition.time == 0
    n = to_notification(transition, 15 * 60)
    after.noise.acks.opened(n)
    steps: list[int] = []
    after.noise.followups.on_step = lambda _n, step: steps.append(step)
    after.noise.followups.resume(n, {0}, now=15 * 60)
    after.until(3600)
    assert [(t / 60, x.audience) for t, x in after.sent] == [(30, Audience(users=("boss",)))]
    assert steps == [1]
