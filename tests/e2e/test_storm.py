"""Power-restore storm: many chargers connect and boot at once behind a slow cloud handshake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from gateway.net.hub import Hub
from gateway.net.link import CONNECTING_HOLD_S
from gateway.net.server import start_charger_server
from gateway.net.upstream import UpstreamOpener
from gateway.store.engine import ChargerState, Store
from gateway.tags.cache import TagCache
from tests.support import FakeCloud, make_settings, wait_for

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}


class RecordingStore(Store):
    """The real store, counting the per-charger reads a new charger costs."""

    state_reads: list[int]
    single_reads = 0

    async def charger_states(
        self, charger_ids: Sequence[str], *, recent: int = 0
    ) -> dict[str, ChargerState]:
        self.state_reads.append(len(charger_ids))
        return await super().charger_states(charger_ids, recent=recent)

    async def tx_ids(self, charger_id: str) -> list[tuple[int, int | None]]:
        self.single_reads += 1
        return await super().tx_ids(charger_id)

    async def recent_message_ids(self, charger_id: str, limit: int) -> list[str]:
        self.single_reads += 1
        return await super().recent_message_ids(charger_id, limit)


async def _boot(port: int, charger_id: str) -> tuple[ClientConnection, float]:
    ws = await connect(
        f"ws://127.0.0.1:{port}/ocpp/{charger_id}",
        subprotocols=[Subprotocol("ocpp1.6")],
        compression=None,
        open_timeout=30,
    )
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await ws.send(json.dumps([2, "boot-1", "BootNotification", BOOT]))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert answer[:2] == [3, "boot-1"] and answer[2]["status"] == "Accepted"
    return ws, loop.time() - sent


async def test_storm_of_chargers_behind_a_slow_cloud_handshake(tmp_path: Any) -> None:
    cloud = await FakeCloud(handshake_delay_s=0.3).start()
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    assert settings.upstream.max_connects_per_s == 0.0  # at most K handshakes in flight
    store = await RecordingStore.open(settings.store.path)
    assert isinstance(store, RecordingStore)
    store.state_reads = []
    hub = Hub(
        settings,
        store,
        connect_upstream=UpstreamOpener(open_timeout_s=10.0, max_message_bytes=65536),
        authorizer=TagCache(store, unknown_tags="accept"),
    )
    await hub.start()
    server = await start_charger_server(hub, settings.chargers)
    port = next(iter(server.sockets)).getsockname()[1]
    ids = [f"STORM-{i:03d}" for i in range(200)]
    conns: list[ClientConnection] = []
    try:
        results = await asyncio.gather(*(_boot(port, cid) for cid in ids))
        conns = [ws for ws, _ in results]
        latencies = sorted(t for _, t in results)
        # Every Boot answered within the hold bound (plus the local answer's durable write and
        # the test's own 200 clients sharing this event loop).
        assert latencies[-1] <= CONNECTING_HOLD_S + 1.5, latencies[-5:]
        # Per new charger no read of its own: the arrivals share batched reads.
        assert store.single_reads == 0
        assert sum(store.state_reads) == len(ids) and len(store.state_reads) < len(ids) / 4

        # Every link comes up (the pacer keeps at most K in flight): none is left without one.
        await wait_for(lambda: len(cloud.connections) == len(ids), timeout=30)
        # The cloud gets every Boot exactly once: live, or replayed once the link was up.
        await wait_for(lambda: all(cloud.calls(cid) for cid in ids), timeout=10)
        await asyncio.sleep(0.5)  # a duplicate would arrive now
        for cid in ids:
            boots = cloud.calls(cid, "BootNotification")
            assert [b[1] for b in boots] == ["boot-1"] and boots[0][3] == BOOT, cid
        assert all(hub.sessions[cid].upstream_connected for cid in ids)
        assert not any(hub.sessions[cid].boot_undelivered for cid in ids)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        server.close(close_connections=False)
        await hub.close()
        await server.wait_closed()
        await store.close()
        await cloud.stop()
