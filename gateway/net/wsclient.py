"""The client side of :mod:`gateway.net.wsconn`: a WebSocket opened to the cloud.

:func:`connect` opens a TCP (or TLS) connection and completes the handshake; the connection is a
:class:`~gateway.net.wsconn.WsConnection` like a charger's, driven by the same callbacks.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.extensions.base import ClientExtensionFactory
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.net.keepalive import Keepalive
from gateway.net.wsconn import Timeouts, WsConnection

__all__ = ["ClientConnection", "connect"]

_DEFAULT_TIMEOUTS = Timeouts()


class ClientConnection(WsConnection):
    """A connection opened by :func:`connect`. The server's handshake answer is not kept: its
    headers were read by the sans-I/O protocol (subprotocol, extensions)."""

    __slots__ = ("_answered", "_headers")

    protocol: ClientProtocol

    def __init__(
        self,
        url: str,
        *,
        subprotocols: Sequence[Subprotocol],
        headers: dict[str, str],
        max_size: int,
        extensions: Sequence[ClientExtensionFactory],
        timeouts: Timeouts,
        keepalive: Keepalive | None,
    ) -> None:
        super().__init__(timeouts=timeouts, keepalive=keepalive)
        self._answered = False
        self._headers: dict[str, str] | None = headers
        self.protocol = ClientProtocol(
            parse_uri(url),
            subprotocols=list(subprotocols),
            extensions=list(extensions) or None,  # an empty list would send an empty header
            max_size=max_size,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        request = self.protocol.connect()
        headers, self._headers = self._headers or {}, None  # sent once
        for name, value in headers.items():
            request.headers[name] = value
        self.protocol.send_request(request)
        self._flush()

    def _handshake(self, event: Request | Response) -> None:
        if not isinstance(event, Response) or self._answered:
            return
        self._answered = True
        if self.protocol.state is OPEN:
            # Read by the protocol already (subprotocol, extensions); its parser would hold
            # the headers for as long as the connection lives.
            event.headers.clear()
            self._opened()
            self.hold_reading("unattached")  # until the owner sets on_message
        else:
            exc = self.protocol.handshake_exc or InvalidHandshake("handshake failed")
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved here; connect() raises it
            self._abort_after(self.timeouts.close_s)


async def connect(
    url: str,
    *,
    subprotocols: Sequence[Subprotocol],
    headers: dict[str, str] | None = None,
    max_size: int = 1 << 20,
    extensions: Sequence[ClientExtensionFactory] = (),
    timeouts: Timeouts = _DEFAULT_TIMEOUTS,
    keepalive: Keepalive | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ClientConnection:
    """Open a WebSocket to ``url`` (ws:// or wss://) and complete the handshake.

    Raises OSError (TCP or TLS), TimeoutError (``timeouts.open_s``), InvalidHandshake (refused)
    or InvalidURI.
    """
    uri = parse_uri(url)
    connection = ClientConnection(
        url,
        subprotocols=subprotocols,
        headers=dict(headers or {}),
        max_size=max_size,
        extensions=extensions,
        timeouts=timeouts,
        keepalive=keepalive,
    )
    context = (ssl_context or ssl.create_default_context()) if uri.secure else None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeouts.open_s):
            await loop.create_connection(
                lambda: connection,
                uri.host,
                uri.port,
                ssl=context,
                server_hostname=uri.host if context is not None else None,
            )
            await asyncio.shield(connection.opened)
    except BaseException:
        connection.abort()
        raise
    return connection
