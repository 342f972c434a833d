"""The in-memory overlay of learned answers whose row is not committed yet (pure)."""

from __future__ import annotations

import pytest

from gateway.core.access import LearnedTag
from gateway.tags.learned import LearnedOverlay


def answer(status: str, at: str = "2026-11-21T12:00:00Z") -> LearnedTag:
    return LearnedTag("tag", status, None, None, at)


def test_an_answer_is_held_until_its_write_committed() -> None:
    overlay = LearnedOverlay()
    entry = overlay.put("TAG", answer("Blocked"))
    assert overlay.get("TAG") == answer("Blocked") and len(overlay) == 1
    assert entry.row == ("TAG", "tag", "Blocked", None, None, "2026-11-21T12:00:00Z")
    overlay.written([entry])
    assert overlay.get("TAG") is None and len(overlay) == 0


def test_a_later_answer_outlives_the_commit_of_an_earlier_one() -> None:
    overlay = LearnedOverlay()
    first = overlay.put("TAG", answer("Accepted"))
    second = overlay.put("TAG", answer("Blocked", "2026-11-21T12:00:01Z"))
    assert overlay.current([first, second]) == [second]
    overlay.written([first])  # the earlier row landed: the later answer still counts
    assert overlay.get("TAG") == answer("Blocked", "2026-11-21T12:00:01Z")
    overlay.not_written([first])  # and the earlier one's failure is not retried
    assert overlay.take_unwritten() == []
    overlay.written([second])
    assert len(overlay) == 0


def test_failed_writes_are_taken_once_for_a_retry() -> None:
    overlay = LearnedOverlay()
    a, b = overlay.put("A", answer("Accepted")), overlay.put("B", answer("Blocked"))
    overlay.not_written([b, a])
    assert overlay.get("A") is not None  # still answering while the store is down
    assert overlay.take_unwritten() == [a, b]  # in learning order
    assert overlay.take_unwritten() == []  # on its way: not taken twice
    overlay.not_written([a])
    newer = overlay.put("A", answer("Expired"))  # its own write is on its way
    assert overlay.take_unwritten() == []
    overlay.written([newer, b])
    assert len(overlay) == 0


def test_bounded_dropping_the_oldest() -> None:
    overlay = LearnedOverlay(max_entries=2)
    a = overlay.put("A", answer("Accepted"))
    overlay.put("B", answer("Accepted"))
    overlay.put("A", answer("Blocked"))  # learned again: now the newest
    overlay.put("C", answer("Accepted"))
    assert [overlay.get(k) is not None for k in "ABC"] == [True, False, True]
    assert overlay.evicted == 1 and len(overlay) == 2
    assert overlay.current([a]) == []  # replaced, so its write commits nothing of use
    with pytest.raises(ValueError, match="at least 1"):
        LearnedOverlay(max_entries=0)
