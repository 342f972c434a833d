"""All charger sessions of one gateway and the services they share.

Shared by every session: the log limiter (a repeated warning at most once a minute per kind and
charger; the counts of those left out are written by the sweep once their minute has passed), the
failed-authentication throttle of the charger server and the API, the handshake pacer (at most K
upstream handshakes in flight, K adapting to how the cloud answers, :mod:`gateway.core.pacer`;
optionally at most ``upstream.max_connects_per_s`` starts per second) and recovery (a link that
connects after failures wakes every link waiting in its backoff; while no link is up, one waiting
link is tried every ``PROBE_EVERY_S``).
A new charger's state (transaction-id map, undelivered BootNotification) is read in one store
query for every charger that arrived meanwhile, not one query each.

A session sees the hub only as a :class:`~gateway.net.host.SessionHost` with one
:class:`~gateway.net.host.SessionSettings` value; the hub reads sessions' views and calls their
methods, and never writes their fields.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.config import Settings
from gateway.core import offline, txmap
from gateway.core.backoff import BackoffPolicy, Recovery
from gateway.core.depot import FOLDED_ANSWERS, FOLDED_CALLS, SAMPLED_CALLS, DepotView
from gateway.core.limits import AuthThrottle, LogLimiter, log_left_out
from gateway.core.pacer import HandshakePacer, Outcome, PacerSettings
from gateway.core.relay import RECENT_IDS, RelaySettings
from gateway.core.versions import VersionRecord
from gateway.errors import TransactionIdsExhausted
from gateway.metrics import ChargerSample, RelayStats
from gateway.net.cloud_version import ChargerOffer
from gateway.net.effects import LEARNED_ACTIONS
from gateway.net.host import (
    Authorizer,
    ChargerWatcher,
    Connector,
    SessionHook,
    SessionSettings,
)
from gateway.net.link import CONNECTING_HOLD_S, TURN_HOLD_S
from gateway.net.negotiation import Negotiation, Offer
from gateway.net.session import ChargerSession
from gateway.net.turns import HandshakeTurns
from gateway.net.wsconn import ServerConnection
from gateway.ocpp.frames import OcppVersion, as_version
from gateway.store.engine import ChargerState, Store

__all__ = ["Hub"]

log = logging.getLogger(__name__)

# Standalone mode: nothing drains the queue, so it is bounded by age and size.
STANDALONE_NOTIFICATION_RETENTION_S = 24 * 3600.0
STANDALONE_TRANSACTION_RETENTION_S = 90 * 24 * 3600.0
STANDALONE_MAX_ROWS = 200_000
STANDALONE_PRUNE_EVERY_S = 600.0
# While no link is up, one link waiting in its backoff is tried this often: the cloud's return is
# noticed within this (plus one handshake) whatever the backoff has grown to.
PROBE_EVERY_S = 3.0
# A handshake turn whose end is not reported within its open timeout (upstream.call_timeout_s)
# plus this is freed: no handshake takes that long, so only a lost report is.
TURN_LEASE_MARGIN_S = 30.0
# How often the store is asked whether another process (an operator's CLI) changed it.
STORE_WATCH_EVERY_S = 1.0


class Hub:
    """Creates, finds and closes :class:`ChargerSession` objects; owns the shared counters."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        connect_upstream: Connector,
        authorizer: Authorizer,
        hooks: Sequence[SessionHook[ChargerSession]] = (),
        watchers: Sequence[ChargerWatcher[ChargerSession]] = (),
        stats: RelayStats | None = None,
        reconnect_max_s: float | None = None,
        backoff: BackoffPolicy | None = None,
        depot: DepotView | None = None,
        log_limit: LogLimiter | None = None,
    ) -> None:
        self.settings = settings
        # One of each per gateway: every charger, the store and the API share them.
        self.log_limit = LogLimiter() if log_limit is None else log_limit
        self.auth_throttle = AuthThrottle()
        self.store = store
        self.connect_upstream = connect_upstream
        self.authorizer = authorizer
        self.hooks: list[SessionHook[ChargerSession]] = list(hooks)
        self.depot = depot if depot is not None else DepotView()  # what every charger is doing
        # Tested once per charger CALL instead of asking every hook.
        self.hooked_charger_actions = frozenset(a for h in self.hooks for a in h.charger_actions)
        self.watchers: list[ChargerWatcher[ChargerSession]] = list(watchers)
        self.watched_cloud_calls = frozenset(a for w in self.watchers for a in w.cloud_calls)
        self.stats = stats or RelayStats()
        self.reconnect_max_s = (
            settings.upstream.reconnect_max_s if reconnect_max_s is None else reconnect_max_s
        )
        self.backoff = backoff or BackoffPolicy()
        self.pacer = HandshakePacer(
            PacerSettings(
                max_per_s=settings.upstream.max_connects_per_s,
                lease_s=settings.upstream.call_timeout_s + TURN_LEASE_MARGIN_S,
            )
        )
        self.recovery = Recovery(PROBE_EVERY_S)
        # Sessions sleeping in their reconnect backoff, longest-waiting first (dicts keep order).
        self.retrying: dict[str, ChargerSession] = {}
        self.turns = HandshakeTurns(self.pacer, self.recovery, self.loop_time)
        self.sessions: dict[str, ChargerSession] = {}
        self.rng = random.Random()  # backoff jitter for every session (one generator, ~2.5 KB)
        self.closing = False
        self._next_local_tx = txmap.LOCAL_TX_MIN
        self._prune_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._to_attach: list[tuple[str, OcppVersion, ServerConnection, Offer]] = []
        self._attach_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.dead_letters = 0  # rows in the store's dead letters (for /metrics, no SQL on scrape)
        self.negotiation = Negotiation(
            store,
            connect_upstream=connect_upstream,
            book_turn=self.book_turn,
            turn_ended=self.turn_ended,
            upstream_url=settings.upstream.url,
            standalone=settings.standalone,
            spawn=self._own,
        )
        self.trace_frames = False  # log.level = "debug": sessions log every frame
        self._sweep_every_s = min(0.25, settings.upstream.call_timeout_s / 4)
        self.session_settings = self._session_settings(settings)

    def _session_settings(self, settings: Settings) -> SessionSettings:
        relay = RelaySettings(
            cloud_call_timeout_s=settings.upstream.call_timeout_s,
            charger_call_timeout_s=settings.chargers.call_timeout_s,
            max_queued_calls=settings.chargers.max_queued_calls,
            connecting_hold_s=CONNECTING_HOLD_S,
            turn_hold_s=TURN_HOLD_S,
            observed_charger_calls=FOLDED_CALLS | self.hooked_charger_actions,
            observed_answers=LEARNED_ACTIONS | FOLDED_ANSWERS,
            observed_cloud_answers=frozenset(a for h in self.hooks for a in h.cloud_actions),
            observed_cloud_calls=self.watched_cloud_calls,
            sampled_charger_calls=SAMPLED_CALLS - self.hooked_charger_actions,
        )
        return SessionSettings(
            upstream_url=settings.upstream.url,
            pass_authorization=settings.upstream.pass_authorization,
            standalone=settings.standalone,
            heartbeat_interval_s=settings.offline.heartbeat_interval_s,
            reconnect_max_s=self.reconnect_max_s,
            relay=relay,
        )

    async def start(self) -> None:
        """Load persistent state and open upstream links for chargers that have a backlog."""
        self.dead_letters = await self.store.dead_letter_count()
        await self.negotiation.load()
        highest = await self.store.max_local_tx_id()
        self._next_local_tx = txmap.LOCAL_TX_MIN if highest is None else highest + 1
        backlog = await self.store.backlog()
        backlog_versions = await self.store.backlog_versions()
        states = await self.store.charger_states(sorted(backlog), recent=RECENT_IDS)
        for charger_id, (count, oldest) in backlog.items():
            version = self._link_version(charger_id, backlog_versions.get(charger_id, "1.6"))
            session = self._new_session(charger_id, version, states.get(charger_id))
            session.restore_backlog(count, oldest)
        if backlog:
            log.info(
                "%d queued messages for %d chargers",
                sum(c for c, _ in backlog.values()),
                len(backlog),
            )
        self._watch_task = asyncio.create_task(self._watch_loop())
        self._sweep_task = self._own(self._sweep_loop(), "the deadline sweep")
        if self.settings.standalone:
            self._prune_task = self._own(self._prune_loop(), "pruning the queue")
        else:
            for session in self.sessions.values():
                session.ensure_link()

    def _own(self, coro: Any, what: str) -> asyncio.Task[Any]:
        """A task whose failure is logged (its outcome is always retrieved)."""
        task = asyncio.create_task(coro)

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                self.stats.errors["internal"] += 1
                log.error("%s failed", what, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def _link_version(self, charger_id: str, stored: str) -> OcppVersion:
        """The version of a backlog's link without its charger: the one its rows are stored
        under, unless the cloud refused it (they are then dead letters: see ``replay.outgoing``)."""
        version = as_version(stored)
        record = self.cloud_versions.get(charger_id)
        return record.version if record is not None and version in record.refused else version

    def _new_session(
        self, charger_id: str, version: OcppVersion, state: ChargerState | None
    ) -> ChargerSession:
        session = ChargerSession(
            self,
            charger_id,
            version,
            self.session_settings,
            txids=txmap.TxIdMap(state.tx_ids) if state is not None else None,
            boot_undelivered=state is not None and state.boot_undelivered,
        )
        session.set_trace_frames(self.trace_frames)
        record = self.cloud_versions.get(charger_id)
        if record is not None:
            session.relay.refused_versions = record.refused
        if state is not None:
            session.remember_stored(state.recent_ids)
        self.sessions[charger_id] = session
        return session

    async def _session(self, charger_id: str, version: OcppVersion) -> ChargerSession:
        session = self.sessions.get(charger_id)
        if session is None:
            states = await self.store.charger_states([charger_id], recent=RECENT_IDS)
            # Another connection for the same id may have created it while we read.
            session = self.sessions.get(charger_id)
            if session is None:
                session = self._new_session(charger_id, version, states.get(charger_id))
        return session

    def accept(
        self,
        charger_id: str,
        version: OcppVersion,
        ws: ServerConnection,
        offered: Offer = (),
    ) -> None:
        """Hand a charger's open connection to its session (its frames wait until then).

        ``offered``: the versions the charger offered (the gateway's), in its order. A charger
        with a session in memory is served at once; for the others, the chargers that arrive while
        a store read is running share the next read.
        """
        offered = offered or (version,)
        if charger_id in self.sessions and not self._to_attach:
            self._attach(charger_id, version, ws, offered)
            return
        self._to_attach.append((charger_id, version, ws, offered))
        if self._attach_task is None:
            self._attach_task = self._own(self._attach_batches(), "serving new chargers")

    async def _attach_batches(self) -> None:
        try:
            while self._to_attach:
                batch, self._to_attach = self._to_attach, []
                new = sorted({cid for cid, _, _, _ in batch if cid not in self.sessions})
                try:
                    states = await self.store.charger_states(new, recent=RECENT_IDS) if new else {}
                except Exception:
                    self.stats.errors["internal"] += 1
                    log.exception("cannot read the state of %d new chargers", len(new))
                    self._refuse(batch, 1011, "gateway error")
                    continue
                except BaseException:  # cancelled: the gateway is closing
                    self._refuse(batch, 1001, "gateway shutting down")
                    raise
                for charger_id, version, ws, offered in batch:
                    if charger_id not in self.sessions:
                        self._new_session(charger_id, version, states.get(charger_id))
                    self._attach(charger_id, version, ws, offered)
        finally:
            self._attach_task = None

    def _refuse(
        self, batch: list[tuple[str, OcppVersion, ServerConnection, Offer]], code: int, why: str
    ) -> None:
        """Close chargers that will not be served, and the cloud links opened for their
        handshakes (a link left open would show the cloud a charger that is not there)."""
        for charger_id, _, ws, _ in batch:
            first = self.negotiation.take_first_link(charger_id)
            if first is not None:
                self.negotiation.drop_first_link(charger_id, first)
            ws.close(code, why)

    def _attach(
        self, charger_id: str, version: OcppVersion, ws: ServerConnection, offered: Offer
    ) -> None:
        session = self.sessions[charger_id]
        if session.charger is ws:  # already served (never replace a socket by itself)
            return
        first = self.negotiation.take_first_link(charger_id)
        if ws.closed.done() or self.closing:
            if first is not None:
                self.negotiation.drop_first_link(charger_id, first)
            ws.close(1001, "gateway shutting down")
            session.forget_if_done()
            return
        session.attach_charger(ws, version, ChargerOffer(offered, first))
        for watcher in self.watchers:
            watcher.charger_attached(session)

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

    # --- failed authentications (the charger server and the API) ---------------------------

    def auth_refused_for(self, address: str, kind: str) -> float:
        """Seconds ``address`` is still refused for after too many failed authentications (0:
        go on and check its credentials). A refused attempt counts as a failure of ``kind``."""
        wait = self.auth_throttle.blocked_for(address, self.loop_time())
        if wait:
            self.stats.auth_failures[kind] += 1
        return wait

    def auth_failed(self, address: str, kind: str) -> None:
        """Wrong credentials from ``address`` (``charger``, ``api`` or ``login``)."""
        self.stats.auth_failures[kind] += 1
        throttle = self.auth_throttle
        if throttle.failed(address, self.loop_time()):  # one line per address and block
            log.warning(
                "%s: %d failed authentications within %.0f s (the last: %s); refusing it for %.0f s",
                address,
                throttle.max_failures,
                throttle.window_s,
                kind,
                throttle.block_s,
            )

    # --- upstream links: pacing and recovery ---------------------------------------------------

    def turn_eta_s(self) -> float:
        """How long a link asking for its handshake turn now would wait for it."""
        return self.turns.eta_s()

    def book_turn(self) -> tuple[asyncio.Future[None], float]:
        """Queue a link for its handshake turn (:meth:`HandshakeTurns.book`)."""
        return self.turns.book()

    def turn_ended(self, turn: asyncio.Future[None], outcome: Outcome) -> None:
        """The handshake of ``turn`` ended with ``outcome`` (:meth:`HandshakeTurns.ended`)."""
        self.turns.ended(turn, outcome)

    def retry_wait(self, session: ChargerSession, waiting: bool) -> None:
        """``session`` starts or ends waiting in its reconnect backoff."""
        if waiting:
            self.retrying[session.charger_id] = session
        elif self.retrying.get(session.charger_id) is session:
            del self.retrying[session.charger_id]

    def dead_letter_added(self) -> None:
        """A session moved a replayed message to the dead letters."""
        self.dead_letters += 1

    def link_failed(self) -> None:
        self.recovery.failed()

    def link_connected(self) -> None:
        """A link is up: if links failed before it, the cloud is back; wake the waiting ones."""
        if self.recovery.connected() and self.retrying:
            log.info("cloud reachable again: reconnecting %d waiting links", len(self.retrying))
            for session in list(self.retrying.values()):
                session.retry_now(recovery=True)

    def _probe(self, now: float) -> None:
        if self.recovery.probe_due(
            now, waiting=len(self.retrying), links_up=self.upstreams_connected()
        ):
            session = next(iter(self.retrying.values()))
            self.recovery.attempt_started(now)  # and again when its turn comes
            session.retry_now(recovery=False)

    def next_local_tx_id(self) -> int:
        """A fresh 1.6 transaction id from the reserved range (persisted with its StartTransaction)."""
        tx = self._next_local_tx
        if tx > txmap.LOCAL_TX_MAX:
            raise TransactionIdsExhausted("local transaction id range exhausted")
        self._next_local_tx += 1
        return tx

    def set_trace_frames(self, on: bool) -> None:
        """Log one debug line per frame (``log.level = "debug"``) in every session from now on."""
        self.trace_frames = on
        for session in self.sessions.values():
            session.set_trace_frames(on)

    # --- OCPP version negotiation (gateway.net.negotiation) ------------------------------------

    @property
    def cloud_versions(self) -> dict[str, VersionRecord]:
        """charger id → the version the cloud last selected."""
        return self.negotiation.cloud_versions

    def remember_cloud_version(self, charger_id: str, record: VersionRecord) -> None:
        self.negotiation.remember(charger_id, record)

    # --- dead letters ----------------------------------------------------------------------------

    async def requeue_dead_letter(self, seq: int) -> bool:
        """Put a dead letter back at the head of its charger's queue and replay it; False if
        there is no such id."""
        row = await self.store.requeue_dead_letter(seq)
        if row is None:
            return False
        self.dead_letters = max(0, self.dead_letters - 1)
        session = await self._session(row.charger_id, as_version(row.version))
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
        backlog_versions = await self.store.backlog_versions()
        for charger_id, (count, oldest) in backlog.items():
            session = self.sessions.get(charger_id)
            if session is not None and session.backlog >= count:
                continue
            if session is None:
                version = self._link_version(charger_id, backlog_versions.get(charger_id, "1.6"))
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

    def charger_samples(self) -> list[ChargerSample]:
        """Every charger with a session or in the depot view, for the per-charger metrics."""
        samples = [
            ChargerSample(
                s.charger_id,
                s.connected,
                s.upstream_connected,
                s.backlog,
                s.last_seen_at or self._depot_seen(s.charger_id),
            )
            for s in self.sessions.values()
        ]
        samples.extend(
            ChargerSample(cid, False, False, 0, view.last_seen_at)
            for cid, view in self.depot.chargers.items()
            if cid not in self.sessions
        )
        return samples

    def _depot_seen(self, charger_id: str) -> float | None:
        view = self.depot.chargers.get(charger_id)
        return view.last_seen_at if view is not None else None

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
        """One timer for every session's deadlines (forwarded CALLs, the charger's slot, the
        replay), instead of a timer per CALL; and the probe of waiting links."""
        while True:
            await asyncio.sleep(self._sweep_every_s)
            now = self.loop_time()
            for session in list(self.sessions.values()):
                try:
                    session.tick(now)
                except Exception:
                    self.stats.errors["internal"] += 1
                    session.relay.lines.error(now, "failed to act on a deadline", exc_info=True)
            if self.retrying:
                self._probe(now)
            log_left_out(self.log_limit, now)
            self.turns.expire(now)

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
                        self.sessions[charger_id].restore_backlog(count, oldest)
            await asyncio.sleep(STANDALONE_PRUNE_EVERY_S)

    async def close(self) -> None:
        """Close every charger and upstream socket; queued writes finish first."""
        self.closing = True
        for _, _, ws, _ in self._to_attach:
            ws.close(1001, "gateway shutting down")
        self._to_attach.clear()
        self.negotiation.close()
        for task in (self._prune_task, self._sweep_task, self._watch_task, self._attach_task):
            if task is not None:
                task.cancel()
        self.turns.close()
        await asyncio.gather(
            *(s.close() for s in list(self.sessions.values())), return_exceptions=True
        )
