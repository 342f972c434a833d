"""The idle-writes benchmark: a tiny real run of the gateway, idle then under load."""

from __future__ import annotations

import json
from pathlib import Path

from bench.bench_idle_writes import main
from bench.run_all import discover_suites


def test_tiny_run_counts_frames_and_bytes(tmp_path: Path) -> None:
    assert "idle-writes" in discover_suites()
    args = ["--idle", "0.5", "--chargers", "2", "--load", "2.5", "--settle", "0.1"]
    assert main([*args, "--dir", str(tmp_path)]) == 0
    results = Path(__file__).resolve().parents[2] / "bench" / "results"
    (run,) = json.loads((results / "idle-writes-latest.json").read_text())["runs"]
    assert run["gateway"] == "this" and run["chargers"] == 2
    assert run["framesRelayed"] >= 2  # about one a second per charger
    assert run["cloudCalls"] >= run["framesRelayed"]  # and each reached the cloud
    assert run["idleBytes"] >= 0 and run["loadBytes"] >= 0
