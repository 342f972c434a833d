"""The replay decision, as pure functions: what a stored CALL becomes on the wire, and what the
cloud's answer to it means (delivered, retried later, or dead-lettered).

The cursor — which row is next, what the replay waits for — is :class:`gateway.core.relay.ChargerRelay`'s.
"""

from __future__ import annotations

from typing import Final

from gateway.core import txmap
from gateway.core.events import DeadLetter, Delivered, QueuedCall, RetryLater
from gateway.errors import FrameError
from gateway.ocpp import frames
from gateway.ocpp.frames import Call, CallError, CallResult
from gateway.ocpp.validation import validate_result

__all__ = ["TRANSIENT_CODES", "decide", "outgoing", "retry_delay_s"]

# CALLERROR codes worth retrying: the cloud failed, not the message (OCPP-J error code meanings).
TRANSIENT_CODES: Final = frozenset({"InternalError", "GenericError", "RpcFrameworkError"})


def retry_delay_s(attempts: int, max_s: float = 300.0) -> float:
    """Backoff before a replayed message's next attempt, after ``attempts`` failed ones."""
    return min(max_s, 2.0 ** (attempts + 1))


def outgoing(row: QueuedCall, local_to_cloud: dict[int, int]) -> Call | DeadLetter:
    """The CALL to send for ``row``: local 1.6 transaction ids replaced by the cloud's, and a
    2.0.1/2.1 TransactionEvent answered locally marked ``offline: true`` (E02). A local id the
    cloud never mapped is a dead letter: it must never reach the cloud."""
    payload = frames.loads(row.payload)
    try:
        payload = txmap.rewrite_to_cloud(row.action, payload, local_to_cloud)
    except txmap.UnmappedTransaction as exc:
        return DeadLetter(row, "UnmappedTransaction", str(exc))
    if row.action == "TransactionEvent" and not payload.get("offline"):
        payload = {**payload, "offline": True}
    return Call(row.message_id, row.action, payload)


def decide(
    row: QueuedCall,
    call: Call,
    answer: CallResult | CallError,
    *,
    max_attempts: int,
    max_delay_s: float = 300.0,
) -> Delivered | RetryLater | DeadLetter:
    """What the cloud's ``answer`` to the replayed ``call`` (of ``row``) means.

    A transient CALLERROR, or a CALLRESULT that breaks the schema (a StartTransaction answer
    without an integer transactionId would leave the transaction unmapped), is retried after a
    backoff until ``max_attempts``; any other CALLERROR is a dead letter at once.
    """
    last = row.attempts + 1 >= max_attempts
    if isinstance(answer, CallError):
        if answer.code in TRANSIENT_CODES and not last:
            error = f"{answer.code}: {answer.description}"
            return RetryLater(row, retry_delay_s(row.attempts, max_delay_s), error[:500])
        return DeadLetter(row, answer.code, answer.description)
    version = frames.as_version(row.version)
    try:
        validate_result(version, row.action, answer.payload, row.message_id)
    except FrameError as exc:
        reason = f"the cloud's answer breaks the schema: {exc.description}"
        if not last:
            error = f"{exc.code}: {reason}"
            return RetryLater(row, retry_delay_s(row.attempts, max_delay_s), error[:500])
        return DeadLetter(row, exc.code, reason)
    tx = None
    if version == "1.6" and row.action == "StartTransaction" and row.local_tx_id is not None:
        tx = (row.local_tx_id, int(answer.payload["transactionId"]))
    return Delivered(row, call, answer.payload, tx)
