"""A simulated charger ↔ the real hub, sessions and store ↔ a simulated cloud: no sockets, a fake clock.

The gateway side is the real thing: :class:`~gateway.net.hub.Hub` and the
:class:`~gateway.net.session.ChargerSession` it makes (link, effects, calls, observers, tasks), the
access-ID cache, the reservation book and the local list pusher, over a real SQLite file. Only
three things are replaced, each at a surface the gateway already takes from outside:

- the sockets: :class:`~tests.pair.memlink.Link` (``memlink.py``) is an in-memory pair of
  connection ends with what the hub and the session use of a ``WsConnection``; the charger's end
  is given to ``Hub.accept`` as its server connection;
- the upstream opener: ``Hub(connect_upstream=...)`` gets the simulated cloud's
  :meth:`~tests.pair.sims.SimCloud.open` (``sims.py``), which returns the gateway's end of a new
  ``Link`` to the cloud, or raises ``CloudUnavailable``;
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
import json
from collections.abc import AsyncIterator, Callable
from contextvars import Context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.core.backoff import BackoffPolicy
from gateway.metrics import RelayStats
from gateway.net.hub import Hub
from gateway.net.session import ChargerSession
from gateway.net.wsconn import ServerConnection
from gateway.ocpp.frames import OcppVersion
from gateway.reservations.book import ReservationBook
from gateway.reservations.hook import ReservationHook
from gateway.store.engine import Store
from gateway.tags.cache import TagCache
from gateway.tags.local_list_push import LocalListPusher
from gateway.tags.rules import normalise
from tests.pair.memlink import Close, Link
from tests.pair.sims import Frame, SimCharger, SimCloud

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

SPIN = 8  # loop iterations per spin of Pair.settle


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
