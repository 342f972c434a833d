"""Load generator: N simulated OCPP 1.6 chargers, split across P worker processes.

Each charger opens ``{url}/{chargerId}`` with subprotocol ``ocpp1.6``, sends a BootNotification
(not measured), then CALLs from a fixed mix until the run ends, never more than one outstanding
(OCPP-J 1.6 §4.1.1). The mix, per 20 CALLs: 16 MeterValues (3-phase: energy register, current
and voltage per phase; ~610 bytes), 3 StatusNotification, 1 Heartbeat.

- open loop (``rate_per_s``): each charger sends at its rate from a random phase; a CALL that
  would be due while the previous one is still unanswered is sent as soon as the answer arrives,
  and the schedule restarts from there (no burst to catch up);
- closed loop (``rate_per_s=None``): the next CALL goes out as soon as the answer arrives.

RTT per CALL is ``perf_counter_ns`` from just before ``send`` to the matching CALLRESULT. Only
CALLs sent inside the measured window (after ``warmup_s``, for ``duration_s``) count; the
percentiles use nearest rank over all chargers of all workers. ``msgs_per_s`` is CALLs answered
per second in that window (each is two frames: the CALL and its CALLRESULT).

Workers connect and boot their chargers, report ready, and start together at a time the parent
gives (``time.monotonic_ns``, CLOCK_MONOTONIC, the same clock in every process on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

__all__ = [
    "SCENARIOS",
    "LoadResult",
    "LoadSpec",
    "Scenario",
    "meter_values",
    "percentile",
    "run_load",
]

MIX_PERIOD = 20  # per 20 CALLs: 1 Heartbeat, 3 StatusNotification, 16 MeterValues
_STATUS_SLOTS = frozenset({5, 11, 17})
_HEARTBEAT_SLOT = 0
READY_TIMEOUT_S = 120.0
START_DELAY_S = 0.2


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    chargers: int
    rate_per_s: float | None  # CALLs per second per charger; None = closed loop
    summary: str


SCENARIOS: dict[str, Scenario] = {
    "S1": Scenario("S1", 200, 1.0, "200 chargers x 1 CALL/s (large depot; latency)"),
    "S2": Scenario("S2", 50, None, "50 chargers closed loop (throughput)"),
    "S3": Scenario("S3", 1000, 0.2, "1,000 chargers x 0.2 CALL/s (connections)"),
}


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str  # charger ids are appended: {url}/{chargerId}
    chargers: int
    rate_per_s: float | None
    warmup_s: float = 2.0
    duration_s: float = 10.0
    workers: int = 2
    subprotocol: str = "ocpp1.6"
    id_prefix: str = "BENCH-"
    call_timeout_s: float = 10.0
    connect_timeout_s: float = 30.0
    connect_concurrency: int = 100  # per worker, so a relay is not hit by 1,000 handshakes at once
    compression: bool = False  # offer permessage-deflate (websockets' default offer)


@dataclass(slots=True)
class LoadResult:
    chargers: int
    connected: int
    workers: int
    rate_per_s: float | None
    warmup_s: float
    duration_s: float
    calls: int  # CALLs answered in the measured window
    calls_total: int  # CALLs answered over the whole run (boot and warm-up included)
    msgs_per_s: float
    errors: int
    errors_by_kind: dict[str, int]
    rtt_us: dict[str, float]
    connect_s: float
    by_action: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[int] | array[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return 0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meter_values(
    connector: int, transaction_id: int, energy_wh: int, timestamp: str
) -> dict[str, Any]:
    """A 3-phase MeterValues.req payload as AC chargers send it (about 610 bytes as a frame)."""

    def sample(measurand: str, value: float, unit: str, phase: str | None = None) -> dict[str, str]:
        item = {"value": f"{value:.1f}", "measurand": measurand, "unit": unit}
        if phase:
            item["phase"] = phase
        return item

    values = [
        sample("Energy.Active.Import.Register", energy_wh, "Wh"),
        *(sample("Current.Import", 16.0 + i / 10, "A", f"L{i}") for i in (1, 2, 3)),
        *(sample("Voltage", 230.0 + i / 10, "V", f"L{i}-N") for i in (1, 2, 3)),
    ]
    return {
        "connectorId": connector,
        "transactionId": transaction_id,
        "meterValue": [{"timestamp": timestamp, "sampledValue": values}],
    }


def _call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([2, message_id, action, payload]).decode()


class _Charger:
    """One simulated charger: builds its frames and records RTTs of the measured window."""

    def __init__(self, charger_id: str, index: int) -> None:
        self.charger_id = charger_id
        self.seq = index * 7 % MIX_PERIOD  # spread the mix across chargers
        self.next_id = 0
        self.energy_wh = 1000 + index
        self.transaction_id = 100000 + index

    def next_frame(self, timestamp: str) -> tuple[str, str, str]:
        self.next_id += 1
        mid = str(self.next_id)
        slot = self.seq % MIX_PERIOD
        self.seq += 1
        if slot == _HEARTBEAT_SLOT:
            return mid, "Heartbeat", _call(mid, "Heartbeat", {})
        if slot in _STATUS_SLOTS:
            payload = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
            return mid, "StatusNotification", _call(mid, "StatusNotification", payload)
        self.energy_wh += 31
        payload = meter_values(1, self.transaction_id, self.energy_wh, timestamp)
        return mid, "MeterValues", _call(mid, "MeterValues", payload)

    def boot_frame(self) -> tuple[str, str]:
        self.next_id += 1
        mid = str(self.next_id)
        payload = {
            "chargePointVendor": "Bench",
            "chargePointModel": "AC22",
            "firmwareVersion": "1.0",
        }
        return mid, _call(mid, "BootNotification", payload)


@dataclass(slots=True)
class _WorkerState:
    rtts: array[int] = field(default_factory=lambda: array("q"))
    errors: Counter[str] = field(default_factory=Counter)
    by_action: Counter[str] = field(default_factory=Counter)
    calls_total: int = 0


class _Timestamps:
    """The ISO timestamp for frames, formatted at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, _now_iso()
        return self._text


