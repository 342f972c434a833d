"""The systems around the gateway at the pair tier: a charger and a cloud CSMS speaking OCPP-J.

They answer, refuse (CALLERROR), stay silent, drop the link, assign transaction ids and send CALLs
the other way; each records every frame it received, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from gateway.errors import CloudUnavailable
from gateway.net.wsclient import ClientConnection
from gateway.ocpp.frames import OcppVersion
from tests.pair.memlink import Close, End, Link, Message

__all__ = ["Frame", "Responder", "SimCharger", "SimCloud", "default_answer"]

Frame = list[Any]


class SimCharger:
    """A charger speaking OCPP-J: sends CALLs, keeps every answer, answers the CALLs it receives.

    ``answers_to`` gives the payload for a CALL it receives (default: ``{"status": "Accepted"}``);
    ``silent`` actions get no answer; ``refused`` actions get a CALLERROR.
    """

    def __init__(self, charger_id: str, version: OcppVersion = "1.6") -> None:
        self.id = charger_id
        self.version = version
        self.ids = itertools.count(1)
        self.answers: dict[str, Frame] = {}
        self.received: list[Frame] = []  # every frame from the gateway, in order
        self.answers_to: dict[str, dict[str, Any]] = {}
        # Answers computed from the CALL's payload (before ``answers_to``).
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self.silent: set[str] = set()
        self.refused: set[str] = set()
        self.link: Link | None = None
        self.closes: list[Close | None] = []  # how each of its connections ended
        self.outstanding: set[str] = set()  # CALLs received and not answered yet
        self.max_outstanding = 0

    @property
    def calls_received(self) -> list[Frame]:
        return [f for f in self.received if f[0] == 2]

    def send(self, action: str, payload: dict[str, Any], mid: str | None = None) -> str:
        message_id = mid or f"{self.id}-{next(self.ids)}"
        self.send_raw(json.dumps([2, message_id, action, payload]))
        return message_id

    def send_raw(self, text: str) -> None:
        assert self.link is not None and self.link.far.send(text), f"{self.id} is not connected"

    def answer(self, frame: Frame, payload: dict[str, Any]) -> None:
        self.outstanding.discard(frame[1])
        self.send_raw(json.dumps([3, frame[1], payload]))

    def _on_message(self, message: Message) -> None:
        frame: Frame = json.loads(message)
        self.received.append(frame)
        if frame[0] != 2:
            self.answers[frame[1]] = frame
            return
        self.outstanding.add(frame[1])
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
        action = frame[2]
        if action in self.silent:
            return
        if action in self.refused:
            self.outstanding.discard(frame[1])
            self.send_raw(json.dumps([4, frame[1], "NotSupported", "refused", {}]))
            return
        handler = self.handlers.get(action)
        if handler is not None:
            self.answer(frame, handler(frame[3]))
        else:
            self.answer(frame, self.answers_to.get(action, {"status": "Accepted"}))

    def _on_close(self, end: Any) -> None:
        self.closes.append(cast(End, end).close_rcvd)


def default_answer(action: str, payload: dict[str, Any], tx_ids: Iterator[int]) -> Any:
    """The cloud's answer to a charger CALL (1.6 and 2.0.1 shapes)."""
    now = "2026-12-01T10:00:00Z"
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": now, "interval": 300}
    if action == "Heartbeat":
        return {"currentTime": now}
    if action == "Authorize":
        if "idToken" in payload:
            return {"idTokenInfo": {"status": "Accepted"}}
        return {"idTagInfo": {"status": "Accepted"}}
    if action == "StartTransaction":
        return {"transactionId": next(tx_ids), "idTagInfo": {"status": "Accepted"}}
    if action == "StopTransaction":
        return {"idTagInfo": {"status": "Accepted"}} if "idTag" in payload else {}
    if action == "TransactionEvent" and "idToken" in payload:
        return {"idTokenInfo": {"status": "Accepted"}}
    return {}


Responder = Callable[[str, str, dict[str, Any]], Any]
"""(charger id, action, payload) → a payload, ``("error", code)`` for a CALLERROR, or None: silence."""


