"""Per-charger decisions with no I/O: text frames and ``now`` in, frames to send and events out.

Nothing here imports asyncio, sqlite3, aiosqlite, httpx or websockets (a test checks it); the
drivers (the session and the hub) move the text, run the timers and write the rows.
"""

from __future__ import annotations
