"""The local list push's CALL program on values: what each SendLocalList answer ends in."""

from __future__ import annotations

import pytest

from gateway.core.program import Reply, ReplyKind, run_pure
from gateway.tags.list_program import End, SendProgram
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
