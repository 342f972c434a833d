"""Relay benchmark: the same load against every target, interleaved, in one run.

For each scenario (S1, S2, S3 of ``bench.loadgen``) the targets are started fresh, then run in
turn, ``direct, minimal, nginx, gateway, direct, minimal, ...`` for ``--reps`` repetitions, so that
drift of the machine hits all of them alike. One fake cloud serves the whole run.

Per run: the load generator's RTT percentiles, msgs/s and errors; the target's CPU time over the
measured window (utime + stime of its process tree from /proc) divided by the frames it relayed
in that window, counting both directions (each answered CALL = 2 frames: the CALL up, the
CALLRESULT down); the peak RSS during the run (VmHWM, reset before each run through
``clear_refs`` where the kernel allows); and the share of CALLs the fake cloud answered itself
(``relayed``; 100% means the target answered nothing locally). Idle RSS is VmRSS one second after
the target started, before any charger connected. The summary takes the median over repetitions
(the maximum for memory, the sum for errors).

``--compression``: the chargers offer permessage-deflate and the fake cloud accepts it, as in a
depot whose chargers and cloud both speak it (the gateway's cloud links offer it by default;
the minimal relay offers and accepts none; nginx passes the offer through end to end).

Writes ``bench/results/relay-<UTC time>.json`` and ``.md`` (and ``relay-latest.*``), prints the
markdown. Loopback (127.0.0.1) only; every phase is bounded by the flags' durations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procfs
from bench.loadgen import SCENARIOS, LoadSpec, run_load
from bench.machine import describe_machine
from bench.report import render_markdown
from bench.targets import (
    DirectTarget,
    GatewayTarget,
    MinimalRelayTarget,
    NginxTarget,
    SansIoRelayTarget,
    Target,
    TargetUnavailable,
    start_listening_process,
)

__all__ = ["ALL_TARGETS", "BENCH_SUITE", "main", "run_relay", "summarise", "write_report"]

BENCH_SUITE = "relay"
ALL_TARGETS = ("direct", "minimal", "nginx", "gateway", "gateway-site", "sansio", "baseline")
DEFAULT_TARGETS = ("direct", "minimal", "nginx", "gateway")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
IDLE_SETTLE_S = 1.0  # seconds the started targets rest before their idle memory is read
# The "baseline" target: the gateway package of an earlier commit, e.g. extracted with
# `git archive <commit> gateway | tar -x -C DIR`, run beside this tree's for before/after ratios.
BASELINE_ENV = "BENCH_BASELINE_SOURCE"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _cloud_calls(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as response:
        calls: int = json.loads(response.read())["calls"]
        return calls


def _wait_for_links(port: int, chargers: int, timeout_s: float = 60.0) -> None:
    """Until the cloud has a connection per charger: a relay that paces its upstream handshakes
    (the gateway: at most K handshakes in flight) is measured relaying, not still connecting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as response:
            if json.loads(response.read())["connections"] >= chargers:
                return
        time.sleep(0.1)


def _baseline(cloud_port: int, workdir: Path) -> Target:
    source = os.environ.get(BASELINE_ENV)
    if not source or not (Path(source) / "gateway" / "__init__.py").is_file():
        raise TargetUnavailable(f"set {BASELINE_ENV} to a directory holding an earlier gateway/")
    return GatewayTarget(cloud_port, workdir, source=Path(source))


def _start_target(name: str, cloud_port: int, workdir: Path, install_nginx: bool) -> Target:
    factories: dict[str, Callable[[], Target]] = {
        "direct": lambda: DirectTarget(cloud_port, workdir),
        "minimal": lambda: MinimalRelayTarget(cloud_port, workdir),
        "nginx": lambda: NginxTarget(cloud_port, workdir, install=install_nginx),
        "gateway": lambda: GatewayTarget(cloud_port, workdir),
        "gateway-site": lambda: GatewayTarget(cloud_port, workdir, site=True),
        "sansio": lambda: SansIoRelayTarget(cloud_port, workdir),
        "baseline": lambda: _baseline(cloud_port, workdir),
    }
    return factories[name]()


