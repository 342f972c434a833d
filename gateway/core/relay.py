"""One charger's relay as a state machine with no I/O (the shape of websockets' ``Protocol``).

The driver feeds it what happened and sends what it returns::

    relay.receive_charger(text, now)        relay.receive_cloud(text, now)
    relay.link_connecting / link_connected / link_failed / link_lost (now)
    relay.charger_attached / charger_detached (now)
    relay.call_charger(action, payload, now) → message id
    relay.tick(now)                         at relay.next_deadline() or later
        │
        ▼
    relay.data_to_charger() / relay.data_to_cloud()   frames (text) to send, in order
    relay.events()                                    what the driver must do: store a row,
                                                      answer locally, mark delivered, dead letter…

and reports the outcome of the I/O an event asked for (``answered_locally``, ``resend_checked``,
``replay_rows``, ``outcome_recorded``). ``now`` is the driver's monotonic clock in seconds; the
core keeps no clock and draws message ids from the generator it is given.

``ChargerRelay`` is the one facade: it routes each frame, keeps the link state (the table in
:mod:`gateway.core.link`) and the backlog count, and leaves the rest to its parts, each reached
with one attribute lookup and appending to one :class:`~gateway.core.events.RelayOutput`
(OCPP-J 1.6 §4.1.1 / 2.0.1 and 2.1 Part 4 §4.1.1: one outstanding CALL per direction):

* :mod:`gateway.core.pending` (``PendingCalls``): charger CALLs forwarded live, each with its
  deadline (``cloud_call_timeout_s``); a CALL the cloud does not answer in time is answered
  locally and the link is dropped (``CloseLink``), as are a lost link's pending CALLs;
* :mod:`gateway.core.inbox` (``ChargerInbox``): a charger frame that needs I/O (a local answer,
  a resend check) or waits for a connecting link holds the frames after it, so they are handled
  in the order they came; the offline table's answers and the ids kept for resends;
* :mod:`gateway.core.charger_slot` (``ChargerSlot``): the charger's single inbound slot and its
  queue of at most ``max_queued_calls`` cloud and gateway CALLs; ``charger_call_timeout_s``
  counts from when the charger got the CALL;
* :mod:`gateway.core.relay_replay` (``RelayLinkReplay``, which ``ChargerRelay`` inherits): the
  cold methods — gateway CALLs to the charger, the link's lifecycle, the OCPP version, the
  stored BootNotification and backlog, and the replay through :mod:`gateway.core.replay`'s
  ``ReplayCursor``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from gateway.core import txmap
from gateway.core.charger_slot import GATEWAY_ID_PREFIX, ChargerSlot, OutCall
from gateway.core.events import (
    ChargerCallSeen,
    CloseLink,
    CloudCallSeen,
    RelayEvent,
    RelayOutput,
)
from gateway.core.inbox import RECENT_IDS, ChargerInbox
from gateway.core.limits import LimitedLog, LogLimiter
from gateway.core.link import Event, LinkState
from gateway.core.pending import PendingCalls
from gateway.core.relay_replay import RelayLinkReplay, RelaySettings
from gateway.core.replay import Backlog, ReplayCursor
from gateway.core.samples import SampledCalls
from gateway.errors import FrameError
from gateway.ocpp import frames
from gateway.ocpp.frames import (
    CALL,
    CALLERROR,
    CALLRESULT,
    SEND,
    Call,
    CallError,
    CallResult,
    CallResultError,
    OcppVersion,
    Send,
)

__all__ = ["GATEWAY_ID_PREFIX", "RECENT_IDS", "ChargerRelay", "RelaySettings"]

log = logging.getLogger(__name__)


class ChargerRelay(RelayLinkReplay):
    """Everything one charger's relay decides; see the module docstring for the driving."""

    __slots__ = (
        "_backlog",
        "_events",
        "_inbox",
        "_new_id",
        "_pending",
        "_replay",
        "_samples",
        "_slot",
        "_to_charger",
        "_to_cloud",
        "_turn_due",
        "charger_connected",
        "charger_id",
        "errors",
        "inbox_items",
        "lines",
        "output",
        "recent_ids",
        "refused_versions",
        "sends",
        "settings",
        "state",
        "txids",
        "version",
    )

    def __init__(
        self,
        charger_id: str,
        version: OcppVersion,
        *,
        settings: RelaySettings,
        new_id: Callable[[], str],
        txids: txmap.TxIdMap | None = None,
        errors: Counter[str] | None = None,
        sends: Counter[str] | None = None,
        observe_answer_s: Callable[[float], None] | None = None,
        log_limit: LogLimiter | None = None,
    ) -> None:
        self.charger_id = charger_id
        self.version: OcppVersion = version
        # Versions the cloud refused for this charger: what is stored under one is a dead letter.
        self.refused_versions: frozenset[OcppVersion] = frozenset()
        self.settings = settings
        self._new_id = new_id
        self.txids = txids if txids is not None else txmap.TxIdMap()
        self.errors: Counter[str] = errors if errors is not None else Counter()
        self.sends: Counter[str] = sends if sends is not None else Counter()
        self.state = LinkState.OFFLINE
        self.charger_connected = False
        self._backlog = Backlog()
        # What the driver has not taken yet (data_to_charger, data_to_cloud, events); it may
        # test the lists to skip the calls when they are empty.
        self.output = output = RelayOutput(log_limit=log_limit or LogLimiter())
        self.lines = LimitedLog(log, output.log_limit, charger_id)  # the driver's lines too
        self._to_charger = output.to_charger
        self._to_cloud = output.to_cloud
        self._events = output.events
        self._pending = PendingCalls(
            charger_id,
            output,
            call_timeout_s=settings.cloud_call_timeout_s,
            observed_answers=settings.observed_answers,
            observe_answer_s=observe_answer_s,
            errors=self.errors,
        )
        self._slot = ChargerSlot(
            charger_id,
            output,
            max_queued_calls=settings.max_queued_calls,
            call_timeout_s=settings.charger_call_timeout_s,
            observed_answers=settings.observed_cloud_answers,
            errors=self.errors,
        )
        self._inbox = ChargerInbox(
            output, errors=self.errors, observed_answers=settings.observed_answers
        )
        self.recent_ids = self._inbox.recent_ids  # the same set: one lookup on the hot path
        self.inbox_items = self._inbox.items  # the same deque, never replaced
        self._turn_due: float | None = None
        self._replay: ReplayCursor | None = None  # while the link is REPLAYING
        self._samples = SampledCalls(output, every_s=settings.sample_every_s)

    # --- output ------------------------------------------------------------------------------------

    def data_to_charger(self) -> list[str]:
        """Frames to send to the charger, in order (the returned list is the caller's)."""
        out = self._to_charger
        if not out:
            return out
        taken = out.copy()
        out.clear()
        return taken

    def data_to_cloud(self) -> list[str]:
        """Frames to send to the cloud, in order."""
        out = self._to_cloud
        if not out:
            return out
        taken = out.copy()
        out.clear()
        return taken

    def events(self) -> list[RelayEvent]:
        """What the driver must do, in order."""
        out = self._events
        if not out:
            return out
        if self._samples.held:  # they came before whatever brought these events: shown first
            taken = self._samples.take()
            taken.extend(out)
        else:
            taken = out.copy()
        out.clear()
        return taken

    # --- views -------------------------------------------------------------------------------------

    @property
    def wants_link(self) -> bool:
        """The charger is connected or a backlog waits for the cloud."""
        return self.charger_connected or self._backlog.count > 0

    @property
    def inbox_size(self) -> int:
        """Charger frames waiting behind one that needs I/O (the driver pauses reading at a bound;
        ``len(inbox_items)`` is the same without a call)."""
        return len(self._inbox.items)

    @property
    def idle(self) -> bool:
        """Nothing in flight: no charger frame awaits an answer, no CALL to the charger waits."""
        inbox, slot = self._inbox, self._slot
        return not (self._pending or inbox.busy or inbox.items or slot.current or slot.queued)

    @property
    def pending_ids(self) -> frozenset[str]:
        return self._pending.ids

    @property
    def queued(self) -> int:
        """CALLs waiting for the charger's slot (not counting the one in it)."""
        return self._slot.queued

    @property
    def slot_busy(self) -> bool:
        return self._slot.current is not None

    @property
    def has_deadlines(self) -> bool:
        """Whether ``tick`` may have anything to do (a cheap test for a sweep over many)."""
        return bool(self._pending) or (
            self._slot.current is not None
            or self._inbox.held is not None
            or self._replay is not None
            or bool(self._samples.held)
        )

    def next_deadline(self) -> float | None:
        """The earliest time ``tick`` has something to do, if any."""
        times = self._pending.deadlines()
        slot_deadline = self._slot.deadline
        if slot_deadline is not None:
            times.append(slot_deadline)
        held = self._inbox.held
        if held is not None:
            times.append(held.deadline)
        replay_deadline = self._replay.deadline() if self._replay is not None else None
        if replay_deadline is not None:
            times.append(replay_deadline)
        samples_due = self._samples.deadline()
        if samples_due is not None:
            times.append(samples_due)
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Act on every deadline that passed by ``now``."""
        expired = self._pending.expire(now)
        if expired:
            self._cloud_timed_out(expired, now)
        self._slot.tick(now)
        held = self._inbox.held
        if held is not None and held.deadline <= now:
            self._release_held(now)
        replay = self._replay
        if replay is not None and replay.tick(now):
            self._set_state(Event.CALL_TIMEOUT)
            self._replay = None
            self._events.append(CloseLink(1011, "call timeout"))
        self._samples.tick(now)

    # --- the charger's connection ------------------------------------------------------------------

    def charger_attached(self, version: OcppVersion, now: float) -> None:
        """A charger connection is served (a new one replaces the old: its slot is failed)."""
        if self.charger_connected:
            self._slot.fail_all()
        self.change_version(version)
        self.charger_connected = True

    def charger_detached(self, now: float) -> None:
        """The charger's connection closed: the CALLs queued for it fail; unsent frames are lost."""
        self.charger_connected = False
        self._slot.fail_all()
        self._to_charger.clear()
        if self._samples.held:  # shown now: the session may be forgotten before its next tick
            self._events[:0] = self._samples.take()
        if self._backlog.count == 0 and self.state is not LinkState.OFFLINE:
            self._events.append(CloseLink(1000, "charger disconnected"))

    # --- charger → gateway ---------------------------------------------------------------------------

    def receive_charger(self, text: str, now: float) -> None:
        """A text frame from the charger."""
        inbox = self._inbox
        if inbox.busy:  # an earlier frame awaits I/O: keep the charger's order
            inbox.items.append(text)
            return
        try:  # _charger_frame, inline: this is every relayed frame
            raw = frames.check(text, self.version)
        except FrameError as exc:
            self.bad_charger_frame(exc, now)
            return
        if raw[0] == CALL:
            self._charger_call(raw, text, now)
        else:
            self._charger_answer(raw, text, now)

    def bad_charger_frame(self, exc: FrameError, now: float) -> None:
        """A charger frame that cannot be accepted (also one the driver could not decode)."""
        self.errors["bad_frame_from_charger"] += 1
        self.lines.warning(now, "bad frame from charger", "%s", exc.description)
        if not self._unanswered(exc):
            self._to_charger.append(
                frames.error_text(self.version, exc.message_id, exc.code, exc.description)
            )

    def _charger_frame(self, text: str, now: float) -> None:
        try:
            raw = frames.check(text, self.version)
        except FrameError as exc:
            self.bad_charger_frame(exc, now)
            return
        if raw[0] == CALL:
            self._charger_call(raw, text, now)
        else:
            self._charger_answer(raw, text, now)

    def _charger_answer(self, raw: list[Any], text: str, now: float) -> None:
        """A charger frame other than a CALL (checked)."""
        frame = frames.frame_of(raw)
        if type(frame) is CallResult or type(frame) is CallError:
            self._slot.answered(frame, text, now, self._to_cloud if self._cloud_up else None)
        elif type(frame) is Send:
            self._relay_send("from_charger", self._to_cloud if self._cloud_up else None, text)
        else:
            assert isinstance(frame, CallResultError)
            self._charger_result_error(frame, text, now)

    @property
    def _cloud_up(self) -> bool:
        return self.state is LinkState.ONLINE or self.state is LinkState.REPLAYING

    def _unanswered(self, exc: FrameError) -> bool:
        """A bad frame that gets no CALLERROR: a 2.1 SEND (§4.2.4), or an unknown type in 1.6."""
        return not exc.answer or (exc.code == "MessageTypeNotSupported" and self.version == "1.6")

    def _relay_send(self, direction: str, out: list[str] | None, text: str) -> None:
        """OCPP 2.1 SEND: passed on when the other side is there, else dropped; never stored or
        answered (§4.2.4), and it needs no CALL slot (§4.1.1 note)."""
        if out is not None:
            out.append(text)
            self.sends[direction + " relayed"] += 1
        else:
            self.sends[direction + " dropped"] += 1

    def _charger_result_error(self, frame: CallResultError, text: str, now: float) -> None:
        """The charger could not process a CALLRESULT: the cloud's goes back to the cloud; one
        the gateway gave itself is only counted."""
        if frame.message_id in self._inbox.answered_ids:
            self.errors["local_answer_refused"] += 1
            self.lines.warning(
                now,
                "charger could not process the gateway's answer",
                "to %s: %s %s",
                frame.message_id,
                frame.code,
                frame.description,
            )
        elif self._cloud_up:
            self._to_cloud.append(text)

    def _charger_call(self, raw: list[Any], text: str, now: float) -> None:
        """A charger CALL (``[2, id, action, {payload}]``, checked). The common case — online,
        not a resend, no transaction id to rewrite, not observed — is decided here without
        making a :class:`Call`."""
        if raw[2] in self.settings.observed_charger_calls:
            if raw[2] in self.settings.sampled_charger_calls:
                self._samples.add(self.version, raw, now)
            else:
                self._events.append(ChargerCallSeen(Call(raw[1], raw[2], raw[3])))
        if self.state is LinkState.ONLINE:
            recent = self.recent_ids
            if recent and raw[1] in recent:
                # Perhaps a resend of a CALL already stored: it must not reach the cloud twice.
                self._inbox.check_resend(Call(raw[1], raw[2], raw[3]), text)
                return
            txids = self.txids
            if not (txids.local_to_cloud or txids.unmapped):
                self._pending.forward(raw, text, now)
                return
        self._route(Call(raw[1], raw[2], raw[3]), text, now)

    def _route(self, call: Call, text: str, now: float) -> None:
        if self.state is LinkState.CONNECTING:
            due = self._turn_due
            if due is None or due - now <= self.settings.turn_hold_s:
                # The handshake is usually quick: hold the CALL (and the frames after it) for it.
                hold = min(self.settings.cloud_call_timeout_s, self.settings.connecting_hold_s)
                self._inbox.hold(call, text, now + hold)
                return
        self._route_now(call, text, now)

    def _route_now(self, call: Call, text: str, now: float) -> None:
        if self.state is not LinkState.ONLINE:
            self._inbox.answer_locally(self.version, call)
            return
        if self.txids and txmap.local_ids_in(call.action, call.payload):
            try:
                payload = txmap.rewrite_to_cloud(
                    call.action, call.payload, self.txids.local_to_cloud
                )
            except txmap.UnmappedTransaction:
                # Queued, and dead-lettered on replay if never mapped.
                self._inbox.answer_locally(self.version, call)
                return
            call = Call(call.message_id, call.action, payload)
            text = call.serialize()
        self._pending.forward([CALL, call.message_id, call.action, call.payload], text, now)

    def answered_locally(
        self,
        call: Call,
        result: dict[str, Any],
        now: float,
        *,
        stored: bool,
        local_tx_id: int | None = None,
        resend: bool = False,
    ) -> None:
        """The driver answered ``call`` (its row durably stored if ``stored``): send the answer,
        count the backlog, and go on with the charger's next frame."""
        if resend:
            self.errors["charger_resend"] += 1
        elif stored:
            self._inbox.remember_stored([call.message_id])
            if local_tx_id is not None:
                self.txids.add_local(local_tx_id)
            self._backlog_grew(now)
        self._inbox.send_answer(call, result, resend=resend)
        self._next_from_inbox(now)

    def local_answer_failed(self, call: Call, now: float) -> None:
        """The driver could not answer (e.g. the store cannot write): nothing was acknowledged,
        so the charger gets InternalError and will send it again."""
        self._inbox.send_failure(self.version, call)
        self._next_from_inbox(now)

    def resend_checked(self, call: Call, answer: dict[str, Any] | None, now: float) -> None:
        """The store's answer to ``CheckResend``: the first answer again, or route it as new."""
        if answer is not None:
            self.answered_locally(call, answer, now, stored=False, resend=True)
            return
        inbox = self._inbox
        text = inbox.end_check(call)
        self._route(call, text, now)
        if not inbox.busy:
            self._next_from_inbox(now)

    def remember_stored(self, message_ids: Iterable[str]) -> None:
        """Note message ids of CALLs stored for replay (the latest RECENT_IDS are kept)."""
        self._inbox.remember_stored(message_ids)

    def _next_from_inbox(self, now: float) -> None:
        inbox = self._inbox
        items = inbox.items
        while items and not inbox.busy:
            item = items.popleft()
            if isinstance(item, Call):
                inbox.answer_locally(self.version, item)
            else:
                self._charger_frame(item, now)

    def _release_held(self, now: float) -> None:
        held = self._inbox.take_held()
        if held is not None:
            self._route_now(held.call, held.text, now)
            self._next_from_inbox(now)

    def _cloud_timed_out(self, expired: list[Call], now: float) -> None:
        self._set_state(Event.CALL_TIMEOUT)
        self._events.append(CloseLink(1011, "call timeout"))
        self._replay = None
        self._inbox.answer_first(expired)
        if not self._inbox.busy:
            self._next_from_inbox(now)

    # --- cloud → charger -----------------------------------------------------------------------------

    def bad_cloud_frame(self, exc: FrameError, now: float) -> None:
        """A cloud frame that cannot be accepted (also one the driver could not decode)."""
        self.errors["bad_frame_from_cloud"] += 1
        self.lines.warning(now, "bad frame from cloud", "%s", exc.description)
        if exc.message_id != "-1" and not self._unanswered(exc):
            self._to_cloud.append(
                frames.error_text(self.version, exc.message_id, exc.code, exc.description)
            )

    def receive_cloud(self, text: str, now: float) -> None:
        """A text frame from the cloud."""
        try:
            raw = frames.check(text, self.version)
        except FrameError as exc:
            self.bad_cloud_frame(exc, now)
            return
        kind = raw[0]
        if kind in (CALLRESULT, CALLERROR):
            replay = self._replay
            flight = replay.in_flight if replay is not None else None
            if flight is not None and flight.call.message_id == raw[1]:
                assert replay is not None
                answer = frames.frame_of(raw)
                assert isinstance(answer, (CallResult, CallError))
                replay.answered(answer, now)
            else:
                self._pending.answered(raw, text, now, self.charger_connected)
            return
        if kind == CALL:
            self._cloud_call(Call(raw[1], raw[2], raw[3]), text, now)
        elif kind == SEND:
            self._relay_send(
                "from_cloud", self._to_charger if self.charger_connected else None, text
            )
        elif self.charger_connected:
            # A CALLRESULTERROR about the charger's CALLRESULT to a cloud CALL, whose slot it
            # already freed: ids of the two directions come from different senders, so it is
            # never matched against pending CALLs or the replay.
            self._to_charger.append(text)
        else:
            log.info("%s: charger gone; cloud CALLRESULTERROR dropped", self.charger_id)

    def _cloud_call(self, call: Call, text: str, now: float) -> None:
        if call.action in self.settings.observed_cloud_calls:
            self._events.append(CloudCallSeen(call))  # before it is queued or refused
        if not self.charger_connected:
            self._to_cloud.append(
                frames.error_text(
                    self.version, call.message_id, "GenericError", "charger is not connected"
                )
            )
            return
        if self.txids.cloud_to_local:
            payload = txmap.rewrite_to_charger(call.action, call.payload, self.txids.cloud_to_local)
            if payload is not call.payload:
                call = Call(call.message_id, call.action, payload)
                text = call.serialize()
        if not self._slot.enqueue(OutCall(call, text, "cloud"), now):
            self.lines.warning(
                now,
                "charger queue full",
                "%d CALLs already wait for the charger; refusing %s %s",
                self._slot.queued,
                call.action,
                call.message_id,
            )
            self._to_cloud.append(
                frames.error_text(
                    self.version, call.message_id, "GenericError", "charger queue full"
                )
            )
            return
