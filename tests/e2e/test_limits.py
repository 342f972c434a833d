"""Limits over real loopback sockets: floods of refused CALLs and bad frames log a handful of
lines; failed authentications throttle their source address (chargers' Basic auth, the API
token, the dashboard's sign-in); malformed charge point ids are refused before the handshake."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from gateway.app import Gateway
from gateway.core.limits import LogLimiter, log_left_out
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for

FLOOD = 20_000


def gateway_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The gateway's warning and error lines."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("gateway") and r.levelno >= logging.WARNING
    ]


def left_out_after_a_minute(gw: Gateway, caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the hub's sweep writes once the limiter's minute has passed (its clock moved on)."""
    caplog.clear()
    assert gw.hub is not None
    log_left_out(gw.log_limit, gw.hub.loop_time() + 60.0)
    return gateway_lines(caplog)


def count_in(line: str) -> int:
    match = re.search(r"… and ([\d,]+) more like it in 60 s$", line)
    assert match is not None, line
    return int(match.group(1).replace(",", ""))


# --- floods log a handful of lines -----------------------------------------------------------------


async def test_a_flood_of_refused_cloud_calls_logs_a_handful_of_lines(
    tmp_path: Any, cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = make_settings(
        tmp_path,
        upstream={"url": cloud.url},
        chargers={"max_queued_calls": 2, "call_timeout_s": 300.0},
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "MUTE"):
        await cloud.wait_connected("MUTE")
        caplog.clear()
        ws = cloud.connections["MUTE"]
        for n in range(FLOOD):  # the charger never answers: all but 3 are refused
            await ws.send(f'[2, "c{n}", "GetConfiguration", {{}}]')

        def refused() -> int:
            return sum(1 for f in cloud.received["MUTE"] if f[0] == 4)

        await wait_for(lambda: refused() == FLOOD - 3, timeout=60)
        assert all(f[3] == "charger queue full" for f in cloud.received["MUTE"] if f[0] == 4)
        lines = gateway_lines(caplog)
        assert len(lines) <= 3, lines
        assert [line for line in lines if "charger queue full" in line] == [
            "MUTE: charger queue full: 2 CALLs already wait for the charger; refusing"
            " GetConfiguration c3"
        ]
        (summary,) = left_out_after_a_minute(gw, caplog)
        assert summary.startswith("MUTE: charger queue full: … and ")
        assert count_in(summary) == FLOOD - 3 - 1  # every refusal is either logged or counted


async def test_a_flood_of_bad_charger_frames_logs_a_handful_of_lines(
    tmp_path: Any, cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "NOISY") as cp:
        await cloud.wait_connected("NOISY")
        caplog.clear()
        for n in range(FLOOD):  # a CALL without its payload: each is answered with a CALLERROR
            await cp.send_raw(f'[2, "b{n}", "Heartbeat"]')
        await wait_for(lambda: len(cp.received) == FLOOD, timeout=60)
        # OCPP-J 1.6 §4.2.3 spells it FormationViolation.
        assert {(f[0], f[2]) for f in cp.received} == {(4, "FormationViolation")}
        assert [f[1] for f in cp.received] == [f"b{n}" for n in range(FLOOD)]
        lines = gateway_lines(caplog)
        assert len(lines) <= 3, lines
        assert sum(1 for line in lines if "bad frame from charger" in line) == 1
        # The charger still works: a good frame goes through as before.
        assert (await cp.call("Heartbeat", {}))[0] == 3
        (summary,) = left_out_after_a_minute(gw, caplog)
        assert summary.startswith("NOISY: bad frame from charger: … and ")
        assert count_in(summary) == FLOOD - 1


async def test_the_hub_writes_the_count_once_the_window_has_passed(
    tmp_path: Any, cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    """No later line is needed: the hub's sweep writes the count when the window ends (here
    0.5 s instead of the minute), and the next line of that kind is then logged at once."""
    caplog.set_level(logging.INFO, logger="gateway")
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    gw = Gateway(settings, log_limit=LogLimiter(0.5))
    await gw.start()
    try:
        async with charger(gw.charger_port, "NOISY") as cp:
            await cloud.wait_connected("NOISY")
            caplog.clear()
            for n in range(50):
                await cp.send_raw(f'[2, "b{n}", "Heartbeat"]')
            summary = "NOISY: bad frame from charger: … and 49 more like it in 0.5 s"
            await wait_for(lambda: summary in gateway_lines(caplog), timeout=5)
            assert gateway_lines(caplog) == [
                "NOISY: bad frame from charger: CALL must have 4 elements",
                summary,
            ]
            caplog.clear()
            await cp.send_raw('[2, "again", "Heartbeat"]')
            await wait_for(lambda: len(cp.received) == 51)
            assert gateway_lines(caplog) == [
                "NOISY: bad frame from charger: CALL must have 4 elements"
            ]
    finally:
        await gw.stop()


# --- failed authentications throttle their address ----------------------------------------------

RIGHT = "right-password-16"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def open_charger(port: int, cid: str, password: str, source: str = "127.0.0.1") -> Any:
    return await connect(
        f"ws://127.0.0.1:{port}/ocpp/{cid}",
        subprotocols=[Subprotocol("ocpp1.6")],
        additional_headers=basic(cid, password),
        local_addr=(source, 0),
    )


async def refused_status(port: int, cid: str, password: str, source: str = "127.0.0.1") -> int:
    with pytest.raises(InvalidStatus) as refused:
        await open_charger(port, cid, password, source)
    return refused.value.response.status_code


async def metric(api: httpx.AsyncClient, kind: str) -> float:
    text = (await api.get("/metrics")).text
    match = re.search(rf'^flipturn_gateway_auth_failures_total{{kind="{kind}"}} (\S+)$', text, re.M)
    assert match is not None
    return float(match.group(1))


async def test_wrong_charger_passwords_throttle_the_address_and_nothing_else(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = make_settings(
        tmp_path, chargers={"auth": "basic", "passwords": {"CP-1": RIGHT, "CP-2": RIGHT}}
    )
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api,
    ):
        port = gw.charger_port
        open_before = await open_charger(port, "CP-2", RIGHT)  # connected before the guessing
        for n in range(10):
            assert await refused_status(port, "CP-1", f"guess-{n}") == 401
        # The right password from the throttled address: 401 like any other, no oracle.
        assert await refused_status(port, "CP-1", RIGHT) == 401
        # Another source address is admitted at once; the connection already open still works.
        other = await open_charger(port, "CP-1", RIGHT, source="127.0.0.2")
        await other.send(json.dumps([2, "h1", "Heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(other.recv(), 5))[0] == 3
        await open_before.send(json.dumps([2, "h2", "Heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(open_before.recv(), 5))[0] == 3
        await other.close()
        await open_before.close()
        assert await metric(api, "charger") == 11  # ten wrong, one refused while throttled
        blocks = [line for line in gateway_lines(caplog) if "failed authentications" in line]
        assert blocks == [
            "127.0.0.1: 10 failed authentications within 60 s (the last: charger);"
            " refusing it for 60 s"
        ]
        # The refusals themselves: one line for the address, the rest counted.
        refusals = [line for line in gateway_lines(caplog) if "refused (401)" in line]
        assert refusals == ["127.0.0.1: refused (401): /ocpp/CP-1: invalid credentials"]


async def test_wrong_api_tokens_and_sign_ins_are_answered_429_with_retry_after(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = make_settings(tmp_path, api={"token": "the-api-token"})
    right = {"Authorization": "Bearer the-api-token"}
    async with running_gateway(settings) as gw:
        base = f"http://127.0.0.1:{gw.api_port}"

        def client(source: str) -> httpx.AsyncClient:
            transport = httpx.AsyncHTTPTransport(local_address=source)
            return httpx.AsyncClient(base_url=base, transport=transport)

        async with client("127.0.0.1") as api, client("127.0.0.2") as other:
            assert (await api.get("/api/chargers")).status_code == 401  # no token: no guess
            for n in range(10):
                wrong = {"Authorization": f"Bearer guess-{n}"}
                assert (await api.get("/api/chargers", headers=wrong)).status_code == 401
            throttled = await api.get("/api/chargers", headers=right)  # the right one too
            assert throttled.status_code == 429
            assert 59 <= int(throttled.headers["Retry-After"]) <= 60
            login = await api.post("/api/login", json={"token": "the-api-token"})
            assert login.status_code == 429 and "Retry-After" in login.headers
            assert (await api.get("/health")).status_code == 200  # not an authentication
            assert (await other.get("/api/chargers", headers=right)).status_code == 200
            assert await metric(other, "api") == 11  # ten wrong, one refused while throttled
            assert await metric(other, "login") == 1  # the sign-in refused while throttled

        async with client("127.0.0.3") as signer:
            for n in range(10):
                wrong_login = await signer.post("/api/login", json={"token": f"guess-{n}"})
                assert wrong_login.status_code == 401
            login = await signer.post("/api/login", json={"token": "the-api-token"})
            assert login.status_code == 429 and "set-cookie" not in login.headers
            assert (await signer.get("/api/chargers", headers=right)).status_code == 429
        blocks = [line for line in gateway_lines(caplog) if "failed authentications" in line]
        assert blocks == [
            "127.0.0.1: 10 failed authentications within 60 s (the last: api); refusing it for 60 s",
            "127.0.0.3: 10 failed authentications within 60 s (the last: login); refusing it for 60 s",
        ]


# --- charge point ids -------------------------------------------------------------------------------


async def test_malformed_charge_point_ids_are_404_before_the_handshake(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    async with running_gateway(make_settings(tmp_path, upstream={"url": cloud.url})) as gw:
        for segment in ["%ZZ", "a%2Fb", "x" * 49, "", "%FF", "CP%"]:
            with pytest.raises(InvalidStatus) as refused:
                await connect(
                    f"ws://127.0.0.1:{gw.charger_port}/ocpp/{segment}",
                    subprotocols=[Subprotocol("ocpp1.6")],
                )
            assert refused.value.response.status_code == 404, segment
        # A UTF-8 id is kept and reaches the cloud percent-encoded again.
        async with charger(gw.charger_port, "Lades%C3%A4ule-7") as cp:
            assert (await cp.call("Heartbeat", {}))[0] == 3
            assert gw.hub is not None and "Ladesäule-7" in gw.hub.sessions
        assert cloud.paths == ["/ocpp/Lades%C3%A4ule-7"]
