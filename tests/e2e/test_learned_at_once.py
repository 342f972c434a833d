"""End to end over real sockets: what the cloud answered about a tag is the offline answer from
the moment the charger has it, however soon after the answer the link drops.

The cloud double answers one CALL and aborts the link right after sending the answer, then
refuses that charger's handshakes: the charger's next Authorize for the same tag is answered
offline, and it must get the cloud's ``Blocked``, not the unknown-tag policy's ``Invalid``
(design.md "Cache learning").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from tests.support import charger, make_settings, running_gateway, wait_for

ROUNDS = 50  # each round takes ~25 ms on loopback


class DroppingCloud:
    """A CSMS that answers each charger's first CALL with ``answers[action]``, aborts that link
    at once after sending, and from then on refuses the charger's handshakes (the cloud is gone
    for it)."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.gone: set[str] = set()  # charger ids whose link was dropped
        self.connected: set[str] = set()
        self.received: list[tuple[str, str]] = []  # (charger id, action)
        self.server: Server | None = None
        self.port = 0

    async def __aenter__(self) -> DroppingCloud:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
            process_request=self._refuse_gone,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def wait_connected(self, charger_id: str) -> None:
        await wait_for(lambda: charger_id in self.connected)

    def _refuse_gone(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path.rsplit("/", 1)[-1] in self.gone:
            return Response(503, "Service Unavailable", Headers())
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = ws.request.path.rsplit("/", 1)[-1]
        self.connected.add(charger_id)
        try:
            async for text in ws:
                frame = json.loads(text)
                if frame[0] != 2:
                    continue
                self.received.append((charger_id, frame[2]))
                self.gone.add(charger_id)
                await ws.send(json.dumps([3, frame[1], self.answers[frame[2]]]))
                ws.transport.abort()  # the link drops right after the answer left
                return
        except ConnectionClosed:
            pass


BLOCKED_16 = {"idTagInfo": {"status": "Blocked"}}
BLOCKED_201 = {"idTokenInfo": {"status": "Blocked"}}


def token(tag: str) -> dict[str, Any]:
    return {"idToken": tag, "type": "ISO14443"}


async def test_authorize_answer_is_the_offline_answer_at_once_16(tmp_path: Path) -> None:
    async with DroppingCloud({"Authorize": BLOCKED_16}) as cloud:
        settings = make_settings(
            tmp_path, upstream={"url": cloud.url, "call_timeout_s": 2}
        )  # offline.unknown_tags defaults to reject: an unknown tag gets Invalid
        async with running_gateway(settings) as gw:
            failed = []
            for n in range(ROUNDS):
                cid, tag = f"CP-{n}", f"tag-{n}"
                async with charger(gw.charger_port, cid) as cp:
                    await cloud.wait_connected(cid)
                    online = await cp.call("Authorize", {"idTag": tag})
                    assert online[2] == BLOCKED_16  # the cloud's answer, relayed
                    offline = await cp.call("Authorize", {"idTag": tag})
                    if offline[2] != BLOCKED_16:
                        failed.append((n, offline[2]))
            # Every second Authorize was answered by the gateway: the cloud saw one per charger.
            assert len(cloud.received) == ROUNDS
            assert failed == [], f"{len(failed)} of {ROUNDS} rounds forgot the answer: {failed}"


@pytest.mark.parametrize(
    ("action", "payload", "answer"),
    [
        (
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "tag",
                "meterStart": 0,
                "timestamp": "2026-11-21T12:00:00Z",
            },
            {"transactionId": 7, **BLOCKED_16},
        ),
        (
            "StopTransaction",
            {
                "transactionId": 7,
                "idTag": "tag",
                "meterStop": 5,
                "timestamp": "2026-11-21T13:00:00Z",
            },
            BLOCKED_16,
        ),
    ],
)
async def test_transaction_answers_are_the_offline_answer_at_once_16(
    tmp_path: Path, action: str, payload: dict[str, Any], answer: dict[str, Any]
) -> None:
    rounds = 20
    async with DroppingCloud({action: answer}) as cloud:
        settings = make_settings(tmp_path, upstream={"url": cloud.url, "call_timeout_s": 2})
        async with running_gateway(settings) as gw:
            failed = []
            for n in range(rounds):
                cid, tag = f"CP-{n}", f"tag-{n}"
                async with charger(gw.charger_port, cid) as cp:
                    await cloud.wait_connected(cid)
                    online = await cp.call(action, {**payload, "idTag": tag})
                    assert online[2] == answer
                    offline = await cp.call("Authorize", {"idTag": tag})
                    if offline[2] != BLOCKED_16:
                        failed.append((n, offline[2]))
            assert len(cloud.received) == rounds
            assert failed == [], f"{len(failed)} of {rounds} rounds forgot the answer: {failed}"


@pytest.mark.parametrize(
    ("action", "payload", "answer"),
    [
        ("Authorize", {"idToken": token("tag")}, BLOCKED_201),
        (
            "TransactionEvent",
            {
                "eventType": "Started",
                "timestamp": "2026-11-21T12:00:00Z",
                "triggerReason": "Authorized",
                "seqNo": 0,
                "transactionInfo": {"transactionId": "tx-1"},
                "idToken": token("tag"),
            },
            BLOCKED_201,
        ),
    ],
)
async def test_idtokeninfo_is_the_offline_answer_at_once_201(
    tmp_path: Path, action: str, payload: dict[str, Any], answer: dict[str, Any]
) -> None:
    rounds = ROUNDS
    async with DroppingCloud({action: answer}) as cloud:
        settings = make_settings(tmp_path, upstream={"url": cloud.url, "call_timeout_s": 2})
        async with running_gateway(settings) as gw:
            failed = []
            for n in range(rounds):
                cid, tag = f"CS-{n}", f"tag-{n}"
                request = json.loads(json.dumps(payload).replace('"tag"', json.dumps(tag)))
                async with charger(gw.charger_port, cid, "2.0.1") as cs:
                    await cloud.wait_connected(cid)
                    online = await cs.call(action, request)
                    assert online[2] == answer
                    offline = await cs.call("Authorize", {"idToken": token(tag)})
                    if offline[2] != BLOCKED_201:
                        failed.append((n, offline[2]))
            assert len(cloud.received) == rounds
            assert failed == [], f"{len(failed)} of {rounds} rounds forgot the answer: {failed}"
