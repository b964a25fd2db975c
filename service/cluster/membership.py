"""Who is in the cluster (retained presence records) and in which order they take over."""

from __future__ import annotations

from service.cluster.records import Presence


class Membership:
    def __init__(self, me: Presence) -> None:
        self.me = me
        self.members: dict[str, Presence] = {me.id: me}

    def update(self, member_id: str, presence: Presence | None) -> bool:
        """Apply a presence record (None: deleted by a will or a clean leave). Returns whether it changed."""
        if presence is None:
            return self.members.pop(member_id, None) is not None
        changed = self.members.get(member_id) != presence
        self.members[member_id] = presence
        return changed

    def alive(self, member_id: str) -> bool:
        return member_id in self.members

    def ranked(self) -> list[Presence]:
        return sorted(self.members.values(), key=lambda p: p.rank)

    def rank_of(self, member_id: str) -> int | None:
        for i, p in enumerate(self.ranked()):
            if p.id == member_id:
                return i
        return None

    def successors(self, leader: str | None) -> list[Presence]:
        """Live members in takeover order, the current leader left out."""
        return [p for p in self.ranked() if p.id != leader]

    def position(self, member_id: str, leader: str | None) -> int | None:
        """0 for the next in line, 1 for the one after, ...; None when not a live member."""
        for i, p in enumerate(self.successors(leader)):
            if p.id == member_id:
                return i
        return None
