"""One charger's session: the driver of its :class:`~gateway.core.relay.ChargerRelay`.

The relay core decides everything about the charger's traffic (what is relayed, answered
locally, queued for the charger, replayed, retried or dead-lettered). The session moves text
between the charger's socket, the cloud's and the core, sends what the core produced and hands
each of the core's events to the driver that carries it out (one table by event type). Online, a
frame is relayed within the socket's receive callback: no task, no await, and no event unless
its action is observed.

The drivers it owns, each told by the session through a narrow protocol or callable:

- :class:`~gateway.net.link.UpstreamLink` keeps the cloud link (paced turns, backoff, early
  retry, the down/up lines); the session tells the core each change of the link (``link_*``).
- :class:`~gateway.net.effects.RelayEffects` carries out the events that need the store or the
  access-ID cache (local answers, resend checks, boot saves, the replay's reads and outcomes)
  and reports each result back to the core.
- :class:`~gateway.net.observers.SessionObservers` shows the CALLs and answers the core reports
  to the depot view, the hooks and the watchers, and runs the hooks' offline gate.
- :class:`~gateway.net.calls.ChargerCalls` keeps the futures of the gateway's own CALLs to the
  charger (:meth:`ChargerSession.call_charger`).
- :class:`~gateway.net.cloud_version.CloudVersion`: the charger's offered versions, the cloud's
  choice, the 1012 close when the cloud refuses the charger's version.
- :class:`~gateway.net.tasks.SessionTasks` runs the tasks all of them start.

The session knows its hub only through :class:`~gateway.net.host.SessionHost` and gets its
parameters as one :class:`~gateway.net.host.SessionSettings` value; the clocks and the id
generator are injected.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from gateway.core import events as ev
from gateway.core import txmap
from gateway.core.link import LinkState
from gateway.core.relay import ChargerRelay
from gateway.errors import FrameError
from gateway.net.calls import ChargerCalls
from gateway.net.cloud_version import ChargerOffer, CloudVersion
from gateway.net.effects import EFFECT_HANDLERS, RelayEffects
from gateway.net.host import SessionHost, SessionSettings
from gateway.net.link import UpstreamLink
from gateway.net.observers import SessionObservers, trace_frame
from gateway.net.tasks import SessionTasks
from gateway.net.upstream import charger_url, upstream_headers
from gateway.net.wsclient import ClientConnection
from gateway.net.wsconn import Message, ServerConnection, WsConnection
from gateway.ocpp.frames import CallError, CallResult, OcppVersion

__all__ = ["ChargerSession"]

log = logging.getLogger(__name__)

# Charger frames waiting behind one that needs I/O (a local answer); beyond this, reading pauses.
INBOX_HOLD: Final = 16
_NOT_UTF8: Final = FrameError("FormatViolation", "frame is not UTF-8 text")


def _new_id() -> str:
    return uuid.uuid4().hex[:24]


class ChargerSession:
    """Everything about one charge point id; outlives its sockets while a backlog drains."""

    __slots__ = (
        "_calls",
        "_effects",
        "_link",
        "_now",
        "_observers",
        "_output",
        "_stats",
        "_tasks",
        "_trace_frames",
        "_versions",
        "_wall",
        "backlog_oldest",
        "charger",
        "charger_id",
        "host",
        "last_seen_at",
        "relay",
        "settings",
        "upstream",
    )

    def __init__(
        self,
        host: SessionHost[ChargerSession],
        charger_id: str,
        version: OcppVersion,
        settings: SessionSettings,
        *,
        txids: txmap.TxIdMap | None = None,
        boot_undelivered: bool = False,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.host = host
        self.charger_id = charger_id
        self.settings = settings
        stats = host.stats
        self.relay = ChargerRelay(
            charger_id,
            version,
            settings=settings.relay,
            new_id=new_id,
            txids=txids,
            errors=stats.errors,
            sends=stats.sends,
            observe_answer_s=stats.upstream_call_s.observe,
            log_limit=host.log_limit,
        )
        self._stats = stats
        self._output = self.relay.output
        self._now = clock or asyncio.get_running_loop().time  # monotonic: deadlines
        self._wall = wall_clock  # unix time: what is stored and shown
        self.charger: ServerConnection | None = None
        self.upstream: ClientConnection | None = None  # the link's, read here on every frame
        self.last_seen_at: float | None = None  # unix time of the charger's last frame
        self.backlog_oldest: float | None = None
        self._tasks = SessionTasks(charger_id, stats.errors)
        # log.level = "debug": one line per frame (one attribute test per frame otherwise).
        self._trace_frames = False
        self._calls = ChargerCalls(self, self.relay, clock=self._now)
        self._observers = SessionObservers(self, host, clock=self._now, wall_clock=wall_clock)
        self._effects = RelayEffects(
            self,
            host,
            self.relay,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            boot_undelivered=boot_undelivered,
            gate=self._observers.gate,
            clock=self._now,
            wall_clock=self._wall,
        )
        self._link = UpstreamLink(
            self,
            host,
            url=charger_url(settings.upstream_url, charger_id),
            reconnect_max_s=settings.reconnect_max_s,
            clock=self._now,
        )
        self._versions = CloudVersion(self, host, self._link, version)

    # --- views ---------------------------------------------------------------------------------

    @property
    def version(self) -> OcppVersion:
        return self.relay.version

    @property
    def state(self) -> LinkState:
        return self.relay.state

    @property
    def backlog(self) -> int:
        return self.relay.backlog

    @property
    def txids(self) -> txmap.TxIdMap:
        return self.relay.txids

    @property
    def connected(self) -> bool:
        return self.charger is not None

    @property
    def has_link_task(self) -> bool:
        return self._link.running

    @property
    def boot_undelivered(self) -> bool:
        """The store holds a BootNotification the cloud has not seen."""
        return self._effects.boot_undelivered

    @property
    def backoff_capped(self) -> bool:
        """The link's reconnect delay has reached ``upstream.reconnect_max_s``."""
        return self._link.backoff_capped

    @property
    def upstream_connected(self) -> bool:
        return self.upstream is not None and self.state in (LinkState.ONLINE, LinkState.REPLAYING)

    def restore_backlog(self, count: int, oldest: float | None) -> None:
        """The store's count of this charger's queued rows (at start-up, after pruning)."""
        self.relay.backlog = count
        self.backlog_oldest = oldest if count else None

    def rows_appeared(self, count: int, oldest: float) -> None:
        """Rows reached this charger's queue from outside the session (a requeued dead letter):
        replay them like a backlog of its own."""
        if self.backlog_oldest is None or oldest < self.backlog_oldest:
            self.backlog_oldest = oldest
        self.relay.rows_appeared(count, self._now())
        self.flush()
        self.ensure_link()

    def remember_stored(self, message_ids: list[str]) -> None:
        """Message ids of CALLs stored for replay: a charger CALL with one may be a resend."""
        self.relay.remember_stored(message_ids)

    def set_trace_frames(self, on: bool) -> None:
        self._trace_frames = on

    # --- moving the core's output --------------------------------------------------------------

    def flush(self) -> None:
        """Send what the core produced and carry out its events."""
        output = self._output  # tested, and taken, here: every frame comes this way
        if output.to_cloud:
            ws, texts = self.upstream, output.to_cloud.copy()
            output.to_cloud.clear()
            for text in texts:
                if ws is not None and ws.send(text):
                    self._stats.frames_to_cloud += 1
                    if self._trace_frames:
                        trace_frame(self.charger_id, "to cloud", text)
        if output.to_charger:
            charger, texts = self.charger, output.to_charger.copy()
            output.to_charger.clear()
            for text in texts:
                if charger is not None and charger.send(text):
                    self._stats.frames_to_chargers += 1
                    if self._trace_frames:
                        trace_frame(self.charger_id, "to charger", text)
        if output.events:  # none for a relayed frame unless its action is observed
            for event in self.relay.events():
                _HANDLERS[type(event)](self, event)

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, what)

    def _drained(self, event: ev.Drained) -> None:
        self.backlog_oldest = None
        self._link.wake()

    def tick(self, now: float) -> None:
        """Act on the core's deadlines (the hub's sweep calls it)."""
        if self.relay.has_deadlines:
            self.relay.tick(now)
            self.flush()
        self._versions.tick()

    # --- charger side --------------------------------------------------------------------------

    def attach_charger(
        self, ws: ServerConnection, version: OcppVersion, offer: ChargerOffer | None = None
    ) -> None:
        """Serve a charger's open connection: its frames arrive in ``_charger_message``."""
        self._versions.charger_attached(version, offer)
        old = self.charger
        self.charger = ws  # first: the old socket's clean-up must not close the upstream link
        self.relay.charger_attached(version, self._now())
        self.flush()
        if old is not None:
            self.relay.lines.warning(self._now(), "new connection replaces the old one")
            old.close(1000, "replaced by a new connection")
        if self.upstream is not None:
            self.upstream.release_reading("charger-busy")
        self._link.headers = upstream_headers(ws.take_request(), self.settings.pass_authorization)
        self.ensure_link()
        ws.on_close = self._charger_closed
        ws.on_write_paused = self._charger_write_paused
        ws.on_message = self._charger_message  # frames that came meanwhile are delivered now

    def _charger_closed(self, ws: WsConnection) -> None:
        log.info("%s disconnected", self.charger_id)
        if self.charger is ws:
            self.charger = None
            self._versions.charger_detached()
            self.relay.charger_detached(self._now())
            self.flush()
            self._link.wake()
            self.forget_if_done()

    def forget_if_done(self) -> None:
        """Let the hub drop this session once nothing of it runs (its link loop does it last)."""
        if not self.has_link_task and not self._effects.answering:
            self.host.forget_if_idle(self)

    def _charger_write_paused(self, paused: bool) -> None:
        """The charger reads slower than the cloud sends: stop reading the cloud meanwhile."""
        if self.upstream is not None:
            self.upstream.hold_reading_if(paused, "charger-busy")

    def _cloud_write_paused(self, paused: bool) -> None:
        if self.charger is not None:
            self.charger.hold_reading_if(paused, "cloud-busy")

    def _charger_message(self, message: Message) -> None:
        self._stats.frames_from_chargers += 1
        self.last_seen_at = self._wall()
        if self._trace_frames:
            trace_frame(self.charger_id, "from charger", message)
        relay = self.relay
        try:
            if isinstance(message, str):
                relay.receive_charger(message, self._now())
            else:
                try:
                    relay.receive_charger(message.decode(), self._now())
                except UnicodeDecodeError:
                    relay.bad_charger_frame(_NOT_UTF8, self._now())
            self.flush()
        except Exception:
            self._stats.errors["internal"] += 1
            relay.lines.error(self._now(), "failed to handle a charger frame", exc_info=True)
        if len(relay.inbox_items) >= INBOX_HOLD and self.charger is not None:
            self.charger.hold_reading("inbox")

    def answer_done(self) -> None:
        self.flush()
        if self.charger is None:
            self.forget_if_done()
        elif self.relay.inbox_size < INBOX_HOLD:
            self.charger.release_reading("inbox")

    # --- gateway and cloud CALLs to the charger ------------------------------------------------

    async def call_charger(
        self, action: str, payload: dict[str, Any], *, payload_text: str | None = None
    ) -> CallResult | CallError:
        """Send a gateway-originated CALL through the charger's queue and wait for its answer.

        It waits its turn behind the CALLs queued before it, then up to ``chargers.call_timeout_s``
        for the charger's answer. ``payload_text``: ``payload`` already serialized (one large
        payload sent to many chargers is serialized once). Raises ChargerQueueFull at once when
        ``chargers.max_queued_calls`` are waiting, ChargerNotConnected when the charger goes
        away, ChargerTimeout when the charger did not answer in time after receiving it.
        """
        return await self._calls.call(action, payload, payload_text=payload_text)

    def _charger_answered(self, event: ev.ChargerAnswered) -> None:
        if event.origin == "gateway":
            self._calls.answered(event)
        else:
            self._observers.cloud_call_answered(event.call, event.answer)

    # --- cloud side ----------------------------------------------------------------------------

    def ensure_link(self) -> None:
        """Keep an upstream link while the charger is connected or a backlog waits."""
        if not self.settings.standalone:
            self._link.ensure()

    def retry_now(self, *, recovery: bool) -> None:
        """Cut the link's backoff short (see :meth:`UpstreamLink.retry_now`)."""
        self._link.retry_now(recovery=recovery)

    # The link's LinkOwner side: each change of the link, told to the core.

    @property
    def wants_link(self) -> bool:
        return self.relay.wants_link

    def link_booked(self, turn_in_s: float) -> None:
        self.relay.link_connecting(self._now(), turn_in_s=turn_in_s)

    def link_failed(self) -> None:
        self.relay.link_failed(self._now())
        self.flush()

    async def link_opened(self, ws: ClientConnection) -> None:
        self.upstream = ws
        await self._effects.load_boot()
        # Decided now: a message queued meanwhile is in the backlog, and so is replayed
        # before live traffic.
        self.relay.link_connected(self._now())

    def link_live(self, ws: ClientConnection) -> None:
        self.flush()
        ws.on_write_paused = self._cloud_write_paused
        ws.on_message = self._cloud_message  # frames that came meanwhile are delivered now

    def link_closed(self) -> None:
        self.upstream = None
        if self.charger is not None:
            self.charger.release_reading("cloud-busy")
        self.relay.link_lost(self._now())
        self.flush()

    def cloud_closed(self, code: int, reason: str) -> bool:
        if self.charger is None:
            return False
        self.charger.close(code, reason)  # transparency: the charger sees the cloud's close
        return True

    def link_stopped(self) -> None:
        if not self._effects.answering:  # else the local answer does it when it ends
            self.host.forget_if_idle(self)  # no await since the check: nothing can slip in

    def retry_wait(self, waiting: bool) -> None:
        self.host.retry_wait(self, waiting)

    def _cloud_message(self, message: Message) -> None:
        self._stats.frames_from_cloud += 1
        if self._trace_frames:
            trace_frame(self.charger_id, "from cloud", message)
        relay = self.relay
        try:
            if isinstance(message, str):
                relay.receive_cloud(message, self._now())
            else:
                try:
                    relay.receive_cloud(message.decode(), self._now())
                except UnicodeDecodeError:
                    relay.bad_cloud_frame(_NOT_UTF8, self._now())
            self.flush()
        except Exception:
            self._stats.errors["internal"] += 1
            relay.lines.error(self._now(), "failed to handle a cloud frame", exc_info=True)

    # --- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        sockets: list[WsConnection] = []
        if self.charger is not None:
            sockets.append(self.charger)
        if self.upstream is not None:
            sockets.append(self.upstream)
        if self.charger is not None:
            self.charger.close(1001, "gateway shutting down")
        self._link.close(1001, "gateway shutting down")
        await asyncio.gather(*(ws.wait_closed() for ws in sockets))
        self._link.wake()
        await self._tasks.cancel(self._link.task)


# Each of the core's events, by type, to the driver that carries it out: one table for every
# session, one lookup per event (a relayed MeterValues or StatusNotification brings one, for the
# depot view). An event in none is an internal error.
def _to_effects(
    handler: Callable[[RelayEffects, Any], None],
) -> Callable[[ChargerSession, Any], None]:
    return lambda session, event: handler(session._effects, event)


_HANDLERS: Final[Mapping[type[ev.RelayEvent], Callable[[ChargerSession, Any], None]]] = {
    **{kind: _to_effects(handler) for kind, handler in EFFECT_HANDLERS.items()},
    ev.ChargerCallSeen: lambda s, e: s._observers.charger_call(e.call, e.at),
    ev.CloudCallSeen: lambda s, e: s._observers.cloud_call(e.call),
    ev.ChargerAnswered: ChargerSession._charger_answered,
    ev.ChargerCallFailed: lambda s, e: s._calls.failed(e),
    ev.CloseLink: lambda s, e: s._link.close(e.code, e.reason),
    ev.Drained: ChargerSession._drained,
}
