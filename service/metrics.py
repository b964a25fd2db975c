"""Counters kept as plain integers on the hot path and exposed in Prometheus text format on scrape.

prometheus-client renders the exposition format; the counting itself is a dict increment, because an event
passes several counters and the service aims at 10,000 events/s on one core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector


class Counter:
    __slots__ = ("help", "labelnames", "name", "values")

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def total(self) -> float:
        return sum(self.values.values())


class Metrics(Collector):
    def __init__(self) -> None:
        self.events_received = Counter("tocsin_events_received", "Events received, by source.", ("source",))
        self.payloads_malformed = Counter(
            "tocsin_payloads_malformed", "Payloads that could not be read, by source.", ("source",)
        )
        self.rule_matches = Counter(
            "tocsin_rule_matches", "Alert transitions produced, by rule and state.", ("rule", "state")
        )
        self.notifications = Counter(
            "tocsin_notifications", "Deliveries finished, by provider and outcome.", ("provider", "outcome")
        )
        self.suppressed = Counter(
            "tocsin_notifications_suppressed", "Notifications a stage held back.", ("stage",)
        )
        self.duplicates = Counter(
            "tocsin_events_duplicate",
            "Messages not handled again: redelivered after being committed, or a repeat of an event id.",
            ("source", "reason"),
        )
        self.mqtt_connects = Counter("tocsin_mqtt_connects", "Successful connections to the MQTT broker.")
        self.mqtt_disconnects = Counter("tocsin_mqtt_disconnects", "Lost or failed MQTT connections.")
        self.rule_reloads = Counter(
            "tocsin_rule_reloads", "Rule reloads, by outcome (loaded, refused).", ("outcome",)
        )
        self.api_rejected = Counter(
            "tocsin_api_rejected",
            "API requests refused with a 4xx, by route and status.",
            ("route", "status"),
        )
        self.registrations_changed = Counter(
            "tocsin_registrations_changed",
            "Registrations disabled (invalid) or marked suspect by a provider's answer.",
            ("provider", "state"),
        )
        self.config_errors = Counter(
            "tocsin_provider_config_errors",
            "Times a provider credential was paused for a configuration error (the log says why).",
            ("provider", "credential"),
        )
        self.template_errors = Counter(
            "tocsin_template_errors",
            "Template renders that failed (error) or went over budget (budget); a fallback text was sent.",
            ("reason",),
        )
        self.rule_evictions = Counter(
            "tocsin_rule_devices_evicted",
            "Devices a rule forgot at rules.max_tracked_per_rule (least recently seen first), by rule.",
            ("rule",),
        )
        self.loop_stalls = Counter(
            "tocsin_event_loop_stalls",
            "Times the event loop ran a timer over 50 ms late (service/loopwatch.py).",
        )
        self.http_refused = Counter(
            "tocsin_http_connections_refused",
            "Connections answered 429 and closed: their address had http.max_connections_per_client open.",
        )
        self.http_malformed = Counter(
            "tocsin_http_malformed_requests", "HTTP requests that could not be parsed (logged rate-limited)."
        )
        self.internal_errors = Counter(
            "tocsin_internal_errors",
            "Unexpected errors: a supervised task that crashed (by its name), or caught in place.",
            ("task",),
        )
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.extra_counters: list[Counter] = []  # counters other parts register
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help, read)

    def counters(self) -> list[Counter]:
        return [v for v in vars(self).values() if isinstance(v, Counter)] + self.extra_counters

    def collect(self) -> Iterator[Metric]:
        for c in self.counters():
            family = CounterMetricFamily(c.name, c.help, labels=list(c.labelnames))
            if not c.labelnames:
                family.add_metric([], c.get())
            for labels, value in sorted(c.values.items()):
                if c.labelnames:
                    family.add_metric(list(labels), value)
            yield family
        for name, (help, read) in self.gauges.items():
            g = GaugeMetricFamily(name, help)
            g.add_metric([], read())
            yield g

    def render(self) -> bytes:
        return generate_latest(self.registry)