@dataclass
class SimCloud:
    """A CSMS: one link per charger, records every frame per charger, answers with ``responder``.

    ``up = False`` makes the opener raise ``CloudUnavailable``; :meth:`drop` cuts every link.
    Transaction ids are assigned from 501 on.
    """

    responder: Responder | None = None
    up: bool = True
    received: dict[str, list[Frame]] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    opened: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    refused_opens: int = 0
    drop_after: set[str] = field(default_factory=set)  # actions whose answer ends the cloud
    handshake_delay_s: float = 0.0  # how long each handshake takes (on the fake clock)
    answer_delay_s: float = 0.0  # how long the cloud takes to answer each CALL
    opened_at: list[float] = field(default_factory=list)  # loop time of each link opened
    tx_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(501))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def open(
        self,
        url: str,
        version: OcppVersion,
        headers: dict[str, str],
        *,
        alternatives: Sequence[OcppVersion] = (),
    ) -> Any:
        """The upstream opener: ``await opener(url, version, headers, alternatives=…)`` as the
        hub calls it; this cloud speaks every version, so it selects the first offered."""
        if self.handshake_delay_s:
            await asyncio.sleep(self.handshake_delay_s)
        if not self.up:
            self.refused_opens += 1
            raise CloudUnavailable(f"{url}: connection refused")
        self.opened_at.append(asyncio.get_running_loop().time())
        charger_id = url.rsplit("/", 1)[-1]
        link = Link(f"ocpp{version}")
        self.links[charger_id] = link
        self.opened.append((charger_id, version, dict(headers)))
        link.far.on_message = lambda m: self._on_message(charger_id, link, m)
        return cast(ClientConnection, link.near)

    def _on_message(self, charger_id: str, link: Link, message: Message) -> None:
        frame: Frame = json.loads(message)
        self.received.setdefault(charger_id, []).append(frame)
        if frame[0] != 2:
            return
        _, message_id, action, payload = frame
        result = (self.responder or self.default)(charger_id, action, payload)
        if result is None:
            return
        if isinstance(result, tuple):
            answer = [4, message_id, result[1], "refused by the cloud", {}]
        else:
            answer = [3, message_id, result]
        if self.answer_delay_s:
            asyncio.get_running_loop().call_later(
                self.answer_delay_s, link.far.send, json.dumps(answer)
            )
            return
        link.far.send(json.dumps(answer))
        if action in self.drop_after:  # the link fails right after the answer left
            self.up = False
            asyncio.get_running_loop().call_soon(link.drop)

    def default(self, charger_id: str, action: str, payload: dict[str, Any]) -> Any:
        """The default answers (a responder may fall back on it)."""
        return default_answer(action, payload, self.tx_ids)

    def frames(self, charger_id: str) -> list[Frame]:
        return self.received.get(charger_id, [])

    def calls(self, charger_id: str, action: str | None = None) -> list[Frame]:
        return [
            f for f in self.frames(charger_id) if f[0] == 2 and (action is None or f[2] == action)
        ]

    def actions(self, charger_id: str) -> list[str]:
        return [f[2] for f in self.calls(charger_id)]

    def call(self, charger_id: str, action: str, payload: dict[str, Any]) -> str:
        """Send a CALL to the charger through its link; the answer lands in ``frames``."""
        message_id = f"cloud-{next(self._ids)}"
        link = self.links[charger_id]
        assert link.far.send(json.dumps([2, message_id, action, payload]))
        return message_id

    def answer_to(self, charger_id: str, message_id: str) -> Frame | None:
        for frame in self.frames(charger_id):
            if frame[0] in (3, 4) and frame[1] == message_id:
                return frame
        return None

    def drop(self) -> None:
        """Every link fails at once (no close frame: an outage)."""
        for link in list(self.links.values()):
            if link.is_open:
                link.drop()

    def close(self, charger_id: str, code: int, reason: str) -> None:
        """The cloud ends one charger's connection on purpose."""
        self.links[charger_id].far.close(code, reason)
