"""Per-charger decisions: text, ids and ``now`` in, decisions out. Pure.

``relay`` is one charger's relay as a state machine: text frames and ``now`` in, frames to send
and events out (``events`` are those events, ``replay`` the replay decision); the drivers in
``gateway.net`` move the text, run the timers and write the rows. Nothing here imports asyncio,
sqlite3, aiosqlite, httpx or websockets.
"""
