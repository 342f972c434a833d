"""The version decisions on values: how a charger is answered, what a link offers, what the
cloud's choice means, and why a stored message cannot go on a link of another version."""

from __future__ import annotations

import itertools
import json

import pytest

from gateway.core import replay, versions
from gateway.core.events import DeadLetter, ReadBacklog
from gateway.core.link import LinkState
from gateway.core.relay import ChargerRelay, RelaySettings
from gateway.core.versions import (
    AnswerNow,
    AskCloud,
    CloudChoice,
    VersionRecord,
    cloud_selected,
    link_offer,
    offered_versions,
    plan_answer,
    unspoken_reason,
)
from gateway.ocpp.frames import Call, OcppVersion
from tests.rows import Row


def test_offered_versions_keep_the_charger_s_order_and_drop_what_the_gateway_does_not_speak() -> (
    None
):
    assert offered_versions(["ocpp1.5", "ocpp2.1", "ocpp2.0.1", "ocpp2.1", "x"]) == ("2.1", "2.0.1")
    assert offered_versions(["ocpp1.6", "ocpp2.1"]) == ("1.6", "2.1")
    assert offered_versions([]) == ()
    assert versions.subprotocol("2.0.1") == "ocpp2.0.1"


@pytest.mark.parametrize(
    ("offered", "remembered", "cloud", "plan"),
    [
        # The remembered version offered: answered at once, whatever the charger prefers.
        (("2.1", "2.0.1"), "2.0.1", True, AnswerNow("2.0.1")),
        (("2.1", "2.0.1", "1.6"), "1.6", True, AnswerNow("1.6")),
        # First contact: the cloud is asked with the whole list, the charger's first as fallback.
        (("2.1", "2.0.1"), None, True, AskCloud(("2.1", "2.0.1"), "2.1")),
        # The charger no longer offers the remembered version: asked again.
        (("2.1", "1.6"), "2.0.1", True, AskCloud(("2.1", "1.6"), "2.1")),
        # One version: nothing for the cloud to choose.
        (("2.1",), None, True, AnswerNow("2.1")),
        (("2.1",), "2.0.1", True, AnswerNow("2.1")),
        # Nothing the gateway speaks: no subprotocol (the server closes, OCPP-J §3.2).
        ((), "2.0.1", True, AnswerNow(None)),
        # Standalone: the charger's first, as before.
        (("2.1", "2.0.1"), "2.0.1", False, AnswerNow("2.1")),
    ],
)
def test_plan_answer(
    offered: tuple[OcppVersion, ...],
    remembered: OcppVersion | None,
    cloud: bool,
    plan: AnswerNow | AskCloud,
) -> None:
    assert plan_answer(offered, remembered, cloud=cloud) == plan


def test_a_link_offers_its_version_then_the_whole_list_once_refused() -> None:
    offered: tuple[OcppVersion, ...] = ("2.1", "2.0.1", "1.6")
    assert link_offer("2.1", offered, refused=False) == ("2.1",)
    assert link_offer("2.1", offered, refused=True) == offered
    assert link_offer("2.0.1", offered, refused=True) == offered  # the charger's order kept
    assert link_offer("2.1", ("2.1",), refused=True) == ("2.1",)  # nothing else to offer
    assert link_offer("1.6", ("2.1", "2.0.1"), refused=True) == ("1.6",)  # not the charger's list


def test_the_cloud_selecting_the_charger_s_version_is_remembered_once() -> None:
    first = cloud_selected("2.0.1", "2.0.1", None)
    assert first == CloudChoice(VersionRecord("2.0.1"), None)
    assert cloud_selected("2.0.1", "2.0.1", first.remember) == CloudChoice(None, None)


