"""Day-2 operations through the real CLI and HTTP API: the store-path rule, log formats and
journald priorities, frame tracing, SIGHUP reload, start-up refusals, metric names, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from gateway import __version__
from tests.procs import GatewayProcess, base_config, cli, side_by_side, write_config
from tests.support import FakeCloud, charger, wait_for


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


# --- one store for service and operator -------------------------------------------------------


def test_read_commands_never_create_a_store(tmp_path: Path) -> None:
    db = tmp_path / "state" / "gateway.db"
    config = base_config(
        tmp_path, '[flipturn]\napi_key = "k"\napi_url = "http://127.0.0.1:9"\n', db=db
    )
    for command in (
        ["tags", "lookup", "04A2B3"],
        ["outbox", "dead"],
        ["outbox", "requeue", "--all"],
        ["outbox", "drop", "1"],
        ["sync"],
    ):
        result = run_cli("--config", str(config), *command)
        assert result.returncode == 1, (command, result.stderr)
        assert str(db) in result.stderr and "not found" in result.stderr, command
        assert not db.exists() and not db.parent.exists(), command


async def test_operator_commands_read_the_running_services_store(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    async with GatewayProcess(config):
        result = await asyncio.to_thread(
            run_cli, "tags", "lookup", "aabb.ccdd.eeff", "--config", str(config)
        )
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["key"] == "AABBCCDDEEFF"  # the dotted MAC spelling is normalised


# --- logs -------------------------------------------------------------------------------------

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


async def refused_handshake(port: int) -> None:
    with pytest.raises(InvalidStatus):
        await connect(f"ws://127.0.0.1:{port}/elsewhere/CP", subprotocols=[Subprotocol("ocpp1.6")])


async def test_text_lines_carry_journal_priorities_and_no_timestamp(tmp_path: Path) -> None:
    async with GatewayProcess(base_config(tmp_path), env={"JOURNAL_STREAM": "8:1234"}) as gw:
        await refused_handshake(gw.charger_port)
        await wait_for(lambda: any("refused" in line for line in gw.log))
    lines = [line.rstrip("\n") for line in gw.log if line.strip()]
    listening = next(line for line in lines if "listening for chargers" in line)
    assert listening.startswith("<6>INFO gateway.app: ")
    refused = next(line for line in lines if "refused" in line)
    assert refused.startswith("<4>WARNING gateway.net.server: ")
    assert all(re.match(r"<[3467]>", line) for line in lines), lines
    assert not any(TIMESTAMP.search(line[:40]) for line in lines), lines


async def test_text_lines_without_the_journal_have_a_timestamp(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    gw = GatewayProcess(base_config(tmp_path))
    gw.env = env
    async with gw:
        pass
    listening = next(line for line in gw.log if "listening for chargers" in line)
    assert TIMESTAMP.match(listening) and " INFO gateway.app: " in listening


async def test_json_lines_and_debug_frame_trace(tmp_path: Path, cloud: FakeCloud) -> None:
    config = base_config(
        tmp_path, f'[upstream]\nurl = "{cloud.url}"\n[log]\nlevel = "debug"\nformat = "json"\n'
    )
    async with GatewayProcess(config) as gw, charger(gw.charger_port, "CP-7") as cp:
        await cp.call("Heartbeat", {}, message_id="hb-1")
        await wait_for(lambda: sum(": frame " in line for line in gw.log) >= 4)
    records = [json.loads(line) for line in gw.log if line.strip()]
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert record["level"] in ("debug", "info", "warning", "error")
    frames = [r for r in records if r["msg"].startswith("CP-7: frame ")]
    assert [r["msg"].split(" ")[2:4] for r in frames][:4] == [
        ["from", "charger"],
        ["to", "cloud"],
        ["from", "cloud"],
        ["to", "charger"],
    ]
    assert frames[0]["msg"] == "CP-7: frame from charger CALL Heartbeat hb-1"
    assert frames[3]["msg"] == "CP-7: frame to charger CALLRESULT - hb-1"
    assert all(r["charger"] == "CP-7" and r["level"] == "debug" for r in frames)
    connected = next(r for r in records if "connected (OCPP" in r["msg"])
    assert connected["charger"] == "CP-7" and connected["level"] == "info"
    datetime_ok = re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", records[0]["ts"])
    assert datetime_ok, records[0]["ts"]


async def test_info_logs_no_line_per_frame(tmp_path: Path, cloud: FakeCloud) -> None:
    config = base_config(tmp_path, f'[upstream]\nurl = "{cloud.url}"\n')
    async with GatewayProcess(config) as gw, charger(gw.charger_port, "CP-7") as cp:
        for _ in range(5):
            await cp.call("Heartbeat", {})
    assert not any(" frame " in line for line in gw.log), gw.log


# --- SIGHUP -----------------------------------------------------------------------------------


def reload_config(tmp_path: Path, *, token: str, passwords: str, level: str, port: int) -> Path:
    return write_config(
        tmp_path / "c.toml",
        f"""
