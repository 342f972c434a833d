"""Benchmark: the size and render time of ``/metrics`` with many chargers, and what a Prometheus
Agent's WAL holds per sample of it (docs/fleet.md sizes the agent's buffer from these).

1. A gateway runs in this process (its real ``Gateway``: store in a temporary directory, chargers
   and API on 127.0.0.1) with an upstream URL on a closed port, so every charger is connected
   without a cloud link (``flipturn_gateway_charger_link_up`` 0: every per-charger series exists).
2. ``--chargers`` OCPP 1.6 chargers connect over loopback and send a BootNotification each
   (answered by the gateway itself; the depot view keeps the charger).
3. ``/metrics`` is rendered ``--reps`` times in process (``generate_latest`` of the gateway's
   registry: every collector, per-charger ones included) and fetched as many times over HTTP
   (uvicorn + Starlette in the same event loop): bytes, samples, time to render (median, p90).
4. With ``--agent-s S`` > 0 and Debian's ``prometheus`` installed: a Prometheus Agent with
   contrib/prometheus/agent.yml (port substituted, scrape interval ``--agent-interval-s``,
   remote_write to a closed port: the depot is offline, the WAL keeps everything) scrapes the
   gateway for S seconds; the WAL's bytes on disk over the samples appended give bytes per sample.

Prints markdown; the JSON goes to ``bench/results/scrape-latest.json``. Run:
``python -m bench.bench_scrape`` or ``python -m bench.run_all --suites scrape``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import generate_latest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.machine import describe_machine
from bench.targets import HOST, free_port
from gateway.app import Gateway
from gateway.config import Settings

__all__ = ["BENCH_SUITE", "main"]

BENCH_SUITE = "scrape"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
AGENT_TEMPLATE = Path(__file__).resolve().parent.parent / "contrib" / "prometheus" / "agent.yml"
BOOT = {"chargePointVendor": "Bench", "chargePointModel": "Scrape"}


async def _charger(port: int, cid: str) -> ClientConnection:
    ws = await connect(
        f"ws://{HOST}:{port}/ocpp/{cid}", subprotocols=[Subprotocol("ocpp1.6")], max_queue=None
    )
    await ws.send(orjson.dumps([2, "boot", "BootNotification", BOOT]).decode())
    answer = orjson.loads(await ws.recv())
    assert answer[0] == 3 and answer[2]["status"] == "Accepted", answer
    return ws


def _times_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
    }


def _fetch(port: int, reps: int) -> list[float]:
    times: list[float] = []
    with httpx.Client(base_url=f"http://{HOST}:{port}") as api:
        for _ in range(reps):
            t0 = time.perf_counter()
            response = api.get("/metrics")
            times.append(time.perf_counter() - t0)
            assert response.status_code == 200
    return times


def _agent_mode(binary: str) -> tuple[str, str]:
    """The binary's version line and its agent flag (``--agent`` from Prometheus 3)."""
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\d+)\.", version)
    return version, "--agent" if match and int(match[1]) >= 3 else "--enable-feature=agent"


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def _agent_wal(
    api_port: int, seconds: float, interval_s: float, work: Path
) -> dict[str, Any]:
    """Bytes of the agent's WAL per sample appended, while remote_write cannot send."""
    binary = shutil.which("prometheus")
    if binary is None:
        return {"skipped": "no prometheus binary (apt-get install prometheus)"}
    version, agent_flag = _agent_mode(binary)
    text = AGENT_TEMPLATE.read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{api_port}")
    text = text.replace("scrape_interval: 30s", f"scrape_interval: {interval_s:g}s")
    text = text.replace(
        "https://prometheus.example.com/api/v1/write",
        f"http://127.0.0.1:{free_port()}/api/v1/write",  # nothing listens: offline
    )
    config = work / "agent.yml"
    config.write_text(text)
    wal = work / "agent-wal"
    web = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary,
        agent_flag,
        f"--config.file={config}",
        f"--storage.agent.path={wal}",
        "--storage.agent.wal-compression",
        f"--web.listen-address=127.0.0.1:{web}",
        "--storage.remote.flush-deadline=1s",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(seconds)
        async with httpx.AsyncClient() as client:
            own = (await client.get(f"http://127.0.0.1:{web}/metrics")).text
    finally:
        proc.terminate()
        await proc.wait()
    appended = sum(
        float(line.rsplit(" ", 1)[1])
        for line in own.splitlines()
        if line.startswith("prometheus_agent_samples_appended_total")
    )
    size = _du(wal)
    return {
        "seconds": seconds,
        "scrape_interval_s": interval_s,
        "samples_appended": int(appended),
        "wal_bytes": size,
        "bytes_per_sample": round(size / appended, 2) if appended else None,
        "prometheus": version.splitlines()[0] if version else "",
    }


