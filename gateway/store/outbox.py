"""The outbox: messages stored for the cloud, their replay, dead letters, resend keys, transaction ids."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.store.base import Statement, Table

__all__ = [
    "ANSWERED_MAX_ROWS",
    "RESEND_WINDOW_S",
    "ChargerState",
    "DeadLetterRow",
    "OutboxRow",
    "OutboxTable",
    "call_digest",
]

RESEND_WINDOW_S: Final = 24 * 3600.0  # a delivered CALL resent within this is answered, not sent
ANSWERED_MAX_ROWS: Final = 500_000  # bound on the delivered-CALL keys, whatever the traffic


try:  # the same canonical form as frames.dumps uses, with keys sorted
    import orjson

    def _canonical(payload: Any) -> bytes:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)

except ImportError:  # pragma: no cover - exercised on machines without the wheel

    def _canonical(payload: Any) -> bytes:
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def call_digest(action: str, payload: Any) -> bytes:
    """A 16-byte key of a charger CALL's action and payload, compared as parsed JSON (key order
    and spacing do not matter): with the charger and message id it recognises a resend."""
    return hashlib.blake2b(action.encode() + b"\0" + _canonical(payload), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One queued charger CALL."""

    seq: int
    charger_id: str
    version: str
    message_id: str
    action: str
    payload: str
    created_at: float
    local_tx_id: int | None
    attempts: int
    next_attempt_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxRow:
        return cls(
            seq=int(row["seq"]),
            charger_id=str(row["charger_id"]),
            version=str(row["ocpp_version"]),
            message_id=str(row["message_id"]),
            action=str(row["action"]),
            payload=str(row["payload"]),
            created_at=float(row["created_at"]),
            local_tx_id=None if row["local_tx_id"] is None else int(row["local_tx_id"]),
            attempts=int(row["attempts"]),
            next_attempt_at=float(row["next_attempt_at"]),
        )


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A replayed message the cloud refused for good; ``seq`` is its id and queue position."""

    seq: int
    charger_id: str
    version: str
    message_id: str
    action: str
    payload: str
    created_at: float
    failed_at: float
    attempts: int
    error_code: str
    error_description: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> DeadLetterRow:
        return cls(
            seq=int(row["seq"]),
            charger_id=str(row["charger_id"]),
            version=str(row["ocpp_version"]),
            message_id=str(row["message_id"]),
            action=str(row["action"]),
            payload=str(row["payload"]),
            created_at=float(row["created_at"]),
            failed_at=float(row["failed_at"]),
            attempts=int(row["attempts"]),
            error_code=str(row["error_code"]),
            error_description=str(row["error_description"]),
        )


@dataclass(frozen=True, slots=True)
class ChargerState:
    """What a charger's session needs from the store when the charger connects."""

    tx_ids: list[tuple[int, int | None]]  # (local id, cloud id or None), as ``tx_ids``
    boot_undelivered: bool  # a BootNotification the cloud has not seen is stored
    recent_ids: list[str]  # message ids of its latest stored CALLs, as ``recent_message_ids``