def test_the_cloud_selecting_another_version_refuses_the_charger_s() -> None:
    choice = cloud_selected("2.1", "2.0.1", None)
    assert choice == CloudChoice(VersionRecord("2.0.1", frozenset({"2.1"})), "2.1")
    # Learnt again later (the charger came back on 2.0.1; its old link asked): nothing new.
    assert cloud_selected("2.0.1", "2.0.1", choice.remember) == CloudChoice(None, None)
    # The cloud stops speaking 2.0.1 and selects 1.6: both refusals are not kept, only the latest
    # choice's.
    later = cloud_selected("2.0.1", "1.6", choice.remember)
    assert later == CloudChoice(VersionRecord("1.6", frozenset({"2.0.1"})), "2.0.1")
    # A refusal already known: nothing to write, but the charger's link still cannot be used.
    known = VersionRecord("2.0.1", frozenset({"2.1", "1.6"}))
    assert cloud_selected("1.6", "2.0.1", known) == CloudChoice(None, "1.6")
    # The cloud selecting a version it had refused: a new choice, nothing refused any more.
    assert cloud_selected("2.1", "2.1", known) == CloudChoice(VersionRecord("2.1"), None)


def test_why_a_stored_message_cannot_go_on_a_link_of_another_version() -> None:
    assert unspoken_reason("2.0.1", "2.0.1", frozenset({"2.1"})) is None
    assert unspoken_reason("2.1", "2.0.1", frozenset({"2.1"})) == "cloud does not speak ocpp2.1"
    assert (
        unspoken_reason("1.6", "2.0.1", frozenset())
        == "stored under ocpp1.6; the cloud link speaks ocpp2.0.1"
    )


def test_replay_dead_letters_rows_of_a_refused_version_untranslated() -> None:
    payload = '{"status": "Available"}'
    row = Row(1, "m-1", "StatusNotification", payload, version="2.1")
    out = replay.outgoing(row, {}, version="2.0.1", refused=frozenset({"2.1"}))
    assert out == DeadLetter(row, replay.VERSION_NOT_SPOKEN, "cloud does not speak ocpp2.1")
    same = Row(2, "m-2", "StatusNotification", payload, version="2.0.1")
    assert replay.outgoing(same, {}, version="2.0.1", refused=frozenset({"2.1"})) == Call(
        same.message_id, "StatusNotification", {"status": "Available"}
    )


def test_a_relay_on_the_cloud_s_version_dead_letters_what_was_stored_under_the_refused_one() -> (
    None
):
    ids = itertools.count(1)
    r = ChargerRelay("CP1", "2.0.1", settings=RelaySettings(), new_id=lambda: f"{next(ids)}")
    r.refused_versions = frozenset({"2.1"})
    status = '{"timestamp": "2026-01-01T00:00:00Z", "connectorStatus": "Available",'
    status += ' "evseId": 1, "connectorId": 1}'
    old = Row(1, "m-1", "StatusNotification", status, version="2.1")
    new = Row(2, "m-2", "StatusNotification", status, version="2.0.1")
    r.backlog = 2
    r.link_connecting(0.0)
    r.link_connected(0.0)
    [read] = r.events()
    assert isinstance(read, ReadBacklog)
    r.replay_rows(read, [old, new], 0.0, wall_now=0.0)
    assert r.data_to_cloud() == []  # never translated, never sent
    [dead] = r.events()
    assert dead == DeadLetter(old, replay.VERSION_NOT_SPOKEN, "cloud does not speak ocpp2.1")
    r.outcome_recorded(dead, 0.0)
    [sent] = r.data_to_cloud()
    assert json.loads(sent)[:3] == [2, "m-2", "StatusNotification"]
    assert r.backlog == 1


def test_a_boot_stored_under_the_old_version_is_not_replayed_on_the_new_one() -> None:
    ids = itertools.count(1)
    r = ChargerRelay("CP1", "2.1", settings=RelaySettings(), new_id=lambda: f"{next(ids)}")
    r.boot_stored("b-1", '{"reason": "PowerUp"}', 0.0)  # answered locally while on 2.1
    r.change_version("2.1")  # the same version: kept
    assert r.boot == ("b-1", '{"reason": "PowerUp"}')
    r.change_version("2.0.1")  # the charger comes back on the cloud's version
    assert r.boot is None and r.version == "2.0.1"
    r.link_connecting(0.0)
    r.link_connected(0.0)
    assert r.state is LinkState.ONLINE  # nothing to replay: no 2.1 Boot on a 2.0.1 link
    assert r.data_to_cloud() == [] and r.events() == []
