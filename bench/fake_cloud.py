"""A fast fake cloud CSMS for benchmarks: answers every CALL at once with a valid CALLRESULT.

It does the least work a CSMS can do: one ``orjson.loads`` per frame to read the message type, id
and action, then a canned reply for that action (OCPP 1.6 and 2.0.1 shapes), sent from the
``data_received`` callback through websockets' sans-I/O protocol. Any path is accepted; the
subprotocol is ``ocpp1.6`` or ``ocpp2.0.1`` as the client offers. CALLRESULTs and CALLERRORs it
receives (answers to CALLs it never sends) are dropped.

permessage-deflate is not negotiated unless ``--compression`` is given, so every target in a
comparison relays the same plain frames (the chargers of the load generator do not offer it either,
like most 1.6 firmware, unless the runner's ``--compression`` asks them to). With ``--compression``
the cloud accepts it from a client that offers it, with websockets' default settings (as a CSMS
built on websockets does).

``GET /_stats`` (plain HTTP, no upgrade) returns ``{"calls": N, "connections": N, "handshakes": N,
"peakHandshakesPerS": N, "maxHandshakesInFlight": N, "refused": N, "byAction": {...}}``: the bench runner compares the CALLs the cloud
answered with those the chargers saw answered, to show that a relay forwarded every frame rather
than answering some itself; the storm and recovery benchmarks read how fast new connections came
(handshakes per wall-clock second, the busiest second) and how many it had open at once
(``maxHandshakesInFlight``: requests received and not yet answered, nor abandoned by the client).

``--handshake-delay S`` holds each WebSocket handshake response for S seconds (a cloud behind TLS
over a cellular link answers its handshakes in 200-600 ms); frames are answered at once.
``--refuse-every-other`` answers every second handshake (counted across all connections) with
HTTP 503, as an overloaded cloud or its load balancer does.

Run: ``python -m bench.fake_cloud --port 0``; the first line on stdout is ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, cast

import orjson
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

__all__ = ["CloudStats", "main", "reply_for", "start_fake_cloud"]

SUBPROTOCOLS = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]


class CloudStats:
    """Counters the runner reads through ``GET /_stats``."""

    def __init__(self) -> None:
        self.calls = 0
        self.connections = 0
        self.handshakes = 0
        self.by_second: Counter[int] = Counter()  # accepted handshakes per wall-clock second
        self.by_action: Counter[str] = Counter()
        self.requests = 0  # WebSocket handshake requests received
        self.in_flight = 0
        self.max_in_flight = 0
        self.refused = 0

    def request(self) -> int:
        """A handshake request arrived; its number (0, 1, ...)."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.requests += 1
        return self.requests - 1

    def handshake(self) -> None:
        self.handshakes += 1
        self.by_second[int(time.time())] += 1

    @property
    def peak_handshakes_per_s(self) -> int:
        return max(self.by_second.values(), default=0)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "calls": self.calls,
                "connections": self.connections,
                "handshakes": self.handshakes,
                "peakHandshakesPerS": self.peak_handshakes_per_s,
                "maxHandshakesInFlight": self.max_in_flight,
                "refused": self.refused,
                "byAction": self.by_action,
            }
        )


