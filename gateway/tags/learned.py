"""The cloud's answers about tags that are not yet known to be in the store. Pure: no I/O.

design.md "Cache learning": every idTagInfo / idTokenInfo the cloud returns while online is used
offline after the synced list. The charger has the cloud's answer before the learned row is
committed (a group commit with fsync, milliseconds); if the link drops in between, the charger's
next Authorize is answered offline and must already see that answer. So the answer is put here
the moment it is relayed, the offline decision reads it before the store's row, and it leaves
once the row holding it (or a later answer for the same tag) has been committed. A write that
fails (store down) leaves it here, still answering, until a retry commits it.

Bounded: beyond ``max_entries`` tags the oldest entry is dropped (it is then only as good as its
write). That takes thousands of distinct tags learned while the store cannot commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gateway.core.access import LearnedTag

__all__ = ["MAX_PENDING", "LearnedOverlay", "Pending"]

MAX_PENDING: Final = 4096  # tags; ~0.5 KB each, so at most ~2 MB while the store is down


@dataclass(frozen=True, slots=True)
class Pending:
    """One learned answer waiting for its row: ``generation`` tells it from a later answer."""

    key: str  # the normalised tag
    generation: int
    learned: LearnedTag

    @property
    def row(self) -> tuple[str, str, str, str | None, str | None, str]:
        """The ``learned_tags`` row: key, id tag, status, expiry, parent, learned at."""
        t = self.learned
        return (self.key, t.id_tag, t.status, t.expiry_date, t.parent_id_tag, t.learned_at)


class LearnedOverlay:
    """The newest not-yet-committed learned answer per tag key, in the order they were learned."""

    __slots__ = ("_entries", "_generation", "_max", "_unwritten", "evicted")

    def __init__(self, max_entries: int = MAX_PENDING) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: dict[str, Pending] = {}
        self._unwritten: set[str] = set()  # keys whose write failed or was cancelled
        self._generation = 0
        self.evicted = 0  # entries dropped to keep the bound, since start

    @property
    def max_entries(self) -> int:
        return self._max

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, learned: LearnedTag) -> Pending:
        """Hold ``learned`` as the answer for ``key`` (replacing an older one); its write is due."""
        self._generation += 1
        entry = Pending(key, self._generation, learned)
        self._entries.pop(key, None)  # re-inserted last: the order is the order of learning
        self._unwritten.discard(key)  # the new entry's own write is on its way
        self._entries[key] = entry
        while len(self._entries) > self._max:
            oldest = next(iter(self._entries))
            del self._entries[oldest]
            self._unwritten.discard(oldest)
            self.evicted += 1
        return entry

    def get(self, key: str) -> LearnedTag | None:
        """The answer held for ``key``; newer than any learned row the store may have for it."""
        entry = self._entries.get(key)
        return entry.learned if entry is not None else None

    def current(self, entries: Iterable[Pending]) -> list[Pending]:
        """Those of ``entries`` that are still held (not replaced by a later answer, not dropped)."""
        held = self._entries
        return [e for e in entries if held.get(e.key) is e]

    def written(self, entries: Iterable[Pending]) -> None:
        """``entries`` are committed: drop each that a later answer has not replaced."""
        for entry in self.current(entries):
            del self._entries[entry.key]
            self._unwritten.discard(entry.key)

    def not_written(self, entries: Iterable[Pending]) -> None:
        """The write of ``entries`` failed or was abandoned: they wait for :meth:`take_unwritten`."""
        self._unwritten.update(e.key for e in self.current(entries))

    def take_unwritten(self) -> list[Pending]:
        """The held entries whose write failed, in learning order; they count as on their way."""
        if not self._unwritten:
            return []
        keys, self._unwritten = self._unwritten, set()
        return [e for k, e in self._entries.items() if k in keys]

    def all(self) -> list[Pending]:
        """Every held entry, in learning order (the last write at stop)."""
        return list(self._entries.values())
