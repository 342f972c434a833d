"""Power-restore storm: N chargers connect and send BootNotification at the same moment.

For each cloud (``--clouds``: ``fast`` answers handshakes at once, ``slow`` after 0.3 s,
``refusing`` answers every other one with HTTP 503: ``bench.fake_cloud --handshake-delay``,
``--refuse-every-other``) and each charger count (``--chargers``, default 100, 1,000, 2,000) the
targets (``minimal``, ``gateway``) are started fresh, each with a fresh cloud. The gateway runs
with its defaults (no rate cap: at most K handshakes in flight, gateway.core.pacer), a fresh store.

The chargers are split over ``--workers`` processes that start together at a time the parent gives
(CLOCK_MONOTONIC): each opens its WebSocket (no compression offered) and sends BootNotification as
soon as it is open, then waits up to ``--boot-timeout`` s for the answer. Per charger: the Boot
latency (send → answer). Errors: failed connections, Boots unanswered in time, CALLERRORs, wrong ids.

After the Boots, the chargers stay connected until the cloud has one live connection per charger
(the target's upstream links) or ``--links-timeout`` passes: ``linksUpS`` is that time from the
start (``linksUp99S`` when 99% were up; ``linksUp`` how many were up at the end). ``cloudBoots``
is the number of BootNotifications the cloud received (the gateway forwards a Boot live, or
replays the one it answered itself once the charger's link is up: exactly one per charger);
``peakConnectsPerS`` the busiest second of new upstream handshakes at the cloud,
``maxHandshakesInFlight`` the most it had open at once, ``refused`` the handshakes it refused. The target's CPU is utime + stime over the whole storm (from the
start until the links are up), its peak RSS VmHWM (reset before the storm).

``--offer ocpp1.6,ocpp2.0.1``: the subprotocols each charger offers, in its order (default
``ocpp1.6``; the Boot sent is 1.6's, the fake cloud selects ``ocpp1.6``): with several, a gateway
with a fresh store asks the cloud at each charger's handshake (first contact).

``--targets minimal,baseline,gateway --baseline-src DIR`` adds the gateway's code from DIR (e.g.
``git archive <commit> | tar -x -C DIR``) as target ``baseline``: before and after in one run.

Run: ``python -m bench.bench_storm`` (~3 min); ``--chargers 1000 --clouds slow --targets gateway``.
Writes ``bench/results/storm-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench import procfs
from bench.loadgen import percentile
from bench.machine import describe_machine
from bench.targets import (
    GatewayTarget,
    MinimalRelayTarget,
    Target,
    TargetUnavailable,
    start_listening_process,
)

__all__ = ["BENCH_SUITE", "main", "run_storm"]

BENCH_SUITE = "storm"
RESULTS = Path(__file__).resolve().parent / "results"
START_DELAY_S = 0.5
BOOT = {"chargePointVendor": "Bench", "chargePointModel": "AC22", "firmwareVersion": "1.0"}
# name -> (handshake delay in seconds, refuse every other handshake)
CLOUDS = {"fast": (0.0, False), "slow": (0.3, False), "refusing": (0.0, True)}


def _cloud_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


async def _one(
    url: str,
    charger_id: str,
    start_ns: int,
    boot_timeout_s: float,
    out: dict[str, Any],
    offer: list[str],
) -> ClientConnection | None:
    delay = (start_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        ws = await connect(
            f"{url}/{charger_id}",
            subprotocols=[Subprotocol(p) for p in offer],
            compression=None,
            open_timeout=30,
            ping_interval=None,
            max_size=1 << 20,
        )
    except Exception:
        out["errors"]["connect"] += 1
        return None
    sent = time.monotonic_ns()
    await ws.send(orjson.dumps([2, "boot-1", "BootNotification", BOOT]).decode())
    try:
        async with asyncio.timeout(boot_timeout_s):
            reply = orjson.loads(await ws.recv())
    except TimeoutError:
        out["errors"]["boot_timeout"] += 1
        return ws
    except Exception:
        out["errors"]["closed"] += 1
        return None
    if reply[1] != "boot-1":
        out["errors"]["wrong_id"] += 1
    elif reply[0] != 3:
        out["errors"]["callerror"] += 1
    else:
        out["latencies_ns"].append(time.monotonic_ns() - sent)
        out["answered_at_ns"].append(time.monotonic_ns() - start_ns)
    return ws


async def _worker_main(
    pipe: Connection, url: str, ids: list[str], boot_timeout_s: float, offer: list[str]
) -> None:
    out: dict[str, Any] = {"errors": Counter(), "latencies_ns": [], "answered_at_ns": []}
    pipe.send("ready")
    loop = asyncio.get_running_loop()
    start_ns: int = await loop.run_in_executor(None, pipe.recv)
    conns = await asyncio.gather(*(_one(url, i, start_ns, boot_timeout_s, out, offer) for i in ids))
    pipe.send({**out, "errors": dict(out["errors"])})
    await loop.run_in_executor(None, pipe.recv)  # hold the connections until told to close
    await asyncio.gather(*(ws.close() for ws in conns if ws is not None), return_exceptions=True)
    pipe.send("closed")


def _worker(
    pipe: Connection, url: str, ids: list[str], boot_timeout_s: float, offer: list[str]
) -> None:
    try:
        import uvloop

        run: Callable[..., Any] = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    run(_worker_main(pipe, url, ids, boot_timeout_s, offer))


def _storm(
    target: Target,
    cloud_port: int,
    chargers: int,
    *,
    workers: int,
    boot_timeout_s: float,
    links_timeout_s: float,
    id_prefix: str,
    profile: Path | None = None,
    offer: list[str] | None = None,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ids = [f"{id_prefix}{i:05d}" for i in range(chargers)]
    pipes, procs = [], []
    for w in range(workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker,
            args=(child, target.url, ids[w::workers], boot_timeout_s, offer or ["ocpp1.6"]),
            daemon=True,
        )
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for pipe in pipes:
        if not pipe.poll(120) or pipe.recv() != "ready":
            raise RuntimeError("storm worker not ready")
    before = _cloud_stats(cloud_port)
    assert target.pid is not None
    spy = None
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if profile is not None and py_spy:
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(target.pid), "--format", "raw", "--rate", "250",
             "--nonblocking", "--output", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # attached
    hwm_reset = procfs.reset_peak_rss(target.pid)
    cpu0 = procfs.cpu_seconds(target.pid)
    start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    for pipe in pipes:
        pipe.send(start_ns)
    results = []
    for pipe in pipes:
        if not pipe.poll(boot_timeout_s + 120):
            raise RuntimeError("storm worker did not report")
        results.append(pipe.recv())
    links_up_s = links_up_99_s = None
    links_up = 0
    deadline = start_ns + int(links_timeout_s * 1e9)
    while time.monotonic_ns() < deadline:
        links_up = _cloud_stats(cloud_port)["connections"] - before["connections"]
        at_s = round((time.monotonic_ns() - start_ns) / 1e9, 2)
        if links_up_99_s is None and links_up >= 0.99 * chargers:
            links_up_99_s = at_s
        if links_up >= chargers:
            links_up_s = at_s
            break
        time.sleep(0.1)
    time.sleep(1.0)  # let replayed Boots arrive
    cpu_s = procfs.cpu_seconds(target.pid) - cpu0
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    mem = procfs.memory(target.pid)
    after = _cloud_stats(cloud_port)
    for pipe in pipes:
        pipe.send("close")
    for pipe in pipes:
        pipe.poll(60) and pipe.recv()
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    latencies = sorted(ns for r in results for ns in r["latencies_ns"])
    answered_at = sorted(ns for r in results for ns in r["answered_at_ns"])
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    boots = after["byAction"].get("BootNotification", 0) - before["byAction"].get(
        "BootNotification", 0
    )
    return {
        "target": target.name,
        "chargers": chargers,
        "answered": len(latencies),
        "bootMs": {
            "p50": round(percentile(latencies, 50) / 1e6, 1),
            "p99": round(percentile(latencies, 99) / 1e6, 1),
            "max": round((latencies[-1] if latencies else 0) / 1e6, 1),
        },
        "allAnsweredS": round((answered_at[-1] if answered_at else 0) / 1e9, 2),
        "errors": sum(errors.values()),
        "errorsByKind": dict(errors),
        "linksUpS": links_up_s,
        "linksUp99S": links_up_99_s,
        "linksUp": links_up,
        "cloudBoots": boots,
        "peakConnectsPerS": after["peakHandshakesPerS"],
        "maxHandshakesInFlight": after["maxHandshakesInFlight"],
        "refused": after["refused"],
        "cpuS": round(cpu_s, 2),
        "peakRssMb": round(mem.hwm_kb / 1024, 1) if hwm_reset else None,
    }


def _target(name: str, cloud_port: int, workdir: Path, baseline_src: str | None) -> Target:
    if name == "minimal":
        return MinimalRelayTarget(cloud_port, workdir)
    if name == "baseline":
        if not baseline_src:
            raise TargetUnavailable("needs --baseline-src")
        return GatewayTarget(cloud_port, workdir, source=Path(baseline_src))
    return GatewayTarget(cloud_port, workdir)


def _start_cloud(cloud: str, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    delay, refuse = CLOUDS[cloud]
    args = [sys.executable, "-m", "bench.fake_cloud", "--handshake-delay", str(delay)]
    return start_listening_process([*args, "--refuse-every-other"] if refuse else args, log)


def run_storm(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        workdir = Path(tmp)
        log = (workdir / "cloud.log").open("wb")
        for cloud_name in args.clouds:
            for chargers in args.chargers:
                for name in args.targets:
                    # A fresh cloud per run: its busiest second of handshakes is this run's.
                    cloud, cloud_port = _start_cloud(cloud_name, log)
                    run_dir = workdir / f"{name}-{chargers}-{cloud_name}"
                    run_dir.mkdir()
                    try:
                        target = _target(name, cloud_port, run_dir, args.baseline_src)
                    except TargetUnavailable as exc:
                        print(f"[storm] {name}: {exc}", file=sys.stderr)
                        cloud.terminate()
                        cloud.wait(10)
                        continue
                    try:
                        time.sleep(1.0)
                        result = _storm(
                            target,
                            cloud_port,
                            chargers,
                            workers=args.workers,
                            boot_timeout_s=args.boot_timeout,
                            links_timeout_s=args.links_timeout,
                            id_prefix=f"STORM-{chargers}-",
                            offer=args.offer,
                            profile=(
                                RESULTS / f"profile-storm-{name}-{chargers}-{cloud_name}.txt"
                                if args.profile and name != "minimal"
                                else None
                            ),
                        )
                    finally:
                        target.stop()
                        cloud.terminate()
                        cloud.wait(10)
                    result["cloud"] = cloud_name
                    result["handshakeDelayS"] = CLOUDS[cloud_name][0]
                    result["loadAverage"] = round(os.getloadavg()[0], 2)
                    print(json.dumps(result), file=sys.stderr)
                    runs.append(result)
    return {"machine": describe_machine(), "runs": runs}


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "| cloud | chargers | target | Boot p50 / p99 / max (ms) | all answered (s) | errors "
        "| 99% / all links up (s) | Boots at cloud | max handshakes in flight | peak connects/s "
        "| refused | CPU (s) | peak RSS (MB) | load avg |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in result["runs"]:
        b = r["bootMs"]
        all_up = r["linksUpS"] if r["linksUpS"] is not None else f"{r['linksUp']:,} up at end"
        lines.append(
            f"| {r['cloud']} | {r['chargers']:,} | {r['target']} "
            f"| {b['p50']:.0f} / {b['p99']:.0f} / {b['max']:.0f} | {r['allAnsweredS']} "
            f"| {r['errors']} | {r['linksUp99S']} / {all_up} | {r['cloudBoots']:,} "
            f"| {r['maxHandshakesInFlight']} | {r['peakConnectsPerS']} | {r['refused']} "
            f"| {r['cpuS']} | {r['peakRssMb']} | {r['loadAverage']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def numbers(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
        return lambda text: [kind(x) for x in text.split(",")]

    parser.add_argument("--chargers", type=numbers(int), default=[100, 1000, 2000])
    parser.add_argument(
        "--clouds",
        type=lambda t: t.split(","),
        default=["fast", "slow"],
        help="fast (0 s handshakes), slow (0.3 s), refusing (every other one refused with 503)",
    )
    parser.add_argument(
        "--targets",
        type=lambda t: t.split(","),
        default=["minimal", "gateway"],
        help="minimal, gateway, baseline (the gateway's code from --baseline-src)",
    )
    parser.add_argument("--baseline-src", help="directory holding an earlier gateway's code")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateway targets (bench/results/profile-storm-*.txt, collapsed stacks)",
    )
    parser.add_argument(
        "--offer",
        type=lambda t: t.split(","),
        default=["ocpp1.6"],
        help="the subprotocols each charger offers, in its order (its Boot is 1.6's)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--boot-timeout", type=float, default=10.0)
    parser.add_argument("--links-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 3 sockets per charger, inherited
    result = run_storm(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "storm-latest.json").write_text(json.dumps(result, indent=2))
    text = _markdown(result)
    (RESULTS / "storm-latest.md").write_text(text + "\n")
    print(text)
    return 0 if all(r["errors"] == 0 for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
