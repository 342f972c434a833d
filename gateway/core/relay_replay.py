"""The cold half of :class:`~gateway.core.relay.ChargerRelay`: gateway CALLs to the charger, the cloud
link's lifecycle, the OCPP version, the stored BootNotification and backlog, and the replay
orchestration facing :class:`~gateway.core.replay.ReplayCursor`.

``ChargerRelay`` inherits :class:`RelayLinkReplay`: its methods resolve through the MRO, so moving
them here adds no call to any path. None of them runs per relayed frame; the per-frame entry
points (``receive_charger``, ``receive_cloud``) and what they call stay in :mod:`gateway.core.relay`.

The replay (``ReplayCursor``, made per link while it is REPLAYING): the stored BootNotification
first, then the backlog one CALL at a time, each answer decided in :mod:`gateway.core.replay` —
delivered (1.6 StartTransaction binds the local transaction id to the cloud's; later messages are
rewritten), retried with backoff on a transient CALLERROR or an answer that breaks the schema,
dead-lettered otherwise. A 2.0.1/2.1 TransactionEvent answered locally is replayed with
``offline: true``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.core import txmap
from gateway.core.charger_slot import GATEWAY_ID_PREFIX
from gateway.core.events import (
    BootDelivered,
    CloseLink,
    DeadLetter,
    Delivered,
    Drained,
    QueuedCall,
    ReadBacklog,
    RelayEvent,
    RelayOutput,
    RetryLater,
)
from gateway.core.link import Event, LinkState, transition
from gateway.core.replay import Backlog, ReplayCursor
from gateway.errors import ChargerNotConnected
from gateway.ocpp.frames import OcppVersion

if TYPE_CHECKING:
    from gateway.core.charger_slot import ChargerSlot
    from gateway.core.inbox import ChargerInbox
    from gateway.core.pending import PendingCalls

__all__ = ["RelayLinkReplay", "RelaySettings"]

log = logging.getLogger("gateway.core.relay")  # the relay's logger, as before the split


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """One charger's relay parameters (from ``Settings``; units in the names)."""

    cloud_call_timeout_s: float = 30.0  # upstream.call_timeout_s
    charger_call_timeout_s: float = 30.0  # chargers.call_timeout_s, from when the charger got it
    max_queued_calls: int = 16  # chargers.max_queued_calls
    connecting_hold_s: float = 1.5  # a charger CALL waits this long for a connecting link
    turn_hold_s: float = 1.0  # ...unless the link's handshake turn is further away than this
    max_replay_attempts: int = 8  # a replayed message is dead-lettered after this many
    max_retry_delay_s: float = 300.0
    # Actions whose traffic the driver wants to see (the depot view, hooks, the tag cache).
    observed_charger_calls: frozenset[str] = frozenset()
    observed_answers: frozenset[str] = frozenset()  # charger CALLs whose CALLRESULT is shown
    observed_cloud_calls: frozenset[str] = frozenset()  # cloud CALLs shown before they queue
    observed_cloud_answers: frozenset[str] = frozenset()  # cloud CALLs whose answer is shown
    # Observed charger CALLs shown at most once per sample_every_s per depot.sample_key (the
    # latest of each key; the first at once): a meter reading every few seconds needs no event
    # per frame, and the last one is shown at the latest at the next tick after sample_every_s.
    sampled_charger_calls: frozenset[str] = frozenset()
    sample_every_s: float = 1.0


