"""Benchmark: a full Flipturn sync of 100,000 access ids from a local fake API.

The fake API is a real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer``, pages rendered
up front) running in a child process, so its memory is not counted. This process runs the
gateway's own ``FlipturnClient`` and ``sync_once`` against a fresh SQLite file and reports:

* wall time of a first sync (empty cache) and of a second one (replacing 100k rows);
* peak RSS of this process (``ru_maxrss``) before and after the syncs;
* latency of durable group commits (``Store.write``, as the outbox uses) made every 10 ms while
  the sync runs: the write lock must never be held long;
* ``TagCache.authorize`` latency over the 100k-tag cache.

Run: ``python -m bench.bench_sync [--access-ids N] [--vehicles N] [--page-size N]`` (or
``make bench BENCH_ARGS=...`` / ``python -m bench.run_all --suites sync``). Prints the figures as JSON
and writes them to ``bench/results/sync-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from bench.machine import describe_machine
from gateway.store.engine import Store
from gateway.tags.cache import TagCache
from gateway.tags.sync import FlipturnClient, SyncResult, sync_once


def _access_id(n: int) -> dict[str, Any]:
    is_vehicle = n % 3 == 0
    return {
        "id": n,
        "ocppIdTag": f"{n:012X}" if is_vehicle else f"RFID{n:08d}",
        "type": "Vehicle" if is_vehicle else "RFID",
        "name": f"Access id {n}",
        "authorizationStatus": "Revoked" if n % 50 == 0 else "Authorized",
        "authorizedAt": "2026-01-01T00:00:00.000Z",
        "revokedAt": "2026-02-01T00:00:00.000Z" if n % 50 == 0 else None,
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-02T00:00:00.000Z",
        "vehicle": (
            {
                "id": n // 3,
                "make": "Ford",
                "model": "E-Transit",
                "name": f"Van {n // 3}",
                "vin": None,
            }
            if is_vehicle
            else None
        ),
        "customer": {"name": "Depot Fleet"},
    }


def _vehicle(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "name": f"Van {n}",
        "make": "Ford",
        "model": "E-Transit",
        "vin": f"VIN{n:014d}",
        "licensePlate": None,
        "hasTelematics": False,
        "customer": {"name": "Depot Fleet"},
        "accessIds": [
            {"id": n * 3, "ocppIdTag": f"{n * 3:012X}", "authorizationStatus": "Authorized"}
        ],
    }


def _pages(items: list[dict[str, Any]], page_size: int) -> list[bytes]:
    pages: list[bytes] = []
    for start in range(0, max(len(items), 1), page_size):
        has_next = start + page_size < len(items)
        body = {
            "data": items[start : start + page_size],
            "pagination": {
                "hasNextPage": has_next,
                "nextPageCursor": str(len(pages) + 1) if has_next else None,
            },
        }
        pages.append(json.dumps(body).encode())
    return pages


def serve(access_ids: int, vehicles: int, page_size: int) -> None:
    """Child process: serve the fake API; print the port, then run until stdin closes."""
    lists = {
        "/api/access-ids": _pages([_access_id(n) for n in range(1, access_ids + 1)], page_size),
        "/api/vehicles": _pages([_vehicle(n) for n in range(1, vehicles + 1)], page_size),
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API would allow
        disable_nagle_algorithm = True  # headers and body are separate writes

        def do_GET(self) -> None:
            url = urlparse(self.path)
            cursor = parse_qs(url.query).get("cursor", ["0"])[0]
            body = lists[url.path][int(cursor)]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


BENCH_SUITE = "sync"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _commits_during(store: Store, work: asyncio.Task[SyncResult]) -> list[float]:
    """Latencies of small durable commits issued every 10 ms until ``work`` finishes."""
    await store.write([("CREATE TABLE IF NOT EXISTS bench_probe (n INTEGER)", ())])
    latencies: list[float] = []
    n = 0
    while not work.done():
        started = time.perf_counter()
        await store.write([("INSERT INTO bench_probe VALUES (?)", (n,))])
        latencies.append(time.perf_counter() - started)
        n += 1
        await asyncio.sleep(0.01)
    return latencies


async def _timed_sync(store: Store, url: str) -> tuple[SyncResult, float, list[float]]:
    async with FlipturnClient(url, "bench-key") as client:
        started = time.perf_counter()
        task = asyncio.create_task(sync_once(store, client))
        commits = await _commits_during(store, task)
        result = await task
        return result, time.perf_counter() - started, commits


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "gateway.db")
        rss_before = _rss_mib()
        first, first_s, first_commits = await _timed_sync(store, url)
        rss_first = _rss_mib()
        second, second_s, second_commits = await _timed_sync(store, url)
        rss_second = _rss_mib()

        cache = TagCache(store, unknown_tags="reject")
        now = datetime.now(UTC)
        rng = random.Random(1)
        lookups = []
        for _ in range(10_000):
            n = rng.randint(1, args.access_ids)
            tag = f"{n:012x}" if n % 3 == 0 else f"rfid{n:08d}"
            started = time.perf_counter()
            await cache.authorize(tag, now)
            lookups.append(time.perf_counter() - started)
        size_mib = (Path(tmp) / "gateway.db").stat().st_size / 2**20
        await store.close()
    return {
        "access_ids": first.access_ids,
        "vehicles": first.vehicles,
        "page_size": args.page_size,
        "first_sync_s": round(first_s, 2),
        "second_sync_s": round(second_s, 2),
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_after_first_mib": round(rss_first, 1),
        "peak_rss_after_second_mib": round(rss_second, 1),
        "commit_during_sync_p50_ms": round(_ms(first_commits + second_commits, 0.5), 2),
        "commit_during_sync_p99_ms": round(_ms(first_commits + second_commits, 0.99), 2),
        "commit_during_sync_max_ms": round(1000 * max(first_commits + second_commits), 2),
        "authorize_p50_us": round(1000 * _ms(lookups, 0.5), 1),
        "authorize_p99_us": round(1000 * _ms(lookups, 0.99), 1),
        "db_size_mib": round(size_mib, 1),
        "second_result_matches": second.access_ids == first.access_ids,
    }


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        "--access-ids",
        str(args.access_ids),
        "--vehicles",
        str(args.vehicles),
        "--page-size",
        str(args.page_size),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--access-ids", type=int, default=100_000)
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.access_ids, args.vehicles, args.page_size)
        return 0
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_sync", "--serve", *_forward(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = f"http://127.0.0.1:{int(child.stdout.readline())}"
        with runner:
            report = {"machine": describe_machine(), **runner.run(run(args, url))}
        text = json.dumps(report, indent=2)
        print(text)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "sync-latest.json").write_text(text)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
