"""All charger sessions of one gateway and the services they share."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway import offline, txmap
from gateway.config import Settings
from gateway.depot import DepotView
from gateway.frames import OcppVersion, as_version
from gateway.metrics import RelayStats
from gateway.session import RECENT_IDS, Authorizer, ChargerSession, ChargerWatcher, SessionHook
from gateway.store import Store
from gateway.wsconn import ClientConnection, ServerConnection

__all__ = ["Hub"]

log = logging.getLogger(__name__)

Connector = Callable[[str, OcppVersion, dict[str, str]], Awaitable[ClientConnection]]

# Standalone mode: nothing drains the queue, so it is bounded by age and size.
STANDALONE_NOTIFICATION_RETENTION_S = 24 * 3600.0
STANDALONE_TRANSACTION_RETENTION_S = 90 * 24 * 3600.0
STANDALONE_MAX_ROWS = 200_000
STANDALONE_PRUNE_EVERY_S = 600.0
# How often the store is asked whether another process (an operator's CLI) changed it.
STORE_WATCH_EVERY_S = 1.0


def _as_version(value: str) -> OcppVersion:
    return as_version(value)


class Hub:
    """Creates, finds and closes :class:`ChargerSession` objects; owns the shared counters."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        connect_upstream: Connector,
        authorizer: Authorizer,
        hooks: Sequence[SessionHook] = (),
        watchers: Sequence[ChargerWatcher] = (),
        stats: RelayStats | None = None,
        reconnect_max_s: float = 60.0,
        depot: DepotView | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.connect_upstream = connect_upstream
        self.authorizer = authorizer
        self.hooks: list[SessionHook] = list(hooks)
        self.depot = depot if depot is not None else DepotView()  # what every charger is doing
        # Tested once per charger CALL instead of asking every hook.
        self.hooked_charger_actions = frozenset(a for h in self.hooks for a in h.charger_actions)
        self.watchers: list[ChargerWatcher] = list(watchers)
        self.watched_cloud_calls = frozenset(a for w in self.watchers for a in w.cloud_calls)
        self.stats = stats or RelayStats()
        self.reconnect_max_s = reconnect_max_s
        self.sessions: dict[str, ChargerSession] = {}
        self.rng = random.Random()  # backoff jitter for every session (one generator, ~2.5 KB)
        self.closing = False
        self._next_local_tx = txmap.LOCAL_TX_MIN
        self._prune_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.dead_letters = 0  # rows in the store's dead letters (for /metrics, no SQL on scrape)
        self.trace_frames = False  # log.level = "debug": sessions log every frame
        self._attaching: set[asyncio.Task[None]] = set()
        # One timer for every forwarded CALL's deadline, instead of a timer per CALL.
        self._sweep_every_s = min(0.25, settings.upstream.call_timeout_s / 4)

    async def start(self) -> None:
        """Load persistent state and open upstream links for chargers that have a backlog."""
        self.dead_letters = await self.store.dead_letter_count()
        highest = await self.store.max_local_tx_id()
        self._next_local_tx = txmap.LOCAL_TX_MIN if highest is None else highest + 1
        backlog = await self.store.backlog()
        versions = await self.store.backlog_versions()
        for charger_id, (count, oldest) in backlog.items():
            session = await self._session(charger_id, _as_version(versions.get(charger_id, "1.6")))
            session.backlog, session.backlog_oldest = count, oldest
        if backlog:
            log.info(
                "%d queued messages for %d chargers",
                sum(c for c, _ in backlog.values()),
                len(backlog),
            )
        self._watch_task = asyncio.create_task(self._watch_loop())
        if self.settings.standalone:
            self._prune_task = asyncio.create_task(self._prune_loop())
        else:
            self._sweep_task = asyncio.create_task(self._sweep_loop())
            for session in self.sessions.values():
                session.ensure_link()

    async def _session(self, charger_id: str, version: OcppVersion) -> ChargerSession:
        session = self.sessions.get(charger_id)
        if session is None:
            txids = txmap.TxIdMap(await self.store.tx_ids(charger_id))
            stored = await self.store.recent_message_ids(charger_id, RECENT_IDS)
            # Another connection for the same id may have created it while we read.
            session = self.sessions.get(charger_id)
            if session is None:
                session = ChargerSession(self, charger_id, version)
                session.trace_frames = self.trace_frames
                session.txids = txids
                session.remember_stored(stored)
                self.sessions[charger_id] = session
        return session

    def accept(self, charger_id: str, version: OcppVersion, ws: ServerConnection) -> None:
        """Hand a charger's open connection to its session (its frames wait until then)."""
        task = asyncio.create_task(self._attach(charger_id, version, ws))
        self._attaching.add(task)
        task.add_done_callback(self._attached)

    async def _attach(self, charger_id: str, version: OcppVersion, ws: ServerConnection) -> None:
        try:
            session = await self._session(charger_id, version)
        except Exception:
            ws.close(1011, "gateway error")
            raise
        if ws.closed.done() or self.closing:
            ws.close(1001, "gateway shutting down")
            session.forget_if_done()
            return
        session.attach_charger(ws, version)
        for watcher in self.watchers:
            watcher.charger_attached(session)

    def _attached(self, task: asyncio.Task[None]) -> None:
        self._attaching.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.errors["internal"] += 1
            log.error("cannot serve a charger", exc_info=task.exception())

    def forget_if_idle(self, session: ChargerSession) -> None:
        """Drop a session with no charger and no backlog: memory follows the connected chargers,
        not every id ever seen (its transaction-id map and boot are in the store)."""
        if (
            session.charger is None
            and session.backlog == 0
            and self.sessions.get(session.charger_id) is session
        ):
            del self.sessions[session.charger_id]

    def get(self, charger_id: str) -> ChargerSession | None:
        return self.sessions.get(charger_id)

    def next_local_tx_id(self) -> int:
        """A fresh 1.6 transaction id from the reserved range (persisted with its StartTransaction)."""
        tx = self._next_local_tx
        if tx > txmap.LOCAL_TX_MAX:
            raise RuntimeError("local transaction id range exhausted")
        self._next_local_tx += 1
        return tx

    def set_trace_frames(self, on: bool) -> None:
        """Log one debug line per frame (``log.level = "debug"``) in every session from now on."""
        self.trace_frames = on
        for session in self.sessions.values():
            session.trace_frames = on

    # --- dead letters ----------------------------------------------------------------------------

    async def requeue_dead_letter(self, seq: int) -> bool:
        """Put a dead letter back at the head of its charger's queue and replay it; False if
        there is no such id."""
        row = await self.store.requeue_dead_letter(seq)
        if row is None:
            return False
        self.dead_letters = max(0, self.dead_letters - 1)
        session = await self._session(row.charger_id, _as_version(row.version))
        session.rows_appeared(session.backlog + 1, row.created_at)
        return True

    async def drop_dead_letter(self, seq: int) -> bool:
        """Delete a dead letter for good; False if there is no such id."""
        dropped = await self.store.drop_dead_letter(seq)
        if dropped:
            self.dead_letters = max(0, self.dead_letters - 1)
        return dropped

    async def refresh_from_store(self) -> None:
        """Another process changed the store (``outbox requeue`` from a shell): pick up rows
        that appeared in the outbox and recount the dead letters."""
        self.dead_letters = await self.store.dead_letter_count()
        backlog = await self.store.backlog()
        if not backlog:
            return
        versions = await self.store.backlog_versions()
        for charger_id, (count, oldest) in backlog.items():
            session = self.sessions.get(charger_id)
            if session is not None and session.backlog >= count:
                continue
            if session is None:
                version = _as_version(versions.get(charger_id, "1.6"))
                session = await self._session(charger_id, version)
            session.rows_appeared(count, oldest)

    async def _watch_loop(self) -> None:
        seen = await self.store.data_version()
        while True:
            await asyncio.sleep(STORE_WATCH_EVERY_S)
            try:
                version = await self.store.data_version()
                if version != seen:
                    seen = version
                    await self.refresh_from_store()
            except Exception:  # the store's own health check reports a broken file
                log.debug("store watch failed", exc_info=True)

    # --- views -----------------------------------------------------------------------------------

    def chargers_connected(self) -> int:
        return sum(1 for s in self.sessions.values() if s.connected)

    def upstreams_connected(self) -> int:
        return sum(1 for s in self.sessions.values() if s.upstream_connected)

    def outbox(self) -> dict[str, tuple[int, float]]:
        """charger id → (pending, oldest created_at) from memory (no SQL on scrape)."""
        return {
            cid: (s.backlog, s.backlog_oldest if s.backlog_oldest is not None else time.time())
            for cid, s in self.sessions.items()
            if s.backlog
        }

    def describe(self) -> list[dict[str, Any]]:
        """The /api/chargers rows."""
        return [
            {
                "id": s.charger_id,
                "ocppVersion": s.version,
                "connected": s.connected,
                "upstreamConnected": s.upstream_connected,
                "linkState": s.state.value,
                "lastSeenAt": (
                    offline.iso_utc(datetime.fromtimestamp(s.last_seen_at, UTC))
                    if s.last_seen_at
                    else None
                ),
                "outboxPending": s.backlog,
            }
            for s in sorted(self.sessions.values(), key=lambda s: s.charger_id)
        ]

    # --- housekeeping ----------------------------------------------------------------------------

    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every_s)
            now = self.loop_time()
            for session in list(self.sessions.values()):
                session.expire_pending(now)

    async def _prune_loop(self) -> None:
        while True:
            now = time.time()
            removed = await self.store.prune_outbox(
                before=now - STANDALONE_NOTIFICATION_RETENTION_S,
                transactional_before=now - STANDALONE_TRANSACTION_RETENTION_S,
                transactional=sorted(offline.TRANSACTIONAL_ACTIONS),
                max_rows=STANDALONE_MAX_ROWS,
            )
            if removed:
                log.info("standalone: pruned %d old queued messages", removed)
                for charger_id, (count, oldest) in (await self.store.backlog()).items():
                    if charger_id in self.sessions:
                        self.sessions[charger_id].backlog = count
                        self.sessions[charger_id].backlog_oldest = oldest
            await asyncio.sleep(STANDALONE_PRUNE_EVERY_S)

    async def close(self) -> None:
        """Close every charger and upstream socket; queued writes finish first."""
        self.closing = True
        for task in (self._prune_task, self._sweep_task, self._watch_task, *self._attaching):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(s.close() for s in list(self.sessions.values())), return_exceptions=True
        )
