"""Benchmark: the gateway's CPU per charger handshake with ws, wss (profile 2) and profile 3.

The real CLI (``flipturn-gateway --config <toml> run``, standalone) runs as a subprocess, one per
configuration; this process opens ``--handshakes`` WebSocket connections one after another (TCP,
TLS without session resumption, HTTP upgrade, one Heartbeat answered locally, close) after
``--warmup`` unmeasured ones. The gateway's CPU time (utime + stime from /proc) over the measured
ones, divided by their number, is its cost per handshake; the client's time from ``connect`` to the
open WebSocket gives p50/p90. Configurations:

* ``ws``: no TLS, the baseline of the same run;
* ``profile2-rsa``, ``profile2-ec``: wss with an RSA 2048 / ECDSA P-256 server certificate;
* ``profile3-ec``: ECDSA, client certificates required and checked (CN = charge point id);
* ``profile3-ec-reloaded``: the same after a SIGHUP, so the SNI callback hands every handshake
  the reloaded context (what a reload costs each later handshake).

Ratios are against ``ws``. Prints markdown; the JSON goes to ``bench/results/tls-latest.json``.
Run: ``python -m bench.bench_tls`` or ``python -m bench.run_all --suites tls``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench import procfs
from bench.loadgen import percentile
from bench.machine import describe_machine
from bench.report import ratio
from tests.pki import CertificateAuthority, Issued
from tests.procs import GatewayProcess
from tests.support import wait_for

BENCH_SUITE = "tls"
RESULTS_DIR = Path(__file__).parent / "results"


def _config(workdir: Path, name: str, chargers: str) -> Path:
    path = workdir / f"{name}.toml"
    path.write_text(
        f'[chargers]\nhost = "127.0.0.1"\nport = 0\n{chargers}\n[api]\nport = 0\n'
        f'[store]\npath = "{workdir / name}.db"\n'
    )
    return path


class _Target:
    """One gateway configuration: its process, its client context, what was measured so far."""

    def __init__(self, gateway: GatewayProcess, context: ssl.SSLContext | None) -> None:
        self.gateway = gateway
        self.context = context
        scheme = "ws" if context is None else "wss"
        self.url = f"{scheme}://127.0.0.1:{gateway.charger_port}/ocpp/CP-1"
        assert gateway.proc is not None
        self.pid = gateway.proc.pid
        self.cpu_s = 0.0
        self.open_ns: list[int] = []

    async def block(self, count: int, *, measured: bool) -> None:
        cpu_before = procfs.cpu_seconds(self.pid)
        for _ in range(count):
            started = time.perf_counter_ns()
            ws = await connect(
                self.url, subprotocols=[Subprotocol("ocpp1.6")], ssl=self.context, compression=None
            )
            opened = time.perf_counter_ns()
            await ws.send('[2,"1","Heartbeat",{}]')
            assert json.loads(await ws.recv())[0] == 3
            await ws.close()
            if measured:
                self.open_ns.append(opened - started)
        if measured:
            self.cpu_s += procfs.cpu_seconds(self.pid) - cpu_before

    def summary(self) -> dict[str, Any]:
        self.open_ns.sort()
        n = len(self.open_ns)
        return {
            "handshakes": n,
            "gateway_cpu_us": round(self.cpu_s / n * 1e6, 1),
            "open_p50_ms": round(percentile(self.open_ns, 50) / 1e6, 3),
            "open_p90_ms": round(percentile(self.open_ns, 90) / 1e6, 3),
        }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration runs at once; blocks of handshakes go round-robin between them, so
    the machine's other work weighs on each alike."""
    with tempfile.TemporaryDirectory(prefix="flipturn-tlsbench-") as tmp:
        workdir = Path(tmp)
        ca = CertificateAuthority(workdir / "ca", "Bench Depot CA")
        rsa = ca.issue("gateway-rsa", server=True, kind="rsa")
        ec = ca.issue("gateway-ec", server=True, kind="ec")
        client: Issued = ca.issue("CP-1")
        trust = ssl.create_default_context(cafile=ca.cert)
        with_cert = ssl.create_default_context(cafile=ca.cert)
        with_cert.load_cert_chain(client.cert, client.key)

        def tls(server: Issued, extra: str = "") -> str:
            return f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n{extra}'

        profile3 = tls(ec, f'tls_ca = "{ca.cert}"\nclient_certs = "required"\n')
        runs: list[tuple[str, str, ssl.SSLContext | None]] = [
            ("ws", "", None),
            ("profile2-rsa", tls(rsa), trust),
            ("profile2-ec", tls(ec), trust),
            ("profile3-ec", profile3, with_cert),
            ("profile3-ec-reloaded", profile3, with_cert),
        ]
        targets: dict[str, _Target] = {}
        try:
            # Started side by side (start-up is no part of the measure); kept in the runs' order.
            processes = [
                GatewayProcess(_config(workdir, name, chargers)) for name, chargers, _ in runs
            ]
            started = await asyncio.gather(*(p.start() for p in processes), return_exceptions=True)
            failed: list[BaseException] = []
            for (name, _, context), gateway, outcome in zip(runs, processes, started, strict=True):
                if not isinstance(outcome, BaseException):
                    targets[name] = _Target(gateway, context)
                    continue
                failed.append(outcome)
                if gateway.proc is not None and gateway.proc.returncode is None:
                    gateway.proc.kill()
                    await gateway.proc.wait()
            if failed:
                raise failed[0]
            reloaded = targets["profile3-ec-reloaded"].gateway
            reloaded.signal(signal.SIGHUP)
            await wait_for(lambda: any("TLS files reloaded" in x for x in reloaded.log), 10)
            for target in targets.values():
                await target.block(args.warmup, measured=False)
            blocks = max(1, args.handshakes // args.block)
            for _ in range(blocks):
                for target in targets.values():
                    await target.block(args.block, measured=True)
        finally:
            for target in targets.values():
                target.gateway.signal(signal.SIGTERM)
            await asyncio.gather(*(target.gateway.wait() for target in targets.values()))
    results = {name: target.summary() for name, target in targets.items()}
    base = results["ws"]["gateway_cpu_us"]
    for result in results.values():
        result["cpu_ratio_to_ws"] = ratio(result["gateway_cpu_us"], base)
    return results


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"TLS handshakes, {report['options']['handshakes']} per configuration, "
        f"load average {report['load_average']}",
        "",
        "| configuration | gateway CPU per handshake (µs) | ratio to ws | open p50 (ms) | open p90 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['gateway_cpu_us']:,.0f} | {r['cpu_ratio_to_ws']} "
            f"| {r['open_p50_ms']} | {r['open_p90_ms']} |"
        )
    return "\n".join([*lines, ""])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--block", type=int, default=25, help="handshakes per round-robin block")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started_at = time.time()
    results = asyncio.run(measure(args))
    report = {
        "kind": "tls",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "elapsed_s": round(time.time() - started_at, 1),
        "machine": describe_machine(),
        "options": {"handshakes": args.handshakes, "warmup": args.warmup, "block": args.block},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "tls-latest.json").write_text(json.dumps(report, indent=2))
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
