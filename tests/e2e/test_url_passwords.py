"""A password in a URL of the config (``wss://user:password@host``) is a secret too: never in
``check-config`` output nor in the log (the start-up line, a cloud link that fails)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from gateway.config import redact_url
from tests.procs import GatewayProcess, base_config, cli
from tests.support import wait_for

PASSWORD = "url-pass-SECRET-4c9e"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"wss://ops:{PASSWORD}@cloud.example.com/ocpp", "wss://ops:***@cloud.example.com/ocpp"),
        (f"ws://ops:{PASSWORD}@127.0.0.1:9/ocpp", "ws://ops:***@127.0.0.1:9/ocpp"),
        (f"wss://:{PASSWORD}@[::1]:443/x", "wss://:***@[::1]:443/x"),
        ("wss://ops@cloud.example.com/ocpp", "wss://ops@cloud.example.com/ocpp"),
        ("wss://cloud.example.com/ocpp", "wss://cloud.example.com/ocpp"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_check_config_shows_no_url_password(tmp_path: Path) -> None:
    config = base_config(
        tmp_path,
        f'[upstream]\nurl = "ws://ops:{PASSWORD}@127.0.0.1:9/ocpp"\n'
        f'[flipturn]\napi_url = "https://api:{PASSWORD}@api.example.com"\n',
    )
    result = subprocess.run(
        cli("--config", str(config), "check-config"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["upstream"]["url"] == "ws://ops:***@127.0.0.1:9/ocpp"
    assert shown["flipturn"]["api_url"] == "https://api:***@api.example.com"


async def test_the_log_shows_no_url_password(tmp_path: Path) -> None:
    url = f"ws://ops:{PASSWORD}@127.0.0.1:{closed_port()}/ocpp"
    config = base_config(tmp_path, f'[upstream]\nurl = "{url}"\n')
    async with (
        GatewayProcess(config) as gw,
        connect(
            f"ws://127.0.0.1:{gw.charger_port}/ocpp/CP-1", subprotocols=[Subprotocol("ocpp1.6")]
        ),
    ):
        await wait_for(lambda: any("cloud link down" in line for line in gw.log), timeout=10)
    log = "".join(gw.log)
    assert "ops:***@127.0.0.1" in log
    assert PASSWORD not in log