class OutboxTable(Table):
    """The store's operations on these tables (a part of Store)."""

    async def enqueue(
        self,
        charger_id: str,
        version: str,
        message_id: str,
        action: str,
        payload: str,
        created_at: float,
        *,
        local_tx_id: int | None = None,
        digest: bytes | None = None,
        answer: str | None = None,
    ) -> None:
        """Durably queue a charger CALL for replay (and reserve its local transaction id).

        ``digest`` (:func:`call_digest`) and ``answer`` (the CALLRESULT payload given) let
        :meth:`earlier_answer` recognise a resend of it.
        """
        statements: list[Statement] = [
            (
                "INSERT INTO outbox (charger_id, ocpp_version, message_id, action, payload,"
                " created_at, local_tx_id, digest, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    charger_id,
                    version,
                    message_id,
                    action,
                    payload,
                    created_at,
                    local_tx_id,
                    digest,
                    answer,
                ),
            )
        ]
        if local_tx_id is not None:
            statements.append(
                (
                    "INSERT INTO tx_ids (charger_id, local_id, cloud_id, created_at)"
                    " VALUES (?, ?, NULL, ?)",
                    (charger_id, local_tx_id, created_at),
                )
            )
        await self.write(statements)

    _EARLIER_ANSWER_SQL = (
        "SELECT answer FROM outbox WHERE charger_id = ?1 AND message_id = ?2 AND digest = ?3"
        " UNION ALL SELECT answer FROM answered WHERE charger_id = ?1 AND message_id = ?2"
        " AND digest = ?3 AND done_at >= ?4 LIMIT 1"
    )

    async def earlier_answer(
        self, charger_id: str, message_id: str, digest: bytes, *, now: float
    ) -> str | None:
        """The answer given to the same CALL (id and digest) if it is queued or was delivered
        within RESEND_WINDOW_S; None for a CALL not seen before."""
        params = (charger_id, message_id, digest, now - RESEND_WINDOW_S)
        row: Any
        try:  # on the event loop thread, as lookup_tag: the thread hop would cost more
            reader = self._reader()
            if reader is None:
                raise sqlite3.OperationalError("no separate reader for an in-memory store")
            row = reader.execute(self._EARLIER_ANSWER_SQL, params).fetchone()
        except sqlite3.Error:
            row = await self.fetchone(self._EARLIER_ANSWER_SQL, params)
        return None if row is None or row[0] is None else str(row[0])

    async def recent_message_ids(self, charger_id: str, limit: int) -> list[str]:
        """Message ids of the latest CALLs of a charger stored for replay (queued or answered)."""
        rows = await self.fetchall(
            "SELECT message_id FROM (SELECT message_id FROM outbox WHERE charger_id = ?1"
            " AND digest IS NOT NULL ORDER BY seq DESC LIMIT ?2) UNION SELECT message_id FROM"
            " (SELECT message_id FROM answered WHERE charger_id = ?1 ORDER BY done_at DESC"
            " LIMIT ?2)",
            (charger_id, limit),
        )
        return [str(r[0]) for r in rows]

    async def prune_answered(self, now: float) -> int:
        """Forget delivered CALLs older than RESEND_WINDOW_S, and the oldest beyond the bound."""
        async with self.transaction() as db:
            cur = await db.execute(
                "DELETE FROM answered WHERE done_at < ?", (now - RESEND_WINDOW_S,)
            )
            removed = cur.rowcount
            cur = await db.execute(
                "DELETE FROM answered WHERE done_at <= (SELECT done_at FROM answered"
                " ORDER BY done_at DESC LIMIT 1 OFFSET ?)",
                (ANSWERED_MAX_ROWS,),
            )
            removed += cur.rowcount
        return max(removed, 0)

    async def max_local_tx_id(self) -> int | None:
        """The highest local transaction id ever handed out, or None."""
        row = await self.fetchone("SELECT MAX(local_id) FROM tx_ids")
        return int(row[0]) if row and row[0] is not None else None

    async def tx_ids(self, charger_id: str) -> list[tuple[int, int | None]]:
        """(local id, cloud id or None) for every local transaction of a charger."""
        rows = await self.fetchall(
            "SELECT local_id, cloud_id FROM tx_ids WHERE charger_id = ?", (charger_id,)
        )
        return [(int(r[0]), None if r[1] is None else int(r[1])) for r in rows]

    _STATES_CHUNK = 500  # ids per statement (SQLite's variable limit is 999 in old builds)

    async def charger_states(
        self, charger_ids: Sequence[str], *, recent: int = 0
    ) -> dict[str, ChargerState]:
        """:class:`ChargerState` of many chargers in one query per 500 (ids with no rows are left
        out): a power-restore storm of new chargers costs one read, not one per charger.
        ``recent``: how many message ids of each charger's latest stored CALLs to include (as
        ``recent_message_ids``)."""
        tx: dict[str, list[tuple[int, int | None]]] = {}
        boots: set[str] = set()
        ids: dict[str, list[str]] = {}
        for start in range(0, len(charger_ids), self._STATES_CHUNK):
            chunk = list(charger_ids[start : start + self._STATES_CHUNK])
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT 0, charger_id, local_id, cloud_id FROM tx_ids WHERE charger_id IN ({marks})"
                " UNION ALL SELECT 1, charger_id, NULL, NULL FROM boot_notifications"
                f" WHERE delivered = 0 AND charger_id IN ({marks})"
                " UNION ALL SELECT 2, charger_id, message_id, NULL FROM (SELECT charger_id,"
                " message_id, ROW_NUMBER() OVER (PARTITION BY charger_id ORDER BY seq DESC) AS n"
                f" FROM outbox WHERE digest IS NOT NULL AND charger_id IN ({marks})) WHERE n <= ?"
                " UNION ALL SELECT 2, charger_id, message_id, NULL FROM (SELECT charger_id,"
                " message_id, ROW_NUMBER() OVER (PARTITION BY charger_id ORDER BY done_at DESC)"
                f" AS n FROM answered WHERE charger_id IN ({marks})) WHERE n <= ?"
            )
            params = (*chunk, *chunk, *chunk, recent, *chunk, recent)
            rows = self._read_now(sql, params)
            if rows is None:
                rows = await self.fetchall(sql, params)
            for kind, charger_id, first, second in rows:
                cid = str(charger_id)
                if kind == 0:
                    tx.setdefault(cid, []).append(
                        (int(first), None if second is None else int(second))
                    )
                elif kind == 1:
                    boots.add(cid)
                elif str(first) not in ids.setdefault(cid, []):
                    ids[cid].append(str(first))
        return {
            cid: ChargerState(tx.get(cid, []), cid in boots, ids.get(cid, []))
            for cid in sorted({*tx, *boots, *ids})
        }

    async def pending(self, charger_id: str, limit: int = 100) -> list[OutboxRow]:
        """The oldest queued messages of a charger, in order."""
        rows = await self.fetchall(
            "SELECT * FROM outbox WHERE charger_id = ? ORDER BY seq LIMIT ?", (charger_id, limit)
        )
        return [OutboxRow.from_row(r) for r in rows]

    async def backlog(self) -> dict[str, tuple[int, float]]:
        """charger id → (pending messages, created_at of the oldest)."""
        rows = await self.fetchall(
            "SELECT charger_id, COUNT(*), MIN(created_at) FROM outbox GROUP BY charger_id"
        )
        return {str(r[0]): (int(r[1]), float(r[2])) for r in rows}

    async def backlog_versions(self) -> dict[str, str]:
        """charger id → OCPP version of its oldest queued message."""
        rows = await self.fetchall(
            "SELECT charger_id, ocpp_version FROM outbox WHERE seq IN"
            " (SELECT MIN(seq) FROM outbox GROUP BY charger_id)"
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def delivered(self, seq: int, *, tx: tuple[str, int, int] | None = None) -> None:
        """Remove a message the cloud answered; ``tx`` = (charger, local id, cloud id) to bind.

        Its resend key moves to ``answered`` (trigger outbox_keeps_answered) for RESEND_WINDOW_S.
        """
        statements: list[Statement] = [("DELETE FROM outbox WHERE seq = ?", (seq,))]
        if tx is not None:
            statements.append(
                (
                    "UPDATE tx_ids SET cloud_id = ? WHERE charger_id = ? AND local_id = ?",
                    (tx[2], tx[0], tx[1]),
                )
            )
        await self.write(statements)

    async def retry_later(self, seq: int, *, next_attempt_at: float, error: str) -> None:
        """Count a failed attempt and hold the message until ``next_attempt_at``."""
        await self.write(
            [
                (
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                    " WHERE seq = ?",
                    (next_attempt_at, error, seq),
                )
            ]
        )

    async def dead_letter(self, row: OutboxRow, *, code: str, description: str, now: float) -> None:
        """Move a message the cloud refused for good out of the queue, keeping it for operators."""
        await self.write(
            [
                (
                    "INSERT OR REPLACE INTO dead_letters (seq, charger_id, ocpp_version, message_id,"
                    " action, payload, created_at, failed_at, attempts, error_code,"
                    " error_description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.seq,
                        row.charger_id,
                        row.version,
                        row.message_id,
                        row.action,
                        row.payload,
                        row.created_at,
                        now,
                        row.attempts + 1,
                        code,
                        description,
                    ),
                ),
                ("DELETE FROM outbox WHERE seq = ?", (row.seq,)),
            ]
        )

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters, as plain dicts."""
        rows = await self.fetchall(
            "SELECT * FROM dead_letters ORDER BY failed_at DESC, seq DESC LIMIT ?", (limit,)
        )
        return [dict(r) for r in rows]

    async def dead_letter_count(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) FROM dead_letters")
        return int(row[0]) if row else 0

    async def dead_letter_rows(self, limit: int = 100) -> list[DeadLetterRow]:
        """The dead letters, oldest queued first (the order they would be requeued in)."""
        rows = await self.fetchall("SELECT * FROM dead_letters ORDER BY seq LIMIT ?", (limit,))
        return [DeadLetterRow.from_row(r) for r in rows]

    async def dead_letter_row(self, seq: int) -> DeadLetterRow | None:
        """One dead letter by id, or None."""
        row = await self.fetchone("SELECT * FROM dead_letters WHERE seq = ?", (seq,))
        return None if row is None else DeadLetterRow.from_row(row)

    async def requeue_dead_letter(self, seq: int) -> DeadLetterRow | None:
        """Put a dead letter back in the outbox under its original seq, so it is replayed first
        among its charger's messages and in its original order; attempts start again at 0.

        A 1.6 StartTransaction keeps its local transaction id: the ``tx_ids`` row written with it
        (same charger, same ``created_at``, still unmapped). Returns the row, or None if unknown.
        """
        async with self.transaction() as db:
            async with db.execute("SELECT * FROM dead_letters WHERE seq = ?", (seq,)) as cur:
                found = await cur.fetchone()
            if found is None:
                return None
            row = DeadLetterRow.from_row(found)
            local_tx_id = None
            if row.version == "1.6" and row.action == "StartTransaction":
                async with db.execute(
                    "SELECT local_id FROM tx_ids WHERE charger_id = ? AND created_at = ?"
                    " AND cloud_id IS NULL ORDER BY local_id LIMIT 1",
                    (row.charger_id, row.created_at),
                ) as cur:
                    tx = await cur.fetchone()
                local_tx_id = None if tx is None else int(tx[0])
            await db.execute(
                "INSERT INTO outbox (seq, charger_id, ocpp_version, message_id, action, payload,"
                " created_at, local_tx_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.seq,
                    row.charger_id,
                    row.version,
                    row.message_id,
                    row.action,
                    row.payload,
                    row.created_at,
                    local_tx_id,
                ),
            )
            await db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
        return row

    async def drop_dead_letter(self, seq: int) -> bool:
        """Delete a dead letter for good; False if there is no such id."""
        async with self.transaction() as db:
            cur = await db.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
            return cur.rowcount > 0

    async def prune_outbox(
        self,
        *,
        before: float,
        transactional_before: float,
        transactional: Sequence[str],
        max_rows: int,
    ) -> int:
        """Bound a queue nothing drains (standalone): drop old rows, then the oldest past max_rows."""
        marks = ",".join("?" * len(transactional))
        async with self.transaction() as db:
            cur = await db.execute(
                f"DELETE FROM outbox WHERE (action NOT IN ({marks}) AND created_at < ?)"
                f" OR (action IN ({marks}) AND created_at < ?)",
                (*transactional, before, *transactional, transactional_before),
            )
            removed = cur.rowcount
            cur = await db.execute(
                "DELETE FROM outbox WHERE seq <= (SELECT seq FROM outbox ORDER BY seq DESC"
                " LIMIT 1 OFFSET ?)",
                (max_rows,),
            )
            removed += cur.rowcount
        return max(removed, 0)
