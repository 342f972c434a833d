"""The store side of a session (:class:`~gateway.net.effects.RelayEffects`) without sockets.

A real relay core, a real store on a file in ``tmp_path``, the real access-ID cache over it, and
an owner that plays the session: it takes the core's frames and hands the events to the driver's
handlers, as the session's dispatch does, and runs the tasks the driver starts. Both clocks are
fixed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from gateway.core import events as ev
from gateway.core.depot import DepotView
from gateway.core.relay import ChargerRelay, RelaySettings
from gateway.core.txmap import LOCAL_TX_MIN
from gateway.metrics import RelayStats
from gateway.net.effects import EFFECT_HANDLERS, RelayEffects
from gateway.ocpp.frames import Call
from gateway.store.engine import Store
from gateway.tags.cache import TagCache

NOW = 1000.0  # monotonic
WALL = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
START = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": "2026-12-01T09:59:00Z"}
STATUS = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}


def call(mid: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([2, mid, action, payload])


class Host:
    """The hub's part the driver uses: the store, the real cache over it, a depot view."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = RelayStats()
        self.authorizer = TagCache(store, unknown_tags="accept")
        self.depot = DepotView()
        self._tx = itertools.count(LOCAL_TX_MIN)
        self.dead_letters = 0

    def next_local_tx_id(self) -> int:
        return next(self._tx)

    def dead_letter_added(self) -> None:
        self.dead_letters += 1


class Owner:
    """The session, recorded: frames the core hands out, events the driver does not take, the
    rows committed to the file (read on a connection of its own) when each answer went out."""

    def __init__(self, store: Store, relay: ChargerRelay) -> None:
        self.backlog_oldest: float | None = None
        self.effects: RelayEffects | None = None
        self.to_charger: list[list[Any]] = []
        self.to_cloud: list[list[Any]] = []
        self.other_events: list[ev.RelayEvent] = []
        self.committed_at_answer: list[list[tuple[str, float]]] = []
        self.answers_done = 0
        self.links_wanted = 0
        self._path = store.path
        self._relay = relay
        self._tasks: list[asyncio.Task[Any]] = []

    def flush(self) -> None:
        assert self.effects is not None
        relay = self._relay
        self.to_cloud += [json.loads(t) for t in relay.data_to_cloud()]
        for text in relay.data_to_charger():
            self.committed_at_answer.append(self._committed())
            self.to_charger.append(json.loads(text))
        for event in relay.events():
            handler = EFFECT_HANDLERS.get(type(event))
            if handler is None:
                self.other_events.append(event)
            else:
                handler(self.effects, event)

    def answer_done(self) -> None:
        self.answers_done += 1
        self.flush()

    def ensure_link(self) -> None:
        self.links_wanted += 1

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> object:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        return task

    async def settle(self) -> None:
        """Run the driver's tasks, and those they start, to their end, flushing the core at every
        turn of the loop meanwhile (as the session does when other frames or deadlines come):
        whatever the core holds while a task awaits the store is handed out at once."""
        while self._tasks:
            self.flush()
            await asyncio.sleep(0)
            for task in [t for t in self._tasks if t.done()]:
                self._tasks.remove(task)
                task.result()  # a failure fails the test
        self.flush()

    def _committed(self) -> list[tuple[str, float]]:
        with sqlite3.connect(self._path) as db:
            rows = db.execute("SELECT message_id, created_at FROM outbox ORDER BY seq").fetchall()
        return [(str(mid), float(at)) for mid, at in rows]


async def no_say(call: Call, auth_info: dict[str, Any], now: datetime) -> dict[str, Any]:
    return auth_info


def offline(store: Store) -> tuple[ChargerRelay, RelayEffects, Owner, Host]:
    """A 1.6 charger attached while its cloud link failed: its CALLs are answered locally."""
    ids = itertools.count(1)
    relay = ChargerRelay("CP1", "1.6", settings=RelaySettings(), new_id=lambda: f"g{next(ids)}")
    host, owner = Host(store), Owner(store, relay)
    effects = RelayEffects(
        owner,
        host,
        relay,
        heartbeat_interval_s=300,
        boot_undelivered=False,
        gate=no_say,
        clock=lambda: NOW,
        wall_clock=WALL.timestamp,
    )
    owner.effects = effects
    relay.charger_attached("1.6", NOW)
    relay.link_connecting(NOW)
    relay.link_failed(NOW)
    owner.flush()
    return relay, effects, owner, host