[chargers]
host = "127.0.0.1"
port = {port}
auth = "basic"
[chargers.passwords]
{passwords}
[api]
port = 0
token = "{token}"
[store]
path = "{tmp_path / "gw.db"}"
[log]
level = "{level}"
""",
    )


def basic(charger_id: str, password: str) -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{charger_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_sighup_reloads_secrets_and_level_without_dropping_a_charger(
    tmp_path: Path,
) -> None:
    old_pw, new_pw = "old-password-0123456", "new-password-6543210"
    config = reload_config(
        tmp_path, token="token-one", passwords=f'"CP-1" = "{old_pw}"', level="info", port=0
    )
    async with GatewayProcess(config) as gw:
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}")
        async with (
            api,
            charger(gw.charger_port, "CP-1", additional_headers=basic("CP-1", old_pw)) as cp,
        ):
            await cp.call("Heartbeat", {})
            assert (await api.get("/api/chargers", headers=bearer("token-one"))).status_code == 200
            reload_config(
                tmp_path,
                token="token-two",
                passwords=f'"CP-1" = "{new_pw}"\n"CP-2" = "{new_pw}"',
                level="debug",
                port=gw.charger_port + 1,  # needs a restart: logged, not applied
            )
            gw.signal(signal.SIGHUP)
            await wait_for(lambda: any("reloaded" in line for line in gw.log), timeout=10)

            # The charger that was connected stays connected and served.
            assert (await cp.call("Heartbeat", {}))[0] == 3
            assert cp.ws.close_code is None
            assert (await api.get("/api/chargers", headers=bearer("token-one"))).status_code == 401
            answer = await api.get("/api/chargers", headers=bearer("token-two"))
            assert answer.status_code == 200
            assert [c["id"] for c in answer.json()["data"] if c["connected"]] == ["CP-1"]
            async with charger(
                gw.charger_port, "CP-2", additional_headers=basic("CP-2", new_pw)
            ) as cp2:
                assert (await cp2.call("Heartbeat", {}))[0] == 3
            with pytest.raises(InvalidStatus):  # the old password no longer admits anyone
                async with charger(
                    gw.charger_port, "CP-1", additional_headers=basic("CP-1", old_pw)
                ):
                    pass
            await cp.call("Heartbeat", {}, message_id="after-reload")
            await wait_for(lambda: any("after-reload" in line for line in gw.log))
    log = "".join(gw.log)
    assert "chargers.port changed; needs a restart" in log
    assert "api.token" in log and "chargers.passwords" in log and "log.level" in log
    assert "frame from charger CALL Heartbeat after-reload" in log  # log.level = "debug" applied
    for secret in ("token-two", new_pw, old_pw):
        assert secret not in log


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_sighup_with_a_broken_file_keeps_the_running_configuration(tmp_path: Path) -> None:
    config = reload_config(tmp_path, token="keep-me", passwords="", level="info", port=0)
    async with GatewayProcess(config) as gw:
        config.write_text("[chargers\n")
        gw.signal(signal.SIGHUP)
        await wait_for(lambda: any("reload failed" in line for line in gw.log), timeout=10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
            assert (await api.get("/api/chargers", headers=bearer("keep-me"))).status_code == 200
    assert "not valid TOML" in "".join(gw.log)


# --- refusals and warnings --------------------------------------------------------------------


def test_api_on_the_network_without_a_token_is_refused(tmp_path: Path) -> None:
    def with_api(name: str, lines: str) -> Path:
        config = base_config(tmp_path).read_text().replace("[api]\n", f"[api]\n{lines}")
        return write_config(tmp_path / name, config)

    open_hosts = ("0.0.0.0", "192.0.2.10", "::", "gateway.local")
    refused = [
        (host, command, with_api(f"open-{n}.toml", f'host = "{host}"\n'))
        for n, host in enumerate(open_hosts)
        for command in ("check-config", "run")
    ]
    local_hosts = ("127.0.0.1", "::1", "localhost", "127.0.0.2")
    accepted = [
        (host, with_api(f"local-{n}.toml", f'host = "{host}"\n'))
        for n, host in enumerate(local_hosts)
    ]
    accepted.append(
        ("0.0.0.0 with a token", with_api("token.toml", 'host = "0.0.0.0"\ntoken = "t"\n'))
    )
    refusals = side_by_side(lambda r: run_cli("--config", str(r[2]), r[1]), refused)
    checks = side_by_side(lambda a: run_cli("--config", str(a[1]), "check-config"), accepted)
    for (host, command, _), result in zip(refused, refusals, strict=True):
        assert result.returncode == 2, (host, command, result.stderr)
        assert "api.token" in result.stderr and host in result.stderr, result.stderr
    for (host, _), result in zip(accepted, checks, strict=True):
        assert result.returncode == 0, (host, result.stderr)


def test_basic_auth_without_passwords_warns(tmp_path: Path) -> None:
    config = (
        base_config(tmp_path, "")
        .read_text()
        .replace("[chargers]\n", '[chargers]\nauth = "basic"\n')
    )
    path = write_config(tmp_path / "basic.toml", config)
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 0
    assert "warning" in result.stderr and "chargers.passwords" in result.stderr


# --- metrics ----------------------------------------------------------------------------------


async def test_metric_names_build_info_process_and_upstream(
    tmp_path: Path, cloud: FakeCloud
) -> None:
    config = base_config(tmp_path, f'[upstream]\nurl = "{cloud.url}"\n')
    async with GatewayProcess(config) as gw, charger(gw.charger_port, "CP") as cp:
        for _ in range(3):
            await cp.call("Heartbeat", {})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
            text = (await api.get("/metrics")).text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    process = {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"}
    assert process <= {
        line.split("{")[0].split()[0] for line in text.splitlines() if not line.startswith("#")
    }
    for name in names:
        assert name.startswith(("flipturn_gateway_", "process_")), name
    assert f'flipturn_gateway_build_info{{version="{__version__}"}} 1.0' in text
    assert 'flipturn_gateway_upstream_connects_total{result="ok"} 1.0' in text
    assert 'flipturn_gateway_upstream_connects_total{result="failed"} 0.0' in text
    assert "flipturn_gateway_upstream_call_duration_seconds_count 3.0" in text
    assert 'flipturn_gateway_upstream_call_duration_seconds_bucket{le="+Inf"} 3.0' in text
    for gauge in ("outbox_pending 0.0", "outbox_oldest_age_seconds 0.0", "outbox_dead 0.0"):
        assert f"flipturn_gateway_{gauge}" in text, gauge


# --- the CLI ----------------------------------------------------------------------------------


def test_version_flag_and_command() -> None:
    for args in (["--version"], ["version"]):
        result = run_cli(*args)
        assert result.returncode == 0 and __version__ in result.stdout, args


def test_config_before_or_after_the_command(tmp_path: Path) -> None:
    config = base_config(tmp_path, "[offline]\nheartbeat_interval_s = 77\n")
    for args in (
        ["--config", str(config), "check-config"],
        ["check-config", "--config", str(config)],
    ):
        result = run_cli(*args, env={"FLIPTURN_GATEWAY_CONFIG": ""})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["offline"]["heartbeat_interval_s"] == 77


def test_every_command_has_a_one_line_description() -> None:
    def listed(args: list[str]) -> dict[str, str]:
        text = run_cli(*args, "--help").stdout
        block = text.split("positional arguments:", 1)[1].split("options:", 1)[0]
        entries: dict[str, str] = {}
        name = ""
        for line in block.splitlines()[2:]:
            if re.match(r"^ {4}\S", line):
                name, _, rest = line.strip().partition(" ")
                entries[name] = rest.strip()
            elif name and line.strip():
                entries[name] = (entries[name] + " " + line.strip()).strip()
        return entries

    top = listed([])
    assert set(top) >= {"run", "check-config", "sync", "tags", "outbox", "version"}
    groups = {"tags": listed(["tags"]), "outbox": listed(["outbox"])}
    assert set(groups["tags"]) == {"lookup"}
    assert set(groups["outbox"]) == {"dead", "requeue", "drop"}
    for entries in (top, *groups.values()):
        for name, summary in entries.items():
            assert len(summary) > 10, (name, summary)
