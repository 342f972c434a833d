"""Benchmark: the local authorization list push of 10,000 tags to 100 chargers, beside live relaying.

1. A store is filled through the real sync path (``bench.bench_authorize.fill_store``: a fake
   Flipturn API over HTTP in a child process, ``FlipturnClient`` + ``sync_once``) with
   ``--access-ids`` ids, 1 in 50 Revoked (10,204 gives 10,000 Authorized).
2. ``bench.fake_cloud`` and the real CLI (``flipturn-gateway run``, its upstream at the fake cloud)
   start as subprocesses; each run gets a fresh copy of the store.
3. ``bench.loadgen`` drives ``--load-chargers`` OCPP 1.6 chargers at ``--rate`` CALLs/s through
   the gateway to the cloud (the "other chargers"; the store marks their lists cloud-owned, so the
   gateway sends them nothing). When its measured window opens, a child process connects
   ``--list-chargers`` 1.6 chargers that answer GetConfiguration (``LocalAuthListMaxLength``
   = 10,000, ``SendLocalListMaxLength`` = ``--per-message``), GetLocalListVersion and
   SendLocalList, and reports when every one of them holds the whole list.
4. Runs alternate ``push = false`` (the same 100 chargers connect, nothing is pushed: the
   baseline) and ``push = true``, ``--reps`` times each.

Reported: wall time from the list chargers' first connection to the last complete list, SendLocalList
CALLs, the gateway's CPU time over the window (utime + stime from /proc) with and without the push
and their difference, and the other chargers' RTT percentiles with the push over without (target:
p99 within 10%). JSON to ``bench/results/local-list-latest.json``; markdown on stdout.
Run: ``python -m bench.bench_local_list`` or ``python -m bench.run_all --suites local_list``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench import procfs
from bench.bench_authorize import fill_store
from bench.loadgen import LoadSpec, run_load
from bench.machine import describe_machine
from bench.report import ratio
from bench.targets import HOST, free_port, start_listening_process, wait_for_port

__all__ = ["BENCH_SUITE", "main"]

BENCH_SUITE = "local_list"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_P99_RATIO = 1.10
_LIST_VERSION = re.compile(r'"listVersion":(\d+)')

_CONFIG = """\
[chargers]
host = "{host}"
port = {port}

[upstream]
url = "ws://{host}:{cloud_port}/ocpp"

[api]
host = "{host}"
port = {api_port}

[store]
path = "{db}"

