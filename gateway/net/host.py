"""What a session sees of the rest of the gateway: the protocols it is given and its settings.

The hub implements :class:`SessionHost` (shared services, nothing of other sessions); the access-ID
cache is the :class:`Authorizer`; reservations and the local list push are a :class:`SessionHook`
and a :class:`ChargerWatcher`. A session's parameters are one :class:`SessionSettings` value,
built once by the hub. The protocols are generic over the session type (``ChargerSession``) so
that this module, which the session imports, needs no import of the session: the hub and the
session stay free of an import cycle.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from gateway.core.backoff import BackoffPolicy
from gateway.core.depot import DepotView
from gateway.core.limits import LogLimiter
from gateway.core.pacer import Outcome
from gateway.core.relay import RelaySettings
from gateway.core.versions import VersionRecord
from gateway.metrics import RelayStats
from gateway.net.wsclient import ClientConnection
from gateway.ocpp.frames import Call, CallError, CallResult, OcppVersion
from gateway.store.engine import Store

__all__ = [
    "Authorizer",
    "ChargerWatcher",
    "Connector",
    "SessionHook",
    "SessionHost",
    "SessionSettings",
]

# The session type the protocols are used with (``gateway.net.session.ChargerSession``).
S = TypeVar("S", contravariant=True)


class Authorizer(Protocol):
    """What the session needs from the access-ID cache."""

    async def auth_info(self, version: OcppVersion, id_tag: str, now: datetime) -> dict[str, Any]:
        """idTagInfo (1.6) or idTokenInfo (2.0.1) to answer offline for ``id_tag``."""
        ...

    def learn(
        self,
        version: OcppVersion,
        action: str,
        request: dict[str, Any],
        response: dict[str, Any],
        now: datetime,
    ) -> Coroutine[Any, Any, None] | None:
        """Remember the cloud's answer about a tag: used offline from the return on; returns
        the write of it to run in a task (None: nothing to learn)."""
        ...


class SessionHook(Protocol[S]):
    """An observer of a session's traffic (reservations use it)."""

    charger_actions: frozenset[str]  # charger CALLs to show to ``on_charger_call``
    cloud_actions: frozenset[str]  # cloud CALLs whose charger answer goes to the next method

    async def on_charger_call(self, session: S, call: Call) -> None: ...

    async def on_cloud_call_answered(
        self, session: S, call: Call, answer: CallResult | CallError
    ) -> None: ...

    async def gate(
        self, session: S, call: Call, auth_info: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        """The auth info to answer offline with (e.g. refusing a tag on a reserved connector)."""
        ...


class ChargerWatcher(Protocol[S]):
    """Told synchronously when a charger attaches and before a watched cloud CALL is queued
    toward it (the local list push uses it: a CALL of its own queued after the cloud's
    SendLocalList would undo the cloud's list)."""

    cloud_calls: frozenset[str]

    def charger_attached(self, session: S) -> None: ...

    def cloud_call(self, session: S, call: Call) -> None: ...


class Connector(Protocol):
    """Opens a charger's cloud link (:class:`gateway.net.upstream.UpstreamOpener`): offers
    ``version`` then ``alternatives``; the connection's ``subprotocol`` is the cloud's choice.
    Raises CloudRefused (refused, or none selected) or CloudUnavailable."""

    def __call__(
        self,
        url: str,
        version: OcppVersion,
        headers: dict[str, str],
        *,
        alternatives: Sequence[OcppVersion] = (),
    ) -> Awaitable[ClientConnection]: ...


class SessionHost(Protocol[S]):
    """What a session needs from its hub: shared services, nothing of other sessions."""

    @property
    def store(self) -> Store: ...
    @property
    def stats(self) -> RelayStats: ...
    @property
    def log_limit(self) -> LogLimiter: ...  # repeated lines: once a minute per kind and charger
    @property
    def authorizer(self) -> Authorizer: ...
    @property
    def hooks(self) -> Sequence[SessionHook[S]]: ...
    @property
    def hooked_charger_actions(self) -> frozenset[str]: ...
    @property
    def watchers(self) -> Sequence[ChargerWatcher[S]]: ...
    @property
    def depot(self) -> DepotView: ...
    @property
    def connect_upstream(self) -> Connector: ...
    @property
    def rng(self) -> random.Random: ...  # backoff jitter
    @property
    def closing(self) -> bool: ...
    def next_local_tx_id(self) -> int: ...
    def forget_if_idle(self, session: S) -> None: ...
    @property
    def backoff(self) -> BackoffPolicy: ...
    def book_turn(self) -> tuple[asyncio.Future[None], float]:
        """A handshake turn (at most K handshakes in flight) and the seconds until it."""
        ...

    def turn_ended(self, turn: asyncio.Future[None], outcome: Outcome) -> None:
        """The handshake of a booked turn ended (or was given up: ``Outcome.ERROR``)."""
        ...

    def link_failed(self) -> None: ...
    def link_connected(self) -> None: ...
    def retry_wait(self, session: S, waiting: bool) -> None:
        """The session starts (True) or ends (False) waiting in its reconnect backoff."""
        ...

    def dead_letter_added(self) -> None: ...
    @property
    def cloud_versions(self) -> dict[str, VersionRecord]:
        """charger id → the version the cloud last selected."""
        ...

    def remember_cloud_version(self, charger_id: str, record: VersionRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Every session's parameters, built once by the hub from ``Settings``."""

    upstream_url: str
    pass_authorization: bool
    standalone: bool
    heartbeat_interval_s: int
    reconnect_max_s: float
    relay: RelaySettings
