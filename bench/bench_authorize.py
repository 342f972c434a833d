"""Benchmark: offline Authorize against 100,000 access ids, next to a locally answered Heartbeat.

Target (issue): offline Authorize p99 <= 1.2x the p99 of a Heartbeat the gateway answers itself,
both measured charger -> gateway -> charger over loopback in the same run.

1. The store is filled through the real sync path: ``bench.bench_sync --serve`` (a real HTTP fake
   of the Flipturn API on 127.0.0.1, in a child process) and the gateway's ``FlipturnClient`` +
   ``sync_once`` into a fresh SQLite file (1 in 3 access ids a Vehicle MAC tag, 1 in 50 Revoked).
2. The real CLI (``flipturn-gateway --config <toml> run``) starts as a subprocess in standalone mode
   (no upstream URL), so every CALL is answered locally, with ``offline.unknown_tags = "reject"``.
3. ``--chargers`` OCPP 1.6 chargers (this process, one event loop) connect and boot, then run
   alternating blocks ``Heartbeat, Authorize, Heartbeat, ...`` of ``--block-s`` seconds each; the
   first ``--warmup-blocks`` pairs are not measured. Each charger sends at ``--rate`` CALLs/s from
   a random phase (0 = closed loop), never more than one outstanding (OCPP-J 1.6 §4.1.1). RTT is
   ``perf_counter_ns`` from before ``send`` to the matching CALLRESULT.
4. Authorize tags are drawn at random: ``--known`` share of synced Authorized ids, ``--revoked``
   share of synced Revoked ids, the rest unknown; every answer's status is checked against the
   expected one (Accepted / Blocked / Invalid).
5. The same again with OCPP 2.0.1 chargers (``--no-v201`` skips it).

Reports p50/p90/p99/p99.9 per action and version, the Authorize/Heartbeat ratios (the p99 one also
per quarter of the run, to show how much outside work moved it), the gateway's
CPU time per CALL in each kind of block (utime + stime from /proc), and its RSS: idle with the
100k cache open, and peak (VmHWM) over the load. Prints markdown; the JSON goes to
``bench/results/authorize-latest.json``. Run: ``python -m bench.bench_authorize`` or
``python -m bench.run_all --suites authorize``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench import procfs
from bench.loadgen import percentile
from bench.machine import describe_machine
from bench.report import ratio
from bench.targets import HOST
from gateway.store.engine import Store
from gateway.tags.sync import FlipturnClient, sync_once

__all__ = ["BENCH_SUITE", "main", "run_authorize"]

BENCH_SUITE = "authorize"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_P99_RATIO = 1.2
_QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
_SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
_LISTENING = re.compile(r"listening for chargers on ws://[^:]+:(\d+)")
_EXPECTED = {"known": "Accepted", "revoked": "Blocked", "unknown": "Invalid"}

_CONFIG = """\
[chargers]
host = "{host}"
port = {port}

[api]
host = "{host}"
port = {api_port}

[store]
path = "{db}"

