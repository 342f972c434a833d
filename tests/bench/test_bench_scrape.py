"""The scrape benchmark, tiny: three chargers, every per-charger series counted."""

from __future__ import annotations

from bench.bench_scrape import render_markdown, run


async def test_a_tiny_scrape_run_counts_three_series_per_charger() -> None:
    result = await run(3, 2, 0.0, 1.0)
    assert result["chargers"] == 3
    assert result["per_charger_samples"] == 9  # link_up, outbox_pending, last_seen
    assert result["samples"] > result["per_charger_samples"]
    assert result["bytes"] > result["per_charger_bytes"] > 0
    assert result["render"]["median_ms"] > 0 and result["http_get"]["median_ms"] > 0
    assert "agent" not in result  # --agent-s 0
    table = render_markdown({"runs": [result]})
    assert "| 3 |" in table
