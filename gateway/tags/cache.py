"""The tag cache as the relay core uses it: offline answers and learning (thin async driver).

The decisions are :mod:`gateway.tags.rules`' pure functions; this module only reads and writes rows.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from gateway.core.limits import LimitedLog
from gateway.errors import StoreError
from gateway.store.engine import Store
from gateway.tags.flipturn import access_id_json
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
    """Offline authorization from the synced list, the learned cache and the unknown-tag policy."""

    def __init__(
        self, store: Store, *, unknown_tags: str, metrics: CacheMetrics | None = None
    ) -> None:
        self._store = store
        self._unknown_tags = unknown_tags
        self._lines = LimitedLog(log, store.lines.limiter, "tag cache")  # the store's limiter
        self._metrics = metrics

    async def authorize(self, id_tag: str, now: datetime) -> Decision:
        """The offline answer for ``id_tag`` as the charger spelled it.

        Turn it into a 1.6 idTagInfo with :func:`gateway.tags.id_tag_info` or a 2.0.1 idTokenInfo
        with :func:`gateway.tags.id_token_info`. If the store cannot be read, the unknown-tag
        policy answers (the charger must get an answer either way).
        """
        try:
            synced, learned = await self._store.lookup_tag(normalise(id_tag))
        except StoreError:
            kind = "lookup failed; answering by offline.unknown_tags"
            self._lines.error(time.monotonic(), kind, exc_info=True)
            synced, learned = None, None
        decision = decide(synced, learned, unknown_tags=self._unknown_tags, now=now)
        if self._metrics is not None:
            self._metrics.count(decision)
        return decision

    async def auth_info(self, version: str, id_tag: str, now: datetime) -> dict[str, Any]:
        """The offline idTagInfo (1.6) or idTokenInfo (2.0.1) for ``id_tag`` (``host.Authorizer``)."""
        decision = await self.authorize(id_tag, now)
        return id_tag_info(decision) if version == "1.6" else id_token_info(decision)

    async def learn_from(
        self,
        version: str,
        action: str,
        request: dict[str, Any],
        response: dict[str, Any],
        now: datetime,
    ) -> None:
        """Learn the idTagInfo / idTokenInfo of a cloud CALLRESULT to a charger CALL.

        Awaits one durable group commit when there is something to learn, so call it after the
        answer went to the charger (or in a task). Never raises on bad data or a failing store.
        """
        try:
            entries = learnable(version, action, request, response)
            if not entries:
                return
            await self._store.learn_tags(
                [
                    (normalise(tag), tag, status, expiry, parent)
                    for tag, status, expiry, parent in entries
                ],
                _timestamp(now),
            )
        except Exception:
            kind = "could not learn from the cloud's answer"
            self._lines.error(time.monotonic(), kind, "%s", action, exc_info=True)
            return
        if self._metrics is not None:
            self._metrics.learned.inc(len(entries))

    async def describe(self, id_tag: str, now: datetime) -> dict[str, Any]:
        """What the cache holds for ``id_tag`` and its offline decision (``tags lookup``)."""
        key = normalise(id_tag)
        synced, learned = await self._store.lookup_tag(key)
        decision = decide(synced, learned, unknown_tags=self._unknown_tags, now=now)
        access_row = await self._store.find_access_id(key)
        learned_row = await self._store.find_learned_tag(key)
        return {
            "idTag": id_tag,
            "key": key,
            "accessId": access_id_json(access_row) if access_row is not None else None,
            "learned": (
                {
                    "idTag": learned_row.id_tag,
                    "status": learned_row.status,
                    "expiryDate": learned_row.expiry_date,
                    "parentIdTag": learned_row.parent_id_tag,
                    "learnedAt": learned_row.learned_at,
                }
                if learned_row is not None
                else None
            ),
            "decision": {
                "source": decision.source,
                "idTagInfo": id_tag_info(decision),
                "idTokenInfo": id_token_info(decision),
            },
        }
