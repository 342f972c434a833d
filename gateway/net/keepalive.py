"""Keepalive pings for many WebSocket connections with one periodic sweep (gateway.net.wsconn)."""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Keepalive", "Pinged"]


class Pinged(Protocol):
    """A connection the sweep pings (:class:`gateway.net.wsconn.WsConnection`)."""

    next_ping_at: float

    def keepalive(self, now: float, interval_s: float, timeout_s: float) -> None:
        """Send a ping when due; fail the connection when one stays unanswered too long."""
        ...


class Keepalive:
    """Pings every open connection each ``interval_s``; one unanswered for ``timeout_s`` fails it.

    One periodic sweep serves every connection registered (a timer or task per connection costs
    memory that a depot's thousand chargers would feel). The sweep stops when none are left.
    """

    def __init__(self, interval_s: float = 20.0, timeout_s: float = 20.0) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._period_s = max(0.05, min(interval_s, timeout_s) / 4)
        self._connections: set[Pinged] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, connection: Pinged, now: float) -> None:
        connection.next_ping_at = now + self.interval_s
        self._connections.add(connection)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep())

    def discard(self, connection: Pinged) -> None:
        self._connections.discard(connection)
        if not self._connections and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._period_s)
            now = loop.time()
            for connection in list(self._connections):
                connection.keepalive(now, self.interval_s, self.timeout_s)
