"""The site guard's CALL program for one change, run on values (``program.run_pure``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.program import Reply, ReplyKind, Request, run_pure
from gateway.site.profiles import PROFILE_ID, Capabilities
from gateway.site.program import CapProgram
from gateway.site.sequencer import Answer, Change

NOW = 1_765_000_000.0


def answering(**by_action: Reply) -> Any:
    return lambda request: by_action[request.action]


OK = Reply(ReplyKind.RESULT, {"status": "Accepted"})
READ_16 = Reply(
    ReplyKind.RESULT,
    {
        "configurationKey": [
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Power"},
            {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "3"},
        ]
    },
)


def test_an_unknown_charger_is_read_first_and_capped_in_the_unit_it_takes() -> None:
    program = CapProgram("1.6", Change("CP", 16), None, read=True, now=NOW, phases=1)
    sent = run_pure(program, answering(GetConfiguration=READ_16, SetChargingProfile=OK))
    assert [r.action for r in sent] == ["GetConfiguration", "SetChargingProfile"]
    profile = sent[1].payload["csChargingProfiles"]
    assert profile["stackLevel"] == 3
    period = profile["chargingSchedule"]["chargingSchedulePeriod"][0]
    assert period == {"startPeriod": 0, "limit": 16 * 230, "numberPhases": 1}
    assert program.caps == Capabilities("W", 3)
    assert (program.answer, program.result) == (Answer.ACCEPTED, "accepted")


def test_a_known_charger_is_capped_first_then_read() -> None:
    program = CapProgram("2.0.1", Change("CP", 6), Capabilities("A", 2), read=True, now=NOW)
    reads = Reply(ReplyKind.RESULT, {"getVariableResult": []})
    sent = run_pure(program, answering(SetChargingProfile=OK, GetVariables=reads))
    assert [r.action for r in sent] == ["SetChargingProfile", "GetVariables"]
    assert sent[0].payload["chargingProfile"]["stackLevel"] == 2
    assert program.caps == Capabilities()  # it said nothing: the defaults


def test_a_clear_is_one_call_by_the_gateways_id() -> None:
    program = CapProgram("1.6", Change("CP", None), None, read=True, now=NOW)
    sent = run_pure(
        program, answering(ClearChargingProfile=Reply(ReplyKind.RESULT, {"status": "Unknown"}))
    )
    assert [(r.action, r.payload) for r in sent] == [("ClearChargingProfile", {"id": PROFILE_ID})]
    assert program.answer is Answer.ACCEPTED  # Unknown: nothing left to clear


@pytest.mark.parametrize(
    ("reply", "answer", "result"),
    [
        (Reply(ReplyKind.RESULT, {"status": "Rejected"}), Answer.REJECTED, "rejected"),
        (Reply(ReplyKind.ERROR, error="NotSupported"), Answer.REJECTED, "rejected"),
        (Reply(ReplyKind.INVALID, error="status"), Answer.REJECTED, "invalid"),
        (Reply(ReplyKind.TIMEOUT), Answer.TIMEOUT, "timeout"),
        (Reply(ReplyKind.GONE), Answer.TIMEOUT, "timeout"),
        (Reply(ReplyKind.QUEUE_FULL), Answer.TIMEOUT, None),
    ],
)
def test_each_end_of_the_profile_call(reply: Reply, answer: Answer, result: str | None) -> None:
    program = CapProgram("1.6", Change("CP", 6), Capabilities(), read=False, now=NOW)
    sent = run_pure(program, lambda request: reply)
    assert len(sent) == 1
    assert (program.answer, program.result) == (answer, result)


def test_a_charger_silent_to_the_read_gets_no_cap() -> None:
    program = CapProgram("1.6", Change("CP", 6), None, read=True, now=NOW)
    sent: list[Request] = run_pure(program, lambda request: Reply(ReplyKind.TIMEOUT))
    assert [r.action for r in sent] == ["GetConfiguration"]
    assert (program.answer, program.result) == (Answer.TIMEOUT, None)


def test_a_read_refused_uses_the_defaults_and_caps_in_amperes() -> None:
    program = CapProgram("1.6", Change("CP", 10), None, read=True, now=NOW)
    sent = run_pure(
        program,
        answering(
            GetConfiguration=Reply(ReplyKind.ERROR, error="NotImplemented"), SetChargingProfile=OK
        ),
    )
    schedule = sent[1].payload["csChargingProfiles"]["chargingSchedule"]
    assert schedule["chargingRateUnit"] == "A"
    assert schedule["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 10}]
