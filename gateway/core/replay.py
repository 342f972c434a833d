"""The replay toward the cloud: the decision, as pure functions — what a stored CALL becomes on
the wire (``outgoing``), what the cloud's answer to it means (``decide``: delivered, retried
later, or dead-lettered) — and ``ReplayCursor``, one link's replay (which row is next, what the
replay waits for), a part of :class:`gateway.core.relay.ChargerRelay` that shares the charger's
``Backlog`` with it.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from gateway.core import txmap, versions
from gateway.core.events import (
    BootDelivered,
    DeadLetter,
    Delivered,
    QueuedCall,
    ReadBacklog,
    RelayOutput,
    RetryLater,
)
from gateway.core.limits import LimitedLog
from gateway.errors import FrameError
from gateway.ocpp import frames
from gateway.ocpp.frames import Call, CallError, CallResult, OcppVersion
from gateway.ocpp.validation import validate_result

__all__ = [
    "TRANSIENT_CODES",
    "VERSION_NOT_SPOKEN",
    "Backlog",
    "ReplayCursor",
    "decide",
    "outgoing",
    "retry_delay_s",
]

log = logging.getLogger(__name__)

# CALLERROR codes worth retrying: the cloud failed, not the message (OCPP-J error code meanings).
TRANSIENT_CODES: Final = frozenset({"InternalError", "GenericError", "RpcFrameworkError"})
# The dead-letter code of a row stored under a version its link does not speak.
VERSION_NOT_SPOKEN: Final = "VersionNotSupported"


def retry_delay_s(attempts: int, max_s: float = 300.0) -> float:
    """Backoff before a replayed message's next attempt, after ``attempts`` failed ones."""
    return min(max_s, 2.0 ** (attempts + 1))


def outgoing(
    row: QueuedCall,
    local_to_cloud: dict[int, int],
    *,
    version: OcppVersion | None = None,
    refused: frozenset[OcppVersion] = frozenset(),
) -> Call | DeadLetter:
    """The CALL to send for ``row``: local 1.6 transaction ids replaced by the cloud's, and a
    2.0.1/2.1 TransactionEvent answered locally marked ``offline: true`` (E02). A local id the
    cloud never mapped is a dead letter: it must never reach the cloud.

    ``version``: the link's. A row stored under another version is a dead letter (versions are
    never translated); ``refused``: the versions the cloud refused for this charger, which says
    why (:func:`gateway.core.versions.unspoken_reason`).
    """
    if version is not None:
        why = versions.unspoken_reason(frames.as_version(row.version), version, refused)
        if why is not None:
            return DeadLetter(row, VERSION_NOT_SPOKEN, why)
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


@dataclass(slots=True)
class _Replaying:
    """The one replayed CALL toward the cloud."""

    call: Call
    row: QueuedCall | None  # None: the stored BootNotification
    deadline: float


@dataclass(slots=True)
class Backlog:
    """What the charger has stored for the cloud, as its relay counts it (shared by the relay
    and its replay cursor)."""

    count: int = 0  # rows queued and not yet delivered or dead-lettered
    boot: tuple[str, str] | None = None  # (message id, payload) of the undelivered Boot
    changes: int = 0  # rows queued, ever: a change marker for the replay


