"""One charger's session: the charger socket, its upstream link, and what moves between them.

The decisions are made by the pure modules (``frames``, ``link``, ``offline``, ``txmap``,
``validation``); this driver moves text between sockets, starts timers and writes rows.

Online, a frame is relayed within the socket's receive callback (``wsconn``): no task, no await.
A charger frame that needs I/O (answered locally, or waiting for the link to open) runs in the
session's inbox task, and the charger's later frames queue behind it, so they are handled in the
order they came.

Directions and queues (OCPP-J 1.6 §4.1.1 / 2.0.1 part 4 §4.1.1: one outstanding CALL per direction):

* charger → cloud: the charger keeps its own discipline online; while the link is down or a
  backlog drains, CALLs are answered locally and stored behind the backlog, which is replayed one
  CALL at a time — so replayed and live CALLs never overlap toward the cloud.
* cloud/gateway → charger: cloud CALLs and gateway-originated CALLs (reservations) share one queue
  of at most ``chargers.max_queued_calls``; the next is sent only when the previous one is answered
  or ``chargers.call_timeout_s`` passed since it was sent. A full queue refuses at once (the cloud
  gets CALLERROR GenericError, the local API ChargerQueueFull → 503).

The link to the cloud: each attempt books a handshake slot from the hub's pacer
(``upstream.max_connects_per_s``); a failed attempt waits its backoff (capped at
``upstream.reconnect_max_s``), cut short when another link shows the cloud is back or the hub
picks it as the probe. A charger CALL that arrives while the link is connecting waits for it at
most ``CONNECTING_HOLD_S`` and is then answered locally (a BootNotification is stored as the latest
undelivered one and replayed first once the link is up), so a storm of chargers queued behind the
pacer is served within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol
from urllib.parse import quote

from gateway.core import offline, txmap
from gateway.core.backoff import Backoff, Quiet
from gateway.core.depot import FOLDED_ANSWERS, FOLDED_CALLS
from gateway.core.link import Event, LinkState, transition
from gateway.errors import (
    ChargerNotConnected,
    ChargerQueueFull,
    ChargerTimeout,
    CloudUnavailable,
    FrameError,
    StoreError,
)
from gateway.net.wsconn import ClientConnection, Message, ServerConnection, WsConnection
from gateway.ocpp import frames
from gateway.ocpp.frames import Call, CallError, CallResult, CallResultError, OcppVersion, Send
from gateway.ocpp.validation import validate_call, validate_result
from gateway.store.engine import OutboxRow, call_digest

if TYPE_CHECKING:
    from gateway.net.hub import Hub

__all__ = [
    "Authorizer",
    "ChargerSession",
    "ChargerWatcher",
    "SessionHook",
]

log = logging.getLogger(__name__)

GATEWAY_ID_PREFIX: Final = "gw-"  # gateway-originated message ids; the cloud's never start so
# How long a charger CALL waits for a link that is connecting before it is answered locally: a
# handshake usually takes less (200-600 ms over TLS on a cellular link); a link queued behind the
# connect pacer takes longer, and the charger must not wait for it (docs/offline-behaviour.md).
CONNECTING_HOLD_S: Final = 1.5
# A link whose handshake turn at the pacer is further away than this does not hold its CALLs at
# all: they are answered locally at once (a storm's chargers are served in milliseconds). Nearer
# turns are held (up to CONNECTING_HOLD_S), leaving 0.5 s for the handshake: those are relayed live.
TURN_HOLD_S: Final = 1.0
# While a link stays down: one warning when it goes down, then at most one line per this.
DOWN_LOG_EVERY_S: Final = 60.0
LEARNED_ACTIONS: Final = frozenset(
    {"Authorize", "StartTransaction", "StopTransaction", "TransactionEvent"}
)
# CALLERROR codes worth retrying: the cloud failed, not the message (OCPP-J error code meanings).
TRANSIENT_CODES: Final = frozenset({"InternalError", "GenericError", "RpcFrameworkError"})
MAX_TRANSIENT_ATTEMPTS: Final = 8
REPLAY_BATCH: Final = 100
# Close codes by which the cloud signals an outage rather than ending this charger's session
# (RFC 6455 §7.4.1: going away, server error, restart, try again later): the charger stays connected.
_OUTAGE_CLOSE_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
_CLOSED_BY_US: Final = (0, "closed by the gateway")
# Charger frames waiting behind one that needs I/O (a local answer); beyond this, reading pauses.
INBOX_HOLD: Final = 16
# Message ids of a charger's latest stored CALLs, checked for resends on the online path: a
# charger resends the CALL it got no answer for, which is among its last few.
RECENT_IDS: Final = 64
# Ids of the latest CALLs the gateway answered itself: a 2.1 CALLRESULTERROR for one of them is
# about the gateway's own answer and is not the cloud's business (OCPP 2.1 Part 4 §6.4).
LOCAL_ANSWERS_KEPT: Final = 16

# Work a frame needs beyond the synchronous relay path, run in order by the session's inbox task.
Slow = Callable[[], Awaitable[None]]


class Authorizer(Protocol):
    """What the session needs from the access-ID cache."""

    async def auth_info(self, version: OcppVersion, id_tag: str, now: datetime) -> dict[str, Any]:
        """idTagInfo (1.6) or idTokenInfo (2.0.1) to answer offline for ``id_tag``."""
        ...

    async def learn_from(
        self,
        version: OcppVersion,
        action: str,
        request: dict[str, Any],
        response: dict[str, Any],
        now: datetime,
    ) -> None:
        """Remember the cloud's answer about a tag."""
        ...


