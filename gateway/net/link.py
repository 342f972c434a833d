"""One charger's link to the cloud: the loop that keeps it up while its session wants it.

Each attempt books a handshake turn from the hub's pacer (at most K handshakes in flight across
all links) and tells the hub how the handshake ended, also when the loop is cancelled in the
middle of it (:func:`handshake_outcome`: the pacer gives fewer turns while the cloud refuses or
times out). A failed attempt waits its backoff (capped at ``upstream.reconnect_max_s``), cut
short when another link shows the cloud is back or the hub picks it as the probe
(:meth:`UpstreamLink.retry_now`).
While the link stays down it logs one warning, then at most one line per ``DOWN_LOG_EVERY_S``,
and one line when it is up again. A cloud that closes the connection on purpose is passed on to
the charger; the close codes of an outage are not (the charger stays connected).

A charger CALL that arrives while the link is connecting is held by the core at most
``CONNECTING_HOLD_S`` (not at all when the turn is more than ``TURN_HOLD_S`` away) and then
answered locally.

Versions (gateway.core.versions): an attempt offers the charger's version; once the cloud refuses
it, the next attempt (at once) offers the charger's whole list, in its order. The version the cloud
selects is told to the session (``cloud_selected``); a version other than the charger's cannot
carry its frames, so that connection is closed and the loop waits for the session to change
version (it closes the charger with 1012 so that it comes back with the cloud's). The connection
opened while the charger's handshake waited for the cloud is the loop's first attempt
(:meth:`UpstreamLink.adopt`), without a turn of its own.

The loop decides nothing about frames: the session (a :class:`LinkOwner`) tells the relay core
about each change of the link and reads the cloud's frames. The clock is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from websockets.exceptions import InvalidStatus

from gateway.core import versions
from gateway.core.backoff import Backoff, BackoffPolicy
from gateway.core.limits import LogLimiter
from gateway.core.pacer import Outcome
from gateway.errors import CloudRefused, CloudUnavailable
from gateway.metrics import RelayStats
from gateway.net.host import Connector
from gateway.net.wsclient import ClientConnection
from gateway.ocpp.frames import OcppVersion

__all__ = [
    "CONNECTING_HOLD_S",
    "DOWN_LOG_EVERY_S",
    "TURN_HOLD_S",
    "VERSION_WAIT_S",
    "LinkHost",
    "LinkOwner",
    "LinkVersions",
    "UpstreamLink",
    "handshake_outcome",
]

log = logging.getLogger(__name__)

# Close codes by which the cloud signals an outage rather than ending this charger's session
# (RFC 6455 §7.4.1: going away, server error, restart, try again later): the charger stays connected.
_OUTAGE_CLOSE_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
_CLOSED_BY_US: Final = (0, "closed by the gateway")
# How long a charger CALL waits for a link that is connecting before it is answered locally: a
# handshake usually takes less (200-600 ms over TLS on a cellular link); a link queued behind the
# connect pacer takes longer, and the charger must not wait for it (docs/offline-behaviour.md).
# The relay core holds the CALL (``RelaySettings.connecting_hold_s``); the hub sets it from this.
CONNECTING_HOLD_S: Final = 1.5
# A link whose handshake turn at the pacer is further away than this does not hold its CALLs at
# all: they are answered locally at once (a storm's chargers are served in milliseconds). Nearer
# turns are held (up to CONNECTING_HOLD_S), leaving 0.5 s for the handshake: those are relayed live.
TURN_HOLD_S: Final = 1.0
# While a link stays down: one warning when it goes down, then at most one line per this.
DOWN_LOG_EVERY_S: Final = 60.0
# The cloud selected another version than the charger's: the link waits for the session to change
# version (the charger is closed with 1012 and comes back on the cloud's), at most this long.
VERSION_WAIT_S: Final = 3600.0


class LinkHost(Protocol):
    """What the link needs from the hub (a part of :class:`~gateway.net.host.SessionHost`)."""

    @property
    def stats(self) -> RelayStats: ...
    @property
    def connect_upstream(self) -> Connector: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def closing(self) -> bool: ...
    @property
    def backoff(self) -> BackoffPolicy: ...
    def book_turn(self) -> tuple[asyncio.Future[None], float]: ...
    def turn_ended(self, turn: asyncio.Future[None], outcome: Outcome) -> None: ...
    def link_failed(self) -> None: ...
    def link_connected(self) -> None: ...


class LinkOwner(Protocol):
    """What the link tells its session (which passes it on to the relay core)."""

    @property
    def charger_id(self) -> str: ...
    @property
    def version(self) -> OcppVersion: ...
    @property
    def wants_link(self) -> bool:
        """A charger is connected or a backlog waits."""
        ...

    def link_booked(self, turn_in_s: float) -> None:
        """A handshake turn is booked; it comes in ``turn_in_s``."""
        ...

    def link_failed(self) -> None:
        """The attempt failed."""
        ...

    async def link_opened(self, ws: ClientConnection) -> None:
        """The link is open; nothing is read from it yet."""
        ...

    def link_live(self, ws: ClientConnection) -> None:
        """Send what waits and read ``ws`` from now on (its ``on_message``)."""
        ...

    def link_closed(self) -> None:
        """The link is closed, or the loop ends."""
        ...

    def cloud_closed(self, code: int, reason: str) -> bool:
        """The cloud closed the link on purpose: close the charger likewise (if it is there)."""
        ...

    def link_stopped(self) -> None:
        """The loop ended and nothing wants another."""
        ...

    def retry_wait(self, waiting: bool) -> None:
        """The link starts (True) or ends (False) waiting in its backoff."""
        ...


def _discard(first: asyncio.Future[ClientConnection]) -> None:
    """Close a first link nobody will use (or stop its opening)."""
    if not first.done():
        first.cancel()
    elif not first.cancelled() and first.exception() is None:
        first.result().close(1000, "not needed")


class LinkVersions(Protocol):
    """The session's versions (:class:`gateway.net.cloud_version.CloudVersion`), if it has them."""

    @property
    def offered(self) -> tuple[OcppVersion, ...]:
        """The versions the charger offered, in its order."""
        ...

    def cloud_selected(self, version: OcppVersion) -> bool:
        """The cloud selected ``version``; False: it is not the charger's, do not use this link."""
        ...


