"""The benchmark harness: pure pieces on plain data, then a tiny real run (direct, minimal)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import procfs
from bench.fake_cloud import reply_for
from bench.loadgen import MIX_PERIOD, SCENARIOS, _Charger, percentile
from bench.profile_relay import components, hotspots
from bench.report import gateway_checks, ratio, render_markdown
from bench.run_all import discover_suites
from bench.run_relay import main as relay_main
from bench.run_relay import summarise

ACCEPTED = {"status": "Accepted"}


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile([7], 99.9) == 7
    assert percentile([], 50) == 0


@pytest.mark.parametrize(
    ("frame", "v201", "expected"),
    [
        ('[2,"a","MeterValues",{"connectorId":1,"meterValue":[]}]', False, [3, "a", {}]),
        ('[2,"b","StatusNotification",{}]', False, [3, "b", {}]),
        ('[2,"c","Authorize",{"idTag":"X"}]', False, [3, "c", {"idTagInfo": ACCEPTED}]),
        (
            '[2,"d","Authorize",{"idToken":{"idToken":"X","type":"ISO14443"}}]',
            True,
            [3, "d", {"idTokenInfo": ACCEPTED}],
        ),
        ('[2,"e","Reset",{}]', False, [4, "e", "NotImplemented", "", {}]),
        ("not json", False, [4, "-1", "FormationViolation", "bad frame", {}]),
    ],
)
def test_fake_cloud_answers_each_call(frame: str, v201: bool, expected: list[Any]) -> None:
    reply = reply_for(frame, v201)
    assert reply is not None
    assert orjson.loads(reply) == expected


def test_fake_cloud_assigns_transaction_ids_and_times() -> None:
    first = orjson.loads(reply_for('[2,"1","StartTransaction",{}]', False) or b"")
    second = orjson.loads(reply_for('[2,"2","StartTransaction",{}]', False) or b"")
    assert first[2]["transactionId"] < second[2]["transactionId"]
    assert first[2]["idTagInfo"] == {"status": "Accepted"}
    boot = orjson.loads(reply_for('[2,"3","BootNotification",{}]', False) or b"")
    assert boot[2]["status"] == "Accepted"
    assert boot[2]["interval"] == 300
    assert boot[2]["currentTime"].endswith("Z")


def test_fake_cloud_ignores_replies_to_its_own_calls() -> None:
    assert reply_for('[3,"x",{}]', False) is None
    assert reply_for('[4,"x","GenericError","",{}]', False) is None


def test_charger_mix_and_meter_values_size() -> None:
    charger = _Charger("CP-1", 3)
    frames = [charger.next_frame("2026-01-01T00:00:00Z") for _ in range(MIX_PERIOD)]
    actions = [action for _, action, _ in frames]
    assert actions.count("MeterValues") == 16
    assert actions.count("StatusNotification") == 3
    assert actions.count("Heartbeat") == 1
    ids = [mid for mid, _, _ in frames]
    assert len(set(ids)) == MIX_PERIOD  # unique per sender (OCPP-J)
    meter = next(text for _, action, text in frames if action == "MeterValues")
    assert 550 <= len(meter) <= 700
    parsed = orjson.loads(meter)
    assert parsed[:3] == [2, parsed[1], "MeterValues"]
    phases = {v.get("phase") for v in parsed[3]["meterValue"][0]["sampledValue"]}
    assert {"L1", "L2", "L3"} <= phases


def test_gateway_checks_compare_ratios() -> None:
    summary = {
        "S1": {"gateway": {"p50": 260.0, "p99": 900.0}, "nginx": {"p50": 200.0, "p99": 500.0}},
        "S2": {
            "gateway": {"msgs_per_s": 900.0, "cpu_us_per_frame": 30.0},
            "minimal": {"msgs_per_s": 1000.0, "cpu_us_per_frame": 25.0},
        },
        "S3": {"gateway": {"peak_rss_kb": 90 * 1024, "idle_rss_kb": 40 * 1024}},
    }
    checks = {c.what: c for c in gateway_checks(summary)}
    assert checks["p50 RTT gateway / nginx"].measured == 1.3
    assert checks["p50 RTT gateway / nginx"].ok is True
    assert checks["p99 RTT gateway / nginx"].ok is False  # 1.8 > 1.5
    assert checks["msgs/s gateway / minimal"].ok is True
    assert checks["CPU per frame gateway / minimal"].measured == 1.2
    assert checks["gateway peak RSS, MB"].ok is False
    assert checks["gateway idle RSS, MB"].ok is True
    assert ratio(1.0, None) is None
    assert ratio(None, 2.0) is None


def test_summary_takes_medians_and_max_memory() -> None:
    def run(rep: int, p50: float, rss: int) -> dict[str, Any]:
        rtt = {"p50": p50, "p90": p50, "p99": p50, "p999": p50}
        load = {"rtt_us": rtt, "msgs_per_s": 10.0, "errors": rep, "connected": 3}
        return {
            "scenario": "S1",
            "target": "minimal",
            "rep": rep,
            "load": load,
            "cpu_us_per_frame": 20.0 + rep,
            "peak_rss_kb": rss,
            "relayed_share": 1.0,
        }

    summary = summarise([run(0, 100.0, 5000), run(1, 300.0, 7000), run(2, 200.0, 6000)], {})
    row = summary["S1"]["minimal"]
    assert row["p50"] == 200.0
    assert row["cpu_us_per_frame"] == 21.0
    assert row["peak_rss_kb"] == 7000
    assert row["errors"] == 3
    assert row["reps"] == 3


def test_procfs_reads_this_process() -> None:
    before = procfs.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert procfs.cpu_seconds(os.getpid()) > before
    mem = procfs.memory(os.getpid())
    assert mem.rss_kb > 1000
    assert mem.hwm_kb >= mem.rss_kb
    assert os.getpid() in procfs.process_tree(os.getpid())


def test_run_all_finds_the_relay_suite() -> None:
    assert "relay" in discover_suites()
    assert next(iter(discover_suites())) == "relay"


def test_hotspots_count_self_and_inclusive_samples() -> None:
    collapsed = (
        "main (cli.py:1);run (asyncio/runners.py:10);_pump (bench/relay.py:5);"
        "send (websockets/asyncio/connection.py:7) 30\n"
        "main (cli.py:1);run (asyncio/runners.py:10);_pump (bench/relay.py:5) 10\n"
        "main (cli.py:1);run (asyncio/runners.py:10) 60\n"
    )
    total, own, inclusive = hotspots(collapsed, top=3)
    assert total == 100
    assert own == [
        ("run (asyncio/runners.py)", 60),
        ("send (asyncio/connection.py)", 30),
        ("_pump (bench/relay.py)", 10),
    ]
    assert dict(inclusive)["_pump (bench/relay.py)"] == 40
    assert dict(inclusive)["main (cli.py)"] == 100
    assert components(collapsed) == [
        ("event loop in C (epoll, socket read/write, callbacks)", 60),
        ("websockets asyncio layer (tasks, queues, send/recv, drain)", 30),
        ("other", 10),
    ]


def test_tiny_relay_run_direct_and_minimal(tmp_path: Path) -> None:
    args = ["--scenarios", "S2", "--targets", "direct,minimal,sansio", "--reps", "1"]
    args += ["--duration", "0.5", "--warmup", "0.1", "--chargers", "3", "--workers", "1"]
    assert relay_main([*args, "--settle", "0.1", "--results-dir", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "relay-latest.json").read_text())
    assert report["options"]["chargers_override"] == 3
    assert report["machine"]["cores"] >= 1
    targets = [(r["target"], r["rep"]) for r in report["runs"]]
    assert targets == [("direct", 0), ("minimal", 0), ("sansio", 0)]
    for run in report["runs"]:
        load = run["load"]
        assert load["errors"] == 0, load["errors_by_kind"]
        assert load["connected"] == 3
        assert load["calls"] > 10
        assert run["frames"] == 2 * load["calls"]
        assert 0 < load["rtt_us"]["p50"] <= load["rtt_us"]["p99"] <= load["rtt_us"]["p999"]
        assert run["relayed_share"] == 1.0  # the fake cloud answered every CALL
        assert set(load["by_action"]) <= {"MeterValues", "StatusNotification", "Heartbeat"}
    minimal = report["summary"]["S2"]["minimal"]
    assert minimal["cpu_us_per_frame"] > 0
    assert minimal["peak_rss_kb"] > 1000
    assert minimal["idle_rss_kb"] > 1000
    assert report["summary"]["S2"]["direct"]["cpu_us_per_frame"] is None
    markdown = (tmp_path / "relay-latest.md").read_text()
    assert "| minimal |" in markdown
    assert markdown == render_markdown(report)
    assert SCENARIOS["S2"].rate_per_s is None  # S2 is the closed loop the tiny run used


def test_tiny_relay_run_through_gateway_and_nginx(tmp_path: Path) -> None:
    """The gateway (and nginx, where installed) as bench targets: every CALL reaches the cloud."""
    targets = (
        "gateway,nginx" if shutil.which("nginx") or Path("/usr/sbin/nginx").exists() else "gateway"
    )
    args = ["--scenarios", "S1", "--targets", targets, "--reps", "1", "--no-install-nginx"]
    args += ["--duration", "1", "--warmup", "0.3", "--chargers", "3", "--workers", "1"]
    assert relay_main([*args, "--settle", "0.1", "--results-dir", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "relay-latest.json").read_text())
    assert report["notes"] == {}
    assert [r["target"] for r in report["runs"]] == targets.split(",")
    for run in report["runs"]:
        assert run["load"]["errors"] == 0, run["load"]["errors_by_kind"]
        assert run["load"]["connected"] == 3
        assert run["load"]["calls"] >= 3  # 3 chargers x 1 CALL/s x 1 s
        assert run["relayed_share"] == 1.0  # online, the gateway answers nothing itself
        assert run["cpu_us_per_frame"] is not None
    gateway = report["summary"]["S1"]["gateway"]
    assert gateway["idle_rss_kb"] > 10_000
    assert gateway["peak_rss_kb"] > 10_000


def test_fake_cloud_counts_handshakes_per_second_and_calls_by_action() -> None:
    from collections import Counter

    from bench.fake_cloud import CloudStats

    stats = CloudStats()
    for _ in range(3):
        stats.handshake()
    assert stats.handshakes == 3 and 1 <= stats.peak_handshakes_per_s <= 3
    by_action: Counter[str] = Counter()
    reply_for('[2,"1","BootNotification",{}]', False, by_action)
    reply_for('[2,"2","Nope",{}]', False, by_action)
    assert by_action == {"BootNotification": 1}


async def test_fake_cloud_refuses_every_other_handshake_and_counts_those_in_flight() -> None:
    """The storm and recovery benchmarks read the cloud's handshakes in flight and refusals."""
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from bench.fake_cloud import start_fake_cloud

    server, stats = await start_fake_cloud(handshake_delay_s=0.3, refuse_every_other=True)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp/CP"
    try:
        results = await asyncio.gather(
            *(connect(url, subprotocols=["ocpp1.6"]) for _ in range(4)),  # type: ignore[list-item]
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, InvalidStatus)]
        assert len(refused) == 2 and all(r.response.status_code == 503 for r in refused)
        assert stats.refused == 2 and stats.handshakes == 2
        assert stats.max_in_flight == 4 and stats.in_flight == 0
        for ws in results:
            if not isinstance(ws, BaseException):
                await ws.close()
        with pytest.raises(TimeoutError):  # a client that gives up is no longer in flight
            await connect(url, subprotocols=["ocpp1.6"], open_timeout=0.05)  # type: ignore[list-item]
        await asyncio.sleep(0.05)
        assert stats.in_flight == 0 and stats.requests == 5
    finally:
        server.close()
        await server.wait_closed()
