import logging

from service.clock import ManualClock
from service.ratelimit import RateLimitedLog


def test_once_per_key_per_interval_with_count_of_held_back(caplog) -> None:
    clock = ManualClock(0)
    rl = RateLimitedLog(logging.getLogger("t"), clock, interval=60)
    with caplog.at_level(logging.WARNING):
        assert rl.warning("a", "bad %s", "a")
        assert not rl.warning("a", "bad %s", "a")
        assert not rl.warning("a", "bad %s", "a")
        assert rl.warning("b", "bad %s", "b")
        clock.advance(61)
        assert rl.warning("a", "bad %s", "a")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad a", "bad b", "bad a (2 more like this in the last 60 s were not logged)"]


def test_many_keys_still_log_at_most_max_lines_per_interval(caplog) -> None:
    clock = ManualClock(0)
    rl = RateLimitedLog(logging.getLogger("t"), clock, interval=60, max_lines=3)
    with caplog.at_level(logging.WARNING):
        logged = [rl.warning(f"device{i}", "bad payload from %s", i) for i in range(1000)]
        clock.advance(61)
        assert rl.warning("device5000", "bad payload from %s", 5000)
    assert logged.count(True) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    assert messages[-1].endswith("(997 more lines of other keys were not logged: at most 3 a 60 s)")
