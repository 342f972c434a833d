"""The TLS handshake benchmark: a tiny real run of every configuration."""

from __future__ import annotations

import json
from pathlib import Path

from bench.bench_tls import main
from bench.run_all import discover_suites


def test_tls_suite_is_discovered() -> None:
    assert "tls" in discover_suites()


def test_a_tiny_run_measures_every_configuration(tmp_path: Path) -> None:
    args = ["--handshakes", "4", "--warmup", "1", "--block", "2", "--results-dir", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "tls-latest.json").read_text())
    results = report["results"]
    assert list(results) == [
        "ws", "profile2-rsa", "profile2-ec", "profile3-ec", "profile3-ec-reloaded",
    ]  # fmt: skip
    for result in results.values():
        assert result["handshakes"] == 4
        assert result["open_p50_ms"] > 0 and result["open_p90_ms"] >= result["open_p50_ms"]
        assert result["gateway_cpu_us"] >= 0  # /proc counts in clock ticks: 4 may read as 0
