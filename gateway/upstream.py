"""Opening the upstream (cloud) WebSocket for one charger: a thin adapter over websockets."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException
from websockets.typing import Subprotocol

from gateway.errors import CloudUnavailable
from gateway.frames import OcppVersion

__all__ = ["UpstreamOpener"]


class UpstreamOpener:
    """``await opener(url, version, headers)`` → an open connection speaking the same subprotocol."""

    def __init__(self, *, open_timeout_s: float, max_message_bytes: int) -> None:
        self._open_timeout_s = open_timeout_s
        # The cloud may send larger frames than a charger may (e.g. charging profiles).
        self._max_size = max(max_message_bytes, 1 << 20)

    async def __call__(
        self, url: str, version: OcppVersion, headers: dict[str, str]
    ) -> ClientConnection:
        subprotocol = Subprotocol(f"ocpp{version}")
        try:
            ws = await connect(
                url,
                subprotocols=[subprotocol],
                additional_headers=headers or None,
                open_timeout=self._open_timeout_s,
                max_size=self._max_size,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, WebSocketException) as exc:
            raise CloudUnavailable(f"{url}: {exc}") from exc
        if ws.subprotocol != subprotocol:
            await ws.close(1002, "subprotocol not accepted")
            raise CloudUnavailable(f"{url}: cloud did not accept {subprotocol}")
        return ws
