"""Persists the depot view (``gateway.core.depot``): loaded at start-up, written in batches while running.

Nothing is written per relayed frame. Every ``flush_every_s`` the chargers whose picture changed
(a status, a transaction started, stopped or bound to its cloud id, a new boot) are written in one
transaction; chargers whose meter readings alone changed are written every ``meter_every_s``; all of
it once more at shutdown. A restart then shows what the depot looked like a few seconds before it
(meter readings may be older: the chargers' next MeterValues bring them up to date).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.core.depot import DepotView
from gateway.errors import StoreError
from gateway.ocpp import frames
from gateway.store.engine import Store

__all__ = ["DepotRecorder"]

log = logging.getLogger(__name__)


class DepotRecorder:
    """Moves depot records between a :class:`DepotView` and the store."""

    def __init__(
        self,
        view: DepotView,
        store: Store,
        *,
        flush_every_s: float = 2.0,
        meter_every_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.view = view
        self.store = store
        self.flush_every_s = flush_every_s
        self.meter_every_s = meter_every_s
        self._clock = clock
        self._meters_flushed_at = clock()
        self.writes = 0  # transactions written (for tests and benchmarks)

    async def load(self) -> int:
        """Restore every persisted charger; returns how many. A bad record is skipped, logged."""
        count = 0
        for charger_id, text in await self.store.depot_records():
            try:
                self.view.load(charger_id, frames.loads(text))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("%s: depot record not readable (%s); starting afresh", charger_id, exc)
                continue
            count += 1
        return count

    async def flush(self, *, meters: bool) -> int:
        """Write what changed (and meter-only changes if ``meters``); returns chargers written.

        While the store cannot commit (a full disk) nothing is tried: what changed stays to be
        written once it can, and the store's own log line says why (not one line every flush)."""
        if not self.store.ok:
            return 0
        records = self.view.take_dirty(touched=meters)
        if meters:
            self._meters_flushed_at = self._clock()
        if not records:
            return 0
        try:
            await self.store.save_depot(
                [(cid, frames.dumps(record)) for cid, record in records], self._clock()
            )
        except StoreError as exc:
            self.view.dirty.update(cid for cid, _ in records)  # try again next time
            log.warning("depot view not saved: %s", exc)
            return 0
        self.writes += 1
        return len(records)

    async def run(self) -> None:
        """Flush until cancelled."""
        while True:
            await asyncio.sleep(self.flush_every_s)
            due = self._clock() - self._meters_flushed_at >= self.meter_every_s
            try:
                await self.flush(meters=due)
            except Exception:
                log.exception("depot view flush failed")
