"""Local API views of the cache, in the Flipturn shapes, and ``POST /api/sync``.

design.md "Local HTTP API": ``GET /api/access-ids[?cursor=]`` and ``GET /api/vehicles[?cursor=]``
answer ``{"data": [...], "pagination": {"hasNextPage", "nextPageCursor"}}``; the detail routes
answer ``{"accessId": ...}`` / ``{"vehicle": ...}``, or 404 ``{"error": ...}``.
``POST /api/sync`` answers ``{"accessIds", "vehicles", "durationS"}`` or 502 with the API's error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api.server import error
from gateway.errors import SyncError
from gateway.store.engine import Store
from gateway.tags.flipturn import Row, access_id_json, vehicle_json
from gateway.tags.sync import SyncService

__all__ = ["cache_routes"]

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000

Lister = Callable[[int | None, int], Awaitable[Sequence[Row]]]


def _page_args(request: Request) -> tuple[int | None, int] | JSONResponse:
    """(after id, limit) from ``?cursor=&limit=``; the cursor is the last id of the previous page."""
    cursor = request.query_params.get("cursor")
    try:
        after = int(cursor) if cursor else None
    except ValueError:
        return error(422, "cursor is not one this API gave out")
    try:
        limit = int(request.query_params.get("limit", DEFAULT_PAGE))
    except ValueError:
        return error(422, "limit must be an integer")
    return after, min(MAX_PAGE, max(1, limit))


async def _page(
    request: Request, lister: Lister, shape: Callable[[Row], dict[str, Any]]
) -> Response:
    args = _page_args(request)
    if isinstance(args, JSONResponse):
        return args
    after, limit = args
    rows = await lister(after, limit + 1)  # one more tells whether a next page exists
    has_next = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse(
        {
            "data": [shape(row) for row in rows],
            "pagination": {
                "hasNextPage": has_next,
                "nextPageCursor": str(rows[-1]["id"]) if has_next else None,
            },
        }
    )


def _id(request: Request) -> int | None:
    try:
        return int(request.path_params["id"])
    except ValueError:
        return None


def cache_routes(store: Store, sync: SyncService | None) -> list[BaseRoute]:
    """The routes to pass to ``api.build_api``; ``sync`` is None when ``flipturn.api_key`` is unset."""

    async def access_ids(request: Request) -> Response:
        return await _page(request, store.list_access_ids, access_id_json)

    async def access_id(request: Request) -> Response:
        key = _id(request)
        row = await store.get_access_id(key) if key is not None else None
        if row is None:
            return error(404, f"access id {request.path_params['id']} not found")
        return JSONResponse({"accessId": access_id_json(row)})

    async def vehicles(request: Request) -> Response:
        return await _page(request, store.list_vehicles, vehicle_json)

    async def vehicle(request: Request) -> Response:
        key = _id(request)
        row = await store.get_vehicle(key) if key is not None else None
        if row is None:
            return error(404, f"vehicle {request.path_params['id']} not found")
        return JSONResponse({"vehicle": vehicle_json(row)})

    async def sync_now(request: Request) -> Response:
        if sync is None:
            return error(503, "sync is disabled: flipturn.api_key is not set")
        try:
            result = await sync.sync_now()
        except SyncError as exc:
            return error(502, str(exc))
        return JSONResponse(
            {
                "accessIds": result.access_ids,
                "vehicles": result.vehicles,
                "durationS": round(result.duration_s, 3),
            }
        )

    return [
        Route("/api/access-ids", access_ids, methods=["GET"]),
        Route("/api/access-ids/{id}", access_id, methods=["GET"]),
        Route("/api/vehicles", vehicles, methods=["GET"]),
        Route("/api/vehicles/{id}", vehicle, methods=["GET"]),
        Route("/api/sync", sync_now, methods=["POST"]),
    ]
