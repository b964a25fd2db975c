"""The cluster's decisions on simulated time: a tiny in-memory broker delivers each published stream record to
every connected instance (the sender included: its echo) in publish order."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from service.cluster.election import Election, Publish, RoleChange
from service.cluster.ledger import FollowerBuffer, Ledger, catch_up
from service.cluster.records import (
    Presence,
    RecordError,
    StreamRecord,
    decode_presence,
    decode_record,
    decode_snapshot,
    encode_presence,
    encode_record,
    encode_snapshot,
)
from service.cluster.timing import ClusterTiming

T = ClusterTiming()
STEP = 0.01


@dataclass
class Node:
    election: Election
    connected: bool = True
    frozen: bool = False  # SIGSTOP: neither ticks nor reads
    dead: bool = False
    changes: list[RoleChange] = field(default_factory=list)


class Sim:
    def __init__(self, *members: tuple[str, int]) -> None:
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.stream: list[tuple[float, StreamRecord]] = []
        for mid, priority in members:
            self.add(mid, priority)

    def add(self, mid: str, priority: int) -> Node:
        node = Node(Election(Presence(mid, priority, f"boot-{mid}-{self.now}", "1"), T, self.now))
        for other in self.nodes.values():
            if other.connected:
                node.election.on_presence(other.election.me.id, other.election.me, self.now)
                other.election.on_presence(mid, node.election.me, self.now)
        self.nodes[mid] = node
        return node

    def cut(self, mid: str) -> None:
        """The instance loses the broker but keeps running (it learns so, as the MQTT side tells it)."""
        self.nodes[mid].connected = False
        self.nodes[mid].election.connected = False

    def kill(self, mid: str) -> None:
        """kill -9: the connection drops, the broker fires the will (presence deleted)."""
        self.nodes[mid].connected = False
        self.nodes[mid].dead = True
        for other in self.live():
            other.election.on_presence(mid, None, self.now)

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.connected and not n.frozen]

    def publish(self, record: StreamRecord) -> None:
        self.stream.append((self.now, record))
        for node in self.live():
            self.apply(node, node.election.on_record(record, self.now))

    def apply(self, node: Node, actions: list[Publish | RoleChange]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                if node.connected:
                    self.publish(action.record)
            else:
                node.changes.append(action)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + STEP, 6)
            for node in self.nodes.values():
                if not node.frozen and not node.dead:
                    self.apply(node, node.election.tick(self.now))

    def run_until(self, cond, limit: float = 30.0) -> float:
        start = self.now
        while not cond():
            if self.now - start > limit:
                raise AssertionError(f"not reached within {limit} simulated seconds")
            self.run(STEP)
        return self.now - start

    def leaders(self) -> list[str]:
        return [m for m, n in self.nodes.items() if n.connected and n.election.role == "leader"]

    def senders(self) -> list[str]:
        return [m for m, n in self.nodes.items() if n.connected and n.election.may_send(self.now)]


def started() -> Sim:
    sim = Sim(("a", 0), ("b", 1), ("c", 2))
    sim.run_until(lambda: sim.senders() == ["a"])
    return sim


def test_cold_start_elects_the_best_ranked_after_the_lease() -> None:
    sim = Sim(("c", 2), ("a", 0), ("b", 1))
    took = sim.run_until(lambda: sim.senders() == ["a"])
    assert T.lease_s <= took <= T.lease_s + T.claim_window_s + 0.1
    assert all(n.election.leader == "a" and n.election.term == 1 for n in sim.nodes.values())
    assert [c.reason for c in sim.nodes["b"].changes] == ["a leads term 1"]
    assert sim.nodes["a"].changes[-1] == RoleChange("leader", 1, "a", "won the claim")


def test_cold_start_elects_the_preferred_instance_even_when_it_starts_last() -> None:
    sim = Sim(("b", 1), ("c", 2))
    sim.run(T.lease_s - 0.5)
    sim.add("a", 0)
    sim.run_until(lambda: bool(sim.senders()))
    assert sim.senders() == ["a"]
    assert sim.nodes["b"].election.leader == "a" and sim.nodes["b"].election.term == 1


def test_kill9_next_in_line_takes_over_within_fast_path_and_never_two_senders() -> None:
    sim = started()
    sim.run(0.37)  # an arbitrary point between heartbeats
    last_hb = max(at for at, r in sim.stream if r.kind == "hb" and r.sender == "a")
    sim.kill("a")
    took = sim.run_until(lambda: sim.senders() == ["b"])
    takeover = sim.now - last_hb
    assert takeover <= T.fast_path_s + T.claim_window_s + T.heartbeat_s, takeover
    assert sim.nodes["b"].election.term == 2 and sim.nodes["c"].election.leader == "b"
    assert took > 0


def test_hung_leader_is_fenced_before_anyone_claims_and_steps_down_when_it_wakes() -> None:
    sim = started()
    sim.nodes["a"].frozen = True  # SIGSTOP: no will (the connection stays open)
    frozen_at = sim.now
    overlap = []
    while sim.senders() != ["b"]:
        sim.run(STEP)
        # The frozen leader's own view: would it still be allowed to send if it woke now?
        if sim.nodes["a"].election.may_send(sim.now) and sim.nodes["b"].election.role != "follower":
            overlap.append(sim.now)
        assert sim.now - frozen_at < 10
    assert sim.now - frozen_at <= T.lease_s + T.claim_window_s + 0.1
    assert overlap == []
    sim.nodes["a"].frozen = False  # SIGCONT
    assert not sim.nodes["a"].election.may_send(sim.now)
    sim.run(T.heartbeat_s * 3)
    assert sim.leaders() == ["b"] and sim.nodes["a"].election.role == "follower"
    assert sim.nodes["a"].changes[1:] == [
        RoleChange("follower", 2, "b", "b leads term 2")
    ]  # one change, one line


def test_graceful_stepdown_hands_over_without_waiting_for_the_lease() -> None:
    sim = started()
    actions = sim.nodes["a"].election.step_down(sim.now)
    sim.apply(sim.nodes["a"], actions)
    assert not sim.nodes["a"].election.may_send(sim.now)
    sim.kill("a")  # then it disconnects cleanly (presence removed)
    took = sim.run_until(lambda: sim.senders() == ["b"])
    assert took <= T.claim_window_s + T.heartbeat_s + 0.05


def test_second_in_line_claims_when_the_first_is_gone_too() -> None:
    sim = started()
    sim.kill("b")
    sim.kill("a")
    took = sim.run_until(lambda: sim.senders() == ["c"])
    assert took <= T.fast_path_s + T.claim_window_s + 0.1


def test_an_instance_cut_off_from_the_broker_never_leads_alone() -> None:
    sim = started()
    sim.cut("b")
    sim.kill("a")
    sim.run(T.lease_s * 3)
    assert sim.nodes["b"].election.role == "follower"  # it did not even claim while disconnected
    assert sim.senders() == ["c"]


def test_a_claim_the_broker_never_echoed_does_not_win() -> None:
    sim = started()
    b = sim.nodes["b"]
    b.connected = False  # b's link breaks silently: it still thinks it is connected
    sim.kill("a")
    b.election.on_presence("a", None, sim.now)  # it did hear the will before the link broke
    sim.run_until(lambda: b.election.role == "candidate", limit=10)
    sim.run(T.claim_window_s + STEP)
    assert b.election.role == "follower" and b.changes[-1].reason == "claim not confirmed by the broker"


def test_competing_claims_of_one_term_converge_on_the_best_rank() -> None:
    sim = Sim(("a", 0), ("b", 1))
    # Both believe they are next (e.g. a did not know b yet): both claim term 1.
    sim.publish(StreamRecord("claim", 1, "b", priority=1))
    sim.publish(StreamRecord("claim", 1, "a", priority=0))
    sim.run_until(lambda: sim.senders() == ["a"], limit=10)
    sim.run(1.0)
    assert sim.leaders() == ["a"]
    assert sim.nodes["b"].election.leader == "a"


def test_records_of_an_older_term_are_ignored_and_a_higher_term_deposes() -> None:
    sim = started()
    b = sim.nodes["b"].election
    b.on_record(StreamRecord("hb", 0, "x", seq=9), sim.now)
    assert b.leader == "a"
    a = sim.nodes["a"].election
    changes = a.on_record(StreamRecord("claim", 5, "c", priority=2), sim.now)
    assert a.role == "follower" and a.term == 5 and not a.may_send(sim.now)
    assert changes == [RoleChange("follower", 5, None, "c claimed term 5")]


def test_a_returning_preferred_instance_does_not_preempt() -> None:
    sim = started()
    sim.kill("a")
    sim.run_until(lambda: sim.senders() == ["b"])
    sim.nodes.pop("a")
    sim.add("a", 0)
    sim.run(T.lease_s * 3)
    assert sim.leaders() == ["b"] and sim.nodes["a"].election.leader == "b"


def test_timing_rules() -> None:
    with pytest.raises(ValidationError, match=r"fast_path_s .* must be at least 1\.5 x renew_deadline_s"):
        ClusterTiming(fast_path_s=1.2)
    with pytest.raises(ValidationError, match="heartbeat_s"):
        ClusterTiming(heartbeat_s=0.8)
    assert ClusterTiming().fast_path_s + ClusterTiming().claim_window_s < 3.0


def test_ledger_and_catch_up() -> None:
    ledger = Ledger(retention_s=60)
    buf: FollowerBuffer[str] = FollowerBuffer(window_s=120)
    for nid, policy in (("n1", "resend"), ("n2", "resend"), ("n3", "skip"), ("n4", "resend")):
        buf.add(nid, f"item-{nid}", 0, policy)  # type: ignore[arg-type]
    ledger.apply(StreamRecord("intent", 1, "a", nid="n1"), 1)
    ledger.apply(StreamRecord("sent", 1, "a", nid="n1"), 1)
    ledger.apply(StreamRecord("intent", 1, "a", nid="n2"), 1)
    ledger.apply(StreamRecord("intent", 1, "a", nid="n3"), 1)
    ledger.apply(StreamRecord("intent", 2, "b", nid="n1"), 2)  # sent is final
    assert ledger.status("n1") == "sent"
    result = catch_up(buf.drain(), ledger)
    assert [b.nid for b in result.send] == ["n4"]
    assert [b.nid for b in result.resend_ambiguous] == ["n2"]
    assert [b.nid for b in result.skipped_ambiguous] == ["n3"]
    assert result.already_sent == 1
    ledger.record("late", "intent", 1, 100)
    assert ledger.status("n1") is None and len(ledger) == 1  # expired after 60 s


def test_merging_a_snapshot_keeps_sent_final() -> None:
    saved: list[tuple[str, str]] = []
    ledger = Ledger(60, on_record=lambda k, s, t, at: saved.append((k, s)))
    ledger.record("x", "intent", 1, 1)
    ledger.merge("x", "sent", 1, 2)
    ledger.merge("x", "intent", 2, 3)
    ledger.merge("y", "sent", 2, 3)
    assert ledger.status("x") == "sent" and ledger.status("y") == "sent"
    assert saved == [("x", "intent"), ("x", "sent"), ("y", "sent")]
    assert decode_snapshot(encode_snapshot("a", [("x", "sent", 1, 2.0)])) == [("x", "sent", 1, 2.0)]
    with pytest.raises(RecordError, match="bad ledger state"):
        decode_snapshot(b'{"entries": [["x", "maybe", 1, 2]]}')


def test_records_round_trip_and_reject_garbage() -> None:
    r = StreamRecord("intent", 3, "a", seq=7, nid="abc")
    assert decode_record(encode_record(r)) == r
    p = Presence("a", 0, "boot", "0.1.0")
    assert decode_presence(encode_presence(p)) == p
    assert decode_presence(b"") is None
    for raw, message in (
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"kind":"x","term":1}', "unknown"),
        (b'{"kind":"hb","term":"x","sender":"a"}', "bad hb"),
    ):
        with pytest.raises(RecordError, match=message):
            decode_record(raw)
