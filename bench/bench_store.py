"""Store integrity costs: what each check adds, measured on this machine.

- start-up checks on a store holding N queued messages (default 100,000 3-phase MeterValues and
  StatusNotifications, as bench_outbox queues them): ``PRAGMA quick_check`` and
  ``PRAGMA integrity_check`` (page cache warm: the machine is shared, its cache is not dropped;
  on a device, add reading the file once from the card);
- the per-commit file check (``os.stat`` of the path) and the probe's ``os.statvfs``;
- the resend check of a locally answered CALL: ``call_digest`` and the indexed lookup
  ``Store.earlier_answer`` on the full store;
- schema validation that never mutates: compiled without defaults, against validating a deep copy
  (or an orjson round trip) with the defaults compiled in.

Run: ``python -m bench.bench_store --messages 100000``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sqlite3
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from bench.loadgen import meter_values
from bench.machine import describe_machine
from bench.report import emit
from gateway.ocpp import validation
from gateway.store.engine import Store, call_digest

BENCH_SUITE = "store"
STAMP = "2026-11-21T12:00:00Z"
STATUS = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}


def _per_call_us(fn: Any, number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return round(best / number * 1e6, 3)


def _timed_check(path: Path, pragma: str) -> dict[str, Any]:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA {pragma}").fetchall()  # warm the page cache
    started = time.perf_counter()
    result = db.execute(f"PRAGMA {pragma}").fetchall()
    seconds = time.perf_counter() - started
    db.close()
    return {"seconds": round(seconds, 3), "result": result[0][0]}


async def _fill(path: Path, messages: int, chargers: int) -> Store:
    store = await Store.open(path)
    per_charger = messages // chargers
    batch: list[Any] = []
    sql = (
        "INSERT INTO outbox (charger_id, ocpp_version, message_id, action, payload, created_at,"
        " digest, answer) VALUES (?, '1.6', ?, ?, ?, ?, ?, '{}')"
    )
    for c in range(chargers):
        for n in range(per_charger):
            action, payload = (
                ("StatusNotification", STATUS)
                if n % 2
                else ("MeterValues", meter_values(1, 1000 + c, n, STAMP))
            )
            batch.append(
                (
                    sql,
                    (
                        f"BENCH-{c:04d}",
                        str(n),
                        action,
                        orjson.dumps(payload).decode(),
                        time.time(),
                        call_digest(action, payload),
                    ),
                )
            )
            if len(batch) >= 2000:
                await store.write(batch)
                batch = []
    if batch:
        await store.write(batch)
    await store.fetchone("PRAGMA wal_checkpoint(TRUNCATE)")
    return store


def _validation_costs() -> dict[str, Any]:
    payload = meter_values(1, 1234, 5678, STAMP)
    event = {
        "eventType": "Updated",
        "timestamp": STAMP,
        "triggerReason": "MeterValuePeriodic",
        "seqNo": 3,
        "transactionInfo": {"transactionId": "tx-1"},
        "meterValue": [
            {
                "timestamp": STAMP,
                "sampledValue": [
                    {"value": 100.0 + i, "measurand": "Voltage", "unitOfMeasure": {"unit": "V"}}
                    for i in range(7)
                ],
            }
        ],
    }
    results: dict[str, Any] = {}
    for name, version, action, body in (
        ("v16MeterValues3Phase", "1.6", "MeterValues", payload),
        ("v201TransactionEvent7Samples", "2.0.1", "TransactionEvent", event),
    ):
        no_defaults = validation._validator(2, action, version)
        folder = "v16" if version == "1.6" else "v201"
        from importlib.resources import files

        schema_name = action if version == "1.6" else action + "Request"
        schema = json.loads(
            (files("ocpp") / folder / "schemas" / f"{schema_name}.json").read_text("utf-8-sig")
        )
        schema.pop("$schema", None)
        with_defaults = fastjsonschema.compile(
            schema, formats={"date-time": lambda _: True, "uri": lambda _: True}
        )
        results[name] = {
            "noDefaultsUs": _per_call_us(lambda v=no_defaults, b=body: v(b), 2000),
            "deepcopyThenDefaultsUs": _per_call_us(
                lambda v=with_defaults, b=body: v(copy.deepcopy(b)), 2000
            ),
            "orjsonCopyThenDefaultsUs": _per_call_us(
                lambda v=with_defaults, b=body: v(orjson.loads(orjson.dumps(b))), 2000
            ),
        }
    return results


async def run(messages: int, chargers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmpdir:
        path = Path(tmpdir) / "gateway.db"
        started = time.perf_counter()
        store = await _fill(path, messages, chargers)
        fill_s = time.perf_counter() - started
        size = path.stat().st_size
        payload = meter_values(1, 1000, 7, STAMP)
        digest = call_digest("MeterValues", payload)
        now = time.time()
        # Lookups on the event loop thread, as the session does them (hits and misses).
        loop = asyncio.get_running_loop()
        lookups = 2000
        t0 = loop.time()
        for i in range(lookups):
            await store.earlier_answer(
                "BENCH-0001", str(i * 2 % (messages // chargers)), digest, now=now
            )
        lookup_us = (loop.time() - t0) / lookups * 1e6
        t0 = loop.time()
        for _ in range(200):
            await store.probe()
        probe_us = (loop.time() - t0) / 200 * 1e6
        t0 = loop.time()
        for i in range(50):
            await store.write([("INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, ?)", (i,))])
        probe_commit_ms = (loop.time() - t0) / 50 * 1e3
        await store.close()
        stat_us = _per_call_us(lambda: os.stat(path), 20000)
        statvfs_us = _per_call_us(lambda: os.statvfs(path.parent), 20000)
        quick = _timed_check(path, "quick_check")
        full = _timed_check(path, "integrity_check")
    return {
        "machine": describe_machine(),
        "messages": messages,
        "chargers": chargers,
        "storeBytes": size,
        "fillSeconds": round(fill_s, 2),
        "quickCheck": quick,
        "integrityCheck": full,
        "statUs": stat_us,
        "statvfsUs": statvfs_us,
        "callDigestUs": _per_call_us(lambda: call_digest("MeterValues", payload), 20000),
        "earlierAnswerLookupUs": round(lookup_us, 1),
        "probeRoundUs": round(probe_us, 1),
        "probeCommitMs": round(probe_commit_ms, 2),
        "validation": _validation_costs(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chargers", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.messages, args.chargers))
    emit(result, args.json)
    return 0 if result["quickCheck"]["result"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
