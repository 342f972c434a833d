"""Opening a cloud link: which handshake failures count as a refusal of the OCPP version.

A refusal (CloudRefused) makes the link offer the charger's whole list at once and may end in a
1012 close and dead letters; any other failure is an outage, backed off. Real loopback servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from gateway.errors import CloudRefused, CloudUnavailable
from gateway.net.upstream import UpstreamOpener


async def _answering(status: int) -> AsyncIterator[str]:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus(status), "no\n")

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ocpp/CP-1"


@pytest.mark.parametrize("status", [400, 406])
async def test_a_bad_request_answer_is_a_refusal_of_the_version(status: int) -> None:
    opener = UpstreamOpener(open_timeout_s=5.0, max_message_bytes=65536)
    async for url in _answering(status):
        with pytest.raises(CloudRefused):
            await opener(url, "2.1", {}, alternatives=("2.0.1",))


@pytest.mark.parametrize("status", [401, 404, 429, 500, 503])
async def test_other_http_answers_are_an_outage_not_a_refusal(status: int) -> None:
    opener = UpstreamOpener(open_timeout_s=5.0, max_message_bytes=65536)
    async for url in _answering(status):
        with pytest.raises(CloudUnavailable) as caught:
            await opener(url, "2.1", {}, alternatives=("2.0.1",))
        assert not isinstance(caught.value, CloudRefused), status
