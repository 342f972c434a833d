"""A fake Flipturn REST API for tests: an httpx.MockTransport handler with cursor pagination.

It serves ``GET /api/access-ids`` and ``GET /api/vehicles`` in the shapes of
../shared/flipturn-api, checks the Bearer key, and can be told to answer given pages with given
statuses (``fail``), to test retries, rate limits and partial syncs.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def access_id(
    n: int,
    *,
    tag: str | None = None,
    status: str = "Authorized",
    kind: str = "RFID",
    vehicle: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An access id in the Flipturn shape."""
    return {
        "id": n,
        "ocppIdTag": tag if tag is not None else f"TAG{n:06d}",
        "type": kind,
        "name": f"Card {n}",
        "authorizationStatus": status,
        "authorizedAt": "2026-01-01T00:00:00.000Z",
        "revokedAt": "2026-02-01T00:00:00.000Z" if status == "Revoked" else None,
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-02T00:00:00.000Z",
        "vehicle": vehicle,
        "customer": {"name": "Depot Fleet"} if n % 2 else None,
    }


def vehicle(n: int, *, access_ids: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A vehicle in the Flipturn shape."""
    return {
        "id": n,
        "name": f"Van {n}",
        "make": "Ford",
        "model": "E-Transit",
        "vin": f"VIN{n:08d}",
        "licensePlate": None,
        "hasTelematics": False,
        "customer": None,
        "accessIds": access_ids or [],
    }


@dataclass
class FakeFlipturn:
    access_ids: list[Any]
    vehicles: list[Any] = field(default_factory=list)
    page_size: int = 3
    api_key: str = "secret-key"
    # (path, page index) -> statuses to answer before the page is served (one per request)
    fail: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    retry_after: str | None = None
    requests: list[httpx.Request] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "Unauthorized"})
        path = request.url.path
        if path == "/api/access-ids":
            items = self.access_ids
        elif path == "/api/vehicles":
            items = self.vehicles
        else:
            return httpx.Response(404, json={"error": "Not found"})
        cursor = request.url.params.get("cursor")
        page = int(cursor.removeprefix("c")) if cursor else 0
        statuses = self.fail.get((path, page))
        if statuses:
            status = statuses.pop(0)
            headers = (
                {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
            )
            return httpx.Response(status, json={"error": "failure"}, headers=headers)
        start = page * self.page_size
        chunk = items[start : start + self.page_size]
        has_next = start + self.page_size < len(items)
        self.served[path] += 1
        return httpx.Response(
            200,
            json={
                "data": chunk,
                "pagination": {
                    "hasNextPage": has_next,
                    "nextPageCursor": f"c{page + 1}" if has_next else None,
                },
            },
        )


@contextlib.contextmanager
def serving(fake: FakeFlipturn) -> Iterator[str]:
    """Serve ``fake`` over real HTTP on 127.0.0.1 (a free port); yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = httpx.Request(
                "GET", f"http://127.0.0.1{self.path}", headers=dict(self.headers.items())
            )
            response = fake.handle(request)
            body = response.content
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
