"""The hub's part in the OCPP version negotiation with the cloud (gateway.core.versions decides).

It keeps the version the cloud last selected per charge point id (read from the store once at
start, written when it changes), and asks the cloud while a charger's handshake waits: the
charger's versions offered in its order on a connection opened at the link's pacing turn, the
answer waited for at most ``NEGOTIATE_WAIT_S``. That connection is kept for the charger's session
as its first link (:meth:`Negotiation.take_first_link`), even when it comes too late for the
answer; one no session takes is closed, what the cloud selected on it remembered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.core import versions
from gateway.core.pacer import Outcome
from gateway.core.versions import AnswerNow, AskCloud, VersionRecord
from gateway.errors import CloudUnavailable
from gateway.net.host import Connector
from gateway.net.link import handshake_outcome
from gateway.net.upstream import charger_url
from gateway.net.wsclient import ClientConnection
from gateway.ocpp.frames import OcppVersion
from gateway.store.engine import Store

__all__ = ["Negotiation", "Offer"]

log = logging.getLogger(__name__)

Offer = tuple[OcppVersion, ...]  # versions a charger offered (the gateway's), in its order
FirstLink = asyncio.Future[ClientConnection]


class Negotiation:
    """The versions the cloud selected, and the first links opened to ask it."""

    def __init__(
        self,
        store: Store,
        *,
        connect_upstream: Connector,
        book_turn: Callable[[], tuple[asyncio.Future[None], float]],
        turn_ended: Callable[[asyncio.Future[None], Outcome], None],
        upstream_url: str,
        standalone: bool,
        spawn: Callable[[Coroutine[Any, Any, Any], str], object],
    ) -> None:
        self._store = store
        self._connect = connect_upstream
        self._book_turn = book_turn
        self._turn_ended = turn_ended
        self._url = upstream_url
        self._standalone = standalone
        self._spawn = spawn  # runs a store write, its failure logged
        # charger id → the version the cloud last selected (the store's, read once at start).
        self.cloud_versions: dict[str, VersionRecord] = {}
        # charger id → the cloud link opened while its handshake waited, until its session takes it.
        self.first_links: dict[str, FirstLink] = {}

    async def load(self) -> None:
        self.cloud_versions = await self._store.cloud_versions()

    def url(self, charger_id: str) -> str:
        return charger_url(self._url, charger_id)

    def plan_answer(self, charger_id: str, offered: Offer) -> AnswerNow | AskCloud:
        """How to answer a charger's handshake offering ``offered``."""
        record = self.cloud_versions.get(charger_id)
        return versions.plan_answer(
            offered, record.version if record else None, cloud=not self._standalone
        )

    async def negotiate(
        self, charger_id: str, plan: AskCloud, headers: dict[str, str]
    ) -> OcppVersion:
        """The version to answer a charger with: the cloud's choice among ``plan.offer``, waited
        for at most NEGOTIATE_WAIT_S with the pacing turn; ``plan.fallback`` past that or when the
        cloud cannot be reached."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + versions.NEGOTIATE_WAIT_S
        turn, eta = self._book_turn()
        if eta >= versions.NEGOTIATE_WAIT_S:  # the turn alone is too far: the link books again
            turn.cancel()
            return plan.fallback
        first = asyncio.ensure_future(self._open(turn, charger_id, plan.offer, headers))
        old = self.first_links.get(charger_id)
        if old is not None:  # an earlier connection of the same charger is still negotiating
            self.drop_first_link(charger_id, old)
        self.first_links[charger_id] = first
        try:
            ws = await asyncio.wait_for(asyncio.shield(first), deadline - loop.time())
        except (TimeoutError, CloudUnavailable):
            return plan.fallback
        except asyncio.CancelledError:  # the charger's connection was lost meanwhile
            self.drop_first_link(charger_id, first)
            raise
        selected = versions.SUBPROTOCOLS.get(ws.subprotocol or "")
        return selected if selected in plan.offer else plan.fallback

    async def _open(
        self, turn: asyncio.Future[None], charger_id: str, offer: Offer, headers: dict[str, str]
    ) -> ClientConnection:
        outcome = Outcome.ERROR  # the pacer hears how the handshake ended, however it ends
        try:
            await turn
            try:
                ws = await self._connect(
                    self.url(charger_id), offer[0], headers, alternatives=offer[1:]
                )
            except CloudUnavailable as exc:
                outcome = handshake_outcome(exc)
                raise
            outcome = Outcome.SUCCESS
            return ws
        finally:
            self._turn_ended(turn, outcome)

    def take_first_link(self, charger_id: str) -> FirstLink | None:
        """The link opened for ``charger_id``'s handshake, for its session (once)."""
        return self.first_links.pop(charger_id, None)

    def drop_first_link(self, charger_id: str, first: FirstLink) -> None:
        """A first link no session will take: close it, keeping what the cloud chose."""
        if self.first_links.get(charger_id) is first:
            del self.first_links[charger_id]

        def dispose(done: FirstLink) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            ws = done.result()
            selected = versions.SUBPROTOCOLS.get(ws.subprotocol or "")
            if selected is not None:
                known = self.cloud_versions.get(charger_id)
                choice = versions.cloud_selected(selected, selected, known)
                if choice.remember is not None:
                    self.remember(charger_id, choice.remember)
            ws.close(1000, "charger gone")

        if first.done():
            dispose(first)
        else:
            first.add_done_callback(dispose)
            first.cancel()

    def remember(self, charger_id: str, record: VersionRecord) -> None:
        """Keep the cloud's choice for ``charger_id`` (in memory now, in the store soon)."""
        self.cloud_versions[charger_id] = record
        log.info(
            "%s: the cloud selected OCPP %s%s",
            charger_id,
            record.version,
            f" (refused {', '.join(sorted(record.refused))})" if record.refused else "",
        )
        self._spawn(
            self._store.save_cloud_version(charger_id, record, time.time()),
            "saving the cloud's OCPP version",
        )

    def close(self) -> None:
        """The gateway stops: no first link is left open."""
        for charger_id, first in list(self.first_links.items()):
            self.drop_first_link(charger_id, first)
