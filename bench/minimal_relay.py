"""The least a Python WebSocket relay can do: what any Python proxy costs, before it does anything.

Accept a charger, open a WebSocket to ``--target`` + the same path with the same subprotocol, and
pump frames both ways without parsing them. Same library and event loop as the gateway.
Run: ``python -m bench.minimal_relay --port 0 --target ws://127.0.0.1:9001``;
the first line on stdout is ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

__all__ = ["main"]

SUBPROTOCOLS = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]
Conn = ServerConnection | ClientConnection


async def _pump(src: Conn, dst: Conn) -> None:
    async for frame in src:
        await dst.send(frame)


async def _relay(charger: ServerConnection, target: str) -> None:
    path = charger.request.path if charger.request else "/"
    protocols = [charger.subprotocol] if charger.subprotocol else None
    async with connect(target + path, subprotocols=protocols, compression=None) as cloud:
        pumps = (_pump(charger, cloud), _pump(cloud, charger))
        tasks = [asyncio.create_task(pump) for pump in pumps]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
    await charger.close()


async def _main(host: str, port: int, target: str) -> None:
    async with serve(
        lambda ws: _relay(ws, target), host, port, subprotocols=SUBPROTOCOLS, compression=None
    ) as server:
        print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description="minimal WebSocket relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--target", required=True, help="ws://host:port (the path is appended)")
    args = parser.parse_args()
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover
        from asyncio import run  # type: ignore[assignment]
    run(_main(args.host, args.port, args.target.rstrip("/")))


if __name__ == "__main__":
    main()