class _Clock:
    """ISO-8601 UTC time, formatted at most once per second (Heartbeat/Boot replies need it)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._text


_CLOCK = _Clock()
_TX_IDS = itertools.count(1)
_ACCEPTED_16 = b'{"idTagInfo":{"status":"Accepted"}}'
_ACCEPTED_201 = b'{"idTokenInfo":{"status":"Accepted"}}'


def _boot(_v201: bool) -> bytes:
    return b'{"status":"Accepted","currentTime":"%s","interval":300}' % _CLOCK.now().encode()


def _heartbeat(_v201: bool) -> bytes:
    return b'{"currentTime":"%s"}' % _CLOCK.now().encode()


def _empty(_v201: bool) -> bytes:
    return b"{}"


def _authorize(v201: bool) -> bytes:
    return _ACCEPTED_201 if v201 else _ACCEPTED_16


def _start(_v201: bool) -> bytes:
    # OCPP 1.6 §4.8: the central system assigns the transactionId.
    return b'{"transactionId":%d,"idTagInfo":{"status":"Accepted"}}' % next(_TX_IDS)


_REPLIES: dict[str, Callable[[bool], bytes]] = {
    "BootNotification": _boot,
    "Heartbeat": _heartbeat,
    "StatusNotification": _empty,
    "MeterValues": _empty,
    "Authorize": _authorize,
    "StartTransaction": _start,
    "StopTransaction": lambda v201: _ACCEPTED_16,
    "TransactionEvent": _empty,
    "DataTransfer": lambda v201: b'{"status":"Accepted"}',
    "FirmwareStatusNotification": _empty,
    "DiagnosticsStatusNotification": _empty,
    "SecurityEventNotification": _empty,
    "NotifyEvent": _empty,
    "NotifyReport": _empty,
}


def reply_for(
    frame: str | bytes | bytearray | memoryview, v201: bool, by_action: Counter[str] | None = None
) -> bytes | None:
    """The answer to one frame from a charger, or ``None`` when it needs none."""
    try:
        raw: Any = orjson.loads(frame)
        kind, message_id = raw[0], raw[1]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
        return b'[4,"-1","FormationViolation","bad frame",{}]'
    if kind != 2:
        return None
    mid = orjson.dumps(message_id)
    make = _REPLIES.get(raw[2]) if len(raw) == 4 and isinstance(raw[2], str) else None
    if by_action is not None and make is not None:
        by_action[raw[2]] += 1
    if make is None:
        return b'[4,%s,"NotImplemented","",{}]' % mid
    return b"[3,%s,%s]" % (mid, make(v201))


class _CloudConnection(asyncio.Protocol):
    """One charger (or relay) connection: sans-I/O WebSocket, each CALL answered in the callback.

    No task, future or queue per frame: the cloud must cost little next to the target measured.
    """

    def __init__(
        self,
        stats: CloudStats,
        handshake_delay_s: float = 0.0,
        refuse_every_other: bool = False,
        compression: bool = False,
    ) -> None:
        self.stats = stats
        self.handshake_delay_s = handshake_delay_s
        self.refuse_every_other = refuse_every_other
        self.refuse = False
        self.answering = False  # a handshake request is in flight (counted in stats.in_flight)
        self.ws = ServerProtocol(
            subprotocols=SUBPROTOCOLS,
            extensions=[ServerPerMessageDeflateFactory()] if compression else None,
            max_size=1 << 20,
        )
        self.v201 = False
        self.transport: asyncio.Transport | None = None
        self.fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.connections -= 1
        if self.answering:  # the client gave up before the answer
            self.answering = False
            self.stats.in_flight -= 1

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                if event.path != "/_stats":
                    number = self.stats.request()
                    self.answering = True
                    self.refuse = self.refuse_every_other and number % 2 == 1
                if self.handshake_delay_s and event.path != "/_stats":
                    loop = asyncio.get_running_loop()
                    loop.call_later(self.handshake_delay_s, self._respond, event)
                else:
                    ws.send_response(self._handshake(event))
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._flush()

    def _respond(self, request: Request) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.ws.send_response(self._handshake(request))
        self._flush()

    def _handshake(self, request: Request) -> Response:
        if request.path == "/_stats":
            body = self.stats.as_json()
            headers = Headers([("Content-Type", "application/json")])
            headers["Content-Length"] = str(len(body))
            return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)
        if self.answering:
            self.answering = False
            self.stats.in_flight -= 1
        if self.refuse:
            self.stats.refused += 1
            return self.ws.reject(HTTPStatus.SERVICE_UNAVAILABLE, "busy, try again\n")
        response = self.ws.accept(request)
        self.v201 = self.ws.subprotocol == "ocpp2.0.1"
        if response.status_code == 101:
            self.stats.handshake()
        return response

    def _frame(self, frame: Frame) -> None:
        if frame.opcode not in (Opcode.TEXT, Opcode.CONT):
            return  # pings, pongs and close are the sans-I/O layer's
        if not frame.fin:
            self.fragments.append(bytes(frame.data))
            return
        data = b"".join([*self.fragments, bytes(frame.data)]) if self.fragments else frame.data
        self.fragments = []
        reply = reply_for(data, self.v201, self.stats.by_action)
        if reply is not None:
            self.stats.calls += 1
            self.ws.send_text(reply)

    def _flush(self) -> None:
        chunks = self.ws.data_to_send()
        if not chunks or self.transport is None:
            return
        if chunks[-1] == b"":  # the protocol asks for EOF: handshake refused or closing done
            self.transport.writelines(chunks[:-1])
            self.transport.close()
        else:
            self.transport.writelines(chunks)


async def start_fake_cloud(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    handshake_delay_s: float = 0.0,
    refuse_every_other: bool = False,
    compression: bool = False,
    stats: CloudStats | None = None,
) -> tuple[asyncio.Server, CloudStats]:
    """Start the fake cloud in the running loop; return the server and its counters (``stats``
    if given: one count across restarts)."""
    stats = stats or CloudStats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _CloudConnection(stats, handshake_delay_s, refuse_every_other, compression),
        host,
        port,
        backlog=4096,
    )
    return server, stats


async def _serve_forever(
    host: str, port: int, handshake_delay_s: float, refuse_every_other: bool, compression: bool
) -> None:
    server, _stats = await start_fake_cloud(
        host,
        port,
        handshake_delay_s=handshake_delay_s,
        refuse_every_other=refuse_every_other,
        compression=compression,
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--handshake-delay", type=float, default=0.0, help="seconds before each handshake answer"
    )
    parser.add_argument(
        "--refuse-every-other", action="store_true", help="answer every 2nd handshake with 503"
    )
    parser.add_argument(
        "--compression", action="store_true", help="accept permessage-deflate when offered"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(
        _serve_forever(
            args.host, args.port, args.handshake_delay, args.refuse_every_other, args.compression
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
