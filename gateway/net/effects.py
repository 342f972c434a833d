"""The store side of one charger's session: the core's events that need I/O, carried out.

The relay core (:class:`~gateway.core.relay.ChargerRelay`) asks for a local answer, a resend
check, a BootNotification saved, the next rows of the backlog, or a replay outcome recorded; this
driver does it with the store, the access-ID cache, the offline gate (the hooks' say, a callable)
and the depot view, and reports each result back to the core (``answered_locally``,
``resend_checked``, ``replay_rows``, ``outcome_recorded`` ...). :data:`EFFECT_HANDLERS`
names the events it takes; each starts a task through the session (an :class:`EffectsOwner`),
which sends what the core then produced. A charger's message is acknowledged only once its row
is committed: a store that fails makes the answer InternalError, and nothing was acknowledged.
Times stored and answered come from the session's injected wall clock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from gateway.core import events as ev
from gateway.core import offline
from gateway.core.depot import FOLDED_ANSWERS, DepotView
from gateway.core.relay import ChargerRelay
from gateway.errors import StoreError
from gateway.metrics import RelayStats
from gateway.net.host import Authorizer
from gateway.ocpp import frames
from gateway.ocpp.frames import Call, OcppVersion
from gateway.store.engine import OutboxRow, Store, call_digest

__all__ = [
    "EFFECT_HANDLERS",
    "LEARNED_ACTIONS",
    "REPLAY_BATCH",
    "EffectsHost",
    "EffectsOwner",
    "Gate",
    "RelayEffects",
]

log = logging.getLogger(__name__)

# The cloud's answers to these teach the access-ID cache about a tag.
LEARNED_ACTIONS: Final = frozenset(
    {"Authorize", "StartTransaction", "StopTransaction", "TransactionEvent"}
)
REPLAY_BATCH: Final = 100  # backlog rows read at a time

Outcome = ev.Delivered | ev.RetryLater | ev.DeadLetter | ev.BootDelivered


class EffectsHost(Protocol):
    """What this driver needs from the hub (a part of :class:`~gateway.net.host.SessionHost`)."""

    @property
    def store(self) -> Store: ...
    @property
    def stats(self) -> RelayStats: ...
    @property
    def authorizer(self) -> Authorizer: ...
    @property
    def depot(self) -> DepotView: ...
    def next_local_tx_id(self) -> int: ...
    def dead_letter_added(self) -> None: ...


class EffectsOwner(Protocol):
    """What this driver tells its session."""

    backlog_oldest: float | None  # unix time of the oldest queued row, shown by the hub

    def flush(self) -> None:
        """Send what the core produced and carry out its events."""
        ...

    def answer_done(self) -> None:
        """A local answer or resend check ended (the charger's waiting frames go on)."""
        ...

    def ensure_link(self) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> object: ...


# The auth info to answer a CALL offline with, after the hooks' say (SessionObservers.gate).
Gate = Callable[[Call, dict[str, Any], datetime], Awaitable[dict[str, Any]]]


class RelayEffects:
    """Local answers, resend checks, boot saves and the replay's store I/O of one charger."""

    __slots__ = (
        "_boot_undelivered",
        "_gate",
        "_heartbeat_interval_s",
        "_host",
        "_now",
        "_owner",
        "_relay",
        "_stats",
        "_wall",
        "answering",
    )

    def __init__(
        self,
        owner: EffectsOwner,
        host: EffectsHost,
        relay: ChargerRelay,
        *,
        heartbeat_interval_s: int,
        boot_undelivered: bool,
        gate: Gate,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._owner = owner
        self._host = host
        self._stats = host.stats
        self._relay = relay
        self._heartbeat_interval_s = heartbeat_interval_s
        self._gate = gate
        self._now = clock  # monotonic: the core's deadlines
        self._wall = wall_clock  # unix time: what is stored
        self.answering = False  # a charger CALL is being answered locally (its frames wait)
        self._boot_undelivered = boot_undelivered  # the store holds a Boot not yet read

    @property
    def charger_id(self) -> str:
        return self._relay.charger_id

    def _wall_time(self) -> datetime:
        """The injected wall clock as an aware UTC datetime (offline answers, the cache's times)."""
        return datetime.fromtimestamp(self._wall(), UTC)

    @property
    def version(self) -> OcppVersion:
        return self._relay.version

    @property
    def boot_undelivered(self) -> bool:
        """The store holds a BootNotification the cloud has not seen."""
        return self._boot_undelivered or self._relay.boot is not None

    # --- the core's events (each started as a task of the session) -----------------------------

    def answer_locally(self, event: ev.AnswerLocally) -> None:
        self.answering = True
        self._owner.spawn(self._answer_locally(event.call, event.rule), "answering locally")

    def check_resend(self, event: ev.CheckResend) -> None:
        self.answering = True
        self._owner.spawn(self._check_resend(event.call), "checking a resend")

    def answered(self, event: ev.Answered) -> None:
        """An answer to a charger CALL: what it teaches the access-ID cache and the depot view."""
        call = event.call
        if event.by_cloud and call.action in LEARNED_ACTIONS:
            self.learn(call, event.result)
        if call.action in FOLDED_ANSWERS:
            self.fold(call, event.result, by_cloud=event.by_cloud)

    def boot_delivered_live(self, event: ev.SaveBoot) -> None:
        """A BootNotification relayed live: stored as delivered (the last boot a charger sent)."""
        self._owner.spawn(self.save_boot(event.call, delivered=True), "saving BootNotification")

    def read_backlog(self, event: ev.ReadBacklog) -> None:
        self._owner.spawn(self._read_backlog(event), "reading the backlog")

    def record(self, outcome: Outcome) -> None:
        self._owner.spawn(self._record(outcome), "recording a replay outcome")

    async def load_boot(self) -> None:
        """Before the link's replay: the stored BootNotification the cloud has not seen."""
        relay = self._relay
        if self._boot_undelivered and relay.boot is None:
            boot = await self._host.store.undelivered_boot(self.charger_id, relay.version)
            if boot is not None:
                relay.boot_stored(*boot, self._now())
        self._boot_undelivered = False

    # --- local answers -------------------------------------------------------------------------

    async def _check_resend(self, call: Call) -> None:
        """A CALL with the id of a stored one: answered as the first time if it is a resend."""
        try:
            answer = await self._earlier_answer(call, None)
        except Exception:
            answer = None  # the store cannot tell: relay it as new (the cloud dedupes by id)
            log.debug("%s: resend lookup failed", self.charger_id, exc_info=True)
        self.answering = False
        self._relay.resend_checked(call, answer, self._now())
        self._owner.answer_done()

    async def _earlier_answer(self, call: Call, digest: bytes | None) -> dict[str, Any] | None:
        """The answer given the first time to a stored CALL with the same id, action and
        payload (queued or delivered within the last 24 h), if ``call`` is its resend."""
        if not offline.rule_for(self.version, call.action).stored:
            return None
        answer = await self._host.store.earlier_answer(
            self.charger_id,
            call.message_id,
            digest or call_digest(call.action, call.payload),
            now=self._wall(),
        )
        if answer is None:
            return None
        log.info(
            "%s: %s %s was stored before; answered as the first time",
            self.charger_id,
            call.action,
            call.message_id,
        )
        result: dict[str, Any] = frames.loads(answer)
        return result

    async def _answer_locally(self, call: Call, rule: offline.Rule) -> None:
        """Answer per the offline table, storing the row first where required; on failure the
        charger gets InternalError and nothing was acknowledged (it will send it again)."""
        version = self.version
        relay = self._relay
        tx = None
        try:
            digest = call_digest(call.action, call.payload) if rule.stored else None
            earlier = await self._earlier_answer(call, digest) if digest is not None else None
            if earlier is not None:  # a resend: the first answer; nothing stored or sent again
                self.answering = False
                relay.answered_locally(call, earlier, self._now(), stored=False, resend=True)
                self._owner.answer_done()
                return
            now = self._wall_time()
            auth_info = await self._auth_info(call, now)
            if rule.answer is offline.Answer.START_TRANSACTION:
                tx = self._host.next_local_tx_id()
            result = offline.local_result(
                version,
                call.action,
                now=now,
                heartbeat_interval_s=self._heartbeat_interval_s,
                auth_info=auth_info,
                transaction_id=tx,
            )
            payload_text = frames.dumps(call.payload)
            if rule.answer is offline.Answer.BOOT:
                await self.save_boot(call, delivered=False)
            elif rule.stored:
                await self._host.store.enqueue(
                    self.charger_id,
                    version,
                    call.message_id,
                    call.action,
                    payload_text,
                    now.timestamp(),
                    local_tx_id=tx,
                    digest=digest,
                    answer=frames.dumps(result),
                )
        except StoreError as exc:
            # The store logs each change of its state once; a line per message would flood.
            self._stats.errors["store"] += 1
            log.debug("%s: cannot store %s: %s", self.charger_id, call.action, exc)
            self.answering = False
            relay.local_answer_failed(call, self._now())
        except Exception:
            self._stats.errors["internal"] += 1
            relay.lines.error(
                self._now(), "cannot answer locally", "%s", call.action, exc_info=True
            )
            self.answering = False
            relay.local_answer_failed(call, self._now())
        else:
            self._stats.local_answers[call.action] += 1
            self.answering = False
            if rule.answer is offline.Answer.BOOT:
                relay.boot_stored(call.message_id, payload_text, self._now())
            elif rule.stored and self._owner.backlog_oldest is None:
                self._owner.backlog_oldest = now.timestamp()
            relay.answered_locally(call, result, self._now(), stored=rule.stored, local_tx_id=tx)
            if rule.stored:
                self._owner.ensure_link()
        self._owner.answer_done()

    async def _auth_info(self, call: Call, now: datetime) -> dict[str, Any] | None:
        tag = offline.presented_tag(self.version, call.action, call.payload)
        if tag is None:
            return None
        info: dict[str, Any] = await self._host.authorizer.auth_info(self.version, tag, now)
        return await self._gate(call, info, now)

    async def save_boot(self, call: Call, *, delivered: bool) -> None:
        await self._host.store.save_boot(
            self.charger_id,
            self.version,
            call.message_id,
            frames.dumps(call.payload),
            self._wall(),
            delivered=delivered,
        )

    # --- what the cloud's answers teach --------------------------------------------------------

    def learn(self, call: Call, result: dict[str, Any]) -> None:
        # Synchronously, in the flush that sends the answer to the charger: the offline answer
        # knows it before the charger can ask again, whenever the link drops (its row follows).
        write = self._host.authorizer.learn(
            self.version, call.action, call.payload, result, self._wall_time()
        )
        if write is not None:
            self._owner.spawn(write, "learning")

    def fold(self, call: Call, result: dict[str, Any], *, by_cloud: bool) -> None:
        self._host.depot.answered(
            self.charger_id, self.version, call.action, call.payload, result, by_cloud=by_cloud
        )

    # --- replay --------------------------------------------------------------------------------

    async def _read_backlog(self, request: ev.ReadBacklog) -> None:
        rows = await self._host.store.pending(self.charger_id, REPLAY_BATCH)
        if rows:
            self._owner.backlog_oldest = rows[0].created_at
        self._relay.replay_rows(request, rows, self._now(), wall_now=self._wall())
        self._owner.flush()

    async def _record(self, outcome: Outcome) -> None:
        relay = self._relay
        try:
            await self._write_outcome(outcome)
        except StoreError:
            # The outcome could not be recorded: hold the replay until the store commits
            # again, then resume from the first row still queued.
            relay.outcome_recorded(outcome, self._now(), ok=False)
            await self._host.store.wait_usable()
            relay.resume_replay(self._now())
        else:
            relay.outcome_recorded(outcome, self._now())
        self._owner.flush()

    async def _write_outcome(self, outcome: Outcome) -> None:
        store, cid = self._host.store, self.charger_id
        if isinstance(outcome, ev.BootDelivered):
            await store.mark_boot_delivered(cid, outcome.message_id)
        elif isinstance(outcome, ev.RetryLater):
            next_at = self._wall() + outcome.delay_s
            await store.retry_later(outcome.row.seq, next_attempt_at=next_at, error=outcome.error)
        elif isinstance(outcome, ev.DeadLetter):
            row = outcome.row
            assert isinstance(row, OutboxRow)
            await store.dead_letter(
                row, code=outcome.code, description=outcome.description, now=self._wall()
            )
            self._stats.dead_lettered += 1
            self._host.dead_letter_added()
        else:
            call, tx = outcome.call, outcome.tx
            await store.delivered(outcome.row.seq, tx=(cid, *tx) if tx is not None else None)
            if tx is not None:
                self._host.depot.bind(cid, *tx)
            elif call.action == "TransactionEvent":
                self.fold(call, outcome.result, by_cloud=True)
            self._stats.replayed += 1
            if call.action in LEARNED_ACTIONS:
                self.learn(call, outcome.result)


# The core's events RelayEffects carries out, by type, for the session's dispatch: one table for
# every session (a table of bound methods per session would cost ~2 KB per charger).
EFFECT_HANDLERS: Final[Mapping[type[ev.RelayEvent], Callable[[RelayEffects, Any], None]]] = {
    ev.AnswerLocally: RelayEffects.answer_locally,
    ev.CheckResend: RelayEffects.check_resend,
    ev.Answered: RelayEffects.answered,
    ev.SaveBoot: RelayEffects.boot_delivered_live,
    ev.ReadBacklog: RelayEffects.read_backlog,
    ev.Delivered: RelayEffects.record,
    ev.RetryLater: RelayEffects.record,
    ev.DeadLetter: RelayEffects.record,
    ev.BootDelivered: RelayEffects.record,
}
