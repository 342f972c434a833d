"""The hub's handshake turns: a real hub on a real store, no socket (nobody connects).

Turns are handed out first come first served while fewer than K handshakes are in flight; each
reported end frees a place (and feeds the pacer); a turn given up before its time is withdrawn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.core.pacer import Outcome
from gateway.errors import CloudUnavailable
from gateway.net.hub import Hub
from gateway.net.wsclient import ClientConnection
from gateway.ocpp.frames import OcppVersion
from gateway.store.engine import Store
from gateway.tags.cache import TagCache
from tests.support import make_settings


async def _refuse(
    url: str,
    version: OcppVersion,
    headers: dict[str, str],
    *,
    alternatives: Sequence[OcppVersion] = (),
) -> ClientConnection:
    raise CloudUnavailable("no connection in these tests")


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings = make_settings(tmp_path, upstream={"url": "ws://127.0.0.1:9/ocpp"})
    store = await Store.open(settings.store.path)
    hub = Hub(
        settings,
        store,
        connect_upstream=_refuse,
        authorizer=TagCache(store, unknown_tags="accept"),
    )
    try:
        yield hub
    finally:
        await hub.close()
        await store.close()


async def test_turns_are_given_while_fewer_than_k_are_in_flight(hub: Hub) -> None:
    booked = [hub.book_turn() for _ in range(60)]
    turns = [turn for turn, _ in booked]
    assert [t.done() for t in turns] == [True] * 50 + [False] * 10
    assert booked[0][1] == 0.0 and booked[55][1] > 0.0  # the expected wait: a round of K ahead
    assert hub.pacer.in_flight == 50

    hub.turn_ended(turns[0], Outcome.ERROR)  # one place free: the next in line gets it
    assert turns[50].done() and not turns[51].done()
    hub.turn_ended(turns[51], Outcome.ERROR)  # given up while waiting: withdrawn
    assert turns[51].cancelled()
    hub.turn_ended(turns[1], Outcome.ERROR)
    assert turns[52].done() and not turns[53].done()  # 51 was skipped, not given
    hub.turn_ended(turns[1], Outcome.ERROR)  # reported twice: ignored
    assert not turns[53].done() and hub.pacer.in_flight == 50
    hub.turn_ended(turns[2], Outcome.SUCCESS)  # fast, with K in use: K grows to 51
    assert hub.pacer.limit == 51 and turns[53].done() and turns[54].done()

    for turn in turns:
        if turn.done() and not turn.cancelled():
            hub.turn_ended(turn, Outcome.SUCCESS)
    assert all(t.done() for t in turns)
    for turn in turns[55:]:
        hub.turn_ended(turn, Outcome.SUCCESS)
    assert hub.pacer.in_flight == 0


async def test_refusals_give_fewer_turns_and_space_them(hub: Hub) -> None:
    turns = [hub.book_turn()[0] for _ in range(60)]
    for turn in turns[:50]:  # the cloud refused all 50 at once
        hub.turn_ended(turn, Outcome.REFUSED)
    assert hub.pacer.limit == 25
    # 50 a second while handshakes fail: the next turns come from the hub's timer, 20 ms apart.
    assert not any(t.done() for t in turns[50:])
    await asyncio.wait_for(asyncio.shield(turns[50]), 1.0)
    assert not turns[51].done()
    await asyncio.wait_for(asyncio.shield(turns[51]), 1.0)
    assert hub.pacer.in_flight == 2