class SessionHook(Protocol):
    """An observer of a session's traffic (reservations use it)."""

    charger_actions: frozenset[str]  # charger CALLs to show to ``on_charger_call``
    cloud_actions: frozenset[
        str
    ]  # cloud CALLs whose charger answer goes to ``on_cloud_call_answered``

    async def on_charger_call(self, session: ChargerSession, call: Call) -> None: ...

    async def on_cloud_call_answered(
        self, session: ChargerSession, call: Call, answer: CallResult | CallError
    ) -> None: ...

    async def gate(
        self, session: ChargerSession, call: Call, auth_info: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        """The auth info to answer offline with (e.g. refusing a tag on a reserved connector)."""
        ...


class ChargerWatcher(Protocol):
    """Told synchronously when a charger attaches and before a watched cloud CALL is queued
    toward it (the local list push uses it: a CALL of its own queued after the cloud's
    SendLocalList would undo the cloud's list)."""

    cloud_calls: frozenset[str]

    def charger_attached(self, session: ChargerSession) -> None: ...

    def cloud_call(self, session: ChargerSession, call: Call) -> None: ...


class _Pending(NamedTuple):
    """A charger CALL forwarded live to the cloud, waiting for its answer until ``deadline``."""

    call: Call
    deadline: float  # loop time; the hub's sweep answers it locally once passed


@dataclass(slots=True)
class _OutCall:
    """A CALL waiting for (or holding) the charger's single inbound slot."""

    message_id: str
    action: str
    payload: dict[str, Any]
    text: str
    origin: str  # "cloud" | "gateway"
    future: asyncio.Future[CallResult | CallError] | None = None
    timer: asyncio.TimerHandle | None = None


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # the outcome is the awaiting code's; never "never retrieved"


def _owned_future() -> asyncio.Future[CallResult | CallError]:
    """A future that may be settled after its waiter gave up (a lost link, a timeout)."""
    future: asyncio.Future[CallResult | CallError] = asyncio.get_running_loop().create_future()
    future.add_done_callback(_retrieve)
    return future


@dataclass
class _Replay:
    """The single replayed CALL in flight toward the cloud."""

    message_id: str
    future: asyncio.Future[CallResult | CallError] = field(default_factory=_owned_future)


def _as_text(message: Message) -> str:
    """OCPP-J frames are text; a binary frame is accepted only if it is valid UTF-8."""
    if isinstance(message, str):
        return message
    try:
        return message.decode()
    except UnicodeDecodeError as exc:
        raise FrameError("FormatViolation", "frame is not UTF-8 text") from exc


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ChargerSession:
    """Everything about one charge point id; outlives its sockets while a backlog drains."""

    def __init__(self, hub: Hub, charger_id: str, version: OcppVersion) -> None:
        self.hub = hub
        self.charger_id = charger_id
        self.version: OcppVersion = version
        self.charger: ServerConnection | None = None
        self.upstream: ClientConnection | None = None
        self.state = LinkState.OFFLINE
        self.last_seen_at: float | None = None  # unix time of the charger's last frame
        self.backlog = 0
        self.backlog_oldest: float | None = None
        self.boot_undelivered = False  # the store holds a Boot the cloud has not seen
        self._boot_saves = 0  # Boots saved by this session, ever (a change marker for replay)
        self._boot_saved: tuple[str, str] | None = None  # (id, payload) of that undelivered Boot
        self._turn_due: float | None = None  # loop time the link's handshake turn is expected
        self._booked_turn: asyncio.Future[None] | None = None
        self._boot_replayed_on_link = False
        self._enqueued = 0  # messages queued by this session, ever (a change marker for replay)
        self.txids = txmap.TxIdMap()
        self.recent_ids: set[str] = set()  # see remember_stored; usually empty
        self._recent_order: deque[str] = deque()
        self._auth_header: dict[str, str] = {}
        self._pending: dict[str, _Pending] = {}
        self._replay: _Replay | None = None
        self._queue: deque[_OutCall] = deque()
        self._slot: _OutCall | None = None
        self._state_changed = asyncio.Event()
        self._wanted_changed = asyncio.Event()
        self._link_task: asyncio.Task[None] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._closing_upstream = False  # we, not the cloud, are closing the current link
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inbox: deque[Message] | None = None  # set while a charger frame awaits I/O
        # log.level = "debug": one line per frame; the hub sets it (one attribute test per frame).
        self.trace_frames = False
        self._answered_locally: deque[str] = deque(maxlen=LOCAL_ANSWERS_KEPT)
        self._loop = asyncio.get_running_loop()
        self._call_timeout_s = hub.settings.upstream.call_timeout_s
        self._charger_timeout_s = hub.settings.chargers.call_timeout_s
        self._max_queued = hub.settings.chargers.max_queued_calls
        self._backoff = Backoff(
            initial_s=min(hub.backoff.initial_s, hub.reconnect_max_s),
            max_s=hub.reconnect_max_s,
            factor=hub.backoff.factor,
            rng=hub.rng,
        )
        self._retry_early = False  # set by the hub: try the cloud before the backoff ends
        self._woken_by_recovery = False  # at most once per failure streak
        self._down_since: float | None = None  # loop time the link went down
        self._down_attempts = 0
        self._down_log = Quiet(DOWN_LOG_EVERY_S)

    # --- small helpers -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.charger is not None

    @property
    def has_link_task(self) -> bool:
        return self._link_task is not None and not self._link_task.done()

    @property
    def backoff_capped(self) -> bool:
        """The link's reconnect delay has reached ``upstream.reconnect_max_s``."""
        return self._backoff.capped

    @property
    def upstream_connected(self) -> bool:
        return self.upstream is not None and self.state in (LinkState.ONLINE, LinkState.REPLAYING)

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.hub.stats.errors["internal"] += 1
                log.error("%s: %s failed", self.charger_id, what, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def _set_state(self, event: Event) -> None:
        new = transition(self.state, event)
        if new is not self.state:
            # debug: while the cloud is down every attempt changes the state twice
            log.debug("%s: link %s -> %s", self.charger_id, self.state.value, new.value)
            self.state = new
            self._state_changed.set()
            self._state_changed = asyncio.Event()

    def _send_charger(self, text: str) -> None:
        ws = self.charger
        if ws is not None and ws.send(text):
            self.hub.stats.frames_to_chargers += 1
            if self.trace_frames:
                self._trace("to charger", text)

    def _send_cloud(self, text: str) -> bool:
        ws = self.upstream
        if ws is None or not ws.send(text):
            return False
        self.hub.stats.frames_to_cloud += 1
        if self.trace_frames:
            self._trace("to cloud", text)
        return True

    def _trace(self, direction: str, message: Message) -> None:
        """The debug line of one frame: direction, charger, message type, action, message id."""
        kind, action, message_id = frames.describe(message)
        log.debug(
            "%s: frame %s %s %s %s",
            self.charger_id,
            direction,
            kind,
            action,
            message_id,
            extra={"charger": self.charger_id},
        )

    def _error_text(self, message_id: str, code: str, description: str) -> str:
        return CallError(
            message_id, frames.error_code_for(self.version, code), description
        ).serialize()

    # --- charger side ----------------------------------------------------------------------------

    def attach_charger(self, ws: ServerConnection, version: OcppVersion) -> None:
        """Serve a charger's open connection: its frames arrive in ``_charger_message``."""
        old = self.charger
        self.charger = ws  # first: the old socket's clean-up must not close the upstream link
        self.version = version
        if old is not None:
            log.warning("%s: new connection replaces the old one", self.charger_id)
            self._fail_charger_calls()
            old.close(1000, "replaced by a new connection")
        if self.upstream is not None:
            self.upstream.release_reading("charger-busy")
        auth = ws.request.headers.get("Authorization") if ws.request else None
        self._auth_header = (
            {"Authorization": auth}
            if auth and self.hub.settings.upstream.pass_authorization
            else {}
        )
        self.ensure_link()
        ws.on_close = self._charger_closed
        ws.on_write_paused = self._charger_write_paused
        ws.on_message = self._charger_message  # frames that came meanwhile are delivered now

    def _charger_closed(self, ws: WsConnection) -> None:
        log.info("%s disconnected", self.charger_id)
        if self.charger is ws:
            self.charger = None
            self._charger_gone()
            self.forget_if_done()

    def forget_if_done(self) -> None:
        """Let the hub drop this session once nothing of it runs (its link loop does it last)."""
        if not self.has_link_task and self._inbox is None:
            self.hub.forget_if_idle(self)

    def _charger_write_paused(self, paused: bool) -> None:
        """The charger reads slower than the cloud sends: stop reading the cloud meanwhile."""
        if self.upstream is not None:
            self.upstream.hold_reading_if(paused, "charger-busy")

    def _cloud_write_paused(self, paused: bool) -> None:
        if self.charger is not None:
            self.charger.hold_reading_if(paused, "cloud-busy")

    def _fail_charger_calls(self) -> None:
        """Drop the CALLs queued for (or sent to) a charger socket that is gone."""
        for out in ([self._slot] if self._slot else []) + list(self._queue):
            if out.timer:
                out.timer.cancel()
            if out.future is not None and not out.future.done():
                out.future.set_exception(ChargerNotConnected(self.charger_id))
        self._slot = None
        self._queue.clear()

    def _charger_gone(self) -> None:
        self._fail_charger_calls()
        if self.backlog == 0:
            self._close_upstream(1000, "charger disconnected")
        self._wanted_changed.set()

    def _charger_message(self, message: Message) -> None:
        """A charger frame: relayed within this callback, or run in order behind slower ones."""
        self.hub.stats.frames_from_chargers += 1
        self.last_seen_at = time.time()
        if self.trace_frames:
            self._trace("from charger", message)
        inbox = self._inbox
        if inbox is not None:  # an earlier frame still awaits I/O: keep the charger's order
            inbox.append(message)
            if len(inbox) >= INBOX_HOLD and self.charger is not None:
                self.charger.hold_reading("inbox")
            return
        slow = self._handle_charger(message)
        if slow is not None:
            self._inbox = deque()
            self._spawn(self._drain_inbox(slow), "handling charger frames")

    def _handle_charger(self, message: Message) -> Slow | None:
        try:
            return self._from_charger(message)
        except Exception:
            self.hub.stats.errors["internal"] += 1
            log.exception("%s: failed to handle a charger frame", self.charger_id)
            return None

    async def _drain_inbox(self, first: Slow) -> None:
        inbox = self._inbox
        assert inbox is not None
        slow: Slow | None = first
        try:
            while slow is not None:
                try:
                    await slow()
                except Exception:
                    self.hub.stats.errors["internal"] += 1
                    log.exception("%s: failed to handle a charger frame", self.charger_id)
                slow = None
                while slow is None and inbox:
                    slow = self._handle_charger(inbox.popleft())
                if len(inbox) < INBOX_HOLD and self.charger is not None:
                    self.charger.release_reading("inbox")
        finally:
            self._inbox = None
            if self.charger is not None:
                self.charger.release_reading("inbox")
            else:
                self.forget_if_done()

    def _from_charger(self, message: Message) -> Slow | None:
        try:
            text = _as_text(message)
            frame = frames.parse(text, self.version)
        except FrameError as exc:
            self.hub.stats.errors["bad_frame_from_charger"] += 1
            log.warning("%s: bad frame from charger: %s", self.charger_id, exc.description)
            if self._unanswered(exc):
                return None
            self._send_charger(self._error_text(exc.message_id, exc.code, exc.description))
            return None
        if isinstance(frame, Call):
            return self._charger_call(frame, text)
        if isinstance(frame, (CallResult, CallError)):
            self._charger_answer(frame, text)
        elif isinstance(frame, Send):
            self._relay_send(
                "from_charger", self._send_cloud if self.upstream_connected else None, text
            )
        else:
            self._charger_result_error(frame, text)
        return None

    def _unanswered(self, exc: FrameError) -> bool:
        """A bad frame that gets no CALLERROR: a 2.1 SEND (§4.2.4), or an unknown type in 1.6."""
        return not exc.answer or (
            exc.code == "MessageTypeNotSupported" and self.version == "1.6"
        )  # OCPP-J 1.6 ignores unknown message types

    def _relay_send(self, direction: str, send: Callable[[str], object] | None, text: str) -> None:
        """OCPP 2.1 SEND: passed on unchanged when the other side is there, else dropped; counted.

        Never stored and never answered (§4.2.4); it needs no CALL slot (§4.1.1 note).
        """
        if send is not None:
            send(text)
            self.hub.stats.sends[direction + " relayed"] += 1
        else:
            self.hub.stats.sends[direction + " dropped"] += 1

    def _charger_result_error(self, frame: CallResultError, text: str) -> None:
        """The charger could not process the CALLRESULT it got for its CALL ``frame.message_id``.

        It answers a CALLRESULT, not a CALL: no pending CALL of either direction ends here. If the
        gateway gave that CALLRESULT itself (offline), the cloud did not send it and is not told;
        else it goes to the cloud unchanged (its CALLRESULT is the one refused).
        """
        if frame.message_id in self._answered_locally:
            self.hub.stats.errors["local_answer_refused"] += 1
            log.warning(
                "%s: charger could not process the gateway's answer to %s: %s %s",
                self.charger_id,
                frame.message_id,
                frame.code,
                frame.description,
            )
        elif not self._send_cloud(text):
            log.info("%s: no cloud link for a CALLRESULTERROR; dropped", self.charger_id)

    def _charger_call(self, call: Call, text: str) -> Slow | None:
        if call.action in FOLDED_CALLS:  # the depot view, from the charger's own payload
            self.hub.depot.charger_call(
                self.charger_id, self.version, call.action, call.payload, time.time()
            )
        if call.action in self.hub.hooked_charger_actions:
            for hook in self.hub.hooks:
                if call.action in hook.charger_actions:
                    self._spawn(hook.on_charger_call(self, call), f"hook for {call.action}")
        if self.recent_ids and call.message_id in self.recent_ids:
            # Perhaps a resend of a CALL already stored (its answer lost in a crash or with a
            # dropped connection): it must not reach the cloud a second time.
            return functools.partial(self._resend_or_route, call, text)
        return self._route(call, text)

    async def _resend_or_route(self, call: Call, text: str) -> None:
        if self.state is LinkState.ONLINE and await self._answer_resend(call):
            return
        slow = self._route(call, text)
        if slow is not None:
            await slow()

    def remember_stored(self, message_ids: list[str]) -> None:
        """Note message ids of CALLs stored for replay (the latest RECENT_IDS are kept)."""
        for message_id in message_ids:
            if message_id in self.recent_ids:
                continue
            self.recent_ids.add(message_id)
            self._recent_order.append(message_id)
            if len(self._recent_order) > RECENT_IDS:
                self.recent_ids.discard(self._recent_order.popleft())

    def _route(self, call: Call, text: str) -> Slow | None:
        if self.state is LinkState.ONLINE and not self.txids:
            return self._forward(call, text)  # the common case, decided without more calls
        if self.state is LinkState.CONNECTING:
            due = self._turn_due
            if due is not None and due - self._loop.time() > TURN_HOLD_S:
                return self._charger_call_now(call, text)  # queued behind the pacer: answer now
            return functools.partial(self._charger_call_after_connecting, call, text)
        return self._charger_call_now(call, text)

    async def _charger_call_after_connecting(self, call: Call, text: str) -> None:
        # The upstream handshake is usually quick: hold the CALL for it, briefly (the link may be
        # queued behind the connect pacer); then it is answered locally.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._state_changed.wait(), min(self._call_timeout_s, CONNECTING_HOLD_S)
            )
        slow = self._charger_call_now(call, text)
        if slow is not None:
            await slow()

    def _charger_call_now(self, call: Call, text: str) -> Slow | None:
        if self.state is not LinkState.ONLINE:
            return functools.partial(self._answer_locally, call)
        if self.txids and txmap.local_ids_in(call.action, call.payload):
            try:
                payload = txmap.rewrite_to_cloud(
                    call.action, call.payload, self.txids.local_to_cloud
                )
            except txmap.UnmappedTransaction:
                # queued; dead-lettered on replay if never mapped
                return functools.partial(self._answer_locally, call)
            call = Call(call.message_id, call.action, payload)
            text = call.serialize()
        return self._forward(call, text)

    def _forward(self, call: Call, text: str) -> Slow | None:
        deadline = self._loop.time() + self._call_timeout_s
        self._pending[call.message_id] = _Pending(call, deadline)
        if call.action == "BootNotification":
            self._spawn(self._save_boot(call, delivered=True), "saving BootNotification")
        if not self._send_cloud(text):
            self._pending.pop(call.message_id, None)
            return functools.partial(self._answer_locally, call)
        return None

    def _charger_answer(self, frame: CallResult | CallError, text: str) -> None:
        slot = self._slot
        if slot is not None and slot.message_id == frame.message_id:
            if slot.timer:
                slot.timer.cancel()
            self._slot = None
            if slot.origin == "gateway":
                if slot.future is not None and not slot.future.done():
                    slot.future.set_result(frame)
            else:
                self._send_cloud(text)
                for hook in self.hub.hooks:
                    if slot.action in hook.cloud_actions:
                        call = Call(slot.message_id, slot.action, slot.payload)
                        self._spawn(hook.on_cloud_call_answered(self, call, frame), "hook")
            self._pump()
        elif not frame.message_id.startswith(GATEWAY_ID_PREFIX):
            # A late answer (after our timeout) or one we never tracked: pass it on unchanged.
            self._send_cloud(text)

    async def _answer_locally(self, call: Call) -> None:
        """Answer a charger CALL per the offline action table, storing it first where required.

        If that fails (e.g. the store cannot write), the charger gets InternalError and nothing
        was acknowledged: it will send the message again (OCPP-J: an unexpected failure is an
        InternalError without details).
        """
        try:
            await self._answer_locally_or_raise(call)
        except StoreError as exc:
            # The store logs each change of its state once; a line per message would flood.
            self.hub.stats.errors["store"] += 1
            log.debug("%s: cannot store %s: %s", self.charger_id, call.action, exc)
            self._send_charger(self._error_text(call.message_id, "InternalError", ""))
        except Exception:
            self.hub.stats.errors["internal"] += 1
            log.exception("%s: cannot answer %s locally", self.charger_id, call.action)
            self._send_charger(self._error_text(call.message_id, "InternalError", ""))

    async def _answer_resend(self, call: Call, digest: bytes | None = None) -> bool:
        """Answer a resend of a stored CALL (same id, action and payload, queued or delivered
        within the last 24 h) with the answer the charger got the first time; True if it was one.
        The 1.6 StartTransaction gets the same transactionId; nothing is stored or sent again."""
        rule = offline.rule_for(self.version, call.action)
        if not rule.stored:
            return False
        if digest is None:
            digest = call_digest(call.action, call.payload)
        answer = await self.hub.store.earlier_answer(
            self.charger_id, call.message_id, digest, now=time.time()
        )
        if answer is None:
            return False
        self.hub.stats.errors["charger_resend"] += 1
        log.info(
            "%s: %s %s was stored before; answered as the first time",
            self.charger_id,
            call.action,
            call.message_id,
        )
        self._answered_locally.append(call.message_id)
        self._send_charger(CallResult(call.message_id, frames.loads(answer)).serialize())
        return True

    async def _answer_locally_or_raise(self, call: Call) -> None:
        version = self.version
        rule = offline.rule_for(version, call.action)
        if rule.answer is offline.Answer.NOT_SUPPORTED:
            self._send_charger(
                self._error_text(
                    call.message_id, "NotSupported", f"{call.action} is not available offline"
                )
            )
            return
        digest = call_digest(call.action, call.payload) if rule.stored else None
        if digest is not None and await self._answer_resend(call, digest):
            return
        try:
            # Validation never writes defaults into the payload (gateway.ocpp.validation): what is
            # stored and replayed is what the charger sent.
            validate_call(version, call.action, call.payload, call.message_id)
        except FrameError as exc:
            self.hub.stats.errors["schema_violation"] += 1
            self._send_charger(self._error_text(exc.message_id, exc.code, exc.description))
            return
        now = _utcnow()
        auth_info = await self._auth_info(call, now)
        transaction_id = None
        if rule.answer is offline.Answer.START_TRANSACTION:
            transaction_id = self.hub.next_local_tx_id()
        result = offline.local_result(
            version,
            call.action,
            now=now,
            heartbeat_interval_s=self.hub.settings.offline.heartbeat_interval_s,
            auth_info=auth_info,
            transaction_id=transaction_id,
        )
        if rule.answer is offline.Answer.BOOT:
            await self._save_boot(call, delivered=False)
        elif rule.stored:
            await self.hub.store.enqueue(
                self.charger_id,
                version,
                call.message_id,
                call.action,
                frames.dumps(call.payload),
                now.timestamp(),
                local_tx_id=transaction_id,
                digest=digest,
                answer=frames.dumps(result),
            )
            if transaction_id is not None:
                self.txids.add_local(transaction_id)
            self.remember_stored([call.message_id])
            self._backlog_grew(now.timestamp())
        self.hub.stats.local_answers[call.action] += 1
        self._answered_locally.append(call.message_id)
        self._send_charger(CallResult(call.message_id, result).serialize())
        if call.action in FOLDED_ANSWERS:
            self._fold_answer(call.action, call.payload, result, False)

    def _fold_answer(
        self, action: str, request: dict[str, Any], answer: dict[str, Any], by_cloud: bool
    ) -> None:
        self.hub.depot.answered(
            self.charger_id,
            self.version,
            action,
            request,
            answer,
            by_cloud=by_cloud,
        )

    async def _auth_info(self, call: Call, now: datetime) -> dict[str, Any] | None:
        tag = offline.presented_tag(self.version, call.action, call.payload)
        if tag is None:
            return None
        info: dict[str, Any] = await self.hub.authorizer.auth_info(self.version, tag, now)
        for hook in self.hub.hooks:
            info = await hook.gate(self, call, info, now)
        return info

    async def _save_boot(self, call: Call, *, delivered: bool) -> None:
        self._boot_saves += 1
        payload = frames.dumps(call.payload)
        await self.hub.store.save_boot(
            self.charger_id,
            self.version,
            call.message_id,
            payload,
            time.time(),
            delivered=delivered,
        )
        # Known once committed (writes commit in call order): the latest saved Boot decides.
        self.boot_undelivered = not delivered
        self._boot_saved = None if delivered else (call.message_id, payload)  # replay: no read
        if not delivered:
            self._boot_replayed_on_link = False
            if self.state is LinkState.ONLINE:  # the link came up meanwhile: replay it now
                self._set_state(Event.BACKLOG)
                self._start_replay()

    def _backlog_grew(self, created_at: float) -> None:
        self._enqueued += 1
        self.backlog += 1
        if self.backlog_oldest is None:
            self.backlog_oldest = created_at
        if self.state is LinkState.ONLINE:
            self._set_state(Event.BACKLOG)
            self._start_replay()
        self.ensure_link()

    def rows_appeared(self, count: int, oldest: float) -> None:
        """Rows reached this charger's queue from outside the session (a requeued dead letter):
        replay them like a backlog of its own."""
        self._enqueued += 1
        self.backlog = max(self.backlog, count)
        if self.backlog_oldest is None or oldest < self.backlog_oldest:
            self.backlog_oldest = oldest
        if self.state is LinkState.ONLINE:
            self._set_state(Event.BACKLOG)
            self._start_replay()
        self.ensure_link()

    def _start_replay(self) -> None:
        if self._replay_task is None or self._replay_task.done():
            self._replay_task = self._spawn(self._replay_backlog(), "replay")

    # --- cloud/gateway → charger -----------------------------------------------------------------

    def _enqueue_to_charger(self, out: _OutCall) -> bool:
        """Queue a CALL for the charger's slot; False if the queue is full (nothing queued)."""
        if self._slot is not None and len(self._queue) >= self._max_queued:
            self.hub.stats.errors["charger_queue_full"] += 1
            return False
        self._queue.append(out)
        if self._slot is None:
            self._pump()
        return True

    def _pump(self) -> None:
        """Send the next queued CALL if the charger's slot is free (one outstanding CALL)."""
        if self._slot is not None or not self._queue or self.charger is None:
            return
        out = self._queue.popleft()
        self._slot = out
        # chargers.call_timeout_s counts from now, when the charger gets it, not from queueing.
        out.timer = self._loop.call_later(self._charger_timeout_s, self._charger_timed_out, out)
        self._send_charger(out.text)

    def _charger_timed_out(self, out: _OutCall) -> None:
        if self._slot is not out:
            return
        self._slot = None
        self.hub.stats.errors["charger_call_timeout"] += 1
        log.warning("%s: no answer to %s %s", self.charger_id, out.action, out.message_id)
        if out.future is not None and not out.future.done():
            out.future.set_exception(
                ChargerTimeout(f"{self.charger_id} did not answer {out.action}")
            )
        self._pump()

    async def call_charger(
        self, action: str, payload: dict[str, Any], *, payload_text: str | None = None
    ) -> CallResult | CallError:
        """Send a gateway-originated CALL through the charger's queue and wait for its answer.

        It waits its turn behind the CALLs queued before it, then up to ``chargers.call_timeout_s``
        for the charger's answer. Raises ChargerQueueFull at once when
        ``chargers.max_queued_calls`` are waiting, ChargerNotConnected when the charger goes
        away, ChargerTimeout when the charger did not answer in time after receiving it.
        ``payload_text``: ``payload`` already serialized (one large payload sent to many chargers
        is serialized once).
        """
        if self.charger is None:
            raise ChargerNotConnected(self.charger_id)
        message_id = GATEWAY_ID_PREFIX + uuid.uuid4().hex[:24]
        future = _owned_future()
        text = (
            f'[{frames.CALL},"{message_id}",{frames.dumps(action)},{payload_text}]'
            if payload_text is not None
            else Call(message_id, action, payload).serialize()
        )
        out = _OutCall(message_id, action, payload, text, "gateway", future)
        if not self._enqueue_to_charger(out):
            raise ChargerQueueFull(
                f"charger queue full: {len(self._queue)} CALLs already wait for {self.charger_id}"
            )
        try:
            return await future
        except asyncio.CancelledError:  # the caller gave up (e.g. the HTTP client went away)
            with contextlib.suppress(ValueError):
                self._queue.remove(out)  # not sent yet: never send it
            raise

    # --- cloud side ------------------------------------------------------------------------------

    def ensure_link(self) -> None:
        """Keep an upstream link while the charger is connected or a backlog waits."""
        if self.hub.settings.standalone or (self._link_task and not self._link_task.done()):
            return
        if self.charger is None and self.backlog == 0:
            return
        if self.state is LinkState.OFFLINE:
            self._set_state(Event.CONNECTING)  # now, so a CALL arriving first waits for the link
        self._start_link_loop()

    def _book_turn(self) -> asyncio.Future[None]:
        turn, eta = self.hub.book_turn()
        self._turn_due = self._loop.time() + eta
        return turn

    def _start_link_loop(self) -> None:
        # Booked now, not when the task first runs: a CALL handled before then (frames that came
        # with the connection) already knows how long the link will take.
        self._booked_turn = self._book_turn()
        task = asyncio.create_task(self._link_loop())
        self._link_task = task

        def done(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                self.hub.stats.errors["internal"] += 1
                log.error("%s: link loop failed", self.charger_id, exc_info=t.exception())

        task.add_done_callback(done)

    def _wanted(self) -> bool:
        return not self.hub.closing and (self.charger is not None or self.backlog > 0)

    def retry_now(self, *, recovery: bool) -> None:
        """Cut the backoff short (the hub saw the cloud come back, or picked this link to probe).

        A recovery wake-up counts once per failure streak: a link the cloud keeps refusing (e.g.
        an unknown charger id) then follows its own backoff while others connect.
        """
        if recovery:
            if self._woken_by_recovery:
                return
            self._woken_by_recovery = True
        self._retry_early = True
        self._wanted_changed.set()

    async def _link_loop(self) -> None:
        while self._wanted():
            if self.state is LinkState.OFFLINE:
                self._set_state(Event.CONNECTING)
            turn, self._booked_turn = self._booked_turn or self._book_turn(), None
            try:
                await turn  # upstream.max_connects_per_s across all links
            finally:
                self._turn_due = None
            if not self._wanted():
                break
            url = f"{self.hub.settings.upstream.url}/{quote(self.charger_id, safe='')}"
            try:
                ws = await self.hub.connect_upstream(url, self.version, self._auth_header)
            except CloudUnavailable as exc:
                self.hub.stats.upstream_failures += 1
                self.hub.link_failed()
                self._set_state(Event.FAILED)
                delay = self._backoff.next_delay()
                self._log_down(str(exc), delay)
                await self._wait_to_retry(delay)
                continue
            self.hub.stats.upstream_connects += 1
            self._backoff.reset()
            self._woken_by_recovery = False
            self._boot_replayed_on_link = False
            self.upstream = ws
            # Decided with no await since the handshake: a message queued meanwhile is counted
            # in self.backlog (a Boot in boot_undelivered) and so is replayed before live traffic.
            replay = self.backlog > 0 or self.boot_undelivered
            self._set_state(Event.CONNECTED_WITH_BACKLOG if replay else Event.CONNECTED)
            self._log_up()
            self.hub.link_connected()
            if replay:
                self._start_replay()
            cloud_closed = await self._read_cloud(ws)
            self.upstream = None
            self._link_lost()
            if cloud_closed is _CLOSED_BY_US:
                continue  # e.g. after a call timeout: re-establish at once, backoff on failure
            if cloud_closed is not None and self.charger is not None:
                # The cloud ended the connection on purpose: let the charger see it (transparency).
                code, reason = cloud_closed
                self.charger.close(code, reason)
            elif self._wanted():
                delay = self._backoff.next_delay()
                self._log_down("connection lost", delay)
                await self._wait_to_retry(delay)
        self._set_state(Event.LOST)
        self._down_since = None
        if self._wanted():
            # A charger (or backlog) arrived while this loop was finishing and saw it still
            # running: serve it rather than leave it without a link.
            self._start_link_loop()
            return
        if self._inbox is None:  # else the inbox task does it when it ends
            self.hub.forget_if_idle(self)  # no await since the check: nothing can slip in

    def _log_down(self, reason: str, delay: float) -> None:
        """One warning when the link goes down, then at most one line per DOWN_LOG_EVERY_S."""
        now = self._loop.time()
        self._down_attempts += 1
        if self._down_since is None:
            self._down_since = now
            self._down_attempts = 1
            self._down_log.reset()
            self._down_log.allow(now)
            log.warning(
                "%s: cloud link down (%s); retrying in %.1fs", self.charger_id, reason, delay
            )
        elif self._down_log.allow(now):
            log.warning(
                "%s: cloud link still down after %.0fs, %d attempts (%s); next in %.1fs",
                self.charger_id,
                now - self._down_since,
                self._down_attempts,
                reason,
                delay,
            )

    def _log_up(self) -> None:
        if self._down_since is not None:
            log.info(
                "%s: cloud link up again after %.1fs down",
                self.charger_id,
                self._loop.time() - self._down_since,
            )
            self._down_since = None

    async def _wait_to_retry(self, delay: float) -> None:
        """Sleep the backoff, or less if the hub wakes this link (see retry_now)."""
        self._retry_early = False
        self.hub.retrying[self.charger_id] = self
        try:
            await self._sleep_unless_unwanted(delay)
        finally:
            if self.hub.retrying.get(self.charger_id) is self:
                del self.hub.retrying[self.charger_id]
            self._retry_early = False

    async def _sleep_unless_unwanted(self, delay: float) -> None:
        deadline = self._loop.time() + delay
        while (
            self._wanted() and not self._retry_early and (left := deadline - self._loop.time()) > 0
        ):
            self._wanted_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted_changed.wait(), left)

    async def _read_cloud(self, ws: ClientConnection) -> tuple[int, str] | None:
        """Relay cloud frames until the link ends; (code, reason) if the cloud closed it cleanly."""
        ws.on_write_paused = self._cloud_write_paused
        ws.on_message = self._cloud_message  # frames that came meanwhile are delivered now
        await ws.wait_closed()
        rcvd = ws.close_rcvd
        by_us, self._closing_upstream = self._closing_upstream, False
        if by_us:
            return _CLOSED_BY_US
        if rcvd is None or self.hub.closing or rcvd.code in _OUTAGE_CLOSE_CODES:
            return None
        return rcvd.code, rcvd.reason

    def _cloud_message(self, message: Message) -> None:
        self.hub.stats.frames_from_cloud += 1
        if self.trace_frames:
            self._trace("from cloud", message)
        try:
            self._from_cloud(message)
        except Exception:
            self.hub.stats.errors["internal"] += 1
            log.exception("%s: failed to handle a cloud frame", self.charger_id)

    def _link_lost(self) -> None:
        if self.charger is not None:
            self.charger.release_reading("cloud-busy")
        if self.state is not LinkState.OFFLINE:
            self._set_state(Event.LOST)
        if self._replay is not None and not self._replay.future.done():
            self._replay.future.set_exception(CloudUnavailable("link lost"))
        pending, self._pending = self._pending, {}
        for p in pending.values():
            self._spawn(self._answer_locally(p.call), "answering after link loss")

    def expire_pending(self, now: float) -> None:
        """Answer locally every forwarded CALL whose deadline passed (called by the hub's sweep)."""
        if not self._pending:
            return
        expired = [mid for mid, p in self._pending.items() if p.deadline <= now]
        for message_id in expired:
            self._cloud_timed_out(message_id)

    def _cloud_timed_out(self, message_id: str) -> None:
        pending = self._pending.pop(message_id, None)
        if pending is None:
            return
        self.hub.stats.errors["cloud_call_timeout"] += 1
        log.warning(
            "%s: cloud did not answer %s %s in time; answering locally",
            self.charger_id,
            pending.call.action,
            message_id,
        )
        self._set_state(Event.CALL_TIMEOUT)
        self._spawn(self._answer_locally(pending.call), "answering after timeout")
        self._drop_upstream()

    def _drop_upstream(self) -> None:
        """Treat the link as down until re-established: close it; the link loop reconnects."""
        self._close_upstream(1011, "call timeout")

    def _close_upstream(self, code: int, reason: str) -> None:
        ws = self.upstream
        if ws is not None:
            self._closing_upstream = True
            ws.close(code, reason)

    def _from_cloud(self, message: Message) -> None:
        try:
            text = _as_text(message)
            frame = frames.parse(text, self.version)
        except FrameError as exc:
            self.hub.stats.errors["bad_frame_from_cloud"] += 1
            log.warning("%s: bad frame from cloud: %s", self.charger_id, exc.description)
            if exc.message_id != "-1" and not self._unanswered(exc):
                self._send_cloud(self._error_text(exc.message_id, exc.code, exc.description))
            return
        if isinstance(frame, Call):
            self._cloud_call(frame, text)
            return
        if isinstance(frame, (Send, CallResultError)):
            self._cloud_2_1(frame, text)
            return
        replay = self._replay
        if replay is not None and replay.message_id == frame.message_id:
            if not replay.future.done():
                replay.future.set_result(frame)
            return
        pending = self._pending.pop(frame.message_id, None)
        if pending is None:
            log.info(
                "%s: dropping cloud answer to unknown id %s", self.charger_id, frame.message_id
            )
            return
        self._send_charger(text)
        self.hub.stats.upstream_call_s.observe(
            self._loop.time() - pending.deadline + self._call_timeout_s
        )
        if isinstance(frame, CallResult):
            if pending.call.action in LEARNED_ACTIONS:
                self._learn(pending.call, frame)
            if pending.call.action in FOLDED_ANSWERS:
                self._fold_answer(pending.call.action, pending.call.payload, frame.payload, True)

    def _cloud_2_1(self, frame: Send | CallResultError, text: str) -> None:
        """OCPP 2.1 SEND or CALLRESULTERROR from the cloud: to the charger unchanged.

        A CALLRESULTERROR answers the charger's CALLRESULT to a cloud CALL, whose slot that
        CALLRESULT already freed. It must not be matched against the charger's pending CALLs or
        the replay: the ids of the two directions come from different senders and may be equal.
        """
        if isinstance(frame, Send):
            self._relay_send("from_cloud", self._send_charger if self.charger else None, text)
        elif self.charger is not None:
            self._send_charger(text)
        else:
            log.info("%s: charger gone; cloud CALLRESULTERROR dropped", self.charger_id)

    def _learn(self, call: Call, result: CallResult) -> None:
        self._spawn(
            self.hub.authorizer.learn_from(
                self.version, call.action, call.payload, result.payload, _utcnow()
            ),
            "learning",
        )

    def _cloud_call(self, call: Call, text: str) -> None:
        if call.action in self.hub.watched_cloud_calls:
            for watcher in self.hub.watchers:
                if call.action in watcher.cloud_calls:
                    watcher.cloud_call(self, call)
        if self.charger is None:
            self._send_cloud(
                self._error_text(call.message_id, "GenericError", "charger is not connected")
            )
            return
        payload = call.payload
        if self.txids.cloud_to_local:
            payload = txmap.rewrite_to_charger(call.action, call.payload, self.txids.cloud_to_local)
            if payload is not call.payload:
                text = Call(call.message_id, call.action, payload).serialize()
        out = _OutCall(call.message_id, call.action, payload, text, "cloud")
        if not self._enqueue_to_charger(out):
            log.warning(
                "%s: %d CALLs already wait for the charger; refusing %s %s",
                self.charger_id,
                len(self._queue),
                call.action,
                call.message_id,
            )
            self._send_cloud(
                self._error_text(call.message_id, "GenericError", "charger queue full")
            )

    # --- replay ----------------------------------------------------------------------------------

    async def _replay_backlog(self) -> None:
        """Deliver the stored BootNotification and backlog in order, one CALL at a time."""
        try:
            while self.state is LinkState.REPLAYING:
                if self.boot_undelivered and not self._boot_replayed_on_link:
                    await self._replay_boot()
                    continue  # a Boot saved meanwhile goes first too
                enqueued = self._enqueued
                rows = await self.hub.store.pending(self.charger_id, REPLAY_BATCH)
                if not rows and self._enqueued != enqueued:
                    continue  # queued while we read: read again before declaring it drained
                if not rows:
                    self.backlog, self.backlog_oldest = 0, None
                    self._set_state(Event.DRAINED)
                    if self.charger is None:
                        self._wanted_changed.set()
                        self._close_upstream(1000, "backlog drained")
                    return
                self.backlog = max(self.backlog, len(rows))
                self.backlog_oldest = rows[0].created_at
                for row in rows:
                    if self.state is not LinkState.REPLAYING:
                        return
                    wait = row.next_attempt_at - time.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        if self.state is not LinkState.REPLAYING:
                            return
                    try:
                        await self._replay_row(row)
                    except _RetryLater:
                        break  # re-read: the row now carries its next attempt time
                    except StoreError:
                        # The outcome could not be recorded: hold the replay until the store
                        # commits again, then resume from the first row still queued.
                        await self.hub.store.wait_usable()
                        break
        except CloudUnavailable:
            return  # the link loop reconnects and replay starts again from the store

    async def _replay_boot(self) -> None:
        """Replay the stored undelivered BootNotification (once per link: a CALLERROR leaves it
        for the next link)."""
        saves = self._boot_saves
        boot = self._boot_saved or await self.hub.store.undelivered_boot(self.charger_id)
        delivered = boot is None
        if boot is not None:
            message_id, payload = boot
            answer = await self._replay_call(
                Call(message_id, "BootNotification", frames.loads(payload))
            )
            if isinstance(answer, CallResult):
                await self.hub.store.mark_boot_delivered(self.charger_id, message_id)
                self._warn_if_refused(answer.payload.get("status"), "replayed BootNotification")
                delivered = True
        if saves == self._boot_saves:  # else a newer Boot was saved meanwhile: replay that one
            self._boot_replayed_on_link = True
            if delivered:
                self.boot_undelivered = False
                self._boot_saved = None

    async def _replay_call(self, call: Call) -> CallResult | CallError:
        self._replay = _Replay(call.message_id)
        try:
            if not self._send_cloud(call.serialize()):
                raise CloudUnavailable("link lost")
            try:
                return await asyncio.wait_for(
                    self._replay.future, self.hub.settings.upstream.call_timeout_s
                )
            except TimeoutError:
                self.hub.stats.errors["cloud_call_timeout"] += 1
                self._set_state(Event.CALL_TIMEOUT)
                self._drop_upstream()
                raise CloudUnavailable("replayed CALL unanswered") from None
        finally:
            self._replay = None

    async def _replay_row(self, row: OutboxRow) -> None:
        version = frames.as_version(row.version)
        payload = frames.loads(row.payload)
        try:
            payload = txmap.rewrite_to_cloud(row.action, payload, self.txids.local_to_cloud)
        except txmap.UnmappedTransaction as exc:
            await self._dead_letter(row, "UnmappedTransaction", str(exc))
            return
        if row.action == "TransactionEvent" and not payload.get("offline"):
            payload = {**payload, "offline": True}  # answered locally: 2.0.1/2.1 E02 offline flag
        answer = await self._replay_call(Call(row.message_id, row.action, payload))
        if isinstance(answer, CallError):
            code = answer.code
            if code in TRANSIENT_CODES and row.attempts + 1 < MAX_TRANSIENT_ATTEMPTS:
                await self._retry_later(row, f"{code}: {answer.description}")
            await self._dead_letter(row, code, answer.description)
            return
        try:
            # An answer that breaks the schema is not a delivery: a StartTransaction answer
            # without an integer transactionId would leave the transaction unmapped.
            validate_result(version, row.action, answer.payload, row.message_id)
        except FrameError as exc:
            reason = f"the cloud's answer breaks the schema: {exc.description}"
            if row.attempts + 1 < MAX_TRANSIENT_ATTEMPTS:
                await self._retry_later(row, f"{exc.code}: {reason}")
            await self._dead_letter(row, exc.code, reason)
            return
        tx = None
        if version == "1.6" and row.action == "StartTransaction":
            tx = await self._bind_transaction(row, answer)
            info = answer.payload.get("idTagInfo")
            status = info.get("status") if isinstance(info, dict) else None
            self._warn_if_refused(status, f"replayed StartTransaction {row.message_id}")
        await self.hub.store.delivered(row.seq, tx=tx)
        if tx is not None:
            self.txids.bind(tx[1], tx[2])
            self.hub.depot.bind(self.charger_id, tx[1], tx[2])
        elif row.action == "TransactionEvent":
            self._fold_answer(row.action, payload, answer.payload, True)
        self.backlog = max(0, self.backlog - 1)
        self.hub.stats.replayed += 1
        if row.action in LEARNED_ACTIONS:
            self._learn(Call(row.message_id, row.action, payload), answer)

    async def _retry_later(self, row: OutboxRow, error: str) -> None:
        """Hold a replayed message for a backoff delay, then raise _RetryLater."""
        delay = min(300.0, 2.0 ** (row.attempts + 1))
        log.warning(
            "%s: replayed %s %s not delivered (%s); retry in %.0fs",
            self.charger_id,
            row.action,
            row.message_id,
            error,
            delay,
        )
        await self.hub.store.retry_later(
            row.seq, next_attempt_at=time.time() + delay, error=error[:500]
        )
        raise _RetryLater

    def _warn_if_refused(self, status: object, what: str) -> None:
        """The charger was answered Accepted locally; an operator should know the cloud disagreed."""
        if status is not None and status != "Accepted":
            log.warning("%s: cloud answered %s to the %s", self.charger_id, status, what)

    async def _bind_transaction(
        self, row: OutboxRow, answer: CallResult
    ) -> tuple[str, int, int] | None:
        """(charger, local id, cloud id) for a replayed StartTransaction answered locally; the
        answer has been validated (an integer transactionId)."""
        local = row.local_tx_id
        if local is None:
            return None
        cloud = int(answer.payload["transactionId"])
        log.info("%s: local transaction %d is cloud transaction %d", self.charger_id, local, cloud)
        return (self.charger_id, local, cloud)

    async def _dead_letter(self, row: OutboxRow, code: str, description: str) -> None:
        log.error(
            "%s: cloud refused replayed %s %s (%s: %s); moved to dead letters",
            self.charger_id,
            row.action,
            row.message_id,
            code,
            description,
        )
        await self.hub.store.dead_letter(row, code=code, description=description, now=time.time())
        self.backlog = max(0, self.backlog - 1)
        self.hub.stats.dead_lettered += 1
        self.hub.dead_letters += 1

    # --- shutdown --------------------------------------------------------------------------------

    async def close(self) -> None:
        sockets: list[WsConnection] = []
        if self.charger is not None:
            sockets.append(self.charger)
        if self.upstream is not None:
            self._closing_upstream = True
            sockets.append(self.upstream)
        for ws in sockets:
            ws.close(1001, "gateway shutting down")
        await asyncio.gather(*(ws.wait_closed() for ws in sockets))
        self._wanted_changed.set()
        tasks = [t for t in (self._link_task, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _RetryLater(Exception):
    """Internal: the replay pauses on a transient error (the row holds its retry time)."""
