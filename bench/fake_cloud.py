"""A fast fake cloud CSMS for benchmarks: answers every CALL at once with a valid CALLRESULT.

It does the least work a CSMS can do: one ``orjson.loads`` per frame to read the message type, id
and action, then a canned reply for that action (OCPP 1.6 and 2.0.1 shapes). Any path is accepted;
the subprotocol is ``ocpp1.6`` or ``ocpp2.0.1`` as the client offers. CALLRESULTs and CALLERRORs
it receives (answers to CALLs it never sends) are dropped.

permessage-deflate is not negotiated, so every target in a comparison relays the same plain
frames (the chargers of the load generator do not offer it either, like most 1.6 firmware).

``GET /_stats`` (plain HTTP, no upgrade) returns ``{"calls": N, "connections": N}``: the bench
runner compares the CALLs the cloud answered with those the chargers saw answered, to show that
a relay forwarded every frame rather than answering some itself.

Run: ``python -m bench.fake_cloud --port 0``; the first line on stdout is ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = ["CloudStats", "main", "reply_for", "start_fake_cloud"]

SUBPROTOCOLS = ("ocpp1.6", "ocpp2.0.1")


class CloudStats:
    """Counters the runner reads through ``GET /_stats``."""

    def __init__(self) -> None:
        self.calls = 0
        self.connections = 0

    def as_json(self) -> bytes:
        return orjson.dumps({"calls": self.calls, "connections": self.connections})


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


def reply_for(frame: str | bytes, v201: bool) -> bytes | None:
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
    if make is None:
        return b'[4,%s,"NotImplemented","",{}]' % mid
    return b"[3,%s,%s]" % (mid, make(v201))


async def _handler(ws: ServerConnection, stats: CloudStats) -> None:
    v201 = ws.subprotocol == "ocpp2.0.1"
    stats.connections += 1
    try:
        async for frame in ws:
            reply = reply_for(frame, v201)
            if reply is not None:
                stats.calls += 1
                # OCPP-J frames are text frames; the reply bytes are UTF-8 already.
                await ws.send(reply, text=True)
    except Exception:
        pass
    finally:
        stats.connections -= 1


def _process_request(stats: CloudStats) -> Callable[[ServerConnection, Request], Response | None]:
    def process(conn: ServerConnection, request: Request) -> Response | None:
        if request.path != "/_stats":
            return None
        body = stats.as_json()
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    return process


async def start_fake_cloud(host: str = "127.0.0.1", port: int = 0) -> tuple[Server, CloudStats]:
    """Start the fake cloud in the running loop; return the server and its counters."""
    stats = CloudStats()
    server = await serve(
        lambda ws: _handler(ws, stats),
        host,
        port,
        subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
        process_request=_process_request(stats),
        compression=None,
        max_size=1 << 20,
        ping_interval=None,
        backlog=4096,
    )
    return server, stats


async def _serve_forever(host: str, port: int) -> None:
    server, _stats = await start_fake_cloud(host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(_serve_forever(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
