"""The Prometheus files in contrib/prometheus: valid for promtool, every alert unit-tested firing
and not firing, every recording rule tested (``promtool test rules``).

They need Debian's ``prometheus`` package (``promtool``); without it they skip, except under
``.ci/run``, which installs it and sets ``FLIPTURN_REQUIRE_PROMETHEUS=1``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.procs import prometheus_tool

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args],
        cwd=CONTRIB,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_configs_pass_promtool_check() -> None:
    for args in (["prometheus.yml", "receiver.yml"], ["--agent", "agent.yml"]):
        result = promtool("check", "config", *args)
        assert result.returncode == 0, result.stdout + result.stderr


def alert_names() -> list[str]:
    return re.findall(r"^\s+- alert: (\S+)$", (CONTRIB / "alerts.yml").read_text(), re.M)


def test_the_contracts_alerts_are_all_there() -> None:
    """design.md "Fleet operations": store down, a charger's link down 10 min, outbox older than
    1 h, dead letters, sync failing 1 h, certificate within 14 days, site guard engaged 1 h, the
    gateway not scraped."""
    text = (CONTRIB / "alerts.yml").read_text()
    for metric in (
        "flipturn_gateway_store_up == 0",
        "flipturn_gateway_charger_link_up == 0",
        "flipturn_gateway_outbox_oldest_age_seconds > 3600",
        "flipturn_gateway_outbox_dead > 0",
        "flipturn_gateway_sync_failing_since_timestamp_seconds",
        "flipturn_gateway_certificate_expiry_timestamp_seconds - time() < 14 * 86400",
        "flipturn_gateway_site_engaged == 1",
        'up{job="flipturn-gateway"} == 0',
        'absent(up{job="flipturn-gateway"})',
    ):
        assert metric in text, metric
    assert len(alert_names()) == len(set(alert_names())) >= 8
    # every alert has a duration, a severity and annotations naming the depot
    blocks = text.split("- alert: ")[1:]
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"^\s+for: \d+[mh]$", block, re.M), name
        assert re.search(r"^\s+severity: (critical|warning)$", block, re.M), name
        assert "summary:" in block and "description:" in block, name
        if name != "FlipturnGatewayAbsent":  # absent() has no series to take a site from
            assert "{{ $labels.site }}" in block, name
        if "charger_link_up" in block:
            assert "{{ $labels.charger }}" in block, name


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = (CONTRIB / "tests.yml").read_text()
    quiet = set(re.findall(r"alertname: (\S+)\n\s+exp_alerts: \[\]", tests))
    firing = set(re.findall(r"alertname: (\S+)\n\s+exp_alerts:\n\s+- exp_labels:", tests))
    for name in alert_names():
        assert name in quiet, f"{name}: no test where it does not fire"
        assert name in firing, f"{name}: no test where it fires"


def test_every_recording_rule_is_tested() -> None:
    records = re.findall(r"^\s+- record: (\S+)$", (CONTRIB / "rules.yml").read_text(), re.M)
    tested = set(re.findall(r"^\s+- expr: (\S+)$", (CONTRIB / "tests.yml").read_text(), re.M))
    assert records
    for name in records:
        assert name in tested, name


def without_comments(text: str) -> str:
    """The YAML's lines without full-line comments and blank runs (inline comments stay)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return re.sub(r"\n{2,}", "\n\n", "\n".join(lines)).strip()


def test_the_configurations_in_the_docs_are_the_shipped_files() -> None:
    """docs/fleet.md shows prometheus.yml, agent.yml and receiver.yml as shipped (comments aside);
    tests/e2e/test_prometheus.py runs Prometheus with these files."""
    docs = (CONTRIB.parent.parent / "docs" / "fleet.md").read_text()
    blocks = {without_comments(b) for b in re.findall(r"```yaml\n(.*?)```", docs, re.S)}
    for name in ("prometheus.yml", "agent.yml", "receiver.yml"):
        assert without_comments((CONTRIB / name).read_text()) in blocks, name