class UpstreamLink:
    """The link loop of one session: booked turns, connect, backoff, and the cloud's close."""

    __slots__ = (
        "_backoff",
        "_booked_turn",
        "_closing",
        "_down_attempts",
        "_down_log",
        "_down_since",
        "_first",
        "_host",
        "_now",
        "_owner",
        "_refused",
        "_retry_early",
        "_stats",
        "_url",
        "_wanted_changed",
        "_woken_by_recovery",
        "headers",
        "task",
        "versions",
        "ws",
    )

    def __init__(
        self,
        owner: LinkOwner,
        host: LinkHost,
        *,
        url: str,
        reconnect_max_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._owner = owner
        self._host = host
        self._stats = host.stats
        self._url = url
        self._now = clock  # monotonic
        self.headers: dict[str, str] = {}  # sent with the handshake (the charger's Authorization)
        self.ws: ClientConnection | None = None
        self.versions: LinkVersions | None = None  # None: the owner's version, whatever is selected
        # Made only while the loop sleeps: an asyncio.Event holds a ~740-byte deque a charger.
        self._wanted_changed: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self._closing = False  # we, not the cloud, are closing the current connection
        policy = host.backoff
        self._backoff = Backoff(
            initial_s=min(policy.initial_s, reconnect_max_s),
            max_s=reconnect_max_s,
            factor=policy.factor,
            rng=host.rng,
        )
        self._booked_turn: asyncio.Future[None] | None = None
        # The connection opened while the charger's handshake waited for the cloud's choice.
        self._first: asyncio.Future[ClientConnection] | None = None
        # The version the cloud refused on the last attempt, which offered it alone.
        self._refused: OcppVersion | None = None
        self._retry_early = False  # set by the hub: try the cloud before the backoff ends
        self._woken_by_recovery = False  # at most once per failure streak
        self._down_since: float | None = None  # monotonic time the link went down
        self._down_attempts = 0
        # Its own limiter, not the hub's: the "still down" line carries the count itself.
        self._down_log = LogLimiter(DOWN_LOG_EVERY_S, max_keys=1)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def backoff_capped(self) -> bool:
        """The reconnect delay has reached ``upstream.reconnect_max_s``."""
        return self._backoff.capped

    def ensure(self) -> None:
        """Start the loop if the session wants a link and none runs."""
        if not self.running and self._owner.wants_link:
            self._start()

    def wake(self) -> None:
        """What the session wants changed: a sleeping loop looks again."""
        self._wake_sleeper()

    def close(self, code: int, reason: str) -> None:
        """Close the current connection (the loop reconnects at once if the link is still wanted)."""
        ws = self.ws
        if ws is not None:
            self._closing = True
            ws.close(code, reason)

    def retry_now(self, *, recovery: bool) -> None:
        """Cut the backoff short (the hub saw the cloud come back, or picked this link to probe).

        A recovery wake-up counts once per failure streak: a link the cloud keeps refusing (e.g.
        an unknown charger id) then follows its own backoff while others connect.
        """
        if recovery:
            if self._woken_by_recovery:
                return
            self._woken_by_recovery = True
        self._retry_early = True
        self._wake_sleeper()

    def _wake_sleeper(self) -> None:
        sleeping = self._wanted_changed
        if sleeping is not None and not sleeping.done():
            sleeping.set_result(None)

    def adopt(self, first: asyncio.Future[ClientConnection]) -> None:
        """Use ``first`` (opened for the charger's handshake) as the next attempt."""
        old, self._first = self._first, first
        if old is not None:
            _discard(old)
        if self.running:
            if self.ws is not None:
                self.close(1000, "replaced by a new connection")
            else:
                self.retry_now(recovery=False)

    def _book_turn(self) -> asyncio.Future[None]:
        turn, eta = self._host.book_turn()
        self._owner.link_booked(eta)
        return turn

    def _start(self) -> None:
        # Booked now, not when the task first runs: a CALL handled before then (frames that came
        # with the connection) already knows how long the link will take.
        if self._first is None:
            self._booked_turn = self._book_turn()
        else:
            self._owner.link_booked(0.0)  # opened, or opening since the charger's handshake
        task = asyncio.create_task(self._loop())
        self.task = task
        charger_id = self._owner.charger_id

        def done(t: asyncio.Task[None]) -> None:
            booked = self._booked_turn
            if self.task is t and booked is not None:  # cancelled before it ever ran
                self._booked_turn = None
                self._host.turn_ended(booked, Outcome.ERROR)
            if not t.cancelled() and t.exception() is not None:
                self._stats.errors["internal"] += 1
                log.error("%s: link loop failed", charger_id, exc_info=t.exception())

        task.add_done_callback(done)

    def _wanted(self) -> bool:
        return not self._host.closing and self._owner.wants_link

    async def _loop(self) -> None:
        owner = self._owner
        while self._wanted():
            offered = self.versions.offered if self.versions is not None else (owner.version,)
            refused = self._refused == owner.version
            offer = versions.link_offer(owner.version, offered, refused=refused)
            opening: Awaitable[ClientConnection | None] | None = self._first
            self._first = None
            if opening is not None:
                offer = offered  # what the charger's handshake offered the cloud
            else:
                turn, self._booked_turn = self._booked_turn or self._book_turn(), None
                opening = self._handshake(turn, offer)
            try:
                ws = await opening
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                continue  # a first link given up meanwhile: an attempt of the loop's own instead
            except CloudUnavailable as exc:
                if self._first is not None:  # adopted meanwhile: try that one at once
                    continue
                self._stats.upstream_failures += 1
                owner.link_failed()
                # Refused with the charger's version alone: its whole list next, at once.
                alone = isinstance(exc, CloudRefused) and len(offer) == 1
                self._refused = offer[0] if alone else None
                if alone and len(offered) > 1:
                    continue
                self._host.link_failed()
                delay = self._backoff.next_delay()
                self._log_down(str(exc), delay)
                await self._wait_to_retry(delay)
                continue
            if ws is None:
                if self._first is not None:  # adopted while the turn came: that one instead
                    continue
                break
            self._refused = None
            if self._first is not None:  # adopted meanwhile: one connection per charger
                ws.close(1000, "replaced by a new connection")
                continue
            selected = versions.SUBPROTOCOLS.get(ws.subprotocol or "", owner.version)
            if self.versions is not None and not self.versions.cloud_selected(selected):
                ws.close(1000, "OCPP version changes")
                owner.link_failed()
                # Until the session changes version or a charger reconnects (it wakes the loop):
                # not a backoff, which the hub's probe would cut short.
                self._retry_early = False
                await self._sleep_unless_unwanted(VERSION_WAIT_S)
                self._retry_early = False
                continue
            self._stats.upstream_connects += 1
            self._backoff.reset()
            self._woken_by_recovery = False
            self.ws = ws
            await owner.link_opened(ws)
            self._log_up()
            self._host.link_connected()
            owner.link_live(ws)
            cloud_closed = await self._closed(ws)
            self.ws = None
            owner.link_closed()
            if cloud_closed is _CLOSED_BY_US:
                continue  # e.g. after a call timeout: re-establish at once, backoff on failure
            if cloud_closed is not None and owner.cloud_closed(*cloud_closed):
                pass  # the cloud ended the connection on purpose: the charger sees it too
            elif self._wanted():
                delay = self._backoff.next_delay()
                self._log_down("connection lost", delay)
                await self._wait_to_retry(delay)
        owner.link_closed()
        self._down_since = None
        first, self._first = self._first, None
        if first is not None:  # adopted as the loop ended: it serves the next loop, if any
            if self._wanted():
                self._first = first
            else:
                _discard(first)
        if self._wanted():
            # A charger (or backlog) arrived while this loop was finishing and saw it still
            # running: serve it rather than leave it without a link.
            self._start()
            return
        owner.link_stopped()

    async def _handshake(
        self, turn: asyncio.Future[None], offer: tuple[OcppVersion, ...]
    ) -> ClientConnection | None:
        """Wait for the turn, then open the link offering ``offer`` (None if it is no longer
        wanted by then, or a first link was adopted meanwhile). The hub hears how the handshake
        ended however it ends, cancellation included."""
        outcome = Outcome.ERROR
        try:
            await turn
            if not self._wanted() or self._first is not None:
                return None
            try:
                ws = await self._host.connect_upstream(
                    self._url, offer[0], self.headers, alternatives=offer[1:]
                )
            except CloudUnavailable as exc:
                outcome = handshake_outcome(exc)
                raise
            outcome = Outcome.SUCCESS
            return ws
        finally:
            self._host.turn_ended(turn, outcome)

    async def _closed(self, ws: ClientConnection) -> tuple[int, str] | None:
        """Wait for the link to end; (code, reason) if the cloud closed it cleanly."""
        await ws.wait_closed()
        rcvd = ws.close_rcvd
        by_us, self._closing = self._closing, False
        if by_us:
            return _CLOSED_BY_US
        if rcvd is None or self._host.closing or rcvd.code in _OUTAGE_CLOSE_CODES:
            return None
        return rcvd.code, rcvd.reason

    def _log_down(self, reason: str, delay: float) -> None:
        """One warning when the link goes down, then at most one line per DOWN_LOG_EVERY_S."""
        now = self._now()
        charger_id = self._owner.charger_id
        self._down_attempts += 1
        if self._down_since is None:
            self._down_since = now
            self._down_attempts = 1
            self._down_log.forget("down", charger_id)  # a new outage: its first line at once
            self._down_log.allow("down", charger_id, now)
            log.warning("%s: cloud link down (%s); retrying in %.1fs", charger_id, reason, delay)
        elif self._down_log.allow("down", charger_id, now) is not None:
            log.warning(
                "%s: cloud link still down after %.0fs, %d attempts (%s); next in %.1fs",
                charger_id,
                now - self._down_since,
                self._down_attempts,
                reason,
                delay,
            )

    def _log_up(self) -> None:
        if self._down_since is not None:
            log.info(
                "%s: cloud link up again after %.1fs down",
                self._owner.charger_id,
                self._now() - self._down_since,
            )
            self._down_since = None

    async def _wait_to_retry(self, delay: float) -> None:
        """Sleep the backoff, or less if the hub wakes this link (see retry_now)."""
        self._retry_early = False
        self._owner.retry_wait(True)
        try:
            await self._sleep_unless_unwanted(delay)
        finally:
            self._owner.retry_wait(False)
            self._retry_early = False

    async def _sleep_unless_unwanted(self, delay: float) -> None:
        deadline = self._now() + delay
        while self._wanted() and not self._retry_early and (left := deadline - self._now()) > 0:
            self._wanted_changed = asyncio.get_running_loop().create_future()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted_changed, left)
            finally:
                self._wanted_changed = None


def handshake_outcome(exc: CloudUnavailable) -> Outcome:
    """What a failed handshake says about the cloud's load, for the pacer: a timeout; an answer
    for this charger alone (HTTP 4xx other than 429: an unknown id, bad credentials), which says
    nothing about load; otherwise a refusal (connection refused or reset, 5xx, 429)."""
    cause = exc.__cause__
    if isinstance(cause, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(cause, InvalidStatus):
        status = cause.response.status_code
        if 400 <= status < 500 and status != 429:
            return Outcome.ERROR
    return Outcome.REFUSED
