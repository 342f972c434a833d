"""Every benchmark in one command (``make bench``): the relay scenarios, then each other suite.

A suite is a module in ``bench/`` that defines ``BENCH_SUITE = "<name>"`` and
``main(argv: list[str] | None = None) -> int``, bounded in time with its defaults. Suites run one
after another (relay first, then by name); ``--suites relay,sync`` picks some. Arguments run_all
does not know go to the relay suite (``make bench BENCH_ARGS="--reps 1 --duration 5"``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["discover_suites", "main"]

_RELAY = "relay"


def discover_suites() -> dict[str, Callable[[list[str] | None], int]]:
    """Suite name -> main, for every module of this package that declares ``BENCH_SUITE``."""
    found: dict[str, Callable[[list[str] | None], int]] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name == "run_all":
            continue
        source = Path(__file__).with_name(f"{info.name}.py")
        if not source.is_file() or "BENCH_SUITE" not in source.read_text():
            continue  # import only modules that declare a suite
        module = importlib.import_module(f"bench.{info.name}")
        name = getattr(module, "BENCH_SUITE", None)
        if isinstance(name, str) and callable(getattr(module, "main", None)):
            found[name] = module.main
    return dict(sorted(found.items(), key=lambda item: (item[0] != _RELAY, item[0])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", help="comma-separated suite names (default: all)")
    args, relay_args = parser.parse_known_args(argv)
    suites = discover_suites()
    chosen = args.suites.split(",") if args.suites else list(suites)
    unknown = [name for name in chosen if name not in suites]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; found: {', '.join(suites)}")
    failed = []
    for name in chosen:
        started = time.monotonic()
        print(f"[bench] suite {name}", file=sys.stderr)
        code = suites[name](relay_args if name == _RELAY else [])
        print(
            f"[bench] suite {name}: exit {code} in {time.monotonic() - started:.0f} s",
            file=sys.stderr,
        )
        if code:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
