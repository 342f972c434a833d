"""The frame path in one process: what a relay's own code costs per frame, without the kernel.

The gateway's real ``ServerConnection``/``ClientConnection`` (``gateway.net.wsconn``),
``ChargerSession`` and ``ChargerRelay`` — or the two connections of ``bench.fast_relay`` — get
pre-built frames through in-memory transports: a charger's masked CALL (the load generator's mix:
16 MeterValues, 3 StatusNotification, 1 Heartbeat per 20) to the charger connection, the cloud's
CALLRESULT to the upstream one. Only the relay's two ``data_received`` calls per CALL run in the
measured loop, so the figures are the Python work of the frame path alone: no socket, no event
loop wake-up, no other process. The session is online with 50 chargers, observes what the hub
makes it observe (the depot view's actions), and folds into a real ``DepotView``.

Reports per relayed frame (each CALL is 2 frames): µs (the fastest of ``--reps``; the machine's
other load only adds), and Python function calls counted by cProfile in one more pass — a count
that does not depend on the machine. ``--source DIR`` runs the ``gateway`` package in DIR instead
(e.g. ``git archive <commit> gateway | tar -x -C DIR``), for a before/after pair.

Run: ``python -m bench.frame_path [--calls 10000] [--reps 5] [--relay gateway|sansio]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

__all__ = ["main"]

CHARGERS = 50
V16 = [Subprotocol("ocpp1.6")]
TS = "2026-12-08T01:00:00Z"


class MemoryTransport:
    """What a connection writes is kept (and counted); reading is never paused for real."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.out.extend(chunks)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 0) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Peer:
    """A charger (client) or the cloud (server) as websockets' sans-I/O protocol, outside the
    measured loop."""

    def __init__(self, protocol: ClientProtocol | ServerProtocol) -> None:
        self.protocol = protocol

    def feed(self, data: bytes) -> bytes:
        """Bytes from the relay; the peer's reply (a handshake response) as bytes."""
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(protocol, ServerProtocol) and not isinstance(event, Frame):
                protocol.send_response(protocol.accept(event))
        return b"".join(protocol.data_to_send())

    def text(self, message: bytes) -> bytes:
        self.protocol.send_text(message)
        return b"".join(self.protocol.data_to_send())


Link = tuple[Any, MemoryTransport, Any, MemoryTransport]  # charger side, its out, cloud side, out


def _gateway_links(loop: asyncio.AbstractEventLoop) -> list[Link]:
    from gateway.config import Settings
    from gateway.core.backoff import BackoffPolicy
    from gateway.core.depot import DepotView
    from gateway.core.limits import LogLimiter
    from gateway.metrics import RelayStats
    from gateway.net.hub import Hub
    from gateway.net.session import ChargerSession
    from gateway.net.wsclient import ClientConnection
    from gateway.net.wsconn import ServerConnection, Timeouts, WsServer

    class Host:  # the part of the hub a relayed frame reaches
        stats = RelayStats()
        log_limit = LogLimiter()
        depot = DepotView()
        hooks: list[Any] = []
        hooked_charger_actions: frozenset[str] = frozenset()
        watched_cloud_calls: frozenset[str] = frozenset()
        watchers: list[Any] = []
        backoff = BackoffPolicy()
        rng = random.Random(1)
        reconnect_max_s = 60.0

    host = Host()
    settings = Settings.model_validate({"upstream": {"url": "ws://127.0.0.1:1/ocpp"}})
    session_settings = Hub._session_settings(host, settings)  # type: ignore[arg-type]
    opened: list[Any] = []
    server = WsServer(on_open=opened.append, process_request=lambda ws, req: None, subprotocols=V16)
    server.serving = True
    links: list[Link] = []
    for i in range(CHARGERS):
        cid = f"CP{i}"
        session = ChargerSession(host, cid, "1.6", session_settings)  # type: ignore[arg-type]
        charger = Peer(ClientProtocol(parse_uri(f"ws://127.0.0.1/ocpp/{cid}"), subprotocols=V16))
        charger.protocol.send_request(charger.protocol.connect())
        down = MemoryTransport()
        ws = ServerConnection(server)
        ws.connection_made(down)  # type: ignore[arg-type]
        ws.data_received(b"".join(charger.protocol.data_to_send()))
        charger.feed(down.take())
        session.charger = opened.pop()
        session.relay.charger_attached("1.6", loop.time())
        ws.on_message = session._charger_message
        cloud = Peer(ServerProtocol(subprotocols=V16))
        up = MemoryTransport()
        link = ClientConnection(
            f"ws://127.0.0.1/ocpp/{cid}",
            subprotocols=V16,
            headers={},
            max_size=1 << 20,
            extensions=[],
            timeouts=Timeouts(),
            keepalive=None,
        )
        link.connection_made(up)  # type: ignore[arg-type]
        link.data_received(cloud.feed(up.take()))
        session.upstream = link
        session.relay.link_connecting(loop.time())
        session.relay.link_connected(loop.time())
        link.on_message = session._cloud_message
        links.append((ws, down, link, up))
    return links


