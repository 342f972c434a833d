"""The callback-driven WebSocket layer: timeouts, keepalive, assembly, back-pressure, client.

Peers are real sockets on 127.0.0.1: websockets' own asyncio client, or a raw client built on
websockets' sans-I/O protocol that only writes what a test lets it (to withhold pongs and close
frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.net.wsclient import connect
from gateway.net.wsconn import Keepalive, ServerConnection, Timeouts, WsServer
from tests.support import wait_for

OCPP16 = Subprotocol("ocpp1.6")


def echo_to(conn: ServerConnection) -> Callable[[str | bytes], None]:
    """An ``on_message`` that sends every message back as text."""

    def on_message(message: str | bytes) -> None:
        conn.send(message if isinstance(message, str) else message.decode())

    return on_message


@contextlib.asynccontextmanager
async def server(
    *, echo: bool = True, keepalive: Keepalive | None = None, **kwargs: Any
) -> AsyncIterator[tuple[WsServer, list[ServerConnection]]]:
    opened: list[ServerConnection] = []

    def on_open(conn: ServerConnection) -> None:
        opened.append(conn)
        if echo:
            conn.on_message = echo_to(conn)

    srv = WsServer(
        on_open=on_open,
        process_request=kwargs.pop("process_request", lambda conn, request: None),
        subprotocols=kwargs.pop("subprotocols", [OCPP16]),
        keepalive=keepalive,
        **kwargs,
    )
    await srv.listen("127.0.0.1", 0)
    try:
        yield srv, opened
    finally:
        await srv.wait_closed()


def port_of(srv: WsServer) -> int:
    return int(srv.sockets[0].getsockname()[1])


class RawClient:
    """A WebSocket client that writes only when told: replies (pongs, close) stay unsent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol: ClientProtocol
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}/CP"), subprotocols=[OCPP16]
        )
        client.protocol.send_request(client.protocol.connect())
        client.flush()
        events = await client.events()
        assert isinstance(events[0], Response) and events[0].status_code == 101
        return client

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)

    def discard_output(self) -> None:
        self.protocol.data_to_send()

    async def events(self, timeout: float = 5) -> list[Any]:
        """The next events the server's bytes make; [] with ``eof`` set once the server is gone."""
        while True:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                self.protocol.receive_eof()
                return self.protocol.events_received()
            self.protocol.receive_data(data)
            events = self.protocol.events_received()
            if events:
                return events

    async def frames_until_eof(self, *, answer: bool, timeout: float = 5) -> list[Frame]:
        frames: list[Frame] = []
        while not self.eof:
            frames += [e for e in await self.events(timeout) if isinstance(e, Frame)]
            self.flush() if answer else self.discard_output()
        return frames

    def close(self) -> None:
        self.writer.close()


async def test_fragmented_text_message_is_delivered_whole() -> None:
    async with (
        server() as (srv, _),
        ws_connect(f"ws://127.0.0.1:{port_of(srv)}/CP", subprotocols=[OCPP16]) as ws,
    ):
        await ws.send(['[2,"1","Heartbeat",', "{}]"])
        assert await asyncio.wait_for(ws.recv(), 5) == '[2,"1","Heartbeat",{}]'


async def test_text_message_that_is_not_utf8_closes_with_1007() -> None:
    async with server() as (srv, _):
        client = await RawClient.open(port_of(srv))
        client.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        client.flush()
        frames = await client.frames_until_eof(answer=False)
        closes = [f for f in frames if f.opcode is Opcode.CLOSE]
        assert closes and int.from_bytes(closes[0].data[:2], "big") == 1007
        client.close()


async def test_a_ping_left_unanswered_closes_the_connection_with_1011() -> None:
    keepalive = Keepalive(interval_s=0.1, timeout_s=0.2)
    async with server(keepalive=keepalive, timeouts=Timeouts(close_s=0.3)) as (srv, opened):
        client = await RawClient.open(port_of(srv))
        frames = await client.frames_until_eof(answer=False)
        opcodes = [f.opcode for f in frames]
        assert opcodes[0] is Opcode.PING
        closes = [f for f in frames if f.opcode is Opcode.CLOSE]
        assert int.from_bytes(closes[0].data[:2], "big") == 1011
        assert b"keepalive ping timeout" in closes[0].data
        await asyncio.wait_for(opened[0].wait_closed(), 5)
        client.close()