class RelayLinkReplay:
    """The link, version, backlog and replay methods of ``ChargerRelay`` (a mixin: no state of its
    own; the attributes are ``ChargerRelay``'s slots)."""

    # No state of its own (mypy would refuse its assignments to ChargerRelay's slots here).
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:
        charger_id: str
        version: OcppVersion
        refused_versions: frozenset[OcppVersion]
        settings: RelaySettings
        txids: txmap.TxIdMap
        errors: Counter[str]
        state: LinkState
        charger_connected: bool
        output: RelayOutput
        _backlog: Backlog
        _events: list[RelayEvent]
        _inbox: ChargerInbox
        _pending: PendingCalls
        _replay: ReplayCursor | None
        _turn_due: float | None
        _slot: ChargerSlot
        _new_id: Callable[[], str]

        def _release_held(self, now: float) -> None: ...

        def _next_from_inbox(self, now: float) -> None: ...

    # --- gateway → charger ---------------------------------------------------------------------------

    def call_charger(
        self,
        action: str,
        payload: dict[str, Any],
        now: float,
        *,
        payload_text: str | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Queue a gateway CALL for the charger's slot; its message id. The answer comes as
        ``ChargerAnswered`` (origin "gateway"), or ``ChargerCallFailed``.

        ``payload_text``: ``payload`` already serialized (one payload sent to many chargers).
        ``timeout_s``: how long the charger may hold the slot with it (default
        ``charger_call_timeout_s``). Raises ChargerNotConnected, or ChargerQueueFull.
        """
        if not self.charger_connected:
            raise ChargerNotConnected(self.charger_id)
        message_id = GATEWAY_ID_PREFIX + self._new_id()
        self._slot.call(
            message_id, action, payload, now, payload_text=payload_text, timeout_s=timeout_s
        )
        return message_id

    def cancel_charger_call(self, message_id: str) -> bool:
        """The caller gave up: a CALL not yet sent is never sent; True if it was still queued."""
        return self._slot.cancel(message_id)

    # --- the OCPP version ---

    def change_version(self, version: OcppVersion) -> None:
        """The charger's frames and the link speak ``version`` from now on. A BootNotification
        stored under the previous one is not replayed (versions are never translated)."""
        if version != self.version and self._backlog.boot is not None:
            log.warning(
                "%s: the BootNotification stored under OCPP %s is not replayed on OCPP %s",
                self.charger_id,
                self.version,
                version,
            )
            self._backlog.boot = None
        self.version = version

    # --- the cloud link ---

    def link_connecting(self, now: float, *, turn_in_s: float = 0.0) -> None:
        """The driver starts a connection attempt; its handshake turn is ``turn_in_s`` away."""
        self._turn_due = now + turn_in_s
        if self.state is LinkState.OFFLINE:
            self._set_state(Event.CONNECTING)

    def link_connected(self, now: float) -> None:
        """The upstream handshake succeeded: replay first if anything is stored, else relay."""
        self._turn_due = None
        if self.state is LinkState.OFFLINE:
            self._set_state(Event.CONNECTING)
        if self._backlog.count > 0 or self._backlog.boot is not None:
            self._set_state(Event.CONNECTED_WITH_BACKLOG)
            self._start_replay(now)
        else:
            self._set_state(Event.CONNECTED)
        self._release_held(now)

    def link_failed(self, now: float) -> None:
        """The connection attempt failed; the driver waits its backoff."""
        self._turn_due = None
        self._set_state(Event.FAILED)
        self._release_held(now)

    def link_lost(self, now: float) -> None:
        """The upstream connection closed: pending CALLs are answered locally, the replay stops
        (it restarts from the store on the next link)."""
        self._turn_due = None
        if self.state is not LinkState.OFFLINE:
            self._set_state(Event.LOST)
        self._replay = None
        self._inbox.answer_first(self._pending.take_all())
        self._release_held(now)
        if not self._inbox.busy:
            self._next_from_inbox(now)

    # --- boot and backlog ---

    def boot_stored(self, message_id: str, payload: str, now: float) -> None:
        """A BootNotification answered locally is stored as the latest undelivered one."""
        self._backlog.boot = (message_id, payload)
        if self._replay is not None:
            self._replay.boot_done = False
        elif self.state is LinkState.ONLINE:  # the link came up meanwhile: replay it now
            self._set_state(Event.BACKLOG)
            self._start_replay(now)

    @property
    def backlog(self) -> int:
        """Rows the charger has queued for the cloud (the driver restores it from the store)."""
        return self._backlog.count

    @backlog.setter
    def backlog(self, count: int) -> None:
        self._backlog.count = count

    @property
    def boot(self) -> tuple[str, str] | None:
        """(message id, payload) of the undelivered BootNotification, if one is stored."""
        return self._backlog.boot

    @boot.setter
    def boot(self, boot: tuple[str, str] | None) -> None:
        self._backlog.boot = boot

    def rows_appeared(self, count: int, now: float) -> None:
        """Rows reached the charger's queue from outside (a requeued dead letter): replay them."""
        backlog = self._backlog
        backlog.changes += 1
        backlog.count = max(backlog.count, count)
        if self.state is LinkState.ONLINE:
            self._set_state(Event.BACKLOG)
            self._start_replay(now)

    def _backlog_grew(self, now: float) -> None:
        backlog = self._backlog
        backlog.changes += 1
        backlog.count += 1
        if self.state is LinkState.ONLINE:
            self._set_state(Event.BACKLOG)
            self._start_replay(now)

    def _start_replay(self, now: float) -> None:
        if self._replay is None:
            self._replay = replay = ReplayCursor(
                self.charger_id,
                self._backlog,
                self.txids,
                self.output,
                version=self.version,
                refused=self.refused_versions,
                call_timeout_s=self.settings.cloud_call_timeout_s,
                max_attempts=self.settings.max_replay_attempts,
                max_retry_delay_s=self.settings.max_retry_delay_s,
                errors=self.errors,
            )
            replay.next(now)

    def replay_rows(
        self, request: ReadBacklog, rows: Iterable[QueuedCall], now: float, *, wall_now: float
    ) -> None:
        """The rows ``request`` asked for (oldest first); ``wall_now`` is the clock of their
        ``next_attempt_at``. No rows, and none queued since the read: the backlog is drained.
        An answer to a request of an earlier link (or already answered) is ignored."""
        replay = self._replay
        if replay is None or not replay.receive_rows(request, rows, now, wall_now=wall_now):
            return
        self._replay = None
        self._set_state(Event.DRAINED)
        self._events.append(Drained())
        if not self.charger_connected:
            self._events.append(CloseLink(1000, "backlog drained"))

    def outcome_recorded(
        self,
        outcome: Delivered | RetryLater | DeadLetter | BootDelivered,
        now: float,
        *,
        ok: bool = True,
    ) -> None:
        """The driver recorded ``outcome``. ``ok=False`` (the store failed): nothing is assumed;
        the replay re-reads the store when the driver calls ``resume_replay``. An outcome of an
        earlier link's replay is ignored (that replay restarts from the store)."""
        if self._replay is not None:
            self._replay.recorded(outcome, now, ok=ok)

    def resume_replay(self, now: float) -> None:
        """The store commits again after a failed outcome: re-read from the first row queued."""
        if self._replay is not None:
            self._replay.resume(now)

    # --- small helpers ---

    def _set_state(self, event: Event) -> None:
        new = transition(self.state, event)
        if new is not self.state:
            log.debug("%s: link %s -> %s", self.charger_id, self.state.value, new.value)
            self.state = new
