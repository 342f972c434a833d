"""The asyncio drivers: sockets, timers and tasks around the pure core."""
