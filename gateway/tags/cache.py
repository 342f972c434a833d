"""The tag cache as the relay core uses it: offline answers and learning (thin async driver).

The decisions are :mod:`gateway.tags.rules`' pure functions; this module only reads and writes rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from gateway.core.access import LearnedTag, SyncedTag
from gateway.core.limits import LimitedLog
from gateway.errors import StoreError
from gateway.store.engine import Store
from gateway.tags.flipturn import access_id_json
from gateway.tags.learned import MAX_PENDING, LearnedOverlay, Pending
from gateway.tags.rules import Decision, decide, id_tag_info, id_token_info, learnable, normalise

__all__ = ["CacheMetrics", "TagCache"]

log = logging.getLogger(__name__)


class CacheMetrics:
    """Prometheus metrics of locally answered authorizations, registered in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.authorizations = Counter(
            "flipturn_gateway_local_authorizations",
            "Authorizations the gateway answered itself, by status and by source"
            " (synced, learned, policy)",
            ["status", "source"],
            registry=registry,
        )
        self.learned = Counter(
            "flipturn_gateway_learned_tags",
            "idTagInfo / idTokenInfo answers of the cloud written to the learned cache",
            registry=registry,
        )
        self._children: dict[tuple[str, str], Any] = {}

    def count(self, decision: Decision) -> None:
        """Count one local answer (label children cached: this is on the Authorize path)."""
        key = (decision.status, decision.source)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.authorizations.labels(
                status=decision.status, source=decision.source
            )
        child.inc()


def _timestamp(now: datetime) -> str:
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


