"""OCPP-J on the wire: frames as small immutable values and schema checks. Pure.

Layer 1, above ``gateway.errors`` and ``gateway.config`` only. Imports no asyncio, sqlite, httpx or
websockets (``tests/test_architecture.py`` fails if one creeps in, even through another module).

- ``frames``      parse and serialize CALL, CALLRESULT, CALLERROR, 2.1 CALLRESULTERROR and SEND
- ``validation``  the JSON schemas of the frames the gateway itself acts on (compiled once)
"""
