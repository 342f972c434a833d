"""The local list push's CALL program on values: what each SendLocalList answer ends in."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.program import Reply, ReplyKind, run_pure
from gateway.tags.list_program import End, ReadProgram, SendProgram
from gateway.tags.local_list import Entry, Step

FULL = Step("Full", 5, add=(Entry("A", None), Entry("B", None)))
DIFF = Step("Differential", 6, add=(Entry("C", None),), remove=(Entry("A", None),))


def program(*steps: Step, retried: bool = False) -> SendProgram:
    return SendProgram(steps, [{"n": i} for i in range(len(steps))], ["t"] * len(steps), retried)


def status(value: str) -> Reply:
    return Reply(ReplyKind.RESULT, {"status": value})


def test_every_step_accepted_is_done_each_weighed_by_its_entries() -> None:
    p = program(FULL, DIFF)
    sent = run_pure(p, lambda request: status("Accepted"))
    assert [(r.payload, r.weight, r.text) for r in sent] == [({"n": 0}, 2, "t"), ({"n": 1}, 2, "t")]
    assert (p.end, p.results) == (End.DONE, ["accepted", "accepted"])


@pytest.mark.parametrize(
    ("steps", "retried", "reply", "end", "result"),
    [
        ((DIFF, FULL), False, status("VersionMismatch"), End.FULL, "version_mismatch"),
        ((DIFF,), True, status("VersionMismatch"), End.SKIP, "version_mismatch"),
        ((FULL,), False, status("Failed"), End.REFUSED, "failed"),
        ((DIFF,), True, status("Failed"), End.REFUSED, "failed"),
        ((DIFF,), False, status("Failed"), End.FULL, "failed"),
        ((FULL,), False, status("NotSupported"), End.REFUSED, "not_supported"),
        (
            (FULL,),
            False,
            Reply(ReplyKind.ERROR, error="NotImplemented"),
            End.REFUSED,
            "not_supported",
        ),
        ((FULL,), False, Reply(ReplyKind.ERROR, error="InternalError"), End.SKIP, "error"),
        ((FULL,), False, Reply(ReplyKind.INVALID, error="status"), End.SKIP, "error"),
        ((FULL,), False, Reply(ReplyKind.TIMEOUT), End.TIMEOUT, "timeout"),
        ((FULL,), False, Reply(ReplyKind.QUEUE_FULL), End.QUEUE_FULL, "queue_full"),
    ],
)
def test_a_step_not_accepted_ends_the_program(
    steps: tuple[Step, ...], retried: bool, reply: Reply, end: End, result: str
) -> None:
    p = program(*steps, retried=retried)
    sent = run_pure(p, lambda request: reply)
    assert len(sent) == 1  # nothing after it
    assert (p.end, p.results) == (end, [result])


def test_a_charger_gone_ends_it_uncounted() -> None:
    p = program(FULL, DIFF)
    run_pure(p, lambda request: Reply(ReplyKind.GONE))
    assert (p.end, p.results) == (End.GONE, [])


def read_answers(**by_action: Reply) -> Any:
    return lambda request: by_action[request.action]


def test_the_read_gives_capacity_and_version() -> None:
    p = ReadProgram("1.6")
    config = {
        "configurationKey": [
            {"key": "LocalAuthListMaxLength", "readonly": True, "value": "500"},
            {"key": "SendLocalListMaxLength", "readonly": True, "value": "50"},
        ]
    }
    sent = run_pure(
        p,
        read_answers(
            GetConfiguration=Reply(ReplyKind.RESULT, config),
            GetLocalListVersion=Reply(ReplyKind.RESULT, {"listVersion": 7}),
        ),
    )
    assert [r.action for r in sent] == ["GetConfiguration", "GetLocalListVersion"]
    assert (p.end, p.list_version) == (End.DONE, 7)
    assert (p.capacity.max_entries, p.capacity.per_message) == (500, 50)


@pytest.mark.parametrize(
    ("version_reply", "end", "reason"),
    [
        (Reply(ReplyKind.RESULT, {"listVersion": -1}), End.REFUSED, "version -1"),
        (Reply(ReplyKind.ERROR, error="NotImplemented"), End.REFUSED, "CALLERROR NotImplemented"),
        (Reply(ReplyKind.ERROR, error="InternalError"), End.SKIP, "CALLERROR InternalError"),
        (Reply(ReplyKind.INVALID, error="listVersion"), End.SKIP, "invalid GetLocalListVersion"),
        (Reply(ReplyKind.TIMEOUT), End.TIMEOUT, ""),
    ],
)
def test_the_version_read_decides_whether_the_charger_takes_a_list(
    version_reply: Reply, end: End, reason: str
) -> None:
    p = ReadProgram("1.6")
    run_pure(
        p,
        read_answers(
            GetConfiguration=Reply(ReplyKind.ERROR, error="NotImplemented"),  # capacity unknown
            GetLocalListVersion=version_reply,
        ),
    )
    assert p.end is end
    assert reason in p.reason


def test_a_charger_silent_to_the_capacity_read_is_not_asked_its_version() -> None:
    p = ReadProgram("2.0.1")
    sent = run_pure(p, lambda request: Reply(ReplyKind.TIMEOUT))
    assert [r.action for r in sent] == ["GetVariables"]
    assert p.end is End.TIMEOUT