def _sansio_links() -> list[Link]:
    from bench import fast_relay

    class Charger(fast_relay._Charger):
        def _open_cloud(self, path: str) -> None:  # no TCP connection: opened by hand below
            self.peer = self.cloud = fast_relay._Cloud(
                self, parse_uri("ws://127.0.0.1" + path), self.ws.subprotocol
            )

    links: list[Link] = []
    for i in range(CHARGERS):
        charger = Peer(ClientProtocol(parse_uri(f"ws://127.0.0.1/ocpp/CP{i}"), subprotocols=V16))
        charger.protocol.send_request(charger.protocol.connect())
        relay, down = Charger("ws://127.0.0.1"), MemoryTransport()
        relay.connection_made(down)  # type: ignore[arg-type]
        relay.data_received(b"".join(charger.protocol.data_to_send()))
        charger.feed(down.take())
        cloud, up = Peer(ServerProtocol(subprotocols=V16)), MemoryTransport()
        relay.cloud.connection_made(up)  # type: ignore[arg-type]
        relay.cloud.data_received(cloud.feed(up.take()))
        down.out.clear()
        links.append((relay, down, relay.cloud, up))
    return links


def _frames(calls: int) -> list[tuple[bytes, bytes]]:
    """Each CALL as the charger sends it (masked) and its answer as the cloud sends it."""
    from bench.loadgen import _Charger

    gens = [_Charger(f"CP{i}", i) for i in range(CHARGERS)]
    charger = Peer(ClientProtocol(parse_uri("ws://127.0.0.1/ocpp/x"), subprotocols=V16))
    cloud = Peer(ServerProtocol(subprotocols=V16))
    charger.protocol.state = cloud.protocol.state = OPEN  # framing only, no handshake
    out = []
    for k in range(calls):
        mid, action, text = gens[k % CHARGERS].next_frame(TS)
        answer = orjson.dumps([3, mid, {"currentTime": TS} if action == "Heartbeat" else {}])
        out.append((charger.text(text.encode()), cloud.text(answer)))
    return out


def _run(relay: str, calls: int, profile: bool) -> tuple[float, int]:
    async def go() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        links = _sansio_links() if relay == "sansio" else _gateway_links(loop)
        frames = _frames(calls)
        gc.collect()
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        for k, (up, down) in enumerate(frames):
            charger_side, _, cloud_side, _ = links[k % CHARGERS]
            charger_side.data_received(up)
            cloud_side.data_received(down)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
        relayed = sum(len(link[1].out) + len(link[3].out) for link in links)
        if relayed != 2 * calls:
            raise SystemExit(f"{relay}: {relayed} frames written for {2 * calls}")
        count = pstats.Stats(profiler).total_calls if profiler is not None else 0  # type: ignore[attr-defined]
        return elapsed, count

    try:
        import uvloop

        return uvloop.run(go())
    except ImportError:  # pragma: no cover
        return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the frame path's own cost, in one process")
    parser.add_argument("--relay", choices=("gateway", "sansio"), default="gateway")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--source", type=Path, help="a directory holding another gateway/")
    args = parser.parse_args(argv)
    if args.source is not None:
        sys.path.insert(0, str(args.source))
    frames = 2 * args.calls
    times = [_run(args.relay, args.calls, profile=False)[0] for _ in range(args.reps)]
    _, calls = _run(args.relay, args.calls, profile=True)
    best = min(times) * 1e6 / frames
    median = sorted(times)[len(times) // 2] * 1e6 / frames
    print(
        f"{args.relay}{' ' + str(args.source) if args.source else ''}: "
        f"{best:.2f} µs per frame (fastest of {args.reps}; median {median:.2f}), "
        f"{calls / frames:.1f} Python calls per frame"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