[local_list]
push = {push}
"""


# --- the chargers that receive the list (child process) ------------------------------------------


async def _list_charger(
    url: str,
    cid: str,
    *,
    per_message: int,
    expected: int,
    done: asyncio.Queue[tuple[str, float]],
    first_call: list[float],
) -> tuple[ClientConnection, dict[str, int]]:
    ws = await connect(f"{url}/{cid}", subprotocols=[Subprotocol("ocpp1.6")], compression=None,
                       max_size=16 << 20, ping_interval=None)  # fmt: skip
    counts = {"calls": 0, "sends": 0}
    held = 0  # entries the charger holds
    version = 0

    async def serve() -> None:
        nonlocal held, version
        async for text in ws:
            assert isinstance(text, str)
            if text.startswith('[2,"') and '"SendLocalList"' in text[:80]:
                # The cheapest reading that still checks the list: the message id, the update
                # type and the number of entries with idTagInfo (a push has no removals), so that
                # this process's CPU does not crowd out the gateway and the load it is measured by.
                counts["calls"] += 1
                counts["sends"] += 1
                mid = text[4 : text.index('"', 4)]
                head = _LIST_VERSION.search(text, 0, 200)
                version = int(head[1]) if head else version
                if '"updateType":"Full"' in text[:200]:
                    held = 0
                held += text.count('"idTagInfo"')
                await ws.send(f'[3,"{mid}",{{"status":"Accepted"}}]')
                if held >= expected:
                    done.put_nowait((cid, time.perf_counter()))
                continue
            frame = orjson.loads(text)
            if frame[0] == 3 and frame[1] == "hb" and expected == 0:
                done.put_nowait((cid, time.perf_counter()))  # the baseline: served, no list
            if frame[0] != 2:
                continue
            counts["calls"] += 1
            first_call.append(time.perf_counter())
            mid, action = frame[1], frame[2]
            answer: dict[str, Any]
            if action == "GetConfiguration":
                answer = {"configurationKey": [
                    {"key": "LocalAuthListMaxLength", "readonly": True, "value": "10000"},
                    {"key": "SendLocalListMaxLength", "readonly": True, "value": str(per_message)},
                ]}  # fmt: skip
            elif action == "GetLocalListVersion":
                answer = {"listVersion": version}
            else:
                answer = {}
            await ws.send(orjson.dumps([3, mid, answer]).decode())

    asyncio.get_running_loop().create_task(serve())
    # A Heartbeat answered: the charger is served (the baseline's "done").
    await ws.send(orjson.dumps([2, "hb", "Heartbeat", {}]).decode())
    return ws, counts


async def _children(url: str, chargers: int, per_message: int, expected: int) -> dict[str, Any]:
    done: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    first_call: list[float] = []
    started = time.perf_counter()
    made = await asyncio.gather(
        *(
            _list_charger(
                url,
                f"LIST-{i:04d}",
                per_message=per_message,
                expected=expected,
                done=done,
                first_call=first_call,
            )
            for i in range(chargers)
        )
    )
    finished: dict[str, float] = {}
    try:
        async with asyncio.timeout(120):
            while len(finished) < chargers:
                cid, at = await done.get()
                finished.setdefault(cid, at)
    except TimeoutError:
        pass
    result = {
        "chargers": chargers,
        "complete": len(finished),
        "connect_to_done_s": round(max(finished.values(), default=started) - started, 3),
        # from the gateway's first CALL to any of them (after its settle time) to the last list
        "wall_s": round(
            max(finished.values(), default=started) - min(first_call, default=started), 3
        ),
        "send_local_list": sum(c["sends"] for _, c in made),
        "calls": sum(c["calls"] for _, c in made),
    }
    print(json.dumps(result), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until told to stop
    await asyncio.gather(*(ws.close() for ws, _ in made), return_exceptions=True)
    return result


# --- one run -----------------------------------------------------------------------------------


def _gateway(
    workdir: Path, db: Path, cloud_port: int, push: bool
) -> tuple[subprocess.Popen[bytes], str]:
    port, api_port = free_port(), free_port()
    config = workdir / "config.toml"
    config.write_text(_CONFIG.format(host=HOST, port=port, api_port=api_port, cloud_port=cloud_port,
                                     db=db, push="true" if push else "false"))  # fmt: skip
    script = Path(sys.executable).parent / "flipturn-gateway"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPTURN_GATEWAY_")}
    proc = subprocess.Popen([*command, "--config", str(config), "run"], cwd=workdir, env=env,
                            stdout=(workdir / "gateway.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    wait_for_port(port, proc, 30)
    return proc, f"ws://{HOST}:{port}/ocpp"


def _mark_load_chargers_cloud_owned(db: Path, chargers: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO local_lists (charger_id, owner, entries, truncated, updated_at)"
            " VALUES (?, 'cloud', 0, 0, 0)",
            [(f"BENCH-{i:05d}",) for i in range(chargers)],
        )


def _one_run(args: argparse.Namespace, store: Path, workdir: Path, cloud_port: int, push: bool,
             expected: int) -> dict[str, Any]:  # fmt: skip
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    db = run_dir / "gw.db"
    shutil.copy(store, db)
    proc, url = _gateway(run_dir, db, cloud_port, push)
    child: subprocess.Popen[str] | None = None
    cpu: dict[str, float] = {}

    def window_start() -> None:
        nonlocal child
        cpu["start"] = procfs.cpu_seconds(proc.pid)
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_local_list", "--child", url,
             str(args.list_chargers), str(args.per_message), str(expected if push else 0)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def window_end() -> None:
        cpu["end"] = procfs.cpu_seconds(proc.pid)

    try:
        spec = LoadSpec(url=url, chargers=args.load_chargers, rate_per_s=args.rate,
                        warmup_s=2.0, duration_s=args.duration, workers=2)  # fmt: skip
        load = run_load(spec, window_start, window_end)
        assert child is not None and child.stdout is not None
        pushed = json.loads(child.stdout.readline() or "{}")
    finally:
        if child is not None and child.stdin is not None:
            child.stdin.close()
            child.wait(timeout=30)
        proc.terminate()
        proc.wait(timeout=20)
    return {
        "push": push,
        "rtt_us": load.rtt_us,
        "calls": load.calls,
        "errors": load.errors,
        "gateway_cpu_s": round(cpu["end"] - cpu["start"], 3),
        "list": pushed,
    }


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-local-list-"))
    try:
        store = workdir / "filled.db"
        runner = asyncio.Runner()
        with runner:
            filled = fill_store(runner, store, args.access_ids, 0)
        _mark_load_chargers_cloud_owned(store, args.load_chargers)
        with sqlite3.connect(store) as conn:
            expected = conn.execute(
                "SELECT count(*) FROM access_ids WHERE authorization_status = 'Authorized'"
            ).fetchone()[0]
        log = (workdir / "cloud.log").open("wb")
        cloud, cloud_port = start_listening_process(
            [sys.executable, "-m", "bench.fake_cloud", "--port", "0"], log
        )
        runs: list[dict[str, Any]] = []
        try:
            for _ in range(args.reps):
                for push in (False, True):
                    runs.append(_one_run(args, store, workdir, cloud_port, push, expected))
                    print(f"[local_list] push={push}: {json.dumps(runs[-1])}", file=sys.stderr)
        finally:
            cloud.terminate()
            cloud.wait(timeout=10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = [r for r in runs if not r["push"]]
    pushed = [r for r in runs if r["push"]]
    summary = {
        "authorized_tags": expected,
        "list_chargers": args.list_chargers,
        "per_message": args.per_message,
        "load": {
            "chargers": args.load_chargers,
            "rate_per_s": args.rate,
            "duration_s": args.duration,
        },
        "push_wall_s": _median(pushed, "list", "wall_s"),
        "push_complete": min(int(r["list"].get("complete", 0)) for r in pushed),
        "send_local_list": _median(pushed, "list", "send_local_list"),
        "gateway_cpu_s": {
            "baseline": _median(base, "gateway_cpu_s"),
            "push": _median(pushed, "gateway_cpu_s"),
        },
        "rtt_us": {
            q: {"baseline": _median(base, "rtt_us", q), "push": _median(pushed, "rtt_us", q)}
            for q in ("p50", "p90", "p99")
        },
        "errors": sum(int(r["errors"]) for r in runs),
        "sync": filled,
    }
    summary["gateway_cpu_s"]["push_extra"] = round(
        summary["gateway_cpu_s"]["push"] - summary["gateway_cpu_s"]["baseline"], 3
    )
    summary["p99_ratio"] = ratio(
        summary["rtt_us"]["p99"]["push"], summary["rtt_us"]["p99"]["baseline"]
    )
    return {"machine": describe_machine(), "summary": summary, "runs": runs}


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"Push of {s['authorized_tags']:,} tags to {s['list_chargers']} chargers at "
        f"{s['per_message']} per message, beside {s['load']['chargers']} chargers x "
        f"{s['load']['rate_per_s']} CALL/s relayed (medians of {len(report['runs']) // 2} runs each)",
        "",
        "| | without push | with push | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for q in ("p50", "p90", "p99"):
        b, p = s["rtt_us"][q]["baseline"], s["rtt_us"][q]["push"]
        lines.append(f"| other chargers' RTT {q} (µs) | {b:.0f} | {p:.0f} | {ratio(p, b):.2f} |")
    cpu = s["gateway_cpu_s"]
    lines += [
        f"| gateway CPU over the window (s) | {cpu['baseline']:.2f} | {cpu['push']:.2f} | "
        f"+{cpu['push_extra']:.2f} s |",
        "",
        f"Push wall time (the gateway's first CALL to these chargers to the last complete list): "
        f"{s['push_wall_s']:.2f} s; "
        f"{s['send_local_list']:.0f} SendLocalList CALLs; lists complete: {s['push_complete']}/"
        f"{s['list_chargers']}; errors in the load: {s['errors']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--access-ids", type=int, default=10_204)
    parser.add_argument("--list-chargers", type=int, default=100)
    parser.add_argument("--per-message", type=int, default=250)
    parser.add_argument("--load-chargers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, chargers, per_message, expected = args.child
        asyncio.run(_children(url, int(chargers), int(per_message), int(expected)))
        return 0
    report = run(args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "local-list-latest.json").write_text(json.dumps(report, indent=2))
    print(render(report))
    s = report["summary"]
    ok = s["push_complete"] == s["list_chargers"] and s["errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