def _answer(call: list[Any]) -> str:
    """A charger's answer to a CALL from the relay: a site power guard's caps are accepted (as a
    charger that applies them does, OCPP 1.6 §5.16), anything else is NotSupported."""
    if call[2] in ("SetChargingProfile", "ClearChargingProfile"):
        return orjson.dumps([3, call[1], {"status": "Accepted"}]).decode()
    return orjson.dumps([4, call[1], "NotSupported", "", {}]).decode()


async def _call_once(
    ws: ClientConnection, mid: str, frame: str, state: _WorkerState, timeout_s: float
) -> int | None:
    """Send one CALL, wait for its answer; the RTT in ns, or None after recording an error."""
    sent = time.perf_counter_ns()
    await ws.send(frame)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                reply = await ws.recv()
                rtt = time.perf_counter_ns() - sent
                message = orjson.loads(reply)
                if message[0] == 2:  # a CALL from the other side: not part of this benchmark
                    await ws.send(_answer(message))
                    continue
                break
    except TimeoutError:
        state.errors["timeout"] += 1
        return None
    if message[1] != mid:
        state.errors["wrong_id"] += 1
        return None
    if message[0] != 3:
        state.errors["callerror" if message[0] == 4 else "bad_reply"] += 1
        return None
    state.calls_total += 1
    return rtt


async def _run_charger(
    ws: ClientConnection,
    charger: _Charger,
    spec: LoadSpec,
    window: tuple[int, int],
    start_ns: int,
    state: _WorkerState,
    clock: _Timestamps,
) -> None:
    """Drive one charger from ``start_ns`` until the end of the window (perf_counter ns)."""
    measure_from, measure_until = window
    period_ns = int(1e9 / spec.rate_per_s) if spec.rate_per_s else 0
    due = start_ns + (random.randrange(period_ns) if period_ns else 0)
    while True:
        now = time.perf_counter_ns()
        if period_ns and due > now:
            await asyncio.sleep((due - now) / 1e9)
            now = time.perf_counter_ns()
        if now >= measure_until:
            return
        mid, action, frame = charger.next_frame(clock.now())
        rtt = await _call_once(ws, mid, frame, state, spec.call_timeout_s)
        if rtt is not None and measure_from <= now < measure_until:
            state.rtts.append(rtt)
            state.by_action[action] += 1
        if period_ns:
            due += period_ns
            if due < time.perf_counter_ns():  # late: restart the schedule from the answer
                due = time.perf_counter_ns()


async def _connect(
    spec: LoadSpec, charger: _Charger, gate: asyncio.Semaphore, state: _WorkerState
) -> ClientConnection | None:
    url = f"{spec.url}/{charger.charger_id}"
    async with gate:
        try:
            ws = await connect(
                url,
                subprotocols=[Subprotocol(spec.subprotocol)],
                compression="deflate" if spec.compression else None,
                open_timeout=spec.connect_timeout_s,
                ping_interval=None,
                max_size=1 << 20,
            )
        except Exception:
            state.errors["connect"] += 1
            return None
        mid, boot = charger.boot_frame()
        try:
            await _call_once(ws, mid, boot, state, spec.connect_timeout_s)  # counts its own errors
        except Exception:
            state.errors["boot"] += 1
        return ws


async def _worker_main(pipe: Connection, spec: LoadSpec, indices: list[int]) -> dict[str, Any]:
    state = _WorkerState()
    chargers = [_Charger(f"{spec.id_prefix}{i:05d}", i) for i in indices]
    gate = asyncio.Semaphore(spec.connect_concurrency)
    t0 = time.perf_counter()
    conns = await asyncio.gather(*(_connect(spec, c, gate, state) for c in chargers))
    connect_s = time.perf_counter() - t0
    live = [(ws, c) for ws, c in zip(conns, chargers, strict=True) if ws is not None]
    pipe.send(("ready", len(live)))
    loop = asyncio.get_running_loop()
    start_mono_ns: int = await loop.run_in_executor(None, pipe.recv)
    # Convert the shared monotonic start to this process's perf_counter clock.
    offset = time.perf_counter_ns() - time.monotonic_ns()
    start_ns = start_mono_ns + offset
    measure_from = start_ns + int(spec.warmup_s * 1e9)
    window = (measure_from, measure_from + int(spec.duration_s * 1e9))
    clock = _Timestamps()

    async def drive(ws: ClientConnection, charger: _Charger) -> None:
        try:
            await _run_charger(ws, charger, spec, window, start_ns, state, clock)
        except Exception:
            state.errors["closed"] += 1

    await asyncio.gather(*(drive(ws, c) for ws, c in live))
    await asyncio.gather(*(ws.close() for ws, _ in live), return_exceptions=True)
    return {
        "connected": len(live),
        "connect_s": connect_s,
        "rtts": state.rtts.tobytes(),
        "errors": dict(state.errors),
        "by_action": dict(state.by_action),
        "calls_total": state.calls_total,
    }


