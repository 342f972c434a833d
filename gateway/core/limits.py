"""Rate limits as values: the driver passes ``now`` in. Pure.

- :class:`LogLimiter`: a repeated warning or error (a refused cloud CALL, a bad charger frame, a
  failing commit) is logged at most once per ``every_s`` per kind and subject (the charger, or
  the store file, or the source address); the lines left out are counted and told in one line
  ("CP-1: bad frame from charger: … and 1,523 more like it in 60 s") when the next line of that
  kind is allowed, or when the window has passed and the owner flushes (:func:`log_left_out`).
  :class:`LimitedLog` is how a component logs through it.
- :class:`AuthThrottle`: failed authentications per source address (charger Basic auth, a wrong
  ``api.token``, a wrong sign-in token). After ``max_failures`` within ``window_s`` the address is
  refused outright for ``block_s``, whatever it sends: a right password then is refused too, so
  the refusal says nothing about the password (no oracle).

Both keep bounded memory: entries go when their window has passed, and a cap on the number of
keys holds against a flood of distinct ones.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AuthThrottle",
    "LeftOut",
    "LimitedLog",
    "LogLimiter",
    "log_left_out",
    "summary_text",
]

LOG_EVERY_S: Final = 60.0  # design.md: at most once a minute per kind and charger
OVERFLOW_SUBJECT: Final = "(others)"  # where lines of keys past the cap are counted


@dataclass(frozen=True, slots=True)
class LeftOut:
    """Lines of one kind and subject left out in a window that has passed."""

    kind: str
    subject: str
    count: int
    level: int
    logger: str


class _Entry:
    __slots__ = ("level", "logger", "omitted", "since")

    def __init__(self, since: float, level: int, logger: str) -> None:
        self.since = since  # when the last line of this key was logged
        self.omitted = 0
        self.level = level
        self.logger = logger


class LogLimiter:
    """At most one line per ``every_s`` for each (kind, subject); the rest are counted.

    ``allow`` is one dict lookup and a comparison: it is called only when a line would be
    logged, never per relayed frame.
    """

    __slots__ = ("_entries", "_next_flush", "every_s", "max_keys")

    def __init__(self, every_s: float = LOG_EVERY_S, *, max_keys: int = 4096) -> None:
        if every_s <= 0 or max_keys < 1:
            raise ValueError("every_s and max_keys must be positive")
        self.every_s = every_s
        self.max_keys = max_keys
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._next_flush = float("inf")

    @property
    def tracked(self) -> int:
        """Keys held (their window has not passed or not been flushed)."""
        return len(self._entries)

    def allow(
        self,
        kind: str,
        subject: str,
        now: float,
        *,
        level: int = logging.WARNING,
        logger: str = "gateway",
    ) -> int | None:
        """None: leave this line out (it is counted). Otherwise log it; the number is how many
        lines of this key were left out since the last one logged (0: none, say nothing)."""
        key = (kind, subject)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_keys:
                key = (kind, OVERFLOW_SUBJECT)
                entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(now, level, logger)
                self._next_flush = min(self._next_flush, now + self.every_s)
                return 0
        if now - entry.since < self.every_s:
            entry.omitted += 1
            return None
        omitted, entry.omitted, entry.since = entry.omitted, 0, now
        self._next_flush = min(self._next_flush, now + self.every_s)
        return omitted

    def forget(self, kind: str, subject: str) -> int:
        """The condition behind (``kind``, ``subject``) ended: its next line is logged at once.
        Returns how many of its lines were left out since the last one logged."""
        entry = self._entries.pop((kind, subject), None)
        return 0 if entry is None else entry.omitted

    def flush(self, now: float) -> list[LeftOut]:
        """The counts of windows that have passed by ``now``, each told once; their keys are
        forgotten (the next line of such a key is logged at once). Cheap when nothing is due."""
        if now < self._next_flush:
            return []
        due: list[LeftOut] = []
        next_flush = float("inf")
        for key, entry in list(self._entries.items()):
            ends = entry.since + self.every_s
            if ends > now:
                next_flush = min(next_flush, ends)
                continue
            del self._entries[key]
            if entry.omitted:
                due.append(LeftOut(key[0], key[1], entry.omitted, entry.level, entry.logger))
        self._next_flush = next_flush
        return due


def summary_text(count: int, every_s: float) -> str:
    """What the line that tells how many lines of a kind were left out says after the kind."""
    return f"… and {count:,} more like it in {every_s:g} s"


class LimitedLog:
    """One subject's repeated lines (a charger's, the store file's) through a shared limiter.

    Each line reads ``<subject>: <kind>: <detail>``; the kind is what is limited, so the line
    that counts those left out (``<subject>: <kind>: … and 1,523 more like it in 60 s``) names
    it. The subject is the first argument, as :func:`gateway.logs.charger_of` expects.
    """

    __slots__ = ("limiter", "logger", "subject")

    def __init__(self, logger: logging.Logger, limiter: LogLimiter, subject: str) -> None:
        self.logger = logger
        self.limiter = limiter
        self.subject = subject

    def warning(self, now: float, kind: str, detail: str = "", *args: object) -> None:
        self._emit(logging.WARNING, now, kind, detail, args, False)

    def error(
        self, now: float, kind: str, detail: str = "", *args: object, exc_info: bool = False
    ) -> None:
        self._emit(logging.ERROR, now, kind, detail, args, exc_info)

    def _emit(
        self, level: int, now: float, kind: str, detail: str, args: tuple[object, ...], exc: bool
    ) -> None:
        """Log the line unless one of ``kind`` was logged less than a window ago; first the
        count of those left out since then, if any."""
        logger, subject = self.logger, self.subject
        omitted = self.limiter.allow(kind, subject, now, level=level, logger=logger.name)
        if omitted is None:
            return
        # stacklevel 3: the record names the line that called warning or error, not this one.
        if omitted:
            text = summary_text(omitted, self.limiter.every_s)
            logger.log(level, "%s: %s: %s", subject, kind, text, stacklevel=3)
        if detail:
            logger.log(level, "%s: %s: " + detail, subject, kind, *args, exc_info=exc, stacklevel=3)
        else:
            logger.log(level, "%s: %s", subject, kind, exc_info=exc, stacklevel=3)


def log_left_out(limiter: LogLimiter, now: float) -> None:
    """Write the counts of the windows that have passed (the owner calls it every second or so)."""
    for left in limiter.flush(now):
        text = summary_text(left.count, limiter.every_s)
        logging.getLogger(left.logger).log(left.level, "%s: %s: %s", left.subject, left.kind, text)


class AuthThrottle:
    """Failed authentications per source address, and which addresses are refused meanwhile.

    ``blocked_for(address, now)`` is asked before any credential is checked; ``failed(address,
    now)`` is told of each wrong one and returns True when it starts a block (the caller logs
    that: one line per address and block, at most one a ``block_s``). A block is not extended
    by attempts made during it; a right password during it is refused like any other.
    """

    __slots__ = ("_blocked", "_failures", "block_s", "max_addresses", "max_failures", "window_s")

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        block_s: float = 60.0,
        max_addresses: int = 10_000,
    ) -> None:
        if max_failures < 1 or window_s <= 0 or block_s <= 0 or max_addresses < 1:
            raise ValueError("limits must be positive")
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_addresses = max_addresses
        # address → times of its recent failures (at most max_failures), least recent first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: dict[str, float] = {}  # address → end of its block

    @property
    def tracked(self) -> int:
        """Addresses held in memory (failing or blocked)."""
        return len(self._failures) + len(self._blocked)

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds ``address`` is still refused for (0.0: not blocked)."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[address]
            return 0.0
        return until - now

    def failed(self, address: str, now: float) -> bool:
        """A failed authentication from ``address``; True if this one starts its block."""
        if self.blocked_for(address, now):
            return False
        times = self._failures.pop(address, None)
        if times is None:
            times = deque(maxlen=self.max_failures)
            self._forget_old(now)
        times.append(now)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.max_failures:
            self._blocked[address] = now + self.block_s
            if len(self._blocked) > self.max_addresses:  # a flood of addresses: oldest block goes
                del self._blocked[next(iter(self._blocked))]
            return True
        self._failures[address] = times  # most recent last
        return False

    def _forget_old(self, now: float) -> None:
        """Drop addresses whose failures have all left the window, and past the cap the least
        recently failing ones."""
        failures = self._failures
        while failures:
            address, times = next(iter(failures.items()))
            if times[-1] > now - self.window_s and len(failures) < self.max_addresses:
                break
            del failures[address]
        if len(self._blocked) > self.max_addresses // 2:
            for address in [a for a, until in self._blocked.items() if until <= now]:
                del self._blocked[address]
