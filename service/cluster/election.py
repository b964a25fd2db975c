"""The lease and its terms as a pure state machine.

Inputs are what the instance saw (stream records, presence changes) and the time (a monotonic reading);
outputs are records to publish and role changes to act on. The MQTT side feeds it and publishes for it.

- Leader: heartbeats every H; may send only while its own last heartbeat came back through the broker less
  than D ago (``may_send``), checked right before each send.
- Follower: the lease view expires L after the last stream record, or F after it when the leader's presence
  was deleted by its will; a graceful ``stepdown`` ends it at once.
- Claims: the live followers claim in rank order, each waiting its position x 2C, with term = highest
  seen + 1; after C the best claim of the highest term wins (highest term, then best rank). Everyone
  applies the same rule, so they agree without compare-and-set.
- Fencing: a leader that sees a higher term, or an equal term from a better-ranked leader, steps down at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.cluster.membership import Membership
from service.cluster.records import Presence, StreamRecord
from service.cluster.timing import ClusterTiming

Role = Literal["follower", "candidate", "leader"]


@dataclass(frozen=True, slots=True)
class Publish:
    record: StreamRecord


@dataclass(frozen=True, slots=True)
class RoleChange:
    role: Role
    term: int
    leader: str | None
    reason: str


Action = Publish | RoleChange


class Election:
    def __init__(self, me: Presence, timing: ClusterTiming, now: float) -> None:
        self.me = me
        self.timing = timing
        self.membership = Membership(me)
        self.role: Role = "follower"
        self.term = 0
        self.leader: str | None = None
        self.last_stream_at = now  # the lease view: when the stream last showed a live leader or claim
        self.leader_left_at: float | None = None
        self.vacant = False  # the leader stepped down: no need to wait
        self.seq = 0
        self.last_hb_at: float | None = None
        self.last_echo_at: float | None = None
        self.leader_since: float | None = None
        self._claim_at: float | None = None
        self._best_claim: tuple[int, tuple[int, str]] | None = None  # (term, rank of the best claimant)
        self._best_claimant: str | None = None
        self._claim_echoed = False
        self.connected = True  # set by the MQTT side: no claim while the broker cannot hear it
        self.takeovers = 0

    # -- queries ------------------------------------------------------------------------------------------
    def may_send(self, now: float) -> bool:
        """Self-fencing: the leader reports only while its heartbeat made a recent round trip."""
        return (
            self.role == "leader"
            and self.last_echo_at is not None
            and now - self.last_echo_at < self.timing.renew_deadline_s
        )

    def lease_expires_at(self) -> float:
        if self.vacant:
            return self.last_stream_at
        t = self.timing
        if self.leader is not None and self.leader_left_at is not None:
            return self.last_stream_at + t.fast_path_s
        return self.last_stream_at + t.lease_s

    def lease_age(self, now: float) -> float:
        return now - self.last_stream_at

    # -- inputs -------------------------------------------------------------------------------------------
    def on_presence(self, member_id: str, presence: Presence | None, now: float) -> list[Action]:
        if member_id == self.me.id:
            return []  # our own record is the I/O side's business (it republishes after a reconnect)
        joined = presence is not None and not self.membership.alive(member_id)
        self.membership.update(member_id, presence)
        if joined and self.leader is None and presence is not None and presence.rank < self.me.rank:
            # No leader yet and a better-ranked instance just arrived: give it its own full wait, so that a
            # cold start elects the preferred instance rather than whichever process started first.
            self.last_stream_at = max(self.last_stream_at, now)
        if member_id == self.leader:
            self.leader_left_at = now if presence is None else None
        return []

    def on_record(self, r: StreamRecord, now: float) -> list[Action]:
        out: list[Action] = []
        if r.kind in ("intent", "sent"):
            if r.term >= self.term and r.sender == self.leader:
                self.last_stream_at = now  # ledger traffic from the leader shows it alive too
            return out
        if r.term < self.term:
            return out  # an older term: a deposed leader's late records carry no authority
        if r.term > self.term:
            new_leader = r.sender if r.kind == "hb" else None
            if self.role != "follower":
                out.append(self._become_follower(r.term, new_leader, f"{r.sender} {_what(r)} term {r.term}"))
            elif new_leader is not None:
                out.append(RoleChange("follower", r.term, new_leader, f"{r.sender} leads term {r.term}"))
            self.term, self.leader, self._best_claim, self._best_claimant = r.term, new_leader, None, None
            self.leader_left_at = None if new_leader is None or self.membership.alive(new_leader) else now
        self.last_stream_at = now
        self.vacant = False
        if r.kind == "claim":
            if r.sender == self.me.id and self.role == "candidate":
                self._claim_echoed = True
            rank = (r.priority, r.sender)
            if self._best_claim is None or rank < self._best_claim[1]:
                self._best_claim, self._best_claimant = (r.term, rank), r.sender
                if self.role == "leader" and r.sender != self.me.id and rank < self.me.rank:
                    out.append(self._become_follower(r.term, r.sender, f"better-ranked claim by {r.sender}"))
        elif r.kind == "hb":
            if r.sender == self.me.id:
                if self.role == "leader":
                    self.last_echo_at = now
            elif self.role == "leader":
                if (r.priority, r.sender) < self.me.rank:
                    out.append(self._become_follower(r.term, r.sender, f"better-ranked leader {r.sender}"))
            else:
                if self.leader != r.sender:
                    self.leader, self.leader_left_at = r.sender, None
                    if not self.membership.alive(r.sender):
                        self.leader_left_at = now
                    if self.role == "candidate":
                        out.append(self._become_follower(r.term, r.sender, f"{r.sender} leads term {r.term}"))
                    else:
                        out.append(
                            RoleChange("follower", r.term, r.sender, f"{r.sender} leads term {r.term}")
                        )
        elif r.kind == "stepdown" and r.sender == self.leader and r.sender != self.me.id:
            self.vacant, self.leader_left_at = True, now
        return out

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        t = self.timing
        if self.role == "leader":
            if self.last_hb_at is None or now - self.last_hb_at >= t.heartbeat_s:
                out.append(Publish(self._record("hb", now)))
                self.last_hb_at = now
            return out
        if self.role == "candidate":
            assert self._claim_at is not None
            if now - self._claim_at >= t.claim_window_s:
                if not self._claim_echoed:
                    # The broker never returned our claim: nobody else may have heard it either.
                    out.append(self._become_follower(self.term, None, "claim not confirmed by the broker"))
                elif self._best_claimant == self.me.id and self._best_claim is not None:
                    out.append(self._become_leader(now))
                else:
                    out.append(self._become_follower(self.term, self._best_claimant, "lost the claim"))
            return out
        if not self.connected:
            return out
        expires = self.lease_expires_at()
        if now < expires:
            return out
        position = self.membership.position(self.me.id, self.leader)
        if position is None:
            return out
        if now >= expires + position * 2 * t.claim_window_s:
            out.append(self._claim(now))
        return out

    def step_down(self, now: float) -> list[Action]:
        """Graceful hand-over: tell the stream, stop sending; the next in line claims without waiting."""
        if self.role != "leader":
            return []
        record = self._record("stepdown", now)
        change = self._become_follower(self.term, None, "stepping down on shutdown")
        return [Publish(record), change]

    # -- transitions --------------------------------------------------------------------------------------
    def _claim(self, now: float) -> Action:
        self.term += 1
        self.role, self.leader, self._claim_at, self._claim_echoed = "candidate", None, now, False
        self._best_claim, self._best_claimant = (self.term, self.me.rank), self.me.id
        self.last_stream_at = now
        return Publish(
            StreamRecord("claim", self.term, self.me.id, priority=self.me.priority, boot_id=self.me.boot_id)
        )

    def _become_leader(self, now: float) -> RoleChange:
        self.role, self.leader, self.leader_left_at = "leader", self.me.id, None
        self.seq, self.last_hb_at, self.last_echo_at, self.leader_since = 0, None, None, now
        self.takeovers += 1
        return RoleChange("leader", self.term, self.me.id, "won the claim")

    def _become_follower(self, term: int, leader: str | None, reason: str) -> RoleChange:
        self.role, self.leader, self.last_echo_at, self._claim_at = "follower", leader, None, None
        self.leader_since = None
        return RoleChange("follower", term, leader, reason)

    def _record(self, kind: Literal["hb", "stepdown"], now: float) -> StreamRecord:
        self.seq += 1
        return StreamRecord(kind, self.term, self.me.id, seq=self.seq, priority=self.me.priority)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def _what(r: StreamRecord) -> str:
    return {"claim": "claimed", "hb": "leads", "stepdown": "stepped down in"}.get(r.kind, r.kind)
