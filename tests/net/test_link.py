"""The upstream link loop without sockets: a connector the cloud refuses, a clock set by the test.

Each test drives :class:`~gateway.net.link.UpstreamLink` with a recording owner (the session's
side) and a small host (the hub's side): nothing sleeps, a backoff of 30 s ends only when the
test cuts it short, so a broken wake-up shows as a bounded hang, not a slow pass.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from gateway.core.backoff import BackoffPolicy
from gateway.core.pacer import Outcome
from gateway.errors import CloudRefused, CloudUnavailable
from gateway.metrics import RelayStats
from gateway.net.link import UpstreamLink, handshake_outcome
from gateway.net.wsclient import ClientConnection
from gateway.ocpp.frames import OcppVersion

BOUND_S = 5.0  # bounds a hang; never reached when the loop works


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Host:
    """The hub's side: every turn is free at once (unless ``hold_turns``); the cloud refuses every
    handshake (or ``connect`` stands in for it); each turn's end is recorded."""

    def __init__(self) -> None:
        self.stats = RelayStats()
        self.rng = random.Random(7)
        self.closing = False
        self.backoff = BackoffPolicy(initial_s=30.0, factor=2.0)
        self.attempts: list[tuple[str, OcppVersion, dict[str, str]]] = []
        self.failures = 0
        self.turns = 0
        self.hold_turns = False
        self.booked: list[asyncio.Future[None]] = []
        self.ended: list[tuple[int, Outcome]] = []  # (turn number, outcome)
        self.connect: Callable[[], Awaitable[ClientConnection]] | None = None

    async def connect_upstream(
        self,
        url: str,
        version: OcppVersion,
        headers: dict[str, str],
        *,
        alternatives: Sequence[OcppVersion] = (),
    ) -> ClientConnection:
        self.attempts.append((url, version, headers))
        if self.connect is not None:
            return await self.connect()
        raise CloudUnavailable("connection refused")

    def book_turn(self) -> tuple[asyncio.Future[None], float]:
        self.turns += 1
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.hold_turns:
            turn.set_result(None)
        self.booked.append(turn)
        return turn, 0.25

    def turn_ended(self, turn: asyncio.Future[None], outcome: Outcome) -> None:
        self.ended.append((self.booked.index(turn), outcome))

    def link_failed(self) -> None:
        self.failures += 1

    def link_connected(self) -> None:
        raise AssertionError("the cloud refuses every handshake")


class Owner:
    """The session's side: records what the link tells it; ``waiting`` while it backs off."""

    charger_id = "CP-1"
    version: OcppVersion = "1.6"

    def __init__(self) -> None:
        self.wants_link = True
        self.told: list[str] = []
        self.waiting = asyncio.Event()
        self.woken = asyncio.Event()
        self.stopped = asyncio.Event()

    def link_booked(self, turn_in_s: float) -> None:
        self.told.append(f"booked {turn_in_s}")

    def link_failed(self) -> None:
        self.told.append("failed")

    async def link_opened(self, ws: ClientConnection) -> None:
        raise AssertionError("never opened")

    def link_live(self, ws: ClientConnection) -> None:
        raise AssertionError("never opened")

    def link_closed(self) -> None:
        self.told.append("closed")

    def cloud_closed(self, code: int, reason: str) -> bool:
        raise AssertionError("never opened")

    def link_stopped(self) -> None:
        self.told.append("stopped")
        self.stopped.set()

    def retry_wait(self, waiting: bool) -> None:
        self.told.append(f"waiting {waiting}")
        if waiting:
            self.woken.clear()
            self.waiting.set()
        else:
            self.waiting.clear()
            self.woken.set()


def new_link(
    owner: Owner, host: Host, clock: Clock, *, reconnect_max_s: float = 300.0
) -> UpstreamLink:
    return UpstreamLink(
        owner, host, url="ws://cloud.test/ocpp/CP-1", reconnect_max_s=reconnect_max_s, clock=clock
    )


async def backing_off(owner: Owner) -> None:
    await asyncio.wait_for(owner.waiting.wait(), BOUND_S)


async def retried(link: UpstreamLink, owner: Owner, host: Host, *, recovery: bool) -> None:
    """Wake the waiting link and wait until its next attempt failed and it backs off again."""
    before = len(host.attempts)
    link.retry_now(recovery=recovery)
    await asyncio.wait_for(owner.woken.wait(), BOUND_S)  # the wake-up ends the wait first
    await backing_off(owner)
    assert len(host.attempts) == before + 1


