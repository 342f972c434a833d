"""The real CLI in a subprocess: commands, exit codes, secrets, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx

from gateway import __version__
from tests.procs import GatewayProcess, cli, side_by_side, write_config
from tests.support import charger

SECRETS = ("hunter2-charger-pass", "flipturn-api-key-123", "local-api-token-xyz")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        cli(*args), capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}
    )


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.strip() == __version__


def test_check_config_redacts_secrets(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        f"""
[chargers]
auth = "basic"
[chargers.passwords]
CP-1 = "{SECRETS[0]}"
[flipturn]
api_key = "{SECRETS[1]}"
[api]
token = "{SECRETS[2]}"
[site]
max_current_a = 125
[site.chargers]
"CP-1" = 16
""",
    )
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["site"]["max_current_a"] == 125 and shown["site"]["chargers"] == {"CP-1": 16}
    assert shown["site"]["mode"] == "offline" and shown["site"]["min_current_a"] == 6
    assert shown["chargers"]["passwords"] == {"CP-1": "***"}
    assert shown["flipturn"]["api_key"] == "***" and shown["api"]["token"] == "***"
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cases = {
        "[chargers]\nprot = 9000\n": "chargers.prot",
        "[chargers]\nport = 70000\n": "chargers.port",
        '[chargers]\ntls_cert = "/x.pem"\n': "tls_key",
        '[upstream]\ncall_timeout_s = "soon"\n': "upstream.call_timeout_s",
        "[chargers\n": "not valid TOML",
        '[site]\nmode = "sometimes"\n': "site.mode",
    }
    configs = [write_config(tmp_path / f"bad-{n}.toml", text) for n, text in enumerate(cases)]
    results = side_by_side(lambda config: run_cli("--config", str(config), "check-config"), configs)
    for (text, key), result in zip(cases.items(), results, strict=True):
        assert result.returncode == 2, (text, result.stderr)
        assert key in result.stderr, (text, result.stderr)
    missing = run_cli("--config", str(tmp_path / "nope.toml"), "check-config")
    assert missing.returncode == 2 and "not found" in missing.stderr
    env = run_cli(
        "check-config", env={"FLIPTURN_GATEWAY_CONFIG": "", "FLIPTURN_GATEWAY_API__PORT": "-1"}
    )
    assert env.returncode == 2 and "api.port" in env.stderr


def test_usage_error_exits_2() -> None:
    assert run_cli("frobnicate").returncode == 2


async def test_run_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        f"""
[chargers]
host = "127.0.0.1"
port = 0
[api]
host = "127.0.0.1"
port = 0
token = "{SECRETS[2]}"
[store]
path = "{tmp_path / "gw.db"}"
""",
    )
    gateway = await GatewayProcess(config).start()
    async with charger(gateway.charger_port, "CP-1") as cp:
        assert (await cp.call("Heartbeat", {}))[0] == 3
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}") as client:
            assert (await client.get("/health")).json()["chargers"]["connected"] == 1
            assert (await client.get("/api/chargers")).status_code == 401
            auth = {"Authorization": f"Bearer {SECRETS[2]}"}
            rows = (await client.get("/api/chargers", headers=auth)).json()["data"]
            assert [r["id"] for r in rows] == ["CP-1"]
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(timeout=10) == 0
        await cp.ws.wait_closed()
        assert cp.ws.close_code == 1001  # going away: the charger reconnects elsewhere/later
    assert not any(SECRETS[2] in line for line in gateway.log)
    assert any("stopped" in line for line in gateway.log)


async def test_run_fails_cleanly_when_port_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.toml",
            f'[chargers]\nhost = "127.0.0.1"\nport = {port}\n[api]\nport = 0\n'
            f'[store]\npath = "{tmp_path / "gw.db"}"\n',
        )
        result = run_cli("--config", str(config), "run")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "cannot start" in result.stderr


async def test_run_notifies_systemd_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    import asyncio
    import os
    import socket

    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.setblocking(False)
    config = write_config(
        tmp_path / "c.toml",
        f'[chargers]\nhost = "127.0.0.1"\nport = 0\n[api]\nport = 0\n'
        f'[store]\npath = "{tmp_path / "gw.db"}"\n',
    )
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    gateway = await GatewayProcess(config, env=env).start()
    loop = asyncio.get_running_loop()
    messages: list[str] = []

    async def receive_until(field: str) -> None:
        while not any(field in m for m in messages):
            data = await asyncio.wait_for(loop.sock_recv(listener, 4096), 10)
            messages.append(data.decode())

    try:
        await receive_until("READY=1")
        await receive_until("WATCHDOG=1")
        gateway.signal(signal.SIGTERM)
        await receive_until("STOPPING=1")
        assert await gateway.wait() == 0
    finally:
        listener.close()
        os.unlink(sock_path)
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    stopping = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    assert ready < stopping
