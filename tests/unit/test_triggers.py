"""Each trigger kind on simulated time: payload conditions, thresholds, absence, state change, alarms."""

from __future__ import annotations

from rules.cumulocity import alarm_topic, alarms_from_smartrest
from rules.engine import EngineState, RuleEngine, Transition, alert_id, compile_rules
from rules.event import Event
from rules.loader import parse_rule_text


def engine_for(yaml_text: str) -> RuleEngine:
    rules, errors = parse_rule_text(yaml_text, "t.yaml")
    assert errors == [], errors
    return RuleEngine(compile_rules(rules))


def ev(topic: str, payload: object, t: float, eid: str | None = None, source: str = "mqtt") -> Event:
    return Event(eid or f"{topic}@{t}", source, topic, None, t, payload)


def run(e: RuleEngine, events: list[Event], until: float) -> list[Transition]:
    state, out = EngineState(), []
    for event in events:
        state, fired = e.tick(state, event.time)
        out += fired
        state, produced = e.evaluate(event, state, event.time)
        out += produced
    state, fired = e.tick(state, until)
    return out + fired


AUD = "    audience: {tags: [t]}\n"


def test_payload_conditions_comparisons_regex_json_paths_and_expressions() -> None:
    e = engine_for(
        "rules:\n"
        "  - id: hot-cellar\n"
        "    topic: home/{room}/climate\n"
        "    when:\n"
        "      $.sensor.readings[0]: {gt: 30}\n"
        "      sensor.name: {regex: '^temp-'}\n"
        "      mode: {in: [auto, eco]}\n"
        "    expr: \"room == 'cellar' and payload.sensor.readings | length >= 2\"\n"
        "    title: '{{ room }} {{ payload.sensor.readings.0 }}'\n" + AUD
    )
    hit = {"sensor": {"name": "temp-1", "readings": [31, 29]}, "mode": "eco"}
    assert [t.title for t in run(e, [ev("home/cellar/climate", hit, 0)], 0)] == ["cellar 31"]
    misses = [
        ("home/attic/climate", hit),  # expression: wrong room
        ("home/cellar/climate", {**hit, "mode": "off"}),  # not in the list
        ("home/cellar/climate", {**hit, "sensor": {"name": "hum-1", "readings": [31, 1]}}),  # regex
        ("home/cellar/climate", {**hit, "sensor": {"name": "temp-1", "readings": [30, 1]}}),  # not > 30
        ("home/cellar/climate", {**hit, "sensor": {"name": "temp-1", "readings": [31]}}),  # expression
        ("home/cellar/climate", "not json"),
    ]
    assert run(e, [ev(t, p, i) for i, (t, p) in enumerate(misses)], 10) == []


def test_bad_expression_is_a_located_error() -> None:
    _, errors = parse_rule_text(
        "rules:\n  - id: x\n    topic: a\n    expr: 'payload.a >'\n    title: x\n" + AUD, "bad.yaml"
    )
    assert [(e.line, e.field) for e in errors] == [(4, "rules[0].expr")]
    assert "expression syntax error" in errors[0].reason


def test_threshold_keep_firing_for_holds_through_a_short_dip() -> None:
    e = engine_for(
        "rules:\n  - id: hot\n    topic: s/{host}/cpu\n"
        "    threshold: {above: 90, clear: 80, for: 1m, keep_firing_for: 5m}\n"
        "    title: '{{ host }} {{ state }}'\n" + AUD
    )
    cpu = "s/a/cpu"
    events = [ev(cpu, 95, 0, "open"), ev(cpu, 70, 100), ev(cpu, 95, 200), ev(cpu, 70, 300)]
    out = run(e, events, 1000)
    # the dip at 100 is forgiven (back above at 200, within 5 minutes); the one at 300 lasts: resolved at 600
    assert [(t.state, t.time, t.episode) for t in out] == [("firing", 60, "open"), ("resolved", 600, "open")]