async def settle() -> None:
    """Give a woken loop more than enough turns of the event loop to act."""
    for _ in range(20):
        await asyncio.sleep(0)


async def stop(link: UpstreamLink, owner: Owner) -> None:
    owner.wants_link = False
    link.wake()
    await asyncio.wait_for(owner.stopped.wait(), BOUND_S)
    assert link.task is not None
    await link.task


async def test_a_refused_link_backs_off_until_retry_now_cuts_it_short() -> None:
    owner, host, clock = Owner(), Host(), Clock()
    link = new_link(owner, host, clock)
    link.headers = {"Authorization": "Basic Q1AtMTpzZWNyZXQ="}
    link.ensure()
    await backing_off(owner)
    assert host.attempts == [("ws://cloud.test/ocpp/CP-1", "1.6", link.headers)]
    assert owner.told == ["booked 0.25", "failed", "waiting True"]
    assert host.failures == 1 and host.stats.upstream_failures == 1
    assert host.ended == [(0, Outcome.REFUSED)]  # the pacer hears of the refusal
    link.ensure()  # a running loop is not started twice
    await settle()
    assert len(host.attempts) == 1 and host.turns == 1

    await retried(link, owner, host, recovery=False)
    # Each attempt books its own handshake turn at the pacer.
    assert owner.told[3:] == ["waiting False", "booked 0.25", "failed", "waiting True"]
    assert host.turns == 2 and host.failures == 2
    await stop(link, owner)
    assert owner.told[-3:] == ["waiting False", "closed", "stopped"]
    assert not link.running


async def test_a_recovery_wake_up_counts_once_per_failure_streak() -> None:
    owner, host, clock = Owner(), Host(), Clock()
    link = new_link(owner, host, clock)
    link.ensure()
    await backing_off(owner)
    await retried(link, owner, host, recovery=True)
    link.retry_now(recovery=True)  # the cloud still refuses this one: its own backoff now
    await settle()
    assert len(host.attempts) == 2 and owner.waiting.is_set()
    await retried(link, owner, host, recovery=False)  # the hub's probe still wakes it
    await stop(link, owner)


async def test_the_delay_grows_to_the_cap() -> None:
    owner, host, clock = Owner(), Host(), Clock()
    link = new_link(owner, host, clock, reconnect_max_s=100.0)
    link.ensure()
    await backing_off(owner)
    assert not link.backoff_capped  # 30 s
    await retried(link, owner, host, recovery=False)
    assert not link.backoff_capped  # 60 s
    await retried(link, owner, host, recovery=False)
    assert link.backoff_capped  # 100 s, not 120
    await stop(link, owner)


async def test_a_link_that_stays_down_logs_once_then_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner, host, clock = Owner(), Host(), Clock()
    link = new_link(owner, host, clock)
    caplog.set_level(logging.WARNING, logger="gateway.net.link")
    link.ensure()
    await backing_off(owner)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("CP-1: cloud link down (connection refused)")
    for at in (130.0, 150.0):  # attempts 2 and 3, within the minute: nothing more
        clock.now = at
        await retried(link, owner, host, recovery=False)
    assert len(caplog.records) == 1
    clock.now = 161.0  # attempt 4, a minute after the first line
    await retried(link, owner, host, recovery=False)
    assert len(caplog.records) == 2
    assert (
        caplog.records[1]
        .getMessage()
        .startswith(
            "CP-1: cloud link still down after 61s, 4 attempts (connection refused); next in "
        )
    )
    clock.now = 200.0
    await retried(link, owner, host, recovery=False)
    assert len(caplog.records) == 2
    await stop(link, owner)


async def test_a_closing_gateway_ends_the_backoff_and_starts_no_attempt() -> None:
    owner, host, clock = Owner(), Host(), Clock()
    link = new_link(owner, host, clock)
    link.ensure()
    await backing_off(owner)
    host.closing = True
    link.wake()
    await asyncio.wait_for(owner.stopped.wait(), BOUND_S)
    assert len(host.attempts) == 1
    assert owner.told[-3:] == ["waiting False", "closed", "stopped"]