class TagCache:
    """Offline authorization from the synced list, the learned cache and the unknown-tag policy.

    The learned cache is the store's ``learned_tags`` plus an in-memory overlay
    (:class:`~gateway.tags.learned.LearnedOverlay`) of the answers whose row is not committed
    yet: an answer counts from the moment :meth:`learn` returns, not from its commit. Writes that
    fail while the store is down are retried once it commits again (one task, :meth:`close`
    ends it and makes a last attempt).
    """

    def __init__(
        self,
        store: Store,
        *,
        unknown_tags: str,
        metrics: CacheMetrics | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._store = store
        self._unknown_tags = unknown_tags
        self._lines = LimitedLog(log, store.lines.limiter, "tag cache")  # the store's limiter
        self._metrics = metrics
        self._overlay = LearnedOverlay(max_pending)
        self._retrier: asyncio.Task[None] | None = None
        self._evicted_logged = 0

    @property
    def pending(self) -> int:
        """Learned answers not yet known to be committed (held in memory)."""
        return len(self._overlay)

    async def _lookup(self, key: str) -> tuple[SyncedTag | None, LearnedTag | None]:
        # The overlay is read before and after the store: an entry whose row commits while the
        # read waits leaves the overlay, and the read may predate the commit.
        before = self._overlay.get(key)
        synced, learned = await self._store.lookup_tag(key)
        return synced, self._overlay.get(key) or before or learned

    async def authorize(self, id_tag: str, now: datetime) -> Decision:
        """The offline answer for ``id_tag`` as the charger spelled it.

        Turn it into a 1.6 idTagInfo with :func:`gateway.tags.id_tag_info` or a 2.0.1 idTokenInfo
        with :func:`gateway.tags.id_token_info`. If the store cannot be read, the answers learned
        since start that are still in memory, then the unknown-tag policy answer (the charger
        must get an answer either way).
        """
        key = normalise(id_tag)
        try:
            synced, learned = await self._lookup(key)
        except StoreError:
            kind = "lookup failed; answering by offline.unknown_tags"
            self._lines.error(time.monotonic(), kind, exc_info=True)
            synced, learned = None, self._overlay.get(key)
        decision = decide(synced, learned, unknown_tags=self._unknown_tags, now=now)
        if self._metrics is not None:
            self._metrics.count(decision)
        return decision

    async def auth_info(self, version: str, id_tag: str, now: datetime) -> dict[str, Any]:
        """The offline idTagInfo (1.6) or idTokenInfo (2.0.1) for ``id_tag`` (``host.Authorizer``)."""
        decision = await self.authorize(id_tag, now)
        return id_tag_info(decision) if version == "1.6" else id_token_info(decision)

    def learn(
        self,
        version: str,
        action: str,
        request: dict[str, Any],
        response: dict[str, Any],
        now: datetime,
    ) -> Coroutine[Any, Any, None] | None:
        """Learn the idTagInfo / idTokenInfo of a cloud CALLRESULT to a charger CALL.

        Offline answers use it from the return on (call it no later than the answer goes to
        the charger). Returns the write of its row, to run in a task (it never raises), or None
        when there is nothing to learn. Never raises on bad data.
        """
        try:
            entries = learnable(version, action, request, response)
        except Exception:
            kind = "could not learn from the cloud's answer"
            self._lines.error(time.monotonic(), kind, "%s", action, exc_info=True)
            return None
        if not entries:
            return None
        at = _timestamp(now)
        pending = [
            self._overlay.put(normalise(tag), LearnedTag(tag, status, expiry, parent, at))
            for tag, status, expiry, parent in entries
        ]
        evicted = self._overlay.evicted
        if evicted >= 2 * self._evicted_logged and evicted > self._evicted_logged:
            # At 1, 2, 4, 8 ... dropped answers: a store down for long must not flood the log.
            self._evicted_logged = evicted
            log.warning(
                "%d learned answers not yet written were dropped from memory (bound %d)",
                evicted,
                self._overlay.max_entries,
            )
        if self._metrics is not None:
            self._metrics.learned.inc(len(entries))
        return self._write(pending, action)

    async def learn_from(
        self,
        version: str,
        action: str,
        request: dict[str, Any],
        response: dict[str, Any],
        now: datetime,
    ) -> None:
        """:meth:`learn`, then its write: returns once the row is committed or the write failed
        (then it is retried in the background). Never raises on bad data or a failing store."""
        write = self.learn(version, action, request, response, now)
        if write is not None:
            await write

    async def _write(self, pending: list[Pending], action: str) -> None:
        try:
            await self._commit(pending)
        except asyncio.CancelledError:
            self._overlay.not_written(pending)  # written at the latest by close()
            raise
        except Exception as exc:
            self._overlay.not_written(pending)
            if not isinstance(exc, StoreError):
                log.exception("could not write what the cloud's %s answer taught", action)
            elif self._retrier is None or self._retrier.done():
                # Once per outage (the store logs its own state): the retry task then takes
                # every later failed write too.
                log.warning("learned answers wait in memory until the store commits: %s", exc)
                self._retrier = asyncio.create_task(self._retry())

    async def _commit(self, pending: list[Pending]) -> None:
        current = self._overlay.current(pending)
        if current:
            await self._store.learn_tag_rows([entry.row for entry in current])
            self._overlay.written(current)

    async def _retry(self) -> None:
        """Write what failed to be written, each time the store commits again, until all is."""
        while True:
            await self._store.wait_usable()
            pending = self._overlay.take_unwritten()
            if not pending:
                return
            try:
                await self._commit(pending)
            except asyncio.CancelledError:
                self._overlay.not_written(pending)  # close() writes them
                raise
            except Exception as exc:
                self._overlay.not_written(pending)
                if isinstance(exc, StoreError) and not self._store.ok:
                    continue  # down again: wait for the next recovery
                # The store commits, yet not these rows: retrying cannot help. They keep
                # answering from memory; close() tries once more.
                log.error("could not write %d learned answers: %s", len(pending), exc)
                return
            else:
                log.info("wrote %d learned answers the store could not take", len(pending))

    async def close(self) -> None:
        """End the retries and try once more to write every answer held in memory (at stop)."""
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        pending = self._overlay.all()
        if not pending:
            return
        try:
            await self._commit(pending)
        except Exception as exc:
            log.error("%d learned answers could not be written: %s", len(pending), exc)

    async def describe(self, id_tag: str, now: datetime) -> dict[str, Any]:
        """What the cache holds for ``id_tag`` and its offline decision (``tags lookup``)."""
        key = normalise(id_tag)
        synced, learned = await self._lookup(key)
        decision = decide(synced, learned, unknown_tags=self._unknown_tags, now=now)
        access_row = await self._store.find_access_id(key)
        return {
            "idTag": id_tag,
            "key": key,
            "accessId": access_id_json(access_row) if access_row is not None else None,
            "learned": (
                {
                    "idTag": learned.id_tag,
                    "status": learned.status,
                    "expiryDate": learned.expiry_date,
                    "parentIdTag": learned.parent_id_tag,
                    "learnedAt": learned.learned_at,
                }
                if learned is not None
                else None
            ),
            "decision": {
                "source": decision.source,
                "idTagInfo": id_tag_info(decision),
                "idTokenInfo": id_token_info(decision),
            },
        }
