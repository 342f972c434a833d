"""An in-memory WebSocket connection for the pair tier: what the gateway uses of a ``WsConnection``.

``Link.near`` is the gateway's end (given to ``Hub.accept`` as a charger's server connection, or
returned by the simulated cloud's opener as the upstream client connection); ``Link.far`` is the
simulated system's. The surface is the one ``gateway.net.session``, ``link`` and ``hub`` use:
``send``, ``close``, ``hold_reading``/``release_reading``/``hold_reading_if``, ``on_message`` (messages
wait until it is set), ``on_close``, ``on_write_paused``, ``close_rcvd``, ``closed``, ``wait_closed``,
``subprotocol``, ``remote_address`` and, for a charger, ``take_request()``'s headers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CLOSE_TIMEOUT_S", "Close", "End", "Link", "Message"]

Message = str | bytes
CLOSE_TIMEOUT_S = 2.0  # gateway.net.wsconn.Timeouts.close_s


@dataclass(frozen=True)
class Close:
    """A close frame (websockets' ``Close`` has the same two fields the link reads)."""

    code: int
    reason: str


class _Request:
    """The handshake request of a charger's connection: the session reads its headers."""

    def __init__(self, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers


class End:
    """One end of an in-memory WebSocket connection, with the surface the gateway uses.

    A message sent is delivered to the other end in a later loop iteration (as over a socket);
    while reading is held, or before ``on_message`` is set, messages wait in order.
    """

    def __init__(self, link: Link, name: str, subprotocol: str) -> None:
        loop = asyncio.get_running_loop()
        self.link = link
        self.name = name
        self.subprotocol = subprotocol
        self.peer: End | None = None
        self.request: _Request | None = None
        self.remote_address = ("127.0.0.1", 0)
        self._on_message: Callable[[Message], None] | None = None
        self.on_close: Callable[[Any], None] | None = None
        self.on_write_paused: Callable[[bool], None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self._inbound: deque[Message | Close] = deque()
        self._holds: set[str] = {"unattached"}
        self._delivering = False

    # --- what the gateway uses -------------------------------------------------------------

    def take_request(self) -> _Request | None:
        """The handshake request, forgotten here (as a real charger connection does)."""
        request, self.request = self.request, None
        return request

    @property
    def on_message(self) -> Callable[[Message], None] | None:
        return self._on_message

    @on_message.setter
    def on_message(self, handler: Callable[[Message], None] | None) -> None:
        self._on_message = handler
        if handler is not None:
            self.release_reading("unattached")

    @property
    def open(self) -> bool:
        return self.close_sent is None and self.close_rcvd is None and not self.closed.done()

    def send(self, text: str) -> bool:
        if not self.open or self.peer is None:
            return False
        self.link.frames += 1
        asyncio.get_running_loop().call_soon(self.peer._arrive, text)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake: the peer reads the close after what was sent before it."""
        if not self.open or self.peer is None:
            return
        self.close_sent = Close(code, reason)
        loop = asyncio.get_running_loop()
        loop.call_soon(self.peer._arrive, self.close_sent)
        # As WsConnection: a closing handshake that does not end in time aborts the connection.
        loop.call_later(CLOSE_TIMEOUT_S, self.link.finish)

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)

    def hold_reading(self, reason: str) -> None:
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        self._holds.discard(reason)
        if not self._holds and self._inbound:
            asyncio.get_running_loop().call_soon(self._deliver)

    @property
    def reading_held(self) -> bool:
        return bool(self._holds)

    def hold_reading_if(self, hold: bool, reason: str) -> None:
        if hold:
            self.hold_reading(reason)
        else:
            self.release_reading(reason)

    def abort(self) -> None:
        self.link.drop()

    # --- delivery ----------------------------------------------------------------------------

    def _arrive(self, item: Message | Close) -> None:
        if self.closed.done():
            return
        self._inbound.append(item)
        self._deliver()

    def _deliver(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._inbound and not self._holds and self._on_message is not None:
                item = self._inbound.popleft()
                if isinstance(item, Close):
                    self._close_frame(item)
                    return
                self._on_message(item)
        finally:
            self._delivering = False

    def _close_frame(self, frame: Close) -> None:
        self.close_rcvd = frame
        if self.close_sent is None and self.peer is not None:  # echo it (RFC 6455 §5.5.1)
            self.close_sent = frame
            self.peer.close_rcvd = frame
        self.link.finish()

    def _lost(self) -> None:
        if self.closed.done():
            return
        self.closed.set_result(None)
        on_close, self.on_close = self.on_close, None
        self._on_message = self.on_write_paused = None
        if on_close is not None:
            on_close(self)


class Link:
    """An in-memory connection: ``near`` is the gateway's end, ``far`` the simulated system's."""

    def __init__(self, subprotocol: str, path: str = "", headers: dict[str, str] | None = None):
        self.frames = 0
        self.near = End(self, "gateway", subprotocol)
        self.far = End(self, "peer", subprotocol)
        self.near.peer, self.far.peer = self.far, self.near
        self.near.request = _Request(path, dict(headers or {}))

    def finish(self) -> None:
        """Both ends closed (after a closing handshake, or with none: a drop)."""
        self.near._lost()
        self.far._lost()

    def drop(self) -> None:
        """The network fails: both ends see the connection end without a close frame."""
        self.finish()

    @property
    def is_open(self) -> bool:
        return not self.near.closed.done()
