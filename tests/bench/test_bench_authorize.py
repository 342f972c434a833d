"""The offline Authorize benchmark: tag draws and summaries on plain data, then a tiny real run."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from bench.bench_authorize import (
    _Samples,
    answer_status,
    authorize_payload,
    draw_tag,
    main,
    segment_p99_ratios,
    summarise,
    synced_tag,
)
from bench.run_all import discover_suites


def test_tags_match_what_the_fake_api_serves() -> None:
    assert synced_tag(3) == "000000000003"  # every third access id is a Vehicle MAC tag
    assert synced_tag(7) == "RFID00000007"
    rng = random.Random(5)
    draws = [draw_tag(rng, 1000, known=0.7, revoked=0.1) for _ in range(5000)]
    kinds = Counter(kind for kind, _ in draws)
    assert 0.65 < kinds["known"] / 5000 < 0.75
    assert 0.07 < kinds["revoked"] / 5000 < 0.13
    for kind, tag in draws:
        if kind == "unknown":
            assert tag.startswith("UNKNOWN")
            continue
        n = int(tag[4:]) if tag.startswith("RFID") else int(tag, 16)
        assert 1 <= n <= 1000
        assert (n % 50 == 0) is (kind == "revoked")  # bench_sync revokes every 50th id


def test_payloads_and_statuses_per_version() -> None:
    assert authorize_payload("1.6", "RFID00000001") == {"idTag": "RFID00000001"}
    assert authorize_payload("2.0.1", "00000000000C") == {
        "idToken": {"idToken": "00000000000C", "type": "MacAddress"}
    }
    assert answer_status("1.6", {"idTagInfo": {"status": "Blocked"}}) == "Blocked"
    assert answer_status("2.0.1", {"idTokenInfo": {"status": "Invalid"}}) == "Invalid"
    assert answer_status("2.0.1", {"idTagInfo": {"status": "Accepted"}}) is None


def test_summary_ratios_and_segments() -> None:
    samples = _Samples()
    for pair in range(4):
        for action, base in (("Heartbeat", 100_000), ("Authorize", 110_000)):
            samples.start_block(action)
            for i in range(100):
                samples.add(action, base + 1000 * i + (500_000 if pair == 3 and i == 99 else 0))
            samples.calls[action] += 100
            samples.cpu_s[action] += 0.01 if action == "Heartbeat" else 0.012
    samples.statuses[("known", "Accepted")] = 3
    samples.statuses[("unknown", "Accepted")] = 1
    summary = summarise(samples, segments=2)
    assert summary["Heartbeat"]["calls"] == summary["Authorize"]["calls"] == 400
    assert summary["Heartbeat"]["p50"] == 149.0  # µs, nearest rank
    assert summary["ratios"]["cpu_per_call"] == 1.2
    assert summary["wrong_status"] == 1
    assert segment_p99_ratios(samples, 2) == summary["p99_ratio_by_segment"]
    assert len(summary["p99_ratio_by_segment"]) == 2


def test_suite_is_found_by_run_all() -> None:
    assert "authorize" in discover_suites()


def test_tiny_real_run(tmp_path: Path) -> None:
    args = ["--access-ids", "600", "--vehicles", "10", "--chargers", "3", "--rate", "50"]
    args += ["--block-s", "0.2", "--blocks", "2", "--warmup-blocks", "1", "--settle", "0.1"]
    assert main([*args, "--results-dir", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "authorize-latest.json").read_text())
    assert report["store"]["access_ids"] == 600  # synced through the real client and sync_once
    assert report["idle_rss_mb"] > 10
    assert report["peak_rss_mb"] > 10
    for version in ("1.6", "2.0.1"):
        result = report["versions"][version]
        assert result["errors"] == {}
        assert result["wrong_status"] == 0
        for action in ("Heartbeat", "Authorize"):
            row = result[action]
            assert row["calls"] > 10
            assert 0 < row["p50"] <= row["p99"] <= row["p999"]
        assert result["ratios"]["p99"] > 0