[offline]
unknown_tags = "reject"
"""


# --- tags ------------------------------------------------------------------------------------------


def synced_tag(n: int) -> str:
    """The ocppIdTag ``bench.bench_sync`` gives access id ``n`` (Vehicle MAC or RFID)."""
    return f"{n:012X}" if n % 3 == 0 else f"RFID{n:08d}"


def draw_tag(rng: random.Random, access_ids: int, known: float, revoked: float) -> tuple[str, str]:
    """(kind, tag): a synced Authorized id, a synced Revoked one (every 50th), or an unknown tag."""
    roll = rng.random()
    if roll < revoked:
        return "revoked", synced_tag(50 * rng.randint(1, access_ids // 50))
    if roll < revoked + known:
        n = rng.randint(1, access_ids)
        while n % 50 == 0:
            n = rng.randint(1, access_ids)
        return "known", synced_tag(n)
    return "unknown", f"UNKNOWN{rng.randrange(10**8):08d}"


def authorize_payload(version: str, tag: str) -> dict[str, Any]:
    if version == "1.6":
        return {"idTag": tag}
    kind = "ISO14443" if tag.startswith("RFID") else "MacAddress"
    return {"idToken": {"idToken": tag, "type": kind}}


def answer_status(version: str, payload: dict[str, Any]) -> str | None:
    info = payload.get("idTagInfo" if version == "1.6" else "idTokenInfo")
    status = info.get("status") if isinstance(info, dict) else None
    return status if isinstance(status, str) else None


# --- store and gateway -----------------------------------------------------------------------------


def fill_store(runner: asyncio.Runner, db: Path, access_ids: int, vehicles: int) -> dict[str, Any]:
    """Sync ``access_ids`` ids from a local fake Flipturn API into ``db`` (the real sync path)."""
    args = ["--access-ids", str(access_ids), "--vehicles", str(vehicles), "--page-size", "1000"]
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_sync", "--serve", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = f"http://{HOST}:{int(child.stdout.readline())}"
        return runner.run(_sync(db, url))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


async def _sync(db: Path, url: str) -> dict[str, Any]:
    store = await Store.open(db)
    try:
        started = time.perf_counter()
        async with FlipturnClient(url, "bench-key") as client:
            result = await sync_once(store, client)
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    return {"access_ids": result.access_ids, "vehicles": result.vehicles, "sync_s": elapsed}


class StandaloneGateway:
    """``flipturn-gateway run`` as a subprocess with no upstream: it answers every CALL itself.

    It listens on ephemeral ports (``port = 0``) and the runner reads the charger port from its
    start-up log line, so benchmarks running beside this one cannot take the port in between.
    """

    def __init__(self, workdir: Path, db: Path, start_timeout_s: float = 30.0) -> None:
        config = workdir / "config.toml"
        config.write_text(_CONFIG.format(host=HOST, port=0, api_port=0, db=db))
        script = Path(sys.executable).parent / "flipturn-gateway"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPTURN_GATEWAY_")}
        self.log_path = workdir / "gateway.log"
        self.proc = subprocess.Popen(
            [*command, "--config", str(config), "run"],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + start_timeout_s
        while (match := _LISTENING.search(self.log_path.read_text(errors="replace"))) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.url = f"ws://{HOST}:{match[1]}/ocpp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --- load ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Samples:
    blocks: dict[str, list[array[int]]] = field(default_factory=dict)  # RTTs per measured block
    statuses: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float)
    )  # gateway CPU over measured blocks
    calls: Counter[str] = field(default_factory=Counter)  # CALLs answered in measured blocks

    def start_block(self, action: str) -> None:
        self.blocks.setdefault(action, []).append(array("q"))

    def add(self, action: str, rtt_ns: int) -> None:
        self.blocks[action][-1].append(rtt_ns)

    def pooled(self, action: str, blocks: slice = slice(None)) -> list[int]:
        """Sorted RTTs of ``action`` over the given measured blocks."""
        return sorted(rtt for block in self.blocks.get(action, [])[blocks] for rtt in block)


class _Charger:
    def __init__(self, ws: ClientConnection, version: str) -> None:
        self.ws = ws
        self.version = version
        self.next_id = 0

    async def call(self, action: str, payload: dict[str, Any]) -> tuple[int, list[Any]]:
        """(RTT in ns, reply frame) of one CALL."""
        self.next_id += 1
        mid = str(self.next_id)
        frame = orjson.dumps([2, mid, action, payload]).decode()
        sent = time.perf_counter_ns()
        await self.ws.send(frame)
        reply = await self.ws.recv()
        rtt = time.perf_counter_ns() - sent
        message = orjson.loads(reply)
        if message[1] != mid:
            raise RuntimeError(f"answer to {message[1]!r}, expected {mid!r}")
        return rtt, message


async def _connect(url: str, version: str, count: int, prefix: str) -> list[_Charger]:
    async def one(i: int) -> _Charger:
        ws = await connect(
            f"{url}/{prefix}{i:04d}",
            subprotocols=[Subprotocol(_SUBPROTOCOL[version])],
            compression=None,
            ping_interval=None,
        )
        charger = _Charger(ws, version)
        boot = (
            {"chargePointVendor": "Bench", "chargePointModel": "AC22"}
            if version == "1.6"
            else {
                "reason": "PowerUp",
                "chargingStation": {"vendorName": "Bench", "model": "AC22"},
            }
        )
        await charger.call("BootNotification", boot)
        return charger

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _run_block(
    chargers: list[_Charger],
    action: str,
    until_ns: int,
    rate: float,
    next_tag: Callable[[], tuple[str, str]],
    samples: _Samples | None,
) -> None:
    """Every charger sends ``action`` until ``until_ns``; record RTTs into ``samples`` if given."""
    period_ns = int(1e9 / rate) if rate > 0 else 0

    async def drive(charger: _Charger) -> None:
        due = time.perf_counter_ns() + (random.randrange(period_ns) if period_ns else 0)
        while True:
            now = time.perf_counter_ns()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
            if time.perf_counter_ns() >= until_ns:
                return
            kind = None
            payload: dict[str, Any] = {}
            if action == "Authorize":
                kind, tag = next_tag()
                payload = authorize_payload(charger.version, tag)
            rtt, message = await charger.call(action, payload)
            due = max(due + period_ns, time.perf_counter_ns()) if period_ns else 0
            if samples is None:
                continue
            if message[0] != 3:
                samples.errors[f"{action}: {message[2]}"] += 1
                continue
            samples.add(action, rtt)
            if kind is not None:
                samples.statuses[(kind, answer_status(charger.version, message[2]))] += 1

    await asyncio.gather(*(drive(c) for c in chargers))


async def measure(
    url: str, version: str, pid: int, args: argparse.Namespace, rng: random.Random
) -> _Samples:
    """Alternating Heartbeat / Authorize blocks for one protocol version."""
    chargers = await _connect(url, version, args.chargers, f"AUTH{version.replace('.', '')}-")

    def next_tag() -> tuple[str, str]:
        return draw_tag(rng, args.access_ids, args.known, args.revoked)

    samples = _Samples()
    try:
        for pair in range(args.warmup_blocks + args.blocks):
            for action in ("Heartbeat", "Authorize"):
                measured = pair >= args.warmup_blocks
                cpu_before = procfs.cpu_seconds(pid)
                if measured:
                    samples.start_block(action)
                until = time.perf_counter_ns() + int(args.block_s * 1e9)
                await _run_block(
                    chargers, action, until, args.rate, next_tag, samples if measured else None
                )
                if measured:
                    samples.cpu_s[action] += procfs.cpu_seconds(pid) - cpu_before
                    samples.calls[action] += len(samples.blocks[action][-1])
    finally:
        await asyncio.gather(*(c.ws.close() for c in chargers), return_exceptions=True)
    return samples


# --- report ----------------------------------------------------------------------------------------


def segment_p99_ratios(samples: _Samples, segments: int) -> list[float | None]:
    """Authorize/Heartbeat p99 ratio in each of ``segments`` consecutive runs of measured pairs.

    On a shared machine one burst of outside work can land in a few blocks of one kind and move
    the pooled p99; the spread of these ratios shows how much of a result that is.
    """
    pairs = min(len(samples.blocks.get(a, [])) for a in ("Heartbeat", "Authorize"))
    bounds = [round(i * pairs / segments) for i in range(segments + 1)]
    return [
        ratio(
            percentile(samples.pooled("Authorize", slice(lo, hi)), 99),
            percentile(samples.pooled("Heartbeat", slice(lo, hi)), 99),
        )
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]


def summarise(samples: _Samples, segments: int = 4) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for action in ("Heartbeat", "Authorize"):
        ordered = samples.pooled(action)
        calls = samples.calls[action]
        out[action] = {
            "calls": len(ordered),
            **{name: round(percentile(ordered, q) / 1e3, 1) for name, q in _QUANTILES.items()},
            "cpu_us_per_call": round(1e6 * samples.cpu_s[action] / calls, 1) if calls else None,
        }
    hb, auth = out["Heartbeat"], out["Authorize"]
    out["ratios"] = {name: ratio(auth[name], hb[name]) for name in _QUANTILES}
    out["ratios"]["cpu_per_call"] = ratio(auth["cpu_us_per_call"], hb["cpu_us_per_call"])
    out["p99_ratio_by_segment"] = segment_p99_ratios(samples, segments)
    out["statuses"] = {f"{k}->{s}": n for (k, s), n in sorted(samples.statuses.items(), key=str)}
    out["wrong_status"] = sum(
        n for (kind, status), n in samples.statuses.items() if status != _EXPECTED[kind]
    )
    out["errors"] = dict(samples.errors)
    return out


def render_markdown(report: dict[str, Any]) -> str:
    machine, options = report["machine"], report["options"]
    lines = [
        f"## Offline authorize, {report['started_at']} ({report['elapsed_s']:.0f} s)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}, "
        f"websockets {machine['websockets']}, uvloop {machine['uvloop']}.",
        f"{report['store']['access_ids']:,} access ids synced in {report['store']['sync_s']:.1f} s; "
        f"{options['chargers']} chargers x {options['rate']:g} CALL/s, blocks of "
        f"{options['block_s']:g} s, {options['blocks']} measured pairs after "
        f"{options['warmup_blocks']} warm-up pairs. Gateway RSS idle {report['idle_rss_mb']} MB, "
        f"peak {report['peak_rss_mb']} MB. Load average at the end: "
        f"{' / '.join(str(x) for x in report['load_average'])}.",
        "",
        "| version | action | calls | p50 µs | p90 µs | p99 µs | p99.9 µs | CPU µs/call |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for version, result in report["versions"].items():
        for action in ("Heartbeat", "Authorize"):
            row = result[action]
            lines.append(
                f"| {version} | {action} | {row['calls']:,} | {row['p50']:,.0f} "
                f"| {row['p90']:,.0f} | {row['p99']:,.0f} | {row['p999']:,.0f} "
                f"| {row['cpu_us_per_call'] if row['cpu_us_per_call'] is not None else '-'} |"
            )
    lines += [
        "",
        "| version | p50 ratio | p90 ratio | p99 ratio (target <= 1.2) | p99.9 ratio "
        "| p99 ratio per quarter of the run | CPU ratio | met | wrong status | errors |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | :---: | ---: | ---: |",
    ]
    for version, result in report["versions"].items():
        r = result["ratios"]
        met = r["p99"] is not None and r["p99"] <= TARGET_P99_RATIO
        lines.append(
            f"| {version} | {r['p50']} | {r['p90']} | {r['p99']} | {r['p999']} "
            f"| {', '.join(str(x) for x in result['p99_ratio_by_segment'])} "
            f"| {r['cpu_per_call']} | {'yes' if met else '**no**'} | {result['wrong_status']} "
            f"| {sum(result['errors'].values())} |"
        )
    return "\n".join([*lines, ""])


def run_authorize(args: argparse.Namespace, runner: asyncio.Runner) -> dict[str, Any]:
    started_at = time.time()
    rng = random.Random(args.seed)
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="flipturn-authbench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "gateway.db"
        store_info = fill_store(runner, db, args.access_ids, args.vehicles)
        gateway = StandaloneGateway(workdir, db)
        try:
            time.sleep(args.settle)  # before reading idle memory
            idle_kb = procfs.memory(gateway.pid).rss_kb
            hwm_reset = procfs.reset_peak_rss(gateway.pid)
            versions = ["1.6", "2.0.1"] if args.v201 else ["1.6"]
            results = {
                v: summarise(runner.run(measure(gateway.url, v, gateway.pid, args, rng)))
                for v in versions
            }
            peak_kb = procfs.memory(gateway.pid).hwm_kb
        finally:
            gateway.stop()
    return {
        "kind": "authorize",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "elapsed_s": round(time.time() - started_at, 1),
        "machine": describe_machine(),
        "options": {
            k: getattr(args, k)
            for k in ("chargers", "rate", "block_s", "blocks", "warmup_blocks", "known", "revoked")
        },
        "store": {**store_info, "sync_s": round(store_info["sync_s"], 2)},
        "load_average": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
        "idle_rss_mb": round(idle_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "peak_rss_reset": hwm_reset,
        "versions": results,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--access-ids", type=int, default=100_000)
    parser.add_argument("--vehicles", type=int, default=1_000)
    parser.add_argument("--chargers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20.0, help="CALLs/s per charger; 0 = closed")
    parser.add_argument("--block-s", type=float, default=0.5)
    parser.add_argument("--blocks", type=int, default=32, help="measured Heartbeat/Authorize pairs")
    parser.add_argument("--warmup-blocks", type=int, default=2)
    parser.add_argument("--known", type=float, default=0.7, help="share of synced Authorized tags")
    parser.add_argument("--revoked", type=float, default=0.1, help="share of synced Revoked tags")
    parser.add_argument("--no-v201", dest="v201", action="store_false")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds before reading idle memory"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        report = run_authorize(args, runner)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "authorize-latest.json").write_text(json.dumps(report, indent=2))
    print(render_markdown(report))
    bad = [v for v, r in report["versions"].items() if r["wrong_status"] or r["errors"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