async def test_answered_pings_keep_the_connection_open() -> None:
    keepalive = Keepalive(interval_s=0.05, timeout_s=0.1)
    async with server(keepalive=keepalive) as (srv, _):
        client = await RawClient.open(port_of(srv))
        pings = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                events = await client.events(timeout=deadline - loop.time())
                pings += sum(1 for e in events if isinstance(e, Frame) and e.opcode is Opcode.PING)
                assert not any(isinstance(e, Frame) and e.opcode is Opcode.CLOSE for e in events)
            client.flush()  # the pongs
        assert pings >= 3
        assert not client.eof
        client.protocol.send_text(b'[2,"1","Heartbeat",{}]')
        client.flush()
        texts: list[bytes] = []
        async with asyncio.timeout(5):
            while not texts and not client.eof:  # pings may still come before the echo
                events = await client.events()
                client.flush()  # their pongs
                texts = [
                    bytes(e.data)
                    for e in events
                    if isinstance(e, Frame) and e.opcode is Opcode.TEXT
                ]
        assert texts[0] == b'[2,"1","Heartbeat",{}]'
        client.close()


async def test_an_unanswered_close_is_ended_by_aborting_after_the_close_timeout() -> None:
    async with server(timeouts=Timeouts(close_s=0.2)) as (srv, opened):
        client = await RawClient.open(port_of(srv))
        await asyncio.sleep(0.05)
        opened[0].close(1000, "bye")
        frames = await client.frames_until_eof(answer=False)  # the client never answers
        assert [f.opcode for f in frames] == [Opcode.CLOSE]
        await asyncio.wait_for(opened[0].wait_closed(), 5)
        client.close()


async def test_a_client_that_never_sends_its_handshake_is_dropped() -> None:
    async with server(timeouts=Timeouts(open_s=0.2)) as (srv, opened):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert opened == []
        assert srv.connections == set()
        writer.close()


async def test_messages_before_a_handler_is_set_wait_and_come_in_order() -> None:
    async with (
        server(echo=False) as (srv, opened),
        ws_connect(f"ws://127.0.0.1:{port_of(srv)}/CP", subprotocols=[OCPP16]) as ws,
    ):
        for i in range(3):
            await ws.send(f"m{i}")
        await asyncio.sleep(0.1)
        got: list[Any] = []
        opened[0].on_message = got.append  # they waited in the socket: reading was held
        await wait_for(lambda: len(got) == 3)
        assert got == ["m0", "m1", "m2"]
        await ws.send(b"m3")
        await wait_for(lambda: len(got) == 4)
        assert got[3] == b"m3"  # binary messages arrive as bytes


async def test_held_reading_delays_messages_until_released() -> None:
    async with (
        server(echo=False) as (srv, opened),
        ws_connect(f"ws://127.0.0.1:{port_of(srv)}/CP", subprotocols=[OCPP16]) as ws,
    ):
        got: list[Any] = []
        await wait_for(lambda: bool(opened))
        opened[0].on_message = got.append
        opened[0].hold_reading("test")
        await ws.send("held")
        await asyncio.sleep(0.2)
        assert got == []
        opened[0].release_reading("test")
        await wait_for(lambda: got == ["held"])


async def test_a_peer_that_does_not_read_pauses_writing_until_it_reads() -> None:
    async with server(echo=False) as (srv, opened):
        client = await RawClient.open(port_of(srv))
        await wait_for(lambda: bool(opened))
        conn = opened[0]
        paused: list[bool] = []
        conn.on_write_paused = paused.append
        chunk = "x" * 65536
        sent = 0
        while not paused and sent < 2000:  # the kernel's buffers fill first
            assert conn.send(chunk)
            sent += 1
            await asyncio.sleep(0)
        assert paused == [True]
        received = 0
        while received < sent:
            received += sum(
                1 for e in await client.events() if isinstance(e, Frame) and e.opcode is Opcode.TEXT
            )
        assert paused == [True, False] and not conn.write_paused
        client.close()


