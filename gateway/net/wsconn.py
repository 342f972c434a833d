"""WebSocket connections driven by callbacks: websockets' sans-I/O protocol on asyncio transports.

Why not websockets' asyncio connections: each carries a message assembler, a future per frame,
a drain per send and a keepalive task; the relay path paid ~9 µs per frame and ~22 KB per
connection for them (docs/benchmarks.md). Here bytes arrive in ``data_received``, the sans-I/O
protocol turns them into frames, and each complete message goes to ``on_message`` within the same
callback; ``send`` writes at once. The sans-I/O layer does the HTTP handshake, framing, masking,
extensions (permessage-deflate), the message size limit (close 1009), pongs and the closing
handshake. This module adds what the asyncio layer did around it:

* the opening timeout, and the closing timeout after which the TCP connection is aborted;
* keepalive pings: one sweep for all connections instead of a task per connection;
* message assembly from fragments and UTF-8 checking of text messages (close 1007);
* back-pressure: reading can be held (``hold_reading``) and ``on_write_paused`` reports a full
  send buffer, so a relay can stop reading one side while the other cannot keep up;
* a subprotocol the server may choose later (``choose_subprotocol`` returns an awaitable: the
  gateway asks the cloud which OCPP version to answer with): the response waits, reading held;
* a server (:class:`WsServer`); the client is :mod:`gateway.net.wsclient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from websockets.exceptions import InvalidHeader
from websockets.extensions.base import ServerExtensionFactory
from websockets.frames import Close, Frame, Opcode
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.typing import BytesLike, Subprotocol

from gateway.net.keepalive import Keepalive

__all__ = [
    "Keepalive",
    "ServerConnection",
    "Timeouts",
    "WsConnection",
    "WsServer",
]

log = logging.getLogger(__name__)

Message = str | bytes
_TEXT = Opcode.TEXT
_NO_HOLDS: frozenset[str] = frozenset()  # one object for every connection reading freely


@dataclass(frozen=True, slots=True)
class Timeouts:
    open_s: float = 10.0  # TCP connected → handshake done
    close_s: float = 2.0  # close frame sent (or expected) → TCP closed, else aborted


class WsConnection(asyncio.Protocol):
    """One WebSocket connection. Set ``on_message`` (and ``on_close``) to receive; ``send`` text.

    Messages that arrive before ``on_message`` is set wait, with reading held, and are delivered
    in order when it is set.
    """

    # Slots: two connections per charger, so a dict per connection would cost ~1 KB a charger.
    __slots__ = (
        "_fragmented_text",
        "_fragments",
        "_holds",
        "_keepalive",
        "_on_message",
        "_timer",
        "_waiting",
        "closed",
        "loop",
        "next_ping_at",
        "on_close",
        "on_write_paused",
        "opened",
        "ping_sent_at",
        "protocol",
        "timeouts",
        "transport",
        "write_paused",
    )

    protocol: Protocol

    def __init__(self, *, timeouts: Timeouts, keepalive: Keepalive | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.timeouts = timeouts
        self._keepalive = keepalive
        self._on_message: Callable[[Message], None] | None = None
        self.on_close: Callable[[WsConnection], None] | None = None
        self.on_write_paused: Callable[[bool], None] | None = None
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.write_paused = False
        self.next_ping_at = 0.0
        self.ping_sent_at: float | None = None
        self._fragments: list[bytes] | None = None
        self._fragmented_text = False
        # Made when first needed: an empty deque is ~740 bytes and nearly every connection's
        # messages go straight to their handler; the holds are rare and short-lived.
        self._waiting: deque[Message] | None = None
        self._holds = _NO_HOLDS
        self._timer: asyncio.TimerHandle | None = None

    # --- what the owner uses ---------------------------------------------------------------------

    @property
    def subprotocol(self) -> Subprotocol | None:
        return self.protocol.subprotocol

    @property
    def close_rcvd(self) -> Close | None:
        """The peer's close frame, if it sent one."""
        return self.protocol.close_rcvd

    @property
    def remote_address(self) -> Any:
        return None if self.transport is None else self.transport.get_extra_info("peername")

    @property
    def on_message(self) -> Callable[[Message], None] | None:
        return self._on_message

    @on_message.setter
    def on_message(self, handler: Callable[[Message], None] | None) -> None:
        self._on_message = handler
        if handler is not None:
            while self._waiting and self._on_message is handler:
                try:
                    handler(self._waiting.popleft())
                except Exception:
                    log.exception("%s: message handler failed", self.remote_address)
            if not self._waiting:
                self._waiting = None
            self.release_reading("unattached")

    def send(self, text: str) -> bool:
        """Send a text message now; False if the connection is no longer open."""
        transport = self.transport
        protocol = self.protocol
        if protocol.state is not OPEN or transport is None or transport.is_closing():
            return False
        protocol.send_text(text.encode())
        for data in protocol.data_to_send():  # one frame: a write, never the end of the stream
            transport.write(data)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the connection is aborted if it does not end in time."""
        if self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
            self._abort_after(self.timeouts.close_s)
        elif self.protocol.state is CONNECTING and self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def hold_reading(self, reason: str) -> None:
        """Stop reading from the socket until every holder has released it."""
        if reason in self._holds:
            return
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._holds = self._holds | {reason}

    def release_reading(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds = self._holds - {reason} or _NO_HOLDS
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def reading_held(self) -> bool:
        return bool(self._holds)

    def hold_reading_if(self, hold: bool, reason: str) -> None:
        if hold:
            self.hold_reading(reason)
        else:
            self.release_reading(reason)

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> None:
        """Called by :class:`Keepalive`'s sweep."""
        if self.protocol.state is not OPEN:
            return
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at > timeout_s:
                log.info("%s: keepalive ping unanswered; closing", self.remote_address)
                self.protocol.fail(1011, "keepalive ping timeout")
                self._flush()
                self._abort_after(self.timeouts.close_s)
        elif now >= self.next_ping_at:
            self.ping_sent_at = now
            self.next_ping_at = now + interval_s
            self.protocol.send_ping(b"")
            self._flush()

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._abort_after(self.timeouts.open_s)  # the opening handshake must end in time

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._process(self.protocol.events_received())

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._process(self.protocol.events_received())
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: the protocol state becomes CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._keepalive is not None:
            self._keepalive.discard(self)
        if not self.opened.done():
            self.opened.set_exception(
                self.protocol.handshake_exc or ConnectionError("closed during the handshake")
            )
            self.opened.exception()  # retrieved: nobody may be waiting for it
        self.closed.set_result(None)
        on_close, self.on_close = self.on_close, None
        self._on_message = self.on_write_paused = None
        if on_close is not None:
            try:
                on_close(self)
            except Exception:
                log.exception("close handler failed")

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.on_write_paused is not None:
            self.on_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_write_paused is not None:
            self.on_write_paused(False)

    # --- internals -----------------------------------------------------------------------------

    def _process(self, events: list[Any]) -> None:
        protocol = self.protocol
        for event in events:
            if type(event) is not Frame:
                self._handshake(event)
            elif event.opcode is _TEXT and event.fin:  # nearly every OCPP frame
                self._deliver(event.data, True)
            else:
                self._frame(event)
        # Pongs, close frames, a handshake refusal; what a handler sent here went out already.
        # A connection that starts closing always has something to write (its close frame).
        if protocol.writes:
            self._flush()
            if self._timer is None and protocol.close_expected():
                self._abort_after(self.timeouts.close_s)

    def _handshake(self, event: Request | Response) -> None:
        raise NotImplementedError

    def _opened(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._keepalive is not None:
            self._keepalive.add(self, self.loop.time())
        self.opened.set_result(None)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(frame.data, opcode is Opcode.TEXT)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragmented_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            if self._fragments is None:
                return  # the protocol refuses a continuation without a start
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._deliver(data, self._fragmented_text)
        elif opcode is Opcode.PONG:
            self.ping_sent_at = None

    def _deliver(self, data: BytesLike, text: bool) -> None:
        message: Message
        if not text:
            message = bytes(data)
        else:
            try:
                message = data.decode() if type(data) is bytes else str(data, "utf-8")
            except UnicodeDecodeError:
                self.protocol.fail(1007, "text message is not UTF-8")
                self._flush()
                self._abort_after(self.timeouts.close_s)
                return
        handler = self._on_message
        if handler is None or self._waiting:
            if self._waiting is None:
                self._waiting = deque()
            self._waiting.append(message)
            self.hold_reading("unattached")
            return
        try:
            handler(message)
        except Exception:
            log.exception("%s: message handler failed", self.remote_address)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                if not transport.is_closing():
                    transport.write(data)
            elif transport.can_write_eof():  # end of the closing handshake: half-close TCP
                with contextlib.suppress(OSError, RuntimeError):
                    transport.write_eof()
            else:  # TLS cannot half-close
                transport.close()

    def _abort_after(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay_s, self._abort_now)

    def _abort_now(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()


# --- server ------------------------------------------------------------------------------------

ProcessRequest = Callable[["ServerConnection", Request], Response | None]
OnOpen = Callable[["ServerConnection"], None]
Choice = Subprotocol | None
# (connection, the client's subprotocols in its order) → the one to answer with, or an awaitable.
ChooseSubprotocol = Callable[["ServerConnection", list[Subprotocol]], Choice | Awaitable[Choice]]


def _offered(request: Request) -> list[Subprotocol]:
    """[] for a malformed header: the protocol's own check then refuses the handshake (400)."""
    with contextlib.suppress(InvalidHeader):
        headers = request.headers.get_all("Sec-WebSocket-Protocol")
        return [p for value in headers for p in parse_subprotocol(value)]
    return []


class ServerConnection(WsConnection):
    """A connection accepted by :class:`WsServer`; ``request`` is its handshake request until
    the owner takes it (:meth:`take_request`: its headers are ~3 KB a charger)."""

    __slots__ = ("_choosing", "_chosen", "offered", "request", "server")

    protocol: ServerProtocol

    def __init__(self, server: WsServer) -> None:
        super().__init__(timeouts=server.timeouts, keepalive=server.keepalive)
        self.server = server
        self.request: Request | None = None
        self.offered: list[Subprotocol] = []  # the client's subprotocols, in its order
        self._choosing: asyncio.Future[Choice] | None = None
        self._chosen: Choice = None
        self.protocol = ServerProtocol(
            extensions=server.extensions or None,
            subprotocols=server.subprotocols,
            # A function (websockets binds it to the protocol): the choice made in _handshake.
            select_subprotocol=(
                (lambda _, offered: self._chosen if self._chosen in offered else None)
                if server.choose_subprotocol is not None
                else None
            ),
            max_size=server.max_size,
        )

    def take_request(self) -> Request | None:
        """The handshake request, forgotten here: what the owner needs of it is read once."""
        request, self.request = self.request, None
        return request

    def reject(self, status: int, text: str) -> Response:
        """An HTTP response refusing the handshake (for ``process_request``)."""
        return self.protocol.reject(status, text)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._choosing is not None:  # closed while the subprotocol was being chosen
            self._choosing.cancel()
            self._choosing = None
        super().connection_lost(exc)

    def _handshake(self, event: Request | Response) -> None:
        if not isinstance(event, Request) or self.request is not None:
            return
        self.request = event
        response: Response | None = None
        try:
            response = self.server.process_request(self, event)
        except Exception:
            log.exception("process_request failed")
            response = self.reject(500, "Failed to open a WebSocket connection.\n")
        choose = self.server.choose_subprotocol
        if response is None and choose is not None:
            try:
                self.offered = _offered(event)
                choice = choose(self, self.offered)
                if choice is not None and not isinstance(choice, str):
                    self.hold_reading("handshake")  # nothing is read until the answer is sent
                    self._choosing = future = asyncio.ensure_future(choice)
                    future.add_done_callback(self._chose)
                    return
                self._chosen = choice
            except Exception:
                log.exception("choose_subprotocol failed")
                response = self.reject(500, "Failed to open a WebSocket connection.\n")
        self._respond(event, response)

    def _chose(self, future: asyncio.Future[Choice]) -> None:
        self._choosing = None
        if future.cancelled() or self.transport is None or self.transport.is_closing():
            return  # the connection was lost meanwhile (connection_lost cancelled the choice)
        response: Response | None = None
        if future.exception() is not None:
            log.error("choose_subprotocol failed", exc_info=future.exception())
            response = self.reject(500, "Failed to open a WebSocket connection.\n")
        else:
            self._chosen = future.result()
        self.release_reading("handshake")
        assert self.request is not None
        self._respond(self.request, response)

    def _respond(self, request: Request, response: Response | None) -> None:
        if response is None:
            response = self.protocol.accept(request)
        if response.status_code == 101 and not self.server.serving:
            response = self.reject(503, "Server is shutting down.\n")
        self.protocol.send_response(response)
        self._flush()
        if self.protocol.state is OPEN:
            # websockets' parser holds the request it parsed for as long as the connection
            # lives (a local of its generator): keep a copy for the owner, who takes it once,
            # and empty the parser's (~3 KB of headers a charger).
            self.request = Request(request.path, request.headers.copy())
            request.headers.clear()
            self._opened()
            self.hold_reading("unattached")  # until the owner sets on_message
            self.server.on_open(self)
        else:
            self._abort_after(self.timeouts.close_s)  # refused: the client closes, or we do


class WsServer:
    """Accepts WebSocket connections on one socket and hands each open one to ``on_open``.

    ``process_request`` may refuse a handshake (its response); ``choose_subprotocol`` picks among
    the client's subprotocols (default: the first of ``subprotocols`` the client offers), at once
    or later through an awaitable (a connection lost meanwhile cancels it).
    """

    def __init__(
        self,
        *,
        on_open: OnOpen,
        process_request: ProcessRequest,
        subprotocols: Sequence[Subprotocol],
        choose_subprotocol: ChooseSubprotocol | None = None,
        max_size: int = 1 << 20,
        extensions: Sequence[ServerExtensionFactory] = (),
        timeouts: Timeouts = Timeouts(),
        keepalive: Keepalive | None = None,
    ) -> None:
        self.on_open = on_open
        self.process_request = process_request
        self.subprotocols = list(subprotocols)
        self.choose_subprotocol = choose_subprotocol
        self.max_size = max_size
        self.extensions = list(extensions)
        self.timeouts = timeouts
        self.keepalive = keepalive
        self.connections: set[ServerConnection] = set()
        self.serving = False
        self._server: asyncio.Server | None = None

    async def listen(self, host: str, port: int, *, ssl: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerConnection(self), host, port, ssl=ssl, backlog=1024
        )
        self.serving = True

    @property
    def sockets(self) -> tuple[Any, ...]:
        return () if self._server is None else tuple(self._server.sockets)

    def close(self, *, close_connections: bool = True) -> None:
        """Stop accepting; with ``close_connections``, start closing every connection (1001)."""
        self.serving = False
        if self._server is not None:
            self._server.close()
        if close_connections:
            for connection in list(self.connections):
                connection.close(1001, "server shutting down")

    async def wait_closed(self) -> None:
        """Close what is still open and wait until every connection has ended."""
        self.close()
        pending = [c.closed for c in self.connections]
        if pending:
            await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
