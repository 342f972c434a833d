"""Markdown for a relay benchmark: one table per scenario, ratios, and the issue's targets."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import SCENARIOS

__all__ = ["Check", "emit", "gateway_checks", "ratio", "render_markdown"]


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print a suite's result as JSON, and also write it to ``path`` when one is given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


@dataclass(frozen=True, slots=True)
class Check:
    scenario: str
    what: str
    limit: str
    measured: float | None
    ok: bool | None  # None: not measurable in this run (a target was missing)


def _check(
    scenario: str, what: str, limit: str, measured: float | None, test: Callable[[float], bool]
) -> Check:
    return Check(scenario, what, limit, measured, None if measured is None else test(measured))


def gateway_checks(summary: dict[str, Any]) -> list[Check]:
    """The issue's targets, as ratios measured in this one run."""

    def get(scenario: str, target: str, key: str) -> Any:
        return summary.get(scenario, {}).get(target, {}).get(key)

    checks = []
    if "S1" in summary:
        p50 = ratio(get("S1", "gateway", "p50"), get("S1", "nginx", "p50"))
        p99 = ratio(get("S1", "gateway", "p99"), get("S1", "nginx", "p99"))
        checks.append(_check("S1", "p50 RTT gateway / nginx", "<= 1.3", p50, lambda v: v <= 1.3))
        checks.append(_check("S1", "p99 RTT gateway / nginx", "<= 1.5", p99, lambda v: v <= 1.5))
    if "S2" in summary:
        thr = ratio(get("S2", "gateway", "msgs_per_s"), get("S2", "minimal", "msgs_per_s"))
        cpu = ratio(
            get("S2", "gateway", "cpu_us_per_frame"), get("S2", "minimal", "cpu_us_per_frame")
        )
        checks.append(_check("S2", "msgs/s gateway / minimal", ">= 0.8", thr, lambda v: v >= 0.8))
        checks.append(
            _check("S2", "CPU per frame gateway / minimal", "<= 1.5", cpu, lambda v: v <= 1.5)
        )
    if "S3" in summary:
        peak = get("S3", "gateway", "peak_rss_kb")
        idle = get("S3", "gateway", "idle_rss_kb")
        peak_mb = None if peak is None else round(peak / 1024, 1)
        idle_mb = None if idle is None else round(idle / 1024, 1)
        checks.append(_check("S3", "gateway peak RSS, MB", "<= 80", peak_mb, lambda v: v <= 80))
        checks.append(_check("S3", "gateway idle RSS, MB", "<= 50", idle_mb, lambda v: v <= 50))
    return checks


def _scenario_section(scenario: str, rows: dict[str, Any]) -> list[str]:
    title = SCENARIOS[scenario].summary if scenario in SCENARIOS else scenario
    lines = [
        f"### {scenario}: {title}",
        "",
        "| target | p50 µs | p90 µs | p99 µs | p99.9 µs | msgs/s | errors | CPU µs/frame "
        "| peak RSS MB | idle RSS MB | relayed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {_fmt(row['p50'])} | {_fmt(row['p90'])} | {_fmt(row['p99'])} "
            f"| {_fmt(row['p999'])} | {_fmt(row['msgs_per_s'])} | {row['errors']} "
            f"| {_fmt(row['cpu_us_per_frame'], 1)} | {_mb(row['peak_rss_kb'])} "
            f"| {_mb(row['idle_rss_kb'])} | {row['relayed_share'] * 100:.1f}% |"
        )
    nginx, minimal = rows.get("nginx"), rows.get("minimal")
    ratio_rows = []
    for name, row in rows.items():
        if name in ("direct",):
            continue
        cells = [
            ratio(row["p50"], nginx and nginx["p50"]),
            ratio(row["p99"], nginx and nginx["p99"]),
            ratio(row["msgs_per_s"], minimal and minimal["msgs_per_s"]),
            ratio(row["cpu_us_per_frame"], minimal and minimal["cpu_us_per_frame"]),
        ]
        ratio_rows.append(f"| {name} | " + " | ".join(_fmt(c, 2) for c in cells) + " |")
    if ratio_rows:
        lines += [
            "",
            "| target | p50 / nginx | p99 / nginx | msgs/s / minimal | CPU per frame / minimal |",
            "| --- | ---: | ---: | ---: | ---: |",
            *ratio_rows,
        ]
    return [*lines, ""]


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    options = report["options"]
    lines = [
        f"## Relay benchmark, {report['started_at']} ({report['elapsed_s']:.0f} s)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_mb']} MB, "
        f"Linux {machine['kernel']}; Python {machine['python']}, "
        f"websockets {machine['websockets']}, "
        f"uvloop {machine['uvloop']}, orjson {machine['orjson']}, nginx {machine['nginx']}.",
        f"Each run: {options['warmup_s']:g} s warm-up + {options['duration_s']:g} s measured, "
        f"{options['workers']} load generator processes, {options['reps']} interleaved repetitions "
        "per target; medians over repetitions (peak RSS: maximum)."
        + (
            " Chargers offer permessage-deflate and the fake cloud accepts it."
            if options.get("compression")
            else ""
        ),
        "",
    ]
    for name, why in report["notes"].items():
        lines.append(f"- **{name} skipped**: {why}")
    if report["notes"]:
        lines.append("")
    for scenario, rows in report["summary"].items():
        lines += _scenario_section(scenario, rows)
    checks = gateway_checks(report["summary"])
    if checks:
        lines += [
            "### Targets (gateway)",
            "",
            "| scenario | measure | target | measured | met |",
            "| --- | --- | ---: | ---: | :---: |",
        ]
        for check in checks:
            met = "n/a" if check.ok is None else ("yes" if check.ok else "**no**")
            measured = _fmt(check.measured, 2)
            lines.append(
                f"| {check.scenario} | {check.what} | {check.limit} | {measured} | {met} |"
            )
        lines.append("")
    return "\n".join(lines)
