"""The systemd unit keeps the promises of the contract (design.md, "Reliability and security")."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.config import load_settings

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "flipturn-gateway.service"
EXECUTABLE = "/opt/flipturn-gateway/.venv/bin/flipturn-gateway"


def unit_entries() -> dict[str, list[str]]:
    """``Section.Key`` -> every value assigned to it, in order (keys may repeat in unit files)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def test_notify_watchdog_user_and_state_directory() -> None:
    unit = unit_entries()
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.NotifyAccess"] == ["main"]
    assert unit["Service.WatchdogSec"] == ["30"]
    assert unit["Service.User"] == ["flipturn-gateway"]
    assert "Service.DynamicUser" not in unit
    assert unit["Service.StateDirectory"] == ["flipturn-gateway"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.RestartPreventExitStatus"] == ["2"]  # bad config: CLI exit code 2
    assert unit["Service.LimitNOFILE"] == ["65536"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_exec_start_runs_the_entry_point_with_the_system_config() -> None:
    (exec_start,) = unit_entries()["Service.ExecStart"]
    assert exec_start.split() == [
        EXECUTABLE,
        "--config",
        "/etc/flipturn-gateway/config.toml",
        "run",
    ]


def test_store_path_comes_from_the_config_file_like_the_operators_commands() -> None:
    unit = unit_entries()
    env = dict(v.split("=", 1) for v in unit.get("Service.Environment", []))
    # No environment override: the service reads store.path from config.toml, as `flipturn-gateway
    # tags lookup` run from a shell does.
    assert "FLIPTURN_GATEWAY_STORE__PATH" not in env
    example = load_settings(Path(__file__).resolve().parent.parent / "config.example.toml")
    assert example.store.path == "/var/lib/flipturn-gateway/gateway.db"
    assert Path(example.store.path).parent == Path("/var/lib") / unit["Service.StateDirectory"][0]
    # A config without store.path resolves "gateway.db" in the state directory all the same.
    assert unit["Service.WorkingDirectory"] == ["/var/lib/flipturn-gateway"]


def test_reload_is_sighup() -> None:
    assert unit_entries()["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_hardening_options() -> None:
    unit = unit_entries()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert unit[f"Service.{key}"] == [value], key
    assert unit["Service.MemoryMax"][0].endswith(("M", "G"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart= exists; point it at an executable that does.
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(EXECUTABLE, shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
