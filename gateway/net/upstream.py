"""Opening the upstream (cloud) WebSocket for one charger."""

from __future__ import annotations

import ssl

from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.typing import Subprotocol

from gateway import __version__
from gateway.config import redact_url
from gateway.errors import CloudUnavailable
from gateway.net.wsconn import ClientConnection, Keepalive, Timeouts, connect
from gateway.ocpp.frames import OcppVersion

__all__ = ["UpstreamOpener"]

USER_AGENT = f"flipturn-gateway/{__version__}"  # as the Flipturn API client says


class UpstreamOpener:
    """``await opener(url, version, headers)`` → an open connection speaking the same subprotocol."""

    def __init__(
        self,
        *,
        open_timeout_s: float,
        max_message_bytes: int,
        compression: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeouts = Timeouts(open_s=open_timeout_s, close_s=2.0)
        # The cloud may send larger frames than a charger may (e.g. charging profiles).
        self._max_size = max(max_message_bytes, 1 << 20)
        self._keepalive = Keepalive(interval_s=20.0, timeout_s=20.0)
        self._extensions = enable_client_permessage_deflate(None) if compression else []
        # For wss:// (gateway.tls.client_context); replaced on reload, read at every connect.
        self.ssl_context = ssl_context

    async def __call__(
        self, url: str, version: OcppVersion, headers: dict[str, str]
    ) -> ClientConnection:
        subprotocol = Subprotocol(f"ocpp{version}")
        try:
            ws = await connect(
                url,
                subprotocols=[subprotocol],
                headers={"User-Agent": USER_AGENT, **headers},
                max_size=self._max_size,
                extensions=self._extensions,
                timeouts=self._timeouts,
                keepalive=self._keepalive,
                ssl_context=self.ssl_context,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, WebSocketException) as exc:
            shown = redact_url(url)  # the message is logged: no password of the URL in it
            detail = (str(exc) or type(exc).__name__).replace(url, shown)
            raise CloudUnavailable(f"{shown}: {detail}") from exc
        if ws.subprotocol != subprotocol:
            ws.close(1002, "subprotocol not accepted")
            raise CloudUnavailable(f"{redact_url(url)}: cloud did not accept {subprotocol}")
        return ws
