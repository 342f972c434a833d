"""permessage-deflate on the cloud links: small windows offered, and a cloud that will not limit
its own window still gets compression (RFC 7692 §7.1.2.1).

The clouds are websockets' own asyncio servers on 127.0.0.1 (test doubles of the cloud CSMS).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension, ServerExtensionFactory
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.typing import ExtensionParameter, Subprotocol

from gateway.net.upstream import DEFLATE_WINDOW_BITS, UpstreamOpener
from tests.support import wait_for

OCPP16 = Subprotocol("ocpp1.6")
METER_VALUES = orjson.dumps(
    [
        2,
        "m-1",
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": 7,
            "meterValue": [
                {
                    "timestamp": "2026-12-08T01:00:00.000Z",
                    "sampledValue": [
                        {"value": f"{16 + i / 10:.1f}", "measurand": "Current.Import"}
                        for i in range(6)
                    ],
                }
            ],
        },
    ]
).decode()


class UnlimitedWindowOnly(ServerExtensionFactory):
    """A cloud's permessage-deflate that declines any offer limiting its own window."""

    name = ServerPerMessageDeflateFactory.name

    def __init__(self) -> None:
        self._inner = ServerPerMessageDeflateFactory()

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], Extension]:
        if any(name == "server_max_window_bits" for name, _ in params):
            raise NegotiationError("server_max_window_bits not supported")
        return self._inner.process_request_params(params, accepted_extensions)


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def _open_and_echo(
    extensions: Sequence[ServerExtensionFactory] | None, compression: bool = True
) -> tuple[Any, list[str]]:
    """Open a link through the gateway's opener; (its deflate extension or None, the cloud's
    view of our offer)."""
    offers: list[str] = []

    def record(connection: ServerConnection, request: Any) -> None:
        offers.extend(request.headers.get_all("Sec-WebSocket-Extensions"))

    kwargs: dict[str, Any] = {"extensions": extensions} if extensions is not None else {}
    if extensions is None:
        kwargs["compression"] = None
    async with serve(
        _echo, "127.0.0.1", 0, subprotocols=[OCPP16], process_request=record, **kwargs
    ) as cloud:
        port = next(iter(cloud.sockets)).getsockname()[1]
        opener = UpstreamOpener(
            open_timeout_s=5.0, max_message_bytes=65536, compression=compression
        )
        ws = await opener(f"ws://127.0.0.1:{port}/ocpp/CP-1", "1.6", {})
        try:
            got: list[str | bytes] = []
            ws.on_message = got.append
            for _ in range(3):  # the same frame compresses through the window each time
                assert ws.send(METER_VALUES)
            await wait_for(lambda: len(got) >= 3)
            assert got == [METER_VALUES] * 3
            deflate = [e for e in ws.protocol.extensions if isinstance(e, PerMessageDeflate)]
            return (deflate[0] if deflate else None), offers
        finally:
            ws.close()
            await ws.wait_closed()


async def test_cloud_links_offer_small_windows_both_ways() -> None:
    # A cloud that honours the offer (websockets' defaults) limits its own window too.
    deflate, offers = await _open_and_echo([ServerPerMessageDeflateFactory()])
    assert deflate is not None
    assert deflate.local_max_window_bits == DEFLATE_WINDOW_BITS  # our compressor
    assert deflate.remote_max_window_bits == DEFLATE_WINDOW_BITS  # what we keep to decompress
    assert f"server_max_window_bits={DEFLATE_WINDOW_BITS}" in offers[0]
    assert f"client_max_window_bits={DEFLATE_WINDOW_BITS}" in offers[0]


async def test_a_cloud_declining_to_limit_its_window_still_gets_compression() -> None:
    # RFC 7692 §7.1.2.1: a server may decline an offer with server_max_window_bits; the second
    # offer leaves its window alone and still keeps ours small.
    deflate, _ = await _open_and_echo([UnlimitedWindowOnly()])
    assert deflate is not None
    assert deflate.local_max_window_bits == DEFLATE_WINDOW_BITS
    assert deflate.remote_max_window_bits == 15


async def test_no_compression_offered_when_turned_off() -> None:
    deflate, offers = await _open_and_echo([ServerPerMessageDeflateFactory()], compression=False)
    assert deflate is None
    assert offers == []