async def test_a_link_cancelled_in_its_handshake_gives_its_turn_back() -> None:
    """The pacer counts the handshakes in flight: one whose loop is cancelled while the cloud
    has not answered yet must still end its turn, or its place would be lost for good."""
    owner, host, clock = Owner(), Host(), Clock()
    in_handshake = asyncio.Event()

    async def hang() -> ClientConnection:
        in_handshake.set()
        await asyncio.Future()  # the cloud never answers
        raise AssertionError("unreachable")

    host.connect = hang
    link = new_link(owner, host, clock)
    link.ensure()
    await asyncio.wait_for(in_handshake.wait(), BOUND_S)
    assert host.ended == []
    assert link.task is not None
    link.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await link.task
    assert host.ended == [(0, Outcome.ERROR)]


async def test_a_link_cancelled_while_it_waits_for_its_turn_withdraws_it() -> None:
    owner, host, clock = Owner(), Host(), Clock()
    host.hold_turns = True
    link = new_link(owner, host, clock)
    link.ensure()
    await settle()  # waiting for its turn
    assert link.task is not None
    link.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await link.task
    assert host.ended == [(0, Outcome.ERROR)] and host.attempts == []


async def test_a_link_cancelled_before_its_loop_ran_withdraws_its_turn() -> None:
    """The turn is booked when the loop is created (before it first runs)."""
    owner, host, clock = Owner(), Host(), Clock()
    host.hold_turns = True
    link = new_link(owner, host, clock)
    link.ensure()
    assert link.task is not None and host.turns == 1
    link.task.cancel()
    await asyncio.gather(link.task, return_exceptions=True)
    assert host.ended == [(0, Outcome.ERROR)]


def _refused_with(status: int) -> CloudUnavailable:
    response = Response(status, "", Headers())
    exc = CloudUnavailable(f"HTTP {status}")
    exc.__cause__ = InvalidStatus(response)
    return exc


def test_handshake_outcomes_say_what_a_failure_tells_about_the_clouds_load() -> None:
    timed_out = CloudUnavailable("timed out")
    timed_out.__cause__ = TimeoutError()
    reset = CloudUnavailable("reset")
    reset.__cause__ = ConnectionResetError()
    assert handshake_outcome(timed_out) is Outcome.TIMEOUT
    assert handshake_outcome(reset) is Outcome.REFUSED
    assert handshake_outcome(_refused_with(503)) is Outcome.REFUSED
    assert handshake_outcome(_refused_with(429)) is Outcome.REFUSED
    assert handshake_outcome(_refused_with(404)) is Outcome.ERROR  # this charger's id alone
    assert handshake_outcome(_refused_with(401)) is Outcome.ERROR


class RefusingHost(Host):
    """A cloud that refuses the handshake (CloudRefused) whatever is offered; records offers."""

    def __init__(self) -> None:
        super().__init__()
        self.offers: list[tuple[OcppVersion, ...]] = []

    async def connect_upstream(
        self,
        url: str,
        version: OcppVersion,
        headers: dict[str, str],
        *,
        alternatives: Sequence[OcppVersion] = (),
    ) -> ClientConnection:
        self.offers.append((version, *alternatives))
        raise CloudRefused("HTTP 400")


class Versions:
    """The session's versions: a charger that offered 2.1 then 2.0.1."""

    offered: tuple[OcppVersion, ...] = ("2.1", "2.0.1")

    def cloud_selected(self, version: OcppVersion) -> bool:
        raise AssertionError("the cloud refuses every handshake")


async def test_a_refused_version_is_followed_at_once_by_the_charger_s_whole_list() -> None:
    owner, host, clock = Owner(), RefusingHost(), Clock()
    owner.version = "2.1"
    link = new_link(owner, host, clock)
    link.versions = Versions()
    link.ensure()
    await backing_off(owner)
    # The charger's version alone, refused; at once (no backoff between) its list, in its order,
    # refused too: only then the link backs off, and the next attempt starts from its version again.
    assert host.offers == [("2.1",), ("2.1", "2.0.1")]
    assert owner.told == ["booked 0.25", "failed", "booked 0.25", "failed", "waiting True"]
    assert host.failures == 1  # one failure for the recovery: the cloud answered the first
    link.retry_now(recovery=False)
    await asyncio.wait_for(owner.woken.wait(), BOUND_S)
    await backing_off(owner)
    assert host.offers[2:] == [("2.1",), ("2.1", "2.0.1")]
    await stop(link, owner)
