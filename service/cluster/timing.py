"""The cluster's timing parameters and the rules that keep them safe.

Changed from the first proposal (specs/rules-and-consensus.md B.6.3: H 0.5, D 2, F 3, L 6, C 0.5): with
those, a ``kill -9`` takeover is F + C = 3.5 s after the last heartbeat, above the 3 s p95 the cluster must
reach. What safety needs is only the ratios: a follower must not claim before the old leader has fenced
itself, i.e. F and L (measured by the follower since the last stream message) must exceed D (measured by the
leader since its last echoed heartbeat) by more than the clock-rate difference we tolerate (1.5x). So:

- H = 0.25 s heartbeat: the leader's echo is at most ~H old in steady state, so D can be short;
- D = 1.0 s renew deadline: four missed echoes fence the leader (a LAN broker answers in milliseconds);
- F = 1.6 s fast path after the leader's will fired (F/D = 1.6);
- L = 4.0 s lease when no will arrives (a hung or cut-off leader; L/D = 4);
- C = 0.3 s claim window, staggered by rank position so the second-best follower claims only if the best
  one stayed silent.

kill -9: will at once, claim at F after the last message, leader at F + C = 1.9 s (≤ 2.15 s counting the up to
H-old last heartbeat). A hung leader: L + C = 4.3 s. Both inside the targets (3 s, 8 s).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CLOCK_RATE_RATIO = 1.5


class ClusterTiming(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat_s: float = Field(0.25, gt=0, description="H: leader heartbeat period")
    renew_deadline_s: float = Field(1.0, gt=0, description="D: leader stops sending when its echo is older")
    fast_path_s: float = Field(1.6, gt=0, description="F: follower wait after the leader's will fired")
    lease_s: float = Field(4.0, gt=0, description="L: follower wait when no stream message arrives")
    claim_window_s: float = Field(0.3, gt=0, description="C: how long claims are collected before resolving")

    @model_validator(mode="after")
    def _safe(self) -> ClusterTiming:
        d = self.renew_deadline_s
        if self.heartbeat_s * 2 > d:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be at most half of renew_deadline_s ({d})"
            )
        for name, value in (("fast_path_s", self.fast_path_s), ("lease_s", self.lease_s)):
            if value < d * MAX_CLOCK_RATE_RATIO:
                raise ValueError(
                    f"{name} ({value}) must be at least {MAX_CLOCK_RATE_RATIO} x renew_deadline_s ({d}), "
                    "or a follower could claim while the old leader still sends"
                )
        if self.lease_s < self.fast_path_s:
            raise ValueError("lease_s must not be shorter than fast_path_s")
        return self