def test_threshold_below_with_hysteresis_and_no_for() -> None:
    e = engine_for(
        "rules:\n  - id: cold\n    topic: t\n    threshold: {value: temp, below: 5, clear: 8}\n"
        "    title: x\n" + AUD
    )
    out = run(e, [ev("t", {"temp": v}, i) for i, v in enumerate([6, 4, 6, 7, 8.5, 3])], 10)
    assert [(t.state, t.time) for t in out] == [("firing", 1), ("resolved", 4), ("firing", 5)]


AVAIL = (
    "rules:\n  - id: gone\n    topic: dev/{device}/data\n"
    "    absent:\n      for: 10m\n"
    '      availability: {topic: "dev/{device}/status", online: [online, 1], offline: [offline, 0]}\n'
    "    title: '{{ device }} {{ state }}'\n" + AUD
)


def test_absence_with_last_will_offline_fires_at_once_and_online_resolves() -> None:
    e = engine_for(AVAIL)
    events = [
        ev("dev/p/data", 1, 0, "d0"),
        ev("dev/p/status", "offline", 30, "will"),
        ev("dev/p/status", "offline", 40),  # repeated will: no second notification
        ev("dev/p/status", "online", 50, "back"),
    ]
    out = run(e, events, 55)
    assert [(t.state, t.time, t.episode, t.labels) for t in out] == [
        ("firing", 30, "will", {"device": "p"}),
        ("resolved", 50, "will", {"device": "p"}),
    ]
    assert len({t.alert_id for t in out}) == 1


def test_absence_silence_after_online_still_fires() -> None:
    out = run(engine_for(AVAIL), [ev("dev/q/status", 1, 0, "hello")], 700)
    assert [(t.state, t.time) for t in out] == [("firing", 600)]


def test_availability_topic_must_name_the_same_segments() -> None:
    bad = AVAIL.replace("dev/{device}/status", "dev/{node}/status")
    _, errors = parse_rule_text(bad, "a.yaml")
    assert errors and "same segments" in errors[0].reason


def test_state_change_running_to_crashed_and_back() -> None:
    e = engine_for(
        "rules:\n  - id: crash\n    topic: fleet/{host}/proc/{name}\n"
        "    change: {value: state, from: [running], to: [crashed, killed]}\n"
        "    title: '{{ name }} on {{ host }} {{ payload.state }}'\n" + AUD
    )
    t = "fleet/h1/proc/nginx"
    events = [
        ev(t, {"state": "crashed"}, 0),  # first sight: no change known yet
        ev(t, {"state": "running"}, 1),
        ev(t, {"state": "running"}, 2),
        ev(t, {"state": "crashed"}, 3, "c1"),
        ev(t, {"state": "crashed"}, 4),
        ev(t, {"state": "starting"}, 5),
        ev(t, {"state": "killed"}, 6),  # starting → killed: not from 'running'
    ]
    out = run(e, events, 10)
    assert [(x.state, x.time, x.title) for x in out] == [
        ("firing", 3, "nginx on h1 crashed"),
        ("resolved", 5, "nginx on h1 starting"),
    ]


def test_state_change_on_to_off_with_plain_payloads() -> None:
    e = engine_for(
        "rules:\n  - id: plug-off\n    topic: plug/{p}\n    change: {from: [on], to: [off]}\n"
        "    resolve_notice: false\n    title: x\n" + AUD
    )
    out = run(e, [ev("plug/a", v, i) for i, v in enumerate(["on", "OFF", "on", "off"])], 9)
    assert [(x.state, x.time) for x in out] == [("firing", 1), ("firing", 3)]
    assert out[0].episode != out[1].episode and out[0].alert_id == out[1].alert_id


C8Y = (
    "rules:\n  - id: c8y\n    alarm: {types: [c8y_Temp, c8y_Door], severity: [critical, MAJOR]}\n"
    "    severity: critical\n"
    "    title: '{{ alarm.severity }} {{ type }} on {{ device }}: {{ alarm.text }}'\n" + AUD
)


def alarm(device: str, type_: str, severity: str, status: str, t: float, eid: str) -> Event:
    payload = {
        "id": eid,
        "type": type_,
        "severity": severity,
        "status": status,
        "text": "hot",
        "source": {"id": device, "name": "Pump"},
    }
    return ev(alarm_topic("t1", device, type_), payload, t, eid, source="cumulocity")


