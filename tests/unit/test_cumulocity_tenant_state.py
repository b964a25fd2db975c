"""The per-source state kept in the tenant, as data: versions, bounds, what a damaged fragment reads as."""

from __future__ import annotations

from service.cumulocity.tenant_state import MAX_VERSIONS, SourceState, json_safe


def alarm(alarm_id: str, **kw: object) -> dict[str, object]:
    return {"id": alarm_id, "type": "c8y_T", "status": "ACTIVE", "severity": "MAJOR", "count": 1, **kw}


def test_a_recorded_version_drops_its_redelivery_and_older_ones() -> None:
    st = SourceState()
    first = alarm("1", lastUpdated="2024-05-01T10:00:00.000Z")
    assert st.check(first) == "new"
    st.record(first, 100.0)
    assert st.check(first) == "duplicate"
    older = alarm("1", status="CLEARED", lastUpdated="2024-05-01T09:00:00.000Z")
    assert st.check(older) == "stale"
    newer = alarm("1", status="CLEARED", lastUpdated="2024-05-01T11:00:00.000Z")
    assert st.check(newer) == "new"
    assert st.type_of("1") == "c8y_T" and st.type_of("2") is None


def test_the_fragment_round_trips_and_a_damaged_one_reads_as_empty() -> None:
    st = SourceState(owner="podA")
    st.record(alarm("7"), 5.0)
    st.alerts["a1"] = {"rule": "r", "episode": "e"}
    st.acks["a1"] = {"episode": "e", "by": "alice", "comment": "", "time": 6.0}
    again = SourceState.from_fragment(json_safe(st.to_fragment()))
    assert again.to_fragment() == json_safe(st.to_fragment())
    assert again.owner == "podA" and again.check(alarm("7")) == "duplicate"
    for damaged in (None, "text", {"versions": {"1": "not a list"}, "alerts": [], "owner": 3}):
        empty = SourceState.from_fragment(damaged)
        assert empty.versions == {} and empty.alerts == {} and empty.owner is None


def test_versions_are_bounded_and_purged_oldest_first() -> None:
    st = SourceState()
    for i in range(MAX_VERSIONS + 10):
        st.record(alarm(str(i)), float(i))
    assert (
        len(st.versions) == MAX_VERSIONS and "0" not in st.versions and str(MAX_VERSIONS + 9) in st.versions
    )
    st.purge(float(MAX_VERSIONS))
    assert min(int(k) for k in st.versions) == MAX_VERSIONS
