"""Profile a relay under load: py-spy samples the target during the measured window of a scenario.

Starts the fake cloud and one target (``gateway`` by default), runs the scenario (S2, closed loop,
by default) and attaches ``py-spy record`` to the target for the measured window. Writes
``bench/results/profile-<target>-<scenario>.txt`` (collapsed stacks: open in speedscope or feed to
flamegraph.pl) and ``-top.txt``, and prints the functions with the most samples: self (the
function itself was running) and inclusive (it was on the stack).

Run: ``python -m bench.profile_relay --target gateway --scenario S2 --duration 10``.
py-spy must be installed (``.venv/bin/pip install py-spy``) and allowed to read the target's
memory (root, or ``kernel.yama.ptrace_scope = 0``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.loadgen import SCENARIOS, LoadSpec, run_load
from bench.run_relay import ALL_TARGETS, RESULTS_DIR, _raise_fd_limit, _start_target
from bench.targets import TargetUnavailable, start_listening_process

__all__ = ["components", "hotspots", "main"]


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep the function and the
    # file with its parent directory (websockets/frames.py and gateway/ocpp/frames.py differ).
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    if not path:
        return name
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})"


# Components of a relay's frame path, by the file a sample's innermost frame is in.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("websockets/asyncio/", "websockets asyncio layer (tasks, queues, send/recv, drain)"),
    ("websockets/", "websockets sans-I/O (frame parsing, masking, protocol)"),
    ("gateway/net/wsconn.py", "gateway WebSocket layer (callbacks, socket writes)"),
    ("gateway/", "gateway code (session, frames, hub, ...)"),
    ("asyncio/runners.py", "event loop in C (epoll, socket read/write, callbacks)"),
    ("uvloop/", "event loop in C (epoll, socket read/write, callbacks)"),
    ("asyncio/", "asyncio in Python (futures, tasks, locks, timeouts)"),
    ("contextlib.py", "contextlib (websockets' send context)"),
    ("aiosqlite/", "SQLite thread"),
    ("sqlite3/", "SQLite thread"),
)


# With --native, C frames: the socket calls are worth their own lines.
NATIVE_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("UVStream__try_write", "socket write syscall (loopback: includes the peer's TCP receive)"),
    ("uv__write", "socket write syscall (loopback: includes the peer's TCP receive)"),
    ("uv__read", "socket read syscall"),
    ("uv__io_poll", "epoll"),
)


def component_of(stack: list[str]) -> str:
    """The component of a sample: its innermost frame, past libc's syscall wrappers."""
    frames = [f for f in stack if ".so" not in f.partition(" (")[2]] or stack
    name, _, path = frames[-1].partition(" (")
    if path.rstrip(")").rpartition(":")[0].endswith((".c", ".h")):
        for marker, component in NATIVE_COMPONENTS:
            if name.startswith(marker):
                return component
        return "other C code (event loop, CPython, other threads)"
    for marker, component in COMPONENTS:
        if marker in path:
            return component
    return "other"


def components(collapsed: str) -> list[tuple[str, int]]:
    """Self samples per component of the relay path (innermost frame's file)."""
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            counts[component_of(stack.split(";"))] += int(count_text)
    return counts.most_common()


def hotspots(
    collapsed: str, top: int = 25
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total samples, the top functions by self samples, and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        # py-spy puts the thread name first; skip it when it is not a Python frame.
        frames = [f for f in frames if "(" in f] or frames
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own.most_common(top), inclusive.most_common(top)


def _format(total: int, rows: list[tuple[str, int]]) -> list[str]:
    return [f"{count / total * 100:6.1f}%  {count:7d}  {name}" for name, count in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="profile a relay target under load with py-spy")
    parser.add_argument(
        "--target", choices=[t for t in ALL_TARGETS if t != "direct"], default="gateway"
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="S2")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--native", action="store_true", help="sample C frames too (py-spy --native)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    _raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="flipturn-profile-"))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"profile-{args.target}-{args.scenario}"
    cloud, cloud_port = start_listening_process(
        [sys.executable, "-m", "bench.fake_cloud", "--port", "0"],
        (workdir / "cloud.log").open("wb"),
    )
    try:
        target = _start_target(args.target, cloud_port, workdir, install_nginx=True)
    except TargetUnavailable as exc:
        cloud.terminate()
        print(f"cannot start {args.target}: {exc}", file=sys.stderr)
        return 1
    scenario = SCENARIOS[args.scenario]
    spec = LoadSpec(
        url=target.url,
        chargers=scenario.chargers,
        rate_per_s=scenario.rate_per_s,
        warmup_s=args.warmup,
        duration_s=args.duration,
        workers=args.workers,
    )
    spies: list[subprocess.Popen[bytes]] = []
    Path(f"{stem}.txt").unlink(missing_ok=True)  # never report a previous run's samples

    def start_spy() -> None:
        command = [py_spy, "record", "--pid", str(target.pid), "--rate", str(args.rate)]
        command += ["--format", "raw", "--output", f"{stem}.txt"]
        # --native pauses the target at each sample to unwind C frames; otherwise do not pause.
        command.append("--native" if args.native else "--nonblocking")
        log = (workdir / "py-spy.log").open("wb")
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))

    def stop_spy() -> None:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT

    try:
        result = run_load(spec, start_spy, stop_spy)
        for spy in spies:
            spy.wait(timeout=60)
    finally:
        target.stop()
        cloud.terminate()
        cloud.wait(timeout=10)
    collapsed = Path(f"{stem}.txt")
    if not collapsed.exists():
        print(f"py-spy wrote nothing; see {workdir}/py-spy.log", file=sys.stderr)
        return 1
    total, own, inclusive = hotspots(collapsed.read_text())
    rtt = result.rtt_us
    lines = [
        f"{args.target} under {args.scenario}: {result.msgs_per_s:.0f} msgs/s, "
        f"p50 {rtt['p50']:.0f} µs, p99 {rtt['p99']:.0f} µs, errors {result.errors}; "
        f"{total} samples at {args.rate} Hz",
        "",
        "self samples by component:",
        *_format(total, components(collapsed.read_text())),
        "",
        "self (running in the function):",
        *_format(total, own),
        "",
        "inclusive (function on the stack):",
        *_format(total, inclusive),
    ]
    report = "\n".join(lines)
    Path(f"{stem}-top.txt").write_text(report + "\n")
    print(report)
    print(f"[profile] collapsed stacks: {collapsed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