def _run_one(
    args: argparse.Namespace, scenario: str, rep: int, target: Target, cloud: Any, cloud_port: int
) -> dict[str, Any]:
    base = SCENARIOS[scenario]
    spec = LoadSpec(
        url=target.url,
        chargers=args.chargers or base.chargers,
        rate_per_s=base.rate_per_s,
        warmup_s=args.warmup,
        duration_s=args.duration,
        workers=args.workers,
        # The same charger ids in every repetition, as a depot's chargers reconnect with theirs.
        id_prefix=f"{scenario}-",
        compression=args.compression,
    )
    cpu: dict[str, float] = {}
    written: dict[str, int | None] = {}
    hwm_reset = procfs.reset_peak_rss(target.pid) if target.pid else False

    site: dict[str, Any] = {}

    def sample(edge: str) -> None:
        cpu[f"cloud_{edge}"] = procfs.cpu_seconds(cloud.pid)
        if target.pid:
            cpu[f"target_{edge}"] = procfs.cpu_seconds(target.pid)
            written[edge] = procfs.write_bytes(target.pid)
        if target.name == "gateway-site":  # after the CPU sample, so not counted in it
            site[edge] = _site_state(target)

    cloud_before = _cloud_calls(cloud_port)
    result = run_load(
        spec,
        lambda: sample("start"),
        lambda: sample("end"),
        before_start=lambda: _wait_for_links(cloud_port, spec.chargers),
    )
    cloud_answered = _cloud_calls(cloud_port) - cloud_before
    frames = 2 * result.calls
    record: dict[str, Any] = {
        "scenario": scenario,
        "target": target.name,
        "rep": rep,
        "load": result.as_dict(),
        "frames": frames,
        "relayed_share": round(cloud_answered / result.calls_total, 4) if result.calls_total else 0,
        "cloud_cpu_us_per_frame": _per_frame(cpu, "cloud", frames),
        "cpu_us_per_frame": None,
        "peak_rss_kb": None,
        "rss_kb": None,
        "hwm_reset": hwm_reset,
    }
    if site:
        record["site"] = site
    if target.pid:
        mem = procfs.memory(target.pid)
        record.update(
            cpu_us_per_frame=_per_frame(cpu, "target", frames),
            peak_rss_kb=mem.hwm_kb,
            rss_kb=mem.rss_kb,
        )
        start, end = written.get("start"), written.get("end")
        if start is not None and end is not None and frames:
            # Storage writes per relayed frame over the measured window (/proc/PID/io).
            record["write_bytes_per_frame"] = round((end - start) / frames, 3)
    return record


def _site_state(target: Target) -> dict[str, Any]:
    """The guard as the gateway reports it (``/api/site`` and its metrics): engaged, and sending caps."""
    api_url = getattr(target, "api_url", "")
    with urllib.request.urlopen(f"{api_url}/api/site", timeout=5) as response:
        state = json.loads(response.read())
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    changes = {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("flipturn_gateway_site_profile_changes_total{")
    }
    return {
        "engaged": state["engaged"],
        "maxCurrentA": state["maxCurrentA"],
        "allocatedA": state["allocatedA"],
        "chargers": len(state["chargers"]),
        "capped": sum(1 for c in state["chargers"] if c["capA"] is not None),
        "managed": sum(1 for c in state["chargers"] if c["managed"]),
        "transactions": sum(c["transactions"] for c in state["chargers"]),
        "caps": sorted({c["capA"] for c in state["chargers"] if c["capA"] is not None}),
        "profileChanges": changes,
    }