class ReplayCursor:
    """One link's replay toward the cloud: the stored BootNotification first, then the backlog
    one CALL at a time, each answer decided by :func:`decide` and recorded by the driver
    (``outcome_recorded``) before the next goes.

    The relay makes a cursor when its link enters REPLAYING and drops it when the link leaves
    (lost, a call timeout, the backlog drained); the next link's cursor starts from the store.
    """

    __slots__ = (
        "_backlog",
        "_call_timeout_s",
        "_charger_id",
        "_errors",
        "_events",
        "_lines",
        "_max_attempts",
        "_max_retry_delay_s",
        "_refused",
        "_to_cloud",
        "_txids",
        "_version",
        "asked",
        "bind",
        "boot_done",
        "boot_id",
        "due",
        "enqueued_at_read",
        "in_flight",
        "recording",
        "rows",
        "waiting",
    )

    def __init__(
        self,
        charger_id: str,
        backlog: Backlog,
        txids: txmap.TxIdMap,
        output: RelayOutput,
        *,
        version: OcppVersion | None = None,
        refused: frozenset[OcppVersion] = frozenset(),
        call_timeout_s: float,
        max_attempts: int,
        max_retry_delay_s: float,
        errors: Counter[str],
    ) -> None:
        self._charger_id = charger_id
        self._backlog = backlog
        self._txids = txids
        self._version = version  # the link's: rows stored under another are dead letters
        self._refused = refused
        self._to_cloud = output.to_cloud
        self._events = output.events
        self._lines = LimitedLog(log, output.log_limit, charger_id)
        self._call_timeout_s = call_timeout_s
        self._max_attempts = max_attempts
        self._max_retry_delay_s = max_retry_delay_s
        self._errors = errors
        self.rows: deque[QueuedCall] = deque()  # read and not yet sent
        self.due: dict[int, float] = {}  # seq → monotonic time of next attempt
        self.waiting: Literal["", "rows", "answer", "record", "due", "held"] = ""
        self.in_flight: _Replaying | None = None
        self.enqueued_at_read = 0
        self.boot_done = False  # the stored Boot was tried on this link
        # What the outcome being recorded was: a row done (delivered or dead-lettered), a retry
        # (re-read afterwards), or the stored Boot delivered (its message id).
        self.recording: Literal["", "row", "retry", "boot"] = ""
        self.boot_id = ""
        self.bind: tuple[int, int] | None = None  # applied once the delivery is recorded
        self.asked: object = None  # the ReadBacklog or outcome event the replay waits on (identity)

    def deadline(self) -> float | None:
        """The earliest time ``tick`` has something to do, if any."""
        times = []
        if self.in_flight is not None:
            times.append(self.in_flight.deadline)
        if self.waiting == "due" and self.rows:
            times.append(self.due.get(self.rows[0].seq, 0.0))
        return min(times) if times else None

    def tick(self, now: float) -> bool:
        """Act on a deadline passed by ``now``. True: the cloud did not answer the replayed CALL in
        time, and this replay is over (the relay drops the link)."""
        flight = self.in_flight
        if flight is not None and flight.deadline <= now:
            self.in_flight = None
            self.waiting = ""
            self._errors["cloud_call_timeout"] += 1
            call = flight.call
            self._lines.warning(
                now,
                "cloud did not answer a replayed CALL in time",
                "%s %s",
                call.action,
                call.message_id,
            )
            return True
        if self.waiting == "due" and self.rows and self.due.get(self.rows[0].seq, 0.0) <= now:
            self.waiting = ""
            self.next(now)
        return False

    def next(self, now: float) -> None:
        """Send the next replayed CALL, or ask for rows (``receive_rows`` tells whether the
        backlog is drained)."""
        if self.waiting:
            return
        backlog = self._backlog
        if backlog.boot is not None and not self.boot_done:
            message_id, boot_payload = backlog.boot
            self._send(Call(message_id, "BootNotification", frames.loads(boot_payload)), None, now)
            return
        while self.rows:
            row = self.rows[0]
            due = self.due.get(row.seq, 0.0)
            if due > now:
                self.waiting = "due"
                return
            self.rows.popleft()
            out = outgoing(
                row, self._txids.local_to_cloud, version=self._version, refused=self._refused
            )
            if isinstance(out, DeadLetter):
                self._record(out, now)
            else:
                self._send(out, row, now)
            return
        self.waiting = "rows"
        self.enqueued_at_read = backlog.changes
        self.asked = request = ReadBacklog()
        self._events.append(request)

    def receive_rows(
        self, request: ReadBacklog, rows: Iterable[QueuedCall], now: float, *, wall_now: float
    ) -> bool:
        """The rows ``request`` asked for (see ``ChargerRelay.replay_rows``). True: there are
        none and none were queued since the read — the backlog is drained, this replay is over."""
        if self.waiting != "rows" or self.asked is not request:
            return False
        self.waiting = ""
        self.rows = deque(rows)
        self.due = {
            row.seq: now + (row.next_attempt_at - wall_now)
            for row in self.rows
            if row.next_attempt_at > wall_now
        }
        backlog = self._backlog
        if self.rows:
            backlog.count = max(backlog.count, len(self.rows))
            self.next(now)
            return False
        if backlog.changes != self.enqueued_at_read:
            self.next(now)  # queued while the driver read: read again
            return False
        backlog.count = 0
        return True

    def answered(self, answer: CallResult | CallError, now: float) -> None:
        """The cloud's answer to the CALL in flight."""
        flight = self.in_flight
        assert flight is not None
        self.in_flight = None
        row = flight.row
        if row is None:  # the stored BootNotification: a CALLERROR leaves it for the next link
            self.boot_done = True
            self.waiting = ""
            if isinstance(answer, CallResult):
                self._warn_if_refused(
                    answer.payload.get("status"), "replayed BootNotification", now
                )
                self.waiting, self.recording = "record", "boot"
                self.boot_id = flight.call.message_id
                self.asked = delivered = BootDelivered(flight.call.message_id, answer.payload)
                self._events.append(delivered)
            else:
                self.next(now)
            return
        outcome = decide(
            row,
            flight.call,
            answer,
            max_attempts=self._max_attempts,
            max_delay_s=self._max_retry_delay_s,
        )
        if isinstance(outcome, Delivered) and row.action == "StartTransaction":
            info = outcome.result.get("idTagInfo")
            status = info.get("status") if isinstance(info, dict) else None
            self._warn_if_refused(status, f"replayed StartTransaction {row.message_id}", now)
        self._record(outcome, now)

    def recorded(
        self,
        outcome: Delivered | RetryLater | DeadLetter | BootDelivered,
        now: float,
        *,
        ok: bool = True,
    ) -> None:
        """The driver recorded ``outcome`` (see ``ChargerRelay.outcome_recorded``)."""
        if self.waiting != "record" or self.asked is not outcome:
            return
        bind, self.bind = self.bind, None
        recording, self.recording = self.recording, ""
        if not ok:
            self.rows.clear()
            self.waiting = "held"  # until resume
            return
        self.waiting = ""
        if bind is not None:
            self._txids.bind(*bind)
        backlog = self._backlog
        if recording == "retry":
            self.rows.clear()  # re-read: the row now carries its next attempt time
        elif recording == "boot":
            if backlog.boot is not None and backlog.boot[0] == self.boot_id:
                backlog.boot = None  # else a newer Boot was stored meanwhile: replay that one
        else:
            backlog.count = max(0, backlog.count - 1)
        self.next(now)

    def resume(self, now: float) -> None:
        """The store commits again after a failed outcome: re-read from the first row queued."""
        if self.waiting == "held":
            self.waiting = ""
            self.rows.clear()
            self.next(now)

    def _send(self, call: Call, row: QueuedCall | None, now: float) -> None:
        self.in_flight = _Replaying(call, row, now + self._call_timeout_s)
        self.waiting = "answer"
        self._to_cloud.append(call.serialize())

    def _record(self, outcome: Delivered | RetryLater | DeadLetter, now: float) -> None:
        """Ask the driver to record ``outcome``; the replay waits for ``recorded``."""
        row = outcome.row
        if isinstance(outcome, Delivered):
            self.bind = outcome.tx
            self.recording = "row"
            if outcome.tx is not None:
                log.info(
                    "%s: local transaction %d is cloud transaction %d",
                    self._charger_id,
                    *outcome.tx,
                )
        elif isinstance(outcome, RetryLater):
            self.recording = "retry"
            self._lines.warning(
                now,
                "replayed message not delivered",
                "%s %s (%s); retry in %.0fs",
                row.action,
                row.message_id,
                outcome.error,
                outcome.delay_s,
            )
        else:
            self.recording = "row"
            self._lines.error(
                now,
                "cloud refused a replayed message",
                "%s %s (%s: %s); moved to dead letters",
                row.action,
                row.message_id,
                outcome.code,
                outcome.description,
            )
        self.waiting = "record"
        self.asked = outcome
        self._events.append(outcome)

    def _warn_if_refused(self, status: object, what: str, now: float) -> None:
        """The charger was answered Accepted locally; an operator should know the cloud disagreed."""
        if status is not None and status != "Accepted":
            kind = "cloud disagreed with a local answer"
            self._lines.warning(now, kind, "cloud answered %s to the %s", status, what)