def test_cumulocity_alarms_by_type_severity_and_status() -> None:
    e = engine_for(C8Y)
    events = [
        alarm("11", "c8y_Temp", "MINOR", "ACTIVE", 0, "a0"),  # severity not wanted
        alarm("11", "c8y_Temp", "MAJOR", "ACTIVE", 1, "a1"),
        alarm("11", "c8y_Temp", "MAJOR", "ACTIVE", 2, "a1"),  # de-duplicated re-raise: still one alert
        alarm("11", "c8y_Other", "CRITICAL", "ACTIVE", 3, "a2"),  # type not wanted
        alarm("12", "c8y_Door", "CRITICAL", "ACKNOWLEDGED", 4, "a3"),  # status not wanted
        alarm("11", "c8y_Temp", "MAJOR", "CLEARED", 5, "a1"),
    ]
    out = run(e, events, 10)
    assert [(x.state, x.time, x.title, x.labels) for x in out] == [
        ("firing", 1, "MAJOR c8y_Temp on 11: hot", {"tenant": "t1", "device": "11", "type": "c8y_Temp"}),
        ("resolved", 5, "MAJOR c8y_Temp on 11: hot", {"tenant": "t1", "device": "11", "type": "c8y_Temp"}),
    ]


def test_smartrest_lines_parse_301_to_307() -> None:
    text = (
        '301,c8y_Fire,"Smoke, lots"\n302,c8y_Temp\n305,c8y_Temp,MINOR\n306,c8y_Temp\n'
        "307,c8y_Temp,frag\n211,25"
    )
    got = [(a.type, a.severity, a.status, a.text) for a in alarms_from_smartrest(text)]
    assert got == [
        ("c8y_Fire", "CRITICAL", "ACTIVE", "Smoke, lots"),
        ("c8y_Temp", "MAJOR", "ACTIVE", "Alarm of type c8y_Temp raised"),
        ("c8y_Temp", "MINOR", "ACTIVE", ""),
        ("c8y_Temp", None, "CLEARED", ""),
    ]


def test_smartrest_alarms_on_mqtt_open_downgrade_and_clear() -> None:
    e = engine_for(
        "rules:\n  - id: sr\n    topic: s/us/{device}\n"
        "    alarm: {smartrest: true, severity: [CRITICAL, MAJOR]}\n"
        "    title: '{{ device }} {{ type }} {{ alarm.severity }}'\n" + AUD
    )
    events = [
        ev("s/us/pump7", "302,c8y_Temp,too hot", 0, "r1"),
        ev("s/us/pump7", "304,c8y_Dust", 1),  # warning: not wanted
        ev("s/us/pump7", "305,c8y_Temp,MINOR", 2),  # downgraded below what the rule wants: resolves
        ev("s/us/pump7", "301,c8y_Temp", 3, "r2"),
        ev("s/us/pump7", "306,c8y_Temp", 4),
    ]
    out = run(e, events, 5)
    assert [(x.state, x.time, x.title, x.episode) for x in out] == [
        ("firing", 0, "pump7 c8y_Temp MAJOR", "r1"),
        ("resolved", 2, "pump7 c8y_Temp MINOR", "r1"),
        ("firing", 3, "pump7 c8y_Temp CRITICAL", "r2"),
        ("resolved", 4, "pump7 c8y_Temp None", "r2"),
    ]
    assert out[0].alert_id == alert_id("sr", {"device": "pump7", "type": "c8y_Temp"})