def _worker(pipe: Connection, spec: LoadSpec, indices: list[int]) -> None:
    try:
        import uvloop

        run: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    try:
        result = run(_worker_main(pipe, spec, indices))
    except Exception as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("done", result))


def _summarise(spec: LoadSpec, results: list[dict[str, Any]], failures: list[str]) -> LoadResult:
    rtts: array[int] = array("q")
    errors: Counter[str] = Counter()
    by_action: Counter[str] = Counter()
    for res in results:
        chunk: array[int] = array("q")
        chunk.frombytes(res["rtts"])
        rtts.extend(chunk)
        errors.update(res["errors"])
        by_action.update(res["by_action"])
    errors["worker_failed"] += len(failures)
    ordered = sorted(rtts)
    rtt_us = {
        "p50": percentile(ordered, 50) / 1e3,
        "p90": percentile(ordered, 90) / 1e3,
        "p99": percentile(ordered, 99) / 1e3,
        "p999": percentile(ordered, 99.9) / 1e3,
        "mean": (sum(ordered) / len(ordered) / 1e3) if ordered else 0.0,
        "max": (ordered[-1] / 1e3) if ordered else 0.0,
    }
    clean = {k: v for k, v in errors.items() if v}
    return LoadResult(
        chargers=spec.chargers,
        connected=sum(r["connected"] for r in results),
        workers=spec.workers,
        rate_per_s=spec.rate_per_s,
        warmup_s=spec.warmup_s,
        duration_s=spec.duration_s,
        calls=len(ordered),
        calls_total=sum(r["calls_total"] for r in results),
        msgs_per_s=len(ordered) / spec.duration_s if spec.duration_s else 0.0,
        errors=sum(clean.values()),
        errors_by_kind=clean,
        rtt_us={k: round(v, 1) for k, v in rtt_us.items()},
        connect_s=round(max((r["connect_s"] for r in results), default=0.0), 3),
        by_action=dict(by_action),
    )


def _sleep_until(deadline_mono_ns: int) -> None:
    delay = (deadline_mono_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def run_load(
    spec: LoadSpec,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
    before_start: Callable[[], None] | None = None,
) -> LoadResult:
    """Run one load in ``spec.workers`` processes; call the hooks at the measured window's edges
    (and ``before_start`` once every charger is connected, before the load starts)."""
    ctx = mp.get_context("spawn")
    workers = max(1, min(spec.workers, spec.chargers))
    pipes: list[Connection] = []
    procs = []
    for w in range(workers):
        parent_end, child_end = ctx.Pipe()
        indices = list(range(w, spec.chargers, workers))
        proc = ctx.Process(target=_worker, args=(child_end, spec, indices), daemon=True)
        proc.start()
        pipes.append(parent_end)
        procs.append(proc)
    failures: list[str] = []
    results: list[dict[str, Any]] = []
    try:
        live = []
        for pipe in pipes:
            if not pipe.poll(READY_TIMEOUT_S):
                failures.append("worker not ready in time")
                continue
            kind, payload = pipe.recv()
            if kind == "ready":
                live.append(pipe)
            else:
                failures.append(str(payload))
        if before_start:
            before_start()
        start = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        for pipe in live:
            pipe.send(start)
        window_start = start + int(spec.warmup_s * 1e9)
        _sleep_until(window_start)
        if on_window_start:
            on_window_start()
        _sleep_until(window_start + int(spec.duration_s * 1e9))
        if on_window_end:
            on_window_end()
        for pipe in live:
            if not pipe.poll(spec.call_timeout_s + 30):
                failures.append("worker did not finish in time")
                continue
            kind, payload = pipe.recv()
            if kind == "done":
                results.append(payload)
            else:
                failures.append(str(payload))
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    return _summarise(spec, results, failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OCPP 1.6 load generator")
    parser.add_argument("--url", required=True, help="e.g. ws://127.0.0.1:9000/ocpp")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="S1")
    parser.add_argument("--chargers", type=int, help="override the scenario's charger count")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    spec = LoadSpec(
        url=args.url.rstrip("/"),
        chargers=args.chargers or scenario.chargers,
        rate_per_s=scenario.rate_per_s,
        warmup_s=args.warmup,
        duration_s=args.duration,
        workers=args.workers,
    )
    result = run_load(spec)
    print(json.dumps({"scenario": scenario.name, **result.as_dict()}, indent=2))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