async def test_connect_passes_headers_and_negotiates_the_subprotocol() -> None:
    seen: list[str | None] = []

    def process_request(conn: ServerConnection, request: Any) -> None:
        seen.append(request.headers.get("Authorization"))

    async with server(process_request=process_request) as (srv, _):
        conn = await connect(
            f"ws://127.0.0.1:{port_of(srv)}/CP",
            subprotocols=[OCPP16],
            headers={"Authorization": "Basic Q1A6cw=="},
        )
        got: list[Any] = []
        conn.on_message = got.append
        assert conn.subprotocol == OCPP16
        assert conn.send("hello")
        await wait_for(lambda: got == ["hello"])
        assert seen == ["Basic Q1A6cw=="]
        conn.close(1000)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert not conn.send("after close")


def _headers_holding(value: str) -> list[Headers]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, Headers) and value in o.values()]


def _handshake_responses() -> int:
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if isinstance(o, Headers) and "Sec-WebSocket-Accept" in o
    )


async def test_handshake_headers_are_not_kept_for_the_life_of_a_connection() -> None:
    # Two connections per charger: a charger's request headers (~3 KB) kept for as long as it
    # stays connected would cost a depot of 1,000 chargers megabytes (websockets' parser holds
    # the request or response it parsed in its generator for the connection's life).
    token = "Basic " + "bWVtb3J5OnRlc3Q=" * 2
    responses = _handshake_responses()
    async with server() as (srv, opened):
        conn = await connect(
            f"ws://127.0.0.1:{port_of(srv)}/CP",
            subprotocols=[OCPP16],
            headers={"Authorization": token},
        )
        await wait_for(lambda: len(opened) == 1)
        request = opened[0].take_request()  # what the owner reads of it, once
        assert request is not None and request.headers["Authorization"] == token
        assert opened[0].take_request() is None
        del request
        assert _headers_holding(token) == []  # the charger's request, on the server side
        assert _handshake_responses() == responses  # the server's response, on the client side
        got: list[Any] = []
        conn.on_message = got.append
        assert conn.send("still open")
        await wait_for(lambda: got == ["still open"])
        conn.close(1000)
        await asyncio.wait_for(conn.wait_closed(), 5)


async def test_connect_raises_when_the_server_refuses_the_handshake() -> None:
    def refuse(conn: ServerConnection, request: Any) -> Response:
        return conn.reject(404, "no such charger\n")

    async with server(process_request=refuse) as (srv, _):
        with pytest.raises(InvalidHandshake, match="404"):
            await connect(f"ws://127.0.0.1:{port_of(srv)}/CP", subprotocols=[OCPP16])


async def test_connect_times_out_when_the_server_never_answers() -> None:
    # The server keeps each writer: from Python 3.13 a StreamWriter that is garbage-collected
    # closes its connection, and the client would see EOF instead of silence.
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await connect(
                f"ws://127.0.0.1:{port}/CP", subprotocols=[OCPP16], timeouts=Timeouts(open_s=0.2)
            )
    finally:
        for writer in held:
            writer.close()
        silent.close()