async def send(relay: ChargerRelay, owner: Owner, text: str) -> list[Any]:
    """A charger frame through the core and the driver; the answer the charger gets."""
    before = len(owner.to_charger)
    relay.receive_charger(text, NOW)
    owner.flush()
    await owner.settle()
    assert len(owner.to_charger) == before + 1
    return owner.to_charger[-1]


async def test_a_local_answer_is_committed_before_the_charger_gets_it(store: Store) -> None:
    relay, _, owner, host = offline(store)
    answer = await send(relay, owner, call("m1", "StartTransaction", START))
    assert answer == [3, "m1", {"idTagInfo": {"status": "Accepted"}, "transactionId": LOCAL_TX_MIN}]
    # On the file, read by another connection, by the time the answer was handed out; stamped
    # with the injected wall clock.
    assert owner.committed_at_answer == [[("m1", WALL.timestamp())]]
    assert owner.backlog_oldest == WALL.timestamp()
    assert owner.links_wanted == 1
    assert host.stats.local_answers["StartTransaction"] == 1
    assert relay.backlog == 1


async def test_a_local_answer_tells_the_injected_wall_clock_time(store: Store) -> None:
    relay, _, owner, _ = offline(store)
    answer = await send(relay, owner, call("h1", "Heartbeat", {}))
    assert answer == [3, "h1", {"currentTime": "2026-12-01T10:00:00.000Z"}]
    assert owner.committed_at_answer == [[]]  # a Heartbeat is not stored


async def test_a_resend_gets_the_first_answer_and_stores_nothing(store: Store) -> None:
    relay, _, owner, host = offline(store)
    first = await send(relay, owner, call("m1", "StartTransaction", START))
    again = await send(relay, owner, call("m1", "StartTransaction", START))
    assert again == first
    assert [r.message_id for r in await store.pending("CP1")] == ["m1"]
    assert host.next_local_tx_id() == LOCAL_TX_MIN + 1  # the resend took no transaction id
    assert host.stats.local_answers["StartTransaction"] == 1
    assert relay.backlog == 1


async def test_a_store_that_cannot_write_gives_internal_error_and_stores_nothing(
    store: Store,
) -> None:
    relay, _, owner, host = offline(store)
    # SQLite's read-only switch on the store's own connection: the commit fails for real.
    await store.fetchone("PRAGMA query_only = 1")
    answer = await send(relay, owner, call("s1", "StatusNotification", STATUS))
    await store.fetchone("PRAGMA query_only = 0")
    assert answer[0] == 4 and answer[1] == "s1" and answer[2] == "InternalError"
    assert owner.committed_at_answer == [[]]
    assert await store.pending("CP1") == []
    assert host.stats.errors["store"] == 1
    assert host.stats.local_answers["StatusNotification"] == 0
    assert owner.backlog_oldest is None and owner.links_wanted == 0
    assert relay.backlog == 0
    # Nothing was acknowledged, so the charger sends it again; now it is stored.
    answer = await send(relay, owner, call("s1", "StatusNotification", STATUS))
    assert answer == [3, "s1", {}]
    assert [r.message_id for r in await store.pending("CP1")] == ["s1"]


async def test_a_delivered_replay_binds_the_local_transaction_to_the_clouds(store: Store) -> None:
    relay, effects, owner, host = offline(store)
    await send(relay, owner, call("m1", "StartTransaction", START))
    relay.link_connecting(NOW)
    await effects.load_boot()
    relay.link_connected(NOW)
    owner.flush()
    await owner.settle()  # the backlog is read; its row goes to the cloud
    replayed = owner.to_cloud[-1]
    assert replayed[:3] == [2, "m1", "StartTransaction"]
    relay.receive_cloud(
        json.dumps([3, "m1", {"idTagInfo": {"status": "Accepted"}, "transactionId": 501}]), NOW
    )
    owner.flush()
    await owner.settle()
    assert await store.tx_ids("CP1") == [(LOCAL_TX_MIN, 501)]
    assert await store.pending("CP1") == []
    assert host.stats.replayed == 1
    assert relay.backlog == 0
    assert any(isinstance(e, ev.Drained) for e in owner.other_events)