async def run(chargers: int, reps: int, agent_s: float, agent_interval_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        work = Path(tmp)
        settings = Settings(
            chargers={"host": HOST, "port": 0},
            api={"host": HOST, "port": 0},
            store={"path": str(work / "gateway.db")},
            upstream={"url": f"ws://{HOST}:{free_port()}/ocpp"},  # refused: links stay down
        )
        gateway = Gateway(settings, reconnect_max_s=3600)
        await gateway.start()
        sockets: list[ClientConnection] = []
        try:
            for start in range(0, chargers, 100):
                batch = range(start, min(chargers, start + 100))
                sockets += await asyncio.gather(
                    *(_charger(gateway.charger_port, f"CP-{i:05d}") for i in batch)
                )
            assert gateway.hub is not None and gateway.hub.chargers_connected() == chargers
            renders: list[float] = []
            body = b""
            for _ in range(reps):
                t0 = time.perf_counter()
                body = generate_latest(gateway.registry)
                renders.append(time.perf_counter() - t0)
            # From another thread, as a scraper would be: the event loop only serves.
            fetches = await asyncio.to_thread(_fetch, gateway.api_port, reps)
            lines = [line for line in body.decode().splitlines() if not line.startswith("#")]
            per_charger = [line for line in lines if 'charger="' in line]
            result: dict[str, Any] = {
                "chargers": chargers,
                "bytes": len(body),
                "samples": len(lines),
                "per_charger_samples": len(per_charger),
                "per_charger_bytes": sum(len(line) + 1 for line in per_charger),
                "render": _times_ms(renders),
                "http_get": _times_ms(fetches),
            }
            if agent_s > 0:
                result["agent"] = await _agent_wal(
                    gateway.api_port, agent_s, agent_interval_s, work
                )
        finally:
            for ws in sockets:
                await ws.close()
            await gateway.stop()
    return result


def render_markdown(report: dict[str, Any]) -> str:
    out = [
        "| chargers | bytes | samples | per-charger samples (bytes) | render median / p90 |"
        " GET /metrics median / p90 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        out.append(
            f"| {r['chargers']:,} | {r['bytes']:,} | {r['samples']:,} |"
            f" {r['per_charger_samples']:,} ({r['per_charger_bytes']:,}) |"
            f" {r['render']['median_ms']} / {r['render']['p90_ms']} ms |"
            f" {r['http_get']['median_ms']} / {r['http_get']['p90_ms']} ms |"
        )
    for r in report["runs"]:
        agent = r.get("agent")
        if agent and "bytes_per_sample" in agent:
            out.append(
                f"\nAgent WAL ({agent['prometheus']}), {r['chargers']:,} chargers,"
                f" {agent['seconds']:g} s at {agent['scrape_interval_s']:g} s:"
                f" {agent['samples_appended']:,} samples in {agent['wal_bytes']:,} bytes"
                f" = {agent['bytes_per_sample']} bytes per sample"
            )
    return "\n".join(out)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("gateway").setLevel(logging.ERROR)  # every link is down, by design
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", default="0,1000", help="comma-separated charger counts")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--agent-s", type=float, default=60.0, help="0: no agent run")
    parser.add_argument("--agent-interval-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.chargers.split(",")]
    runs = []
    for n in counts:
        agent_s = args.agent_s if n == max(counts) else 0.0
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:  # as `flipturn-gateway run`
            runs.append(runner.run(run(n, args.reps, agent_s, args.agent_interval_s)))
        print(f"[scrape] {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    report = {"machine": describe_machine(), "runs": runs}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "scrape-latest.json").write_text(json.dumps(report, indent=2))
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