async def test_wss_both_ways_with_the_certificate_checked(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    opened: list[ServerConnection] = []

    def on_open(conn: ServerConnection) -> None:
        opened.append(conn)
        conn.on_message = echo_to(conn)

    srv = WsServer(
        on_open=on_open, process_request=lambda conn, request: None, subprotocols=[OCPP16]
    )
    await srv.listen("127.0.0.1", 0, ssl=server_context)
    url = f"wss://127.0.0.1:{port_of(srv)}/CP"
    try:
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted by the system's CAs
            await connect(url, subprotocols=[OCPP16])
        conn = await connect(
            url, subprotocols=[OCPP16], ssl_context=ssl.create_default_context(cafile=cert)
        )
        got: list[Any] = []
        conn.on_message = got.append
        assert conn.send('[2,"1","Heartbeat",{}]')
        await wait_for(lambda: got == ['[2,"1","Heartbeat",{}]'])
        conn.close(1000)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.close_rcvd is not None and conn.close_rcvd.code == 1000
        await asyncio.wait_for(opened[0].wait_closed(), 5)
    finally:
        await srv.wait_closed()


# --- a subprotocol chosen later --------------------------------------------------------------------

OCPP201 = Subprotocol("ocpp2.0.1")


async def test_the_handshake_response_waits_for_a_subprotocol_chosen_later() -> None:
    chosen: asyncio.Future[Subprotocol | None] = asyncio.get_running_loop().create_future()
    asked: list[list[Subprotocol]] = []

    def choose(conn: ServerConnection, offered: list[Subprotocol]) -> asyncio.Future[Any]:
        asked.append(offered)
        return chosen

    async with server(choose_subprotocol=choose, subprotocols=[OCPP16, OCPP201]) as (srv, opened):
        url = f"ws://127.0.0.1:{port_of(srv)}/CP"

        async def open_client() -> ClientConnection:
            return await ws_connect(url, subprotocols=[OCPP201, OCPP16])

        client = asyncio.create_task(open_client())
        await wait_for(lambda: bool(asked))
        assert asked == [[OCPP201, OCPP16]]  # the client's order
        for _ in range(20):
            await asyncio.sleep(0)
        assert not client.done() and opened == []  # no response before the choice
        chosen.set_result(OCPP16)  # not the client's first: the choice decides
        ws = await asyncio.wait_for(client, 5)
        assert ws.subprotocol == OCPP16 and opened[0].subprotocol == OCPP16
        await ws.send("after")  # reading resumed with the response
        assert await asyncio.wait_for(ws.recv(), 5) == "after"
        await ws.close()


async def test_a_subprotocol_chosen_at_once_needs_no_wait() -> None:
    def choose(conn: ServerConnection, offered: list[Subprotocol]) -> Subprotocol | None:
        return OCPP201 if OCPP201 in offered else None

    async with server(choose_subprotocol=choose, subprotocols=[OCPP16, OCPP201]) as (srv, _):
        url = f"ws://127.0.0.1:{port_of(srv)}/CP"
        async with ws_connect(url, subprotocols=[OCPP16, OCPP201]) as ws:
            assert ws.subprotocol == OCPP201
        async with ws_connect(url, subprotocols=[OCPP16]) as ws:
            assert ws.subprotocol is None  # completed without one; the owner decides what next


async def test_a_connection_closed_while_its_subprotocol_is_chosen_is_dropped_with_the_choice() -> (
    None
):
    choices: list[asyncio.Future[Subprotocol | None]] = []

    def choose(conn: ServerConnection, offered: list[Subprotocol]) -> asyncio.Future[Any]:
        choices.append(asyncio.get_running_loop().create_future())
        return choices[-1]

    async with server(choose_subprotocol=choose, timeouts=Timeouts(open_s=0.3, close_s=0.3)) as (
        srv,
        opened,
    ):
        raw = await asyncio.open_connection("127.0.0.1", port_of(srv))
        protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port_of(srv)}/CP"), subprotocols=[OCPP16]
        )
        protocol.send_request(protocol.connect())
        for data in protocol.data_to_send():
            raw[1].write(data)
        await wait_for(lambda: bool(choices))
        # The opening timeout passes while the choice waits: the connection is aborted, and the
        # choice with it; its late result opens nothing.
        await wait_for(lambda: choices[0].cancelled(), timeout=5)
        await wait_for(lambda: not srv.connections)
        assert await asyncio.wait_for(raw[0].read(), 5) == b""  # no response was ever sent
        assert opened == []
        raw[1].close()


async def test_a_failing_choice_refuses_the_handshake() -> None:
    async def choose(conn: ServerConnection, offered: list[Subprotocol]) -> Subprotocol | None:
        raise RuntimeError("boom")

    async with server(choose_subprotocol=choose) as (srv, opened):
        with pytest.raises(InvalidHandshake, match="500"):
            await ws_connect(f"ws://127.0.0.1:{port_of(srv)}/CP", subprotocols=[OCPP16])
        assert opened == []
