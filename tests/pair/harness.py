"""A simulated charger ↔ the real hub, sessions and store ↔ a simulated cloud: no sockets, a fake clock.

The gateway side is the real thing: :class:`~gateway.net.hub.Hub` and the
:class:`~gateway.net.session.ChargerSession` it makes (link, effects, calls, observers, tasks), the
access-ID cache, the reservation book and the local list pusher, over a real SQLite file. Only
three things are replaced, each at a surface the gateway already takes from outside:

- the sockets: :class:`Link` is an in-memory pair of connection ends with what the hub and the
  session use of a ``WsConnection`` (``send``, ``close``, reading held and released,
  ``on_message``/``on_close``/``on_write_paused``, ``close_rcvd``, ``closed``, ``wait_closed``,
  ``request.headers``); the charger's end is given to ``Hub.accept`` as its server connection;
- the upstream opener: ``Hub(connect_upstream=...)`` gets :meth:`SimCloud.open`, which returns the
  gateway's end of a new :class:`Link` to the simulated cloud, or raises ``CloudUnavailable``;
- the monotonic clock: the loop is a :class:`FakeClockLoop`, whose ``time()`` is a number the test
  moves (:meth:`Pair.advance`), so every ``call_later``, ``asyncio.sleep`` and ``wait_for`` of the
  drivers and the sessions' deadlines follow it. The wall clock stays ``time.time`` (the hub makes
  its sessions with their default): what is stored and answered keeps the real date, and what
  depends on it (a reservation's or a learned answer's expiry, the 24 h resend window) is tested
  in the other tiers.

:meth:`Pair.settle` runs the loop until nothing moves: rounds of ``sleep(0)`` and a store round
trip (the store's one database thread answers in order, so a write queued before it has been
carried out), until a round shows nothing but itself happening. No real sleep anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextvars import Context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.core.backoff import BackoffPolicy
from gateway.errors import CloudUnavailable
from gateway.metrics import RelayStats
from gateway.net.hub import Hub
from gateway.net.session import ChargerSession
from gateway.net.wsconn import ClientConnection, ServerConnection
from gateway.ocpp.frames import OcppVersion
from gateway.reservations.book import ReservationBook
from gateway.reservations.hook import ReservationHook
from gateway.store.engine import Store
from gateway.tags.cache import TagCache
from gateway.tags.local_list_push import LocalListPusher
from gateway.tags.rules import normalise

__all__ = [
    "Close",
    "FakeClockLoop",
    "Link",
    "Pair",
    "SimCharger",
    "SimCloud",
    "Store",
    "make_settings",
    "open_pair",
    "running",
]

Message = str | bytes
SPIN = 8  # loop iterations per spin of Pair.settle
CLOSE_TIMEOUT_S = 2.0  # gateway.net.wsconn.Timeouts.close_s


class FakeClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose monotonic clock only moves when the test moves it.

    Timers (``call_later``, ``asyncio.sleep``, ``asyncio.timeout``) are due by this clock. It counts
    the callbacks scheduled, so that :meth:`Pair.settle` can tell a loop with work left from an
    idle one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.scheduled_count = 0
        self.in_executor: set[asyncio.Future[Any]] = set()  # asyncio.to_thread's work

    def time(self) -> float:
        return self.now

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.Handle:
        self.scheduled_count += 1
        return super().call_soon(callback, *args, context=context)

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.Handle:
        self.scheduled_count += 1
        return super().call_soon_threadsafe(callback, *args, context=context)

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., Any], *args: Any
    ) -> Any:
        future = super().run_in_executor(executor, func, *args)
        self.in_executor.add(future)
        future.add_done_callback(self.in_executor.discard)
        return future

    def next_timer(self) -> float | None:
        """When the earliest timer not cancelled is due (None: no timer). Reads the base loop's
        heap of timers (``_scheduled``), which it has had since asyncio began; nothing is changed."""
        timers: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        return min((t.when() for t in timers if not t.cancelled()), default=None)


# --- the sockets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Close:
    """A close frame (websockets' ``Close`` has the same two fields the link reads)."""

    code: int
    reason: str


class _Request:
    """The handshake request of a charger's connection: the session reads its headers."""

    def __init__(self, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers


class End:
    """One end of an in-memory WebSocket connection, with the surface the gateway uses.

    A message sent is delivered to the other end in a later loop iteration (as over a socket);
    while reading is held, or before ``on_message`` is set, messages wait in order.
    """

    def __init__(self, link: Link, name: str, subprotocol: str) -> None:
        loop = asyncio.get_running_loop()
        self.link = link
        self.name = name
        self.subprotocol = subprotocol
        self.peer: End | None = None
        self.request: _Request | None = None
        self.remote_address = ("127.0.0.1", 0)
        self._on_message: Callable[[Message], None] | None = None
        self.on_close: Callable[[Any], None] | None = None
        self.on_write_paused: Callable[[bool], None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self._inbound: deque[Message | Close] = deque()
        self._holds: set[str] = {"unattached"}
        self._delivering = False

    # --- what the gateway uses -------------------------------------------------------------

    @property
    def on_message(self) -> Callable[[Message], None] | None:
        return self._on_message

    @on_message.setter
    def on_message(self, handler: Callable[[Message], None] | None) -> None:
        self._on_message = handler
        if handler is not None:
            self.release_reading("unattached")

    @property
    def open(self) -> bool:
        return self.close_sent is None and self.close_rcvd is None and not self.closed.done()

    def send(self, text: str) -> bool:
        if not self.open or self.peer is None:
            return False
        self.link.frames += 1
        asyncio.get_running_loop().call_soon(self.peer._arrive, text)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake: the peer reads the close after what was sent before it."""
        if not self.open or self.peer is None:
            return
        self.close_sent = Close(code, reason)
        loop = asyncio.get_running_loop()
        loop.call_soon(self.peer._arrive, self.close_sent)
        # As WsConnection: a closing handshake that does not end in time aborts the connection.
        loop.call_later(CLOSE_TIMEOUT_S, self.link.finish)

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)

    def hold_reading(self, reason: str) -> None:
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        self._holds.discard(reason)
        if not self._holds and self._inbound:
            asyncio.get_running_loop().call_soon(self._deliver)

    @property
    def reading_held(self) -> bool:
        return bool(self._holds)

    def hold_reading_if(self, hold: bool, reason: str) -> None:
        if hold:
            self.hold_reading(reason)
        else:
            self.release_reading(reason)

    def abort(self) -> None:
        self.link.drop()

    # --- delivery ----------------------------------------------------------------------------

    def _arrive(self, item: Message | Close) -> None:
        if self.closed.done():
            return
        self._inbound.append(item)
        self._deliver()

    def _deliver(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._inbound and not self._holds and self._on_message is not None:
                item = self._inbound.popleft()
                if isinstance(item, Close):
                    self._close_frame(item)
                    return
                self._on_message(item)
        finally:
            self._delivering = False

    def _close_frame(self, frame: Close) -> None:
        self.close_rcvd = frame
        if self.close_sent is None and self.peer is not None:  # echo it (RFC 6455 §5.5.1)
            self.close_sent = frame
            self.peer.close_rcvd = frame
        self.link.finish()

    def _lost(self) -> None:
        if self.closed.done():
            return
        self.closed.set_result(None)
        on_close, self.on_close = self.on_close, None
        self._on_message = self.on_write_paused = None
        if on_close is not None:
            on_close(self)


class Link:
    """An in-memory connection: ``near`` is the gateway's end, ``far`` the simulated system's."""

    def __init__(self, subprotocol: str, path: str = "", headers: dict[str, str] | None = None):
        self.frames = 0
        self.near = End(self, "gateway", subprotocol)
        self.far = End(self, "peer", subprotocol)
        self.near.peer, self.far.peer = self.far, self.near
        self.near.request = _Request(path, dict(headers or {}))

    def finish(self) -> None:
        """Both ends closed (after a closing handshake, or with none: a drop)."""
        self.near._lost()
        self.far._lost()

    def drop(self) -> None:
        """The network fails: both ends see the connection end without a close frame."""
        self.finish()

    @property
    def is_open(self) -> bool:
        return not self.near.closed.done()


# --- the simulated systems -------------------------------------------------------------------


Frame = list[Any]


class SimCharger:
    """A charger speaking OCPP-J: sends CALLs, keeps every answer, answers the CALLs it receives.

    ``answers_to`` gives the payload for a CALL it receives (default: ``{"status": "Accepted"}``);
    ``silent`` actions get no answer; ``refused`` actions get a CALLERROR.
    """

    def __init__(self, charger_id: str, version: OcppVersion = "1.6") -> None:
        self.id = charger_id
        self.version = version
        self.ids = itertools.count(1)
        self.answers: dict[str, Frame] = {}
        self.received: list[Frame] = []  # every frame from the gateway, in order
        self.answers_to: dict[str, dict[str, Any]] = {}
        # Answers computed from the CALL's payload (before ``answers_to``).
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self.silent: set[str] = set()
        self.refused: set[str] = set()
        self.link: Link | None = None
        self.closes: list[Close | None] = []  # how each of its connections ended
        self.outstanding: set[str] = set()  # CALLs received and not answered yet
        self.max_outstanding = 0

    @property
    def calls_received(self) -> list[Frame]:
        return [f for f in self.received if f[0] == 2]

    def send(self, action: str, payload: dict[str, Any], mid: str | None = None) -> str:
        message_id = mid or f"{self.id}-{next(self.ids)}"
        self.send_raw(json.dumps([2, message_id, action, payload]))
        return message_id

    def send_raw(self, text: str) -> None:
        assert self.link is not None and self.link.far.send(text), f"{self.id} is not connected"

    def answer(self, frame: Frame, payload: dict[str, Any]) -> None:
        self.outstanding.discard(frame[1])
        self.send_raw(json.dumps([3, frame[1], payload]))

    def _on_message(self, message: Message) -> None:
        frame: Frame = json.loads(message)
        self.received.append(frame)
        if frame[0] != 2:
            self.answers[frame[1]] = frame
            return
        self.outstanding.add(frame[1])
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
        action = frame[2]
        if action in self.silent:
            return
        if action in self.refused:
            self.outstanding.discard(frame[1])
            self.send_raw(json.dumps([4, frame[1], "NotSupported", "refused", {}]))
            return
        handler = self.handlers.get(action)
        if handler is not None:
            self.answer(frame, handler(frame[3]))
        else:
            self.answer(frame, self.answers_to.get(action, {"status": "Accepted"}))

    def _on_close(self, end: Any) -> None:
        self.closes.append(cast(End, end).close_rcvd)


def default_answer(action: str, payload: dict[str, Any], tx_ids: Iterator[int]) -> Any:
    """The cloud's answer to a charger CALL (1.6 and 2.0.1 shapes)."""
    now = "2026-12-01T10:00:00Z"
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": now, "interval": 300}
    if action == "Heartbeat":
        return {"currentTime": now}
    if action == "Authorize":
        if "idToken" in payload:
            return {"idTokenInfo": {"status": "Accepted"}}
        return {"idTagInfo": {"status": "Accepted"}}
    if action == "StartTransaction":
        return {"transactionId": next(tx_ids), "idTagInfo": {"status": "Accepted"}}
    if action == "StopTransaction":
        return {"idTagInfo": {"status": "Accepted"}} if "idTag" in payload else {}
    if action == "TransactionEvent" and "idToken" in payload:
        return {"idTokenInfo": {"status": "Accepted"}}
    return {}


Responder = Callable[[str, str, dict[str, Any]], Any]
"""(charger id, action, payload) → a payload, ``("error", code)`` for a CALLERROR, or None: silence."""


@dataclass
class SimCloud:
    """A CSMS: one link per charger, records every frame per charger, answers with ``responder``.

    ``up = False`` makes the opener raise ``CloudUnavailable``; :meth:`drop` cuts every link.
    Transaction ids are assigned from 501 on.
    """

    responder: Responder | None = None
    up: bool = True
    received: dict[str, list[Frame]] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    opened: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    refused_opens: int = 0
    drop_after: set[str] = field(default_factory=set)  # actions whose answer ends the cloud
    handshake_delay_s: float = 0.0  # how long each handshake takes (on the fake clock)
    answer_delay_s: float = 0.0  # how long the cloud takes to answer each CALL
    opened_at: list[float] = field(default_factory=list)  # loop time of each link opened
    tx_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(501))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def open(self, url: str, version: OcppVersion, headers: dict[str, str]) -> Any:
        """The upstream opener: ``await opener(url, version, headers)`` as the hub calls it."""
        if self.handshake_delay_s:
            await asyncio.sleep(self.handshake_delay_s)
        if not self.up:
            self.refused_opens += 1
            raise CloudUnavailable(f"{url}: connection refused")
        self.opened_at.append(asyncio.get_running_loop().time())
        charger_id = url.rsplit("/", 1)[-1]
        link = Link(f"ocpp{version}")
        self.links[charger_id] = link
        self.opened.append((charger_id, version, dict(headers)))
        link.far.on_message = lambda m: self._on_message(charger_id, link, m)
        return cast(ClientConnection, link.near)

    def _on_message(self, charger_id: str, link: Link, message: Message) -> None:
        frame: Frame = json.loads(message)
        self.received.setdefault(charger_id, []).append(frame)
        if frame[0] != 2:
            return
        _, message_id, action, payload = frame
        result = (self.responder or self.default)(charger_id, action, payload)
        if result is None:
            return
        if isinstance(result, tuple):
            answer = [4, message_id, result[1], "refused by the cloud", {}]
        else:
            answer = [3, message_id, result]
        if self.answer_delay_s:
            asyncio.get_running_loop().call_later(
                self.answer_delay_s, link.far.send, json.dumps(answer)
            )
            return
        link.far.send(json.dumps(answer))
        if action in self.drop_after:  # the link fails right after the answer left
            self.up = False
            asyncio.get_running_loop().call_soon(link.drop)

    def default(self, charger_id: str, action: str, payload: dict[str, Any]) -> Any:
        """The default answers (a responder may fall back on it)."""
        return default_answer(action, payload, self.tx_ids)

    def frames(self, charger_id: str) -> list[Frame]:
        return self.received.get(charger_id, [])

    def calls(self, charger_id: str, action: str | None = None) -> list[Frame]:
        return [
            f for f in self.frames(charger_id) if f[0] == 2 and (action is None or f[2] == action)
        ]

    def actions(self, charger_id: str) -> list[str]:
        return [f[2] for f in self.calls(charger_id)]

    def call(self, charger_id: str, action: str, payload: dict[str, Any]) -> str:
        """Send a CALL to the charger through its link; the answer lands in ``frames``."""
        message_id = f"cloud-{next(self._ids)}"
        link = self.links[charger_id]
        assert link.far.send(json.dumps([2, message_id, action, payload]))
        return message_id

    def answer_to(self, charger_id: str, message_id: str) -> Frame | None:
        for frame in self.frames(charger_id):
            if frame[0] in (3, 4) and frame[1] == message_id:
                return frame
        return None

    def drop(self) -> None:
        """Every link fails at once (no close frame: an outage)."""
        for link in list(self.links.values()):
            if link.is_open:
                link.drop()

    def close(self, charger_id: str, code: int, reason: str) -> None:
        """The cloud ends one charger's connection on purpose."""
        self.links[charger_id].far.close(code, reason)


# --- the pair ----------------------------------------------------------------------------------


@dataclass
class Pair:
    """The real gateway core and drivers between simulated chargers and a simulated cloud."""

    tmp_path: Path
    settings: Settings
    cloud: SimCloud
    loop: FakeClockLoop
    store: Store
    hub: Hub
    tags: TagCache
    reservations: ReservationBook
    local_list: LocalListPusher
    chargers: dict[str, SimCharger] = field(default_factory=dict)
    idle_spin: int = 0
    idle_round: int = 0

    # --- time --------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.loop.now

    async def _spin(self) -> int:
        """Let ready callbacks run for a few loop iterations; the callbacks scheduled meanwhile."""
        before = self.loop.scheduled_count
        for _ in range(SPIN):
            await asyncio.sleep(0)
        return self.loop.scheduled_count - before

    async def _round(self) -> int:
        """A spin, a store round trip, a spin: the callbacks scheduled meanwhile. The store's one
        database thread answers in order, so I/O started before the round trip has ended, and
        the callbacks its end scheduled are counted."""
        before = self.loop.scheduled_count
        await self._spin()
        await self.store.data_version()
        if self.loop.in_executor:  # threads' work (asyncio.to_thread) ends before a round does
            await asyncio.wait(list(self.loop.in_executor))
        await self._spin()
        return self.loop.scheduled_count - before

    async def calibrate(self) -> None:
        """What a spin and a round cost on an idle loop (the same count every time)."""
        self.idle_spin = min([await self._spin() for _ in range(3)])
        self.idle_round = min([await self._round() for _ in range(3)])

    async def settle(self) -> None:
        """Run the loop until a round shows nothing but itself (the clock does not move)."""
        for _ in range(10_000):
            for _ in range(1000):  # callbacks that need no I/O, at the cost of sleep(0) alone
                if await self._spin() <= self.idle_spin:
                    break
            if await self._round() <= self.idle_round:
                return
        raise AssertionError("the pair does not settle")

    async def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds``, stopping at each timer due on the way, and settle."""
        target = self.loop.now + seconds
        await self.settle()
        while (due := self.loop.next_timer()) is not None and due <= target:
            self.loop.now = max(self.loop.now, due)
            await self.settle()
        self.loop.now = target
        await self.settle()

    # --- chargers ----------------------------------------------------------------------------

    async def connect(
        self,
        charger_id: str,
        version: OcppVersion = "1.6",
        *,
        headers: dict[str, str] | None = None,
        settle: bool = True,
    ) -> SimCharger:
        """The charger opens a connection (a new one if it had one); the hub accepts it."""
        charger = self.chargers.get(charger_id)
        if charger is None:
            charger = self.chargers[charger_id] = SimCharger(charger_id, version)
        charger.version = version
        link = Link(f"ocpp{version}", f"/ocpp/{charger_id}", headers)
        charger.link = link
        link.far.on_message = charger._on_message
        link.far.on_close = charger._on_close
        self.hub.accept(charger_id, version, cast(ServerConnection, link.near))
        if settle:
            await self.settle()
        return charger

    async def call(
        self, charger: SimCharger, action: str, payload: dict[str, Any], mid: str | None = None
    ) -> Frame:
        """The charger sends a CALL; the loop settles; its answer (which must have come)."""
        message_id = charger.send(action, payload, mid)
        await self.settle()
        assert message_id in charger.answers, f"{action} {message_id} not answered"
        return charger.answers[message_id]

    def session(self, charger_id: str) -> ChargerSession:
        session = self.hub.get(charger_id)
        assert session is not None, f"no session for {charger_id}"
        return session

    async def outbox(self, charger_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """The charger's queued rows in the store: (message id, action, payload), oldest first."""
        return [
            (row.message_id, row.action, json.loads(row.payload))
            for row in await self.store.pending(charger_id, 1000)
        ]

    # --- restart -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self.local_list.close()
        await self.hub.close()
        await self.tags.close()
        await self.store.close()

    async def restart(self) -> Pair:
        """The gateway stops (its sockets close), and a new one opens over the same store file."""
        await self.close()
        for charger in self.chargers.values():
            charger.link = None
        pair = await open_pair(self.tmp_path, self.settings, cloud=self.cloud)
        pair.chargers = self.chargers
        return pair


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings with an upstream (never dialled: the opener is the simulated cloud's)."""
    data: dict[str, Any] = {
        "chargers": {"host": "127.0.0.1", "port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(tmp_path / "gateway.db")},
        "upstream": {"url": "ws://cloud.test/ocpp", "call_timeout_s": 10.0},
        "offline": {"unknown_tags": "accept"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Settings(**data)


async def open_pair(
    tmp_path: Path,
    settings: Settings | None = None,
    *,
    cloud: SimCloud | None = None,
    backoff: BackoffPolicy | None = None,
    local_list_settle_s: float = 5.0,
    store_type: type[Store] = Store,
) -> Pair:
    """Wire the gateway's parts as the application does, with the simulated cloud's opener."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, FakeClockLoop), "pair tests run on the fake-clock loop (conftest)"
    settings = settings or make_settings(tmp_path)
    cloud = cloud or SimCloud()
    store = await store_type.open(settings.store.path)
    idle = Pair(tmp_path, settings, cloud, loop, store, *(cast(Any, None),) * 4)
    await idle.calibrate()  # before anything else runs
    registry = CollectorRegistry()
    tags = TagCache(store, unknown_tags=settings.offline.unknown_tags)
    reservations = ReservationBook(
        store, registry=registry, normalise=normalise, ports=settings.ports
    )
    local_list = LocalListPusher(
        store,
        push=settings.local_list.push,
        max_entries=settings.local_list.max_entries,
        settle_s=local_list_settle_s,
    )
    hooks: list[Any] = [ReservationHook(reservations)]
    if settings.local_list.push:
        hooks.append(local_list)
    hub = Hub(
        settings,
        store,
        connect_upstream=cloud.open,
        authorizer=tags,
        hooks=hooks,
        watchers=[local_list],
        stats=RelayStats(),
        backoff=backoff,
    )
    await local_list.start(hub)
    await hub.start()
    pair = Pair(tmp_path, settings, cloud, loop, store, hub, tags, reservations, local_list)
    pair.idle_spin, pair.idle_round = idle.idle_spin, idle.idle_round
    await pair.settle()
    return pair


def frames_of(frames: Iterable[Frame], kind: int) -> list[Frame]:
    return [f for f in frames if f[0] == kind]


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, settings: Settings | None = None, **kw: Any
) -> AsyncIterator[Pair]:
    """A pair, closed at the end (see :func:`open_pair`)."""
    pair = await open_pair(tmp_path, settings, **kw)
    try:
        yield pair
    finally:
        await pair.close()