def _per_frame(cpu: dict[str, float], who: str, frames: int) -> float | None:
    if frames == 0 or f"{who}_end" not in cpu:
        return None
    return round((cpu[f"{who}_end"] - cpu[f"{who}_start"]) * 1e6 / frames, 2)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def summarise(runs: list[dict[str, Any]], idle: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Median over repetitions per scenario and target (max for memory, sum for errors)."""
    summary: dict[str, Any] = {}
    for run in runs:
        summary.setdefault(run["scenario"], {}).setdefault(run["target"], []).append(run)
    out: dict[str, Any] = {}
    for scenario, by_target in summary.items():
        out[scenario] = {}
        for name, group in by_target.items():
            rss = [r["peak_rss_kb"] for r in group if r["peak_rss_kb"] is not None]
            out[scenario][name] = {
                "reps": len(group),
                **{q: _median([r["load"]["rtt_us"][q] for r in group]) for q in _QUANTILES},
                "msgs_per_s": _median([r["load"]["msgs_per_s"] for r in group]),
                "errors": sum(r["load"]["errors"] for r in group),
                "cpu_us_per_frame": _median([r["cpu_us_per_frame"] for r in group]),
                "peak_rss_kb": max(rss) if rss else None,
                "idle_rss_kb": idle.get(scenario, {}).get(name),
                "relayed_share": min(r["relayed_share"] for r in group),
                "connected": min(r["load"]["connected"] for r in group),
            }
    return out


_QUANTILES = ("p50", "p90", "p99", "p999")


def _progress(record: dict[str, Any]) -> None:
    load, rtt = record["load"], record["load"]["rtt_us"]
    print(
        f"[bench] {record['scenario']} rep {record['rep']} {record['target']:8s} "
        f"p50 {rtt['p50']:9.1f} us  p99 {rtt['p99']:9.1f} us  {load['msgs_per_s']:8.1f} msg/s"
        f"  errors {load['errors']}  cpu/frame {record['cpu_us_per_frame']}"
        + (f"  site {record['site'].get('end')}" if "site" in record else ""),
        file=sys.stderr,
    )


def run_relay(args: argparse.Namespace) -> dict[str, Any]:
    _raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="flipturn-bench-"))
    cloud, cloud_port = start_listening_process(
        [
            sys.executable,
            "-m",
            "bench.fake_cloud",
            "--port",
            "0",
            *(["--compression"] if args.compression else []),
        ],
        (workdir / "cloud.log").open("wb"),
    )
    runs: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    idle: dict[str, dict[str, int]] = {}
    started_at = time.time()
    try:
        for scenario in args.scenarios:
            targets: list[Target] = []
            for name in args.targets:
                try:
                    targets.append(_start_target(name, cloud_port, workdir, args.install_nginx))
                except TargetUnavailable as exc:
                    notes[name] = str(exc)
                    print(f"[bench] {scenario}: skipping {name}: {exc}", file=sys.stderr)
            time.sleep(args.settle)
            idle[scenario] = {t.name: procfs.memory(t.pid).rss_kb for t in targets if t.pid}
            try:
                for rep in range(args.reps):
                    for target in targets:
                        record = _run_one(args, scenario, rep, target, cloud, cloud_port)
                        runs.append(record)
                        _progress(record)
            finally:
                for target in targets:
                    target.stop()
    finally:
        cloud.terminate()
        cloud.wait(timeout=10)
    return {
        "kind": "relay",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "elapsed_s": round(time.time() - started_at, 1),
        "machine": describe_machine(),
        "options": {
            "scenarios": args.scenarios,
            "targets": args.targets,
            "reps": args.reps,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "workers": args.workers,
            "chargers_override": args.chargers,
            "compression": args.compression,
        },
        "notes": notes,
        "summary": summarise(runs, idle),
        "runs": runs,
    }


def write_report(report: dict[str, Any], results_dir: Path) -> tuple[Path, str]:
    """Write JSON + markdown (timestamped and ``relay-latest``); return the JSON path, markdown."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["started_at"].replace("-", "").replace(":", "")
    markdown = render_markdown(report)
    data = json.dumps(report, indent=2)
    for stem in (f"relay-{stamp}", "relay-latest"):
        (results_dir / f"{stem}.json").write_text(data)
        (results_dir / f"{stem}.md").write_text(markdown)
    return results_dir / f"relay-{stamp}.json", markdown


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="relay benchmark (S1/S2/S3, interleaved targets)")
    parser.add_argument("--scenarios", type=_csv(tuple(SCENARIOS)), default=list(SCENARIOS))
    parser.add_argument(
        "--targets",
        type=_csv(ALL_TARGETS),
        default=list(DEFAULT_TARGETS),
        help=f"comma-separated, run in this order (default {','.join(DEFAULT_TARGETS)})",
    )
    parser.add_argument("--reps", type=int, default=2, help="repetitions per target (interleaved)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per run")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--chargers", type=int, help="override every scenario's charger count")
    parser.add_argument(
        "--settle",
        type=float,
        default=IDLE_SETTLE_S,
        help=f"seconds before reading the targets' idle memory (default {IDLE_SETTLE_S})",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="chargers offer permessage-deflate and the fake cloud accepts it",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--no-install-nginx",
        dest="install_nginx",
        action="store_false",
        help="skip nginx if it is missing instead of trying apt-get install -y nginx",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run_relay(args)
    path, markdown = write_report(report, args.results_dir)
    print(markdown)
    print(f"[bench] results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
