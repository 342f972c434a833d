"""One session's part in the OCPP version negotiation with the cloud (gateway.core.versions).

It keeps the versions the charger offered (the link offers them all once the cloud refuses the
charger's), records each version the cloud selects, and when the cloud refuses the charger's
version closes the charger with 1012 (RFC 6455 §7.4.1 service restart) once nothing is in flight,
so that the charger reconnects and is answered with the cloud's version at once. A session
without a charger (a backlog) takes the cloud's version itself: rows stored under the refused one
are then dead letters on replay (``replay.outgoing``); versions are never translated.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final, Protocol

from gateway.core import versions
from gateway.core.relay import ChargerRelay
from gateway.core.versions import VersionRecord
from gateway.net.link import UpstreamLink
from gateway.net.wsclient import ClientConnection
from gateway.net.wsconn import ServerConnection
from gateway.ocpp.frames import OcppVersion

__all__ = ["VERSION_CHANGE_CLOSE", "ChargerOffer", "CloudVersion", "VersionHost", "VersionSession"]

log = logging.getLogger(__name__)

# RFC 6455 §7.4.1: 1012 service restart — the charger reconnects (and gets the cloud's version).
VERSION_CHANGE_CLOSE: Final = (1012, "OCPP version changes")


@dataclass(frozen=True, slots=True)
class ChargerOffer:
    """What a charger's handshake brings its session: the versions it offered (the gateway's, in
    its order) and the cloud link opened while the handshake waited for the cloud's choice."""

    offered: tuple[OcppVersion, ...]
    first_link: asyncio.Future[ClientConnection] | None = None


class VersionHost(Protocol):
    """What this needs from the hub (a part of :class:`~gateway.net.host.SessionHost`)."""

    @property
    def cloud_versions(self) -> dict[str, VersionRecord]: ...
    def remember_cloud_version(self, charger_id: str, record: VersionRecord) -> None: ...


class VersionSession(Protocol):
    """What this needs from its session."""

    @property
    def charger_id(self) -> str: ...
    @property
    def relay(self) -> ChargerRelay: ...
    @property
    def charger(self) -> ServerConnection | None: ...


class CloudVersion:
    """The charger's offered versions and what the cloud's choice means for its session."""

    __slots__ = ("_host", "_link", "_session", "close_due", "offered")

    def __init__(
        self, session: VersionSession, host: VersionHost, link: UpstreamLink, version: OcppVersion
    ) -> None:
        self._session = session
        self._host = host
        self._link = link
        link.versions = self
        self.offered: tuple[OcppVersion, ...] = (version,)
        self.close_due = False  # the charger is closed with 1012 once nothing is in flight

    def charger_attached(self, version: OcppVersion, offer: ChargerOffer | None) -> None:
        """A charger connects on ``version`` (called before the relay is told): its first link is
        the link's next attempt; a link on another version (a backlog's) cannot carry its frames
        and is replaced."""
        offered = offer.offered if offer is not None else ()
        self.offered = offered if version in offered else (version,)
        waiting, self.close_due = self.close_due, False
        link = self._link
        if offer is not None and offer.first_link is not None:
            link.adopt(offer.first_link)
        if version != self._session.relay.version and link.ws is not None:
            link.close(1000, "OCPP version changes")
        if waiting or version != self._session.relay.version:
            link.retry_now(recovery=False)  # a link waiting for another version tries again

    def charger_detached(self) -> None:
        """Without its charger, a session whose version the cloud refused takes the cloud's."""
        self.close_due = False
        session = self._session
        record = self._host.cloud_versions.get(session.charger_id)
        relay = session.relay
        if record is not None and relay.version in record.refused:
            relay.refused_versions = record.refused
            relay.change_version(record.version)
            self.offered = (record.version,)
            self._link.retry_now(recovery=False)

    def cloud_selected(self, selected: OcppVersion) -> bool:
        """The cloud selected ``selected``; False: not the charger's version (do not use it)."""
        session = self._session
        relay = session.relay
        charger_id = session.charger_id
        known = self._host.cloud_versions.get(charger_id)
        choice = versions.cloud_selected(relay.version, selected, known)
        if choice.remember is not None:
            self._host.remember_cloud_version(charger_id, choice.remember)
        record = choice.remember or known
        if record is not None:
            relay.refused_versions = record.refused
        if choice.refused is None:
            return True
        if session.charger is None:  # a backlog: its link takes the cloud's version
            relay.change_version(selected)
            self.offered = (selected,)
            return True
        log.warning(
            "%s: the cloud does not speak OCPP %s (it selected %s): the charger is closed with"
            " 1012 to reconnect on it",
            charger_id,
            choice.refused,
            selected,
        )
        self.close_due = True
        self.close_if_idle()
        return False

    def tick(self) -> None:
        """The hub's sweep: the 1012 close waits for nothing to be in flight."""
        if self.close_due:
            self.close_if_idle()

    def close_if_idle(self) -> None:
        """Close the charger (1012) if it is due and nothing is in flight."""
        session = self._session
        charger = session.charger
        if not self.close_due or charger is None:
            return
        if session.relay.idle:
            self.close_due = False
            charger.close(*VERSION_CHANGE_CLOSE)
