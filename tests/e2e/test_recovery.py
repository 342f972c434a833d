"""Outage recovery and bounds, over real sockets: the charger queue's bound and the charger
timeout as the local API reports them (503, 504), and no future left unretrieved when links drop.
Recovery after an outage, connect pacing and the slot's timing are in tests/pair/test_links.py and
tests/pair/test_charger_slot.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import PortMapping, Settings, load_settings
from gateway.errors import ConfigError
from tests.support import Charger, FakeCloud, charger, make_settings, wait_for

STATUS = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}


def settings_for(tmp_path: Any, cloud: FakeCloud, **sections: dict[str, Any]) -> Settings:
    upstream = {"url": cloud.url, "call_timeout_s": 2.0, **sections.pop("upstream", {})}
    return make_settings(
        tmp_path, upstream=upstream, offline={"unknown_tags": "accept"}, **sections
    )


@contextlib.asynccontextmanager
async def gateway(settings: Settings, **kwargs: Any) -> AsyncIterator[Gateway]:
    gw = Gateway(settings, **kwargs)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def sessions(gw: Gateway) -> dict[str, Any]:
    assert gw.hub is not None
    return gw.hub.sessions


def test_recovery_settings_defaults_and_bounds(tmp_path: Any) -> None:
    settings = load_settings(None)
    assert settings.upstream.reconnect_max_s == 60.0
    assert settings.upstream.max_connects_per_s == 0.0  # none: the pacer bounds what is in flight
    assert settings.chargers.call_timeout_s == 30.0
    assert settings.chargers.max_queued_calls == 100
    for text, key in [
        ("[upstream]\nreconnect_max_s = 0\n", "upstream.reconnect_max_s"),
        ("[upstream]\nmax_connects_per_s = -1\n", "upstream.max_connects_per_s"),
        ("[chargers]\ncall_timeout_s = 0\n", "chargers.call_timeout_s"),
        ("[chargers]\nmax_queued_calls = 0\n", "chargers.max_queued_calls"),
    ]:
        path = tmp_path / "config.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=key):
            load_settings(path)


async def test_handshakes_in_flight_are_bounded_and_fewer_while_the_cloud_times_out(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    """80 chargers behind a cloud that holds every handshake: it never has more than K = 50 open
    at once; when they time out (upstream.call_timeout_s) K comes down; once the cloud answers
    again every link comes up and the pacer counts none in flight (every end was reported)."""
    gate = cloud.handshake_gate = asyncio.Event()
    ids = [f"H-{i:02d}" for i in range(80)]
    # Long enough for the 80 chargers to connect one by one before the first handshake times out.
    settings = settings_for(tmp_path, cloud, upstream={"call_timeout_s": 5.0})
    async with gateway(settings) as gw, contextlib.AsyncExitStack() as stack:
        assert gw.hub is not None
        pacer = gw.hub.pacer
        for cid in ids:
            await stack.enter_async_context(charger(gw.charger_port, cid))
        await wait_for(lambda: cloud.handshakes_open == 50, timeout=10)
        await asyncio.sleep(0.3)  # no 51st arrives while the 50 wait
        assert cloud.handshakes_open == 50 and pacer.in_flight == 50
        await wait_for(lambda: pacer.limit < 50, timeout=10)  # the first timeouts
        assert pacer.limit == 25  # halved once for the 50 that timed out together
        gate.set()
        await wait_for(lambda: len(cloud.connections) == len(ids), timeout=30)
        await wait_for(lambda: pacer.in_flight == 0, timeout=5)
        assert cloud.max_handshakes_open == 50
        assert all(sessions(gw)[cid].upstream_connected for cid in ids)


async def test_charger_queue_is_bounded(tmp_path: Any, cloud: FakeCloud) -> None:
    """A charger that never answers: the cloud's CALLs beyond max_queued_calls are refused at
    once with GenericError, the local API answers 503, and the queue does not grow."""
    settings = settings_for(
        tmp_path, cloud, chargers={"max_queued_calls": 5, "call_timeout_s": 30.0}
    ).model_copy(update={"ports": (PortMapping(id=1, charger="MUTE", connector=1),)})
    async with gateway(settings) as gw, charger(gw.charger_port, "MUTE") as cp:
        await cloud.wait_connected("MUTE")
        ws = cloud.connections["MUTE"]
        for n in range(7):
            await ws.send(f'[2, "c{n}", "GetConfiguration", {{}}]')
        first = await asyncio.wait_for(cp.calls.get(), 5)
        assert first[1] == "c0"  # in the slot; c1-c5 wait; c6 is one too many
        await wait_for(lambda: any(f[1] == "c6" for f in cloud.received["MUTE"]))
        refused = next(f for f in cloud.received["MUTE"] if f[1] == "c6")
        assert refused[:4] == [4, "c6", "GenericError", "charger queue full"]
        assert not any(f[1] in {f"c{n}" for n in range(6)} for f in cloud.received["MUTE"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
            reserve = await api.post(
                "/api/ocpp/reservations",
                json={
                    "portId": 1,
                    "expiryDate": "2030-01-01T00:00:00Z",
                    "idTag": "TAG",
                    "reservationId": 9,
                },
            )
        assert reserve.status_code == 503 and "queue" in reserve.json()["error"]
        # The charger wakes up: the queued CALLs reach it in order, one at a time.
        await cp.answer(first, {"configurationKey": []})
        for n in range(1, 6):
            call = await asyncio.wait_for(cp.calls.get(), 5)
            assert call[1] == f"c{n}"
            await cp.answer(call, {"configurationKey": []})
        await wait_for(lambda: len([f for f in cloud.received["MUTE"] if f[0] == 3]) == 6)
        assert cp.max_outstanding_calls_to_me == 1


def _reservation_settings(tmp_path: Any, cloud: FakeCloud, timeout_s: float) -> Settings:
    return settings_for(
        tmp_path,
        cloud,
        chargers={"call_timeout_s": timeout_s},
        upstream={"call_timeout_s": 0.3},  # the cloud-side timeout no longer bounds it
    ).model_copy(update={"ports": (PortMapping(id=1, charger="CP", connector=1),)})


RESERVE = {"portId": 1, "expiryDate": "2030-01-01T00:00:00Z", "idTag": "TAG", "reservationId": 7}


async def _cloud_call_then_reserve(
    gw: Gateway, cloud: FakeCloud, cp: Charger, api: httpx.AsyncClient
) -> tuple[asyncio.Task[list[Any]], list[Any], asyncio.Task[httpx.Response]]:
    await cloud.wait_connected("CP")
    cloud_call = asyncio.create_task(cloud.call("CP", "GetConfiguration", {}, message_id="slow"))
    first = await asyncio.wait_for(cp.calls.get(), 5)
    assert first[1] == "slow"
    reserve = asyncio.create_task(api.post("/api/ocpp/reservations", json=RESERVE))
    return cloud_call, first, reserve


async def test_504_only_when_the_charger_itself_is_silent(tmp_path: Any, cloud: FakeCloud) -> None:
    timeout_s = 1.0
    settings = _reservation_settings(tmp_path, cloud, timeout_s)
    async with (
        gateway(settings) as gw,
        charger(gw.charger_port, "CP") as cp,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}", timeout=20) as api,
    ):
        loop = asyncio.get_running_loop()
        cloud_call, first, reserve = await _cloud_call_then_reserve(gw, cloud, cp, api)
        await asyncio.sleep(0.8 * timeout_s)
        await cp.answer(first, {"configurationKey": []})
        await cloud_call
        second = await asyncio.wait_for(cp.calls.get(), 5)
        received = loop.time()
        assert second[2] == "ReserveNow"
        response = await reserve  # the charger never answers it
        assert response.status_code == 504
        assert loop.time() - received >= timeout_s * 0.9  # counted from the charger's receipt


async def test_no_future_exception_is_left_unretrieved(tmp_path: Any, cloud: FakeCloud) -> None:
    """The chaos case: replayed CALLs in flight when links drop and the gateway stops."""
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: problems.append(context["message"]))

    silent = {"on": False}
    cloud.responder = lambda cid, action, payload: None if silent["on"] else {}
    ids = [f"X-{i}" for i in range(5)]
    await cloud.stop()
    async with (
        gateway(settings_for(tmp_path, cloud), reconnect_max_s=0.2) as gw,
        contextlib.AsyncExitStack() as stack,
    ):
        cps = [await stack.enter_async_context(charger(gw.charger_port, cid)) for cid in ids]
        for cp in cps:
            await cp.call("StatusNotification", STATUS)
        silent["on"] = True  # replayed CALLs stay unanswered...
        await cloud.restart()
        await wait_for(lambda: all(cloud.calls(cid) for cid in ids), timeout=10)
        await cloud.stop()  # ...and their links drop under them
        await cloud.restart()
        await wait_for(lambda: all(cloud.calls(cid) for cid in ids), timeout=10)
    # The gateway stopped with replayed CALLs in flight.
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not [p for p in problems if "never retrieved" in p], problems
