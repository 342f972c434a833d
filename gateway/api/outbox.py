"""Dead letters for operators: the JSON shape, the local API routes, the CLI table.

``GET /api/outbox/dead`` → ``{"data": [{"id", "chargerId", "action", "messageId", "payload",
"error", "attempts", "queuedAt", "deadAt"}]}``; ``POST /api/outbox/dead/{id}/requeue`` →
``{"status": "Requeued"}``; ``DELETE /api/outbox/dead/{id}`` → ``{"status": "Deleted"}``; 404 for
an unknown id. A requeued message goes back at the head of its charger's queue in its original
order and is replayed as soon as the charger's cloud link is up.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api.server import error
from gateway.core.offline import iso_utc
from gateway.net.hub import Hub
from gateway.ocpp import frames
from gateway.store.engine import DeadLetterRow, Store

__all__ = ["dead_letter_json", "dead_letter_routes", "dead_letter_table"]


def _iso(unix_s: float) -> str:
    return iso_utc(datetime.fromtimestamp(unix_s, UTC))


def dead_letter_json(row: DeadLetterRow) -> dict[str, Any]:
    """One dead letter in the API's shape (camelCase, ISO 8601 times, the payload as JSON)."""
    try:
        payload: Any = frames.loads(row.payload)
    except ValueError:  # stored as the charger sent it; always JSON, but never fail a listing
        payload = row.payload
    return {
        "id": row.seq,
        "chargerId": row.charger_id,
        "action": row.action,
        "messageId": row.message_id,
        "payload": payload,
        "error": f"{row.error_code}: {row.error_description}".rstrip(": "),
        "attempts": row.attempts,
        "queuedAt": _iso(row.created_at),
        "deadAt": _iso(row.failed_at),
    }


def dead_letter_table(rows: Iterable[DeadLetterRow]) -> str:
    """The ``outbox dead`` table: one line per dead letter, oldest queued first."""
    header = ("ID", "CHARGER", "ACTION", "MESSAGE ID", "ATTEMPTS", "QUEUED AT", "ERROR")
    lines = [header]
    for row in rows:
        view = dead_letter_json(row)
        lines.append(
            (
                str(row.seq),
                row.charger_id,
                row.action,
                row.message_id,
                str(row.attempts),
                view["queuedAt"],
                view["error"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in lines
    )


def _seq(request: Request) -> int | None:
    try:
        return int(request.path_params["id"])
    except ValueError:
        return None


def dead_letter_routes(store: Store, hub: Hub) -> list[BaseRoute]:
    async def listing(request: Request) -> Response:
        try:
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            return error(422, "limit must be an integer")
        rows = await store.dead_letter_rows(limit)
        return JSONResponse({"data": [dead_letter_json(r) for r in rows]})

    async def requeue(request: Request) -> Response:
        seq = _seq(request)
        if seq is None or not await hub.requeue_dead_letter(seq):
            return error(404, "no such dead letter")
        return JSONResponse({"status": "Requeued"})

    async def drop(request: Request) -> Response:
        seq = _seq(request)
        if seq is None or not await hub.drop_dead_letter(seq):
            return error(404, "no such dead letter")
        return JSONResponse({"status": "Deleted"})

    return [
        Route("/api/outbox/dead", listing, methods=["GET"]),
        Route("/api/outbox/dead/{id}/requeue", requeue, methods=["POST"]),
        Route("/api/outbox/dead/{id}", drop, methods=["DELETE"]),
    ]
