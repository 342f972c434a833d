"""The rate limits on a fake clock: repeated log lines, failed authentications per address."""

from __future__ import annotations

import logging

import pytest

from gateway.core.limits import AuthThrottle, LeftOut, LimitedLog, LogLimiter, log_left_out

# --- the log limiter ------------------------------------------------------------------------------


def test_one_line_a_minute_per_kind_and_subject_and_the_count_of_the_rest() -> None:
    limit = LogLimiter(60.0)
    assert limit.allow("bad frame", "CP-1", 0.0) == 0  # the first is logged
    assert [limit.allow("bad frame", "CP-1", t / 100) for t in range(1, 1524)] == [None] * 1523
    # Other kinds and other chargers are not held back by it.
    assert limit.allow("queue full", "CP-1", 1.0) == 0
    assert limit.allow("bad frame", "CP-2", 1.0) == 0
    assert limit.allow("bad frame", "CP-1", 59.9) is None
    # A minute after the last line logged, the next is logged, with the count left out.
    assert limit.allow("bad frame", "CP-1", 60.0) == 1524
    assert limit.allow("bad frame", "CP-1", 60.5) is None
    assert limit.allow("bad frame", "CP-1", 120.0) == 1


def test_flush_tells_each_window_once_and_forgets_its_key() -> None:
    limit = LogLimiter(60.0)
    limit.allow("bad frame", "CP-1", 0.0, level=logging.ERROR, logger="gateway.x")
    for t in range(1, 13):
        limit.allow("bad frame", "CP-1", float(t))
    limit.allow("queue full", "CP-2", 30.0)  # nothing left out: its flush says nothing
    assert limit.flush(59.9) == []
    assert limit.flush(60.0) == [LeftOut("bad frame", "CP-1", 12, logging.ERROR, "gateway.x")]
    assert limit.flush(61.0) == []  # told once
    assert limit.tracked == 1  # CP-2's window has not passed yet
    assert limit.flush(90.0) == [] and limit.tracked == 0  # memory follows what is still limited
    assert limit.allow("bad frame", "CP-1", 61.0) == 0  # its count was told: logged at once


def test_a_condition_that_ends_is_forgotten_and_its_next_line_shown_at_once() -> None:
    limit = LogLimiter(60.0)
    shown = [t for t in range(0, 600, 5) if limit.allow("down", "CP-1", float(t)) is not None]
    assert shown == [0, 60, 120, 180, 240, 300, 360, 420, 480, 540]
    assert limit.forget("down", "CP-1") == 11  # 545-595: left out since the line at 540
    assert limit.allow("down", "CP-1", 601.0) == 0  # a new outage: its first line at once
    assert limit.forget("never", "CP-1") == 0


def test_keys_beyond_the_cap_share_one_entry_per_kind() -> None:
    limit = LogLimiter(60.0, max_keys=3)
    assert [limit.allow("refused", f"10.0.0.{i}", 0.0) for i in range(3)] == [0, 0, 0]
    assert limit.allow("refused", "10.0.0.3", 0.0) == 0  # the first of the overflow entry
    assert [limit.allow("refused", f"10.0.1.{i}", 1.0) for i in range(100)] == [None] * 100
    assert limit.tracked == 4
    (left,) = limit.flush(60.0)
    assert (left.subject, left.count) == ("(others)", 100)


def test_limited_log_lines_and_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.test")
    limit = LogLimiter(60.0)
    lines = LimitedLog(logging.getLogger("gateway.test"), limit, "CP-1")
    for i in range(1525):
        lines.warning(i / 100, "charger queue full", "refusing Reset %s", i)
    assert [r.getMessage() for r in caplog.records] == [
        "CP-1: charger queue full: refusing Reset 0"
    ]
    assert caplog.records[0].args == ("CP-1", "charger queue full", 0)  # the charger first
    caplog.clear()
    lines.warning(61.0, "charger queue full", "refusing Reset %s", "x")
    assert [r.getMessage() for r in caplog.records] == [
        "CP-1: charger queue full: … and 1,524 more like it in 60 s",
        "CP-1: charger queue full: refusing Reset x",
    ]
    caplog.clear()
    for i in range(3):
        lines.error(62.0 + i, "failed to handle a frame")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "CP-1: failed to handle a frame")
    ]
    caplog.clear()
    log_left_out(limit, 121.0)  # the hub's sweep: queue full's window passed, none left out
    assert caplog.records == []
    log_left_out(limit, 122.0)  # the errors' window passed with no next line: the count alone
    assert [(r.levelno, r.name, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            "gateway.test",
            "CP-1: failed to handle a frame: … and 2 more like it in 60 s",
        )
    ]


# --- failed authentications -----------------------------------------------------------------------


def test_twenty_wrong_passwords_block_the_address_not_others() -> None:
    throttle = AuthThrottle(max_failures=10, window_s=60.0, block_s=60.0)
    starts = [throttle.failed("192.0.2.7", 100.0 + i) for i in range(10)]
    assert starts == [False] * 9 + [True]  # the tenth within 60 s starts the block
    # Refused outright from now: the caller asks before it checks any password, so the right
    # one is refused too, and the answer says nothing about it.
    for i in range(10, 20):
        assert throttle.blocked_for("192.0.2.7", 100.0 + i) > 0
        assert throttle.failed("192.0.2.7", 100.0 + i) is False  # no new block, no new line
    assert throttle.blocked_for("192.0.2.7", 168.9) == pytest.approx(0.1)
    assert throttle.blocked_for("192.0.2.8", 110.0) == 0.0  # another address: at once
    assert throttle.blocked_for("192.0.2.7", 169.0) == 0.0  # 60 s after the tenth
    assert throttle.failed("192.0.2.7", 169.0) is False  # counting starts afresh


def test_failures_spread_over_more_than_the_window_do_not_block() -> None:
    throttle = AuthThrottle(max_failures=10, window_s=60.0, block_s=60.0)
    assert not any(throttle.failed("198.51.100.1", i * 7.0) for i in range(30))  # ~8.6 a minute
    assert throttle.blocked_for("198.51.100.1", 300.0) == 0.0


def test_memory_is_bounded_by_the_address_cap() -> None:
    throttle = AuthThrottle(max_failures=3, window_s=60.0, block_s=60.0, max_addresses=100)
    for i in range(10_000):
        throttle.failed(f"10.{i // 256 % 256}.{i % 256}.1", i / 1000)
    assert throttle.tracked <= 200
    for i in range(300):  # blocks too
        for _ in range(3):
            throttle.failed(f"172.16.{i // 256}.{i % 256}", 20.0)
    assert throttle.tracked <= 200
    # Old failures leave: an address that failed long ago is not tracked after a new failure.
    throttle.failed("203.0.113.9", 1000.0)
    assert throttle.tracked == 1


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        LogLimiter(0)
    with pytest.raises(ValueError):
        AuthThrottle(max_failures=0)