def test_notification_fields_come_from_the_rule() -> None:
    e = engine_for(
        "rules:\n  - id: bell\n    topic: home/{room}/bell\n    severity: major\n"
        "    title: 'Ring at {{ room }}'\n    body: 'Someone is there'\n"
        "    locales:\n      de: {title: 'Es klingelt: {{ room }}'}\n      fr: {body: \"Quelqu'un\"}\n"
        "    resolved: {title: 'gone'}\n"
        "    sound: bell.caf\n    category: DOOR\n    collapse_key: 'bell-{{ room }}'\n"
        "    data: {link: 'app://door/{{ room }}'}\n"
        "    audience: {users: [ann], tags: [family], channels: [doors]}\n"
    )
    [t] = run(e, [ev("home/front/bell", {}, 0)], 0)
    assert (t.title, t.body, t.sound, t.category, t.priority, t.collapse_key) == (
        "Ring at front",
        "Someone is there",
        "bell.caf",
        "DOOR",
        "high",
        "bell-front",
    )
    assert t.texts == {"de": ("Es klingelt: front", "Someone is there"), "fr": ("Ring at front", "Quelqu'un")}
    assert t.data == {"link": "app://door/front"}
    assert (t.audience_users, t.audience_tags, t.audience_channels) == (("ann",), ("family",), ("doors",))


def test_resolve_notice_uses_its_own_text() -> None:
    e = engine_for(
        "rules:\n  - id: hot\n    topic: t\n    threshold: {above: 5}\n    title: hot\n"
        "    resolved: {title: 'cool again', body: 'at {{ value }}'}\n" + AUD
    )
    out = run(e, [ev("t", 6, 0), ev("t", 4, 1)], 2)
    assert [(x.state, x.title, x.body, x.priority) for x in out] == [
        ("firing", "hot", "", "normal"),
        ("resolved", "cool again", "at 4.0", "normal"),
    ]


def test_resolve_notice_is_not_replaced_by_the_firing_translations() -> None:
    e = engine_for(
        "rules:\n  - id: hot\n    topic: t\n    threshold: {above: 5}\n    title: hot\n"
        "    body: 'at {{ value }}'\n"
        "    locales: {de: {title: heiss}}\n    resolved: {title: 'cool again', body: 'now {{ value }}'}\n"
        + AUD
    )
    out = run(e, [ev("t", 6, 0), ev("t", 4, 1)], 2)
    assert [(x.state, x.title, x.body, dict(x.texts)) for x in out] == [
        ("firing", "hot", "at 6.0", {"de": ("heiss", "at 6.0")}),
        ("resolved", "cool again", "now 4.0", {}),
    ]


def test_notification_carries_rule_fields_and_picks_the_recipients_locale() -> None:
    from service.notify.pipeline import to_notification

    e = engine_for(
        "rules:\n  - id: bell\n    topic: b\n    title: Ring\n    locales: {de: {title: Klingel}}\n"
        "    sound: ding\n    data: {link: 'app://x'}\n    audience: {channels: [doors]}\n"
    )
    [t] = run(e, [ev("b", 1, 0)], 0)
    n = to_notification(t, 0)
    assert (n.options.sound, n.data, n.audience.tags) == ("ding", {"link": "app://x"}, ("channel:doors",))
    assert [n.text_for(loc)[0] for loc in ("de", "de-AT", "de_CH", "fr", None)] == [
        "Klingel",
        "Klingel",
        "Klingel",
        "Ring",
        "Ring",
    ]


def test_alarm_event_shape_and_ids_for_the_cumulocity_source() -> None:
    from rules.cumulocity import alarm_event

    raised = {
        "id": "119",
        "type": "c8y_Temp",
        "severity": "MAJOR",
        "status": "ACTIVE",
        "count": 1,
        "time": "2024-05-01T10:00:00.000Z",
        "text": "hot",
        "source": {"id": "111", "name": "Pump 7"},
    }
    e = alarm_event("t123", raised, 5.0)
    assert (e.source, e.topic, e.device, e.time) == (
        "cumulocity",
        "cumulocity/t123/alarm/111/c8y_Temp",
        "111",
        5.0,
    )
    assert e.attributes == {"tenant": "t123", "type": "c8y_Temp", "severity": "MAJOR", "status": "ACTIVE"}
    assert alarm_event("t123", raised, 9.0).id == e.id  # redelivered: same id
    assert alarm_event("t123", {**raised, "status": "CLEARED"}, 9.0).id != e.id
    out = run(engine_for(C8Y), [e, alarm_event("t123", {**raised, "status": "CLEARED"}, 9.0)], 10)
    assert [(x.state, x.labels["device"]) for x in out] == [("firing", "111"), ("resolved", "111")]
