"""A real Prometheus (Debian's binary) scraping a running gateway with the shipped rules.

The configurations are the files docs/fleet.md shows (contrib/prometheus/prometheus.yml, agent.yml,
receiver.yml) with only the addresses and the 30 s intervals changed (1 s, so the test takes
seconds); the rule files are copied unchanged. The gateway runs in this test's event loop with a
fake cloud that refuses one queued message, so that the "dead letters present" alert (for: 0m)
comes true for real. Without the prometheus package the tests skip, except under .ci/run.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from gateway.app import Gateway
from tests.e2e.test_dead_letters import Refuser, make_dead_letters
from tests.e2e.test_store_forward import drained_and_online
from tests.procs import prometheus_tool
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
SITE = "depot-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def from_template(name: str, dest: Path, replacements: dict[str, str]) -> Path:
    """``contrib/prometheus/<name>`` with each key replaced (each must be there once), written to
    ``dest/<name>`` beside unchanged copies of the rule files it loads."""
    text = (CONTRIB / name).read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{name}: {old!r} is not there exactly once"
        text = text.replace(old, new)
    for rules in ("rules.yml", "alerts.yml"):
        shutil.copyfile(CONTRIB / rules, dest / rules)
    path = dest / name
    path.write_text(text)
    return path


def agent_flags(binary: str, wal: Path) -> list[str]:
    """Agent mode: ``--agent`` from Prometheus 3, ``--enable-feature=agent`` before (Debian 12 has
    2.42)."""
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\d+)\.", version)
    major = int(match[1]) if match else 2
    return [
        "--agent" if major >= 3 else "--enable-feature=agent",
        f"--storage.agent.path={wal}",
    ]


@asynccontextmanager
async def prometheus(
    config: Path, data: Path | None, *flags: str, port: int = 0
) -> AsyncIterator[httpx.AsyncClient]:
    """A Prometheus server on ``port`` (else a free one) of 127.0.0.1, its TSDB in ``data`` (None:
    an agent), ready; terminated and waited for at the end."""
    port = port or free_port()
    proc = await asyncio.create_subprocess_exec(
        prometheus_tool("prometheus"),
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        *flags,
        *([] if data is None else [f"--storage.tsdb.path={data}"]),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    log = bytearray()

    async def drain() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            log.extend(chunk)

    drained = asyncio.create_task(drain())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:

            async def ready() -> bool:
                if proc.returncode is not None:
                    raise AssertionError("prometheus exited:\n" + log.decode(errors="replace"))
                try:
                    return (await api.get("/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await poll(ready, timeout=30)
            try:
                yield api
            except BaseException:
                print(f"--- prometheus {' '.join(flags)} log:\n" + log.decode(errors="replace"))
                raise
    finally:
        if proc.returncode is None:
            proc.terminate()
        code = await asyncio.wait_for(proc.wait(), 30)
        await drained
        assert code == 0, log.decode(errors="replace")


async def poll(check: Callable[[], Any], *, timeout: float = 30, every: float = 0.2) -> Any:
    """Await ``check()`` until it returns something true; that value (a server we do not drive
    has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(every)


async def query(api: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    body = (await api.get("/api/v1/query", params={"query": promql})).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def firing(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    alerts = (await api.get("/api/v1/alerts")).json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}


@asynccontextmanager
async def gateway_with_a_dead_letter(tmp_path: Path, cloud: FakeCloud) -> AsyncIterator[Gateway]:
    """A gateway with one charger online and one dead letter (the cloud refused it on replay)."""
    cloud.responder = Refuser()
    settings = make_settings(tmp_path, upstream={"url": cloud.url, "call_timeout_s": 1.0})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP") as cp:
        await make_dead_letters(cp, cloud, [7])
        await wait_for(lambda: drained_and_online(gw, "CP") and gw.hub is not None)
        assert gw.hub is not None and gw.hub.dead_letters == 1
        yield gw


async def assert_fleet_view(api: httpx.AsyncClient) -> None:
    """The scrape is up, recording rules have values, dead letters fire and nothing else does."""
    up = await poll(lambda: query(api, 'up{job="flipturn-gateway"} == 1'))
    assert up[0]["metric"]["site"] == SITE
    ratio = await poll(lambda: query(api, "site:flipturn_gateway_charger_link_up:ratio"))
    assert ratio[0]["metric"] == {"__name__": "site:flipturn_gateway_charger_link_up:ratio"} | {
        "site": SITE
    }
    assert float(ratio[0]["value"][1]) == 1.0
    dead = await poll(lambda: query(api, "site:flipturn_gateway_outbox_dead:sum"))
    assert float(dead[0]["value"][1]) == 1.0
    alerts = await poll(lambda: firing(api))
    alert = alerts["FlipturnGatewayDeadLetters"]
    assert alert["labels"]["site"] == SITE and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"Dead letters at {SITE}"
    assert "refused 1 queued message(s)" in alert["annotations"]["description"]
    assert set(alerts) == {"FlipturnGatewayDeadLetters"}, alerts  # the store, links, scrape: fine


async def test_central_prometheus_scrapes_the_gateway_and_fires_an_alert(
    tmp_path: Path, cloud: FakeCloud
) -> None:
    async with gateway_with_a_dead_letter(tmp_path, cloud) as gw:
        config = from_template(
            "prometheus.yml",
            tmp_path,
            {
                "127.0.0.1:8080": f"127.0.0.1:{gw.api_port}",
                "scrape_interval: 30s": "scrape_interval: 1s",
                "evaluation_interval: 30s": "evaluation_interval: 1s",
            },
        )
        async with prometheus(config, tmp_path / "data") as api:
            await assert_fleet_view(api)


async def test_agent_buffers_while_the_central_prometheus_is_away_then_sends_with_its_site(
    tmp_path: Path, cloud: FakeCloud
) -> None:
    """agent.yml on the depot, receiver.yml centrally: ``site`` comes from the agent's external
    label, and what the agent scraped before the receiver existed arrives once it does."""
    receiver_port = free_port()
    (tmp_path / "agent").mkdir()
    (tmp_path / "central").mkdir()
    async with gateway_with_a_dead_letter(tmp_path, cloud) as gw:
        agent_config = from_template(
            "agent.yml",
            tmp_path / "agent",
            {
                "127.0.0.1:8080": f"127.0.0.1:{gw.api_port}",
                "scrape_interval: 30s": "scrape_interval: 1s",
                "https://prometheus.example.com/api/v1/write": (
                    f"http://127.0.0.1:{receiver_port}/api/v1/write"
                ),
            },
        )
        receiver_config = from_template(
            "receiver.yml",
            tmp_path / "central",
            {"evaluation_interval: 30s": "evaluation_interval: 1s"},
        )
        async with prometheus(
            agent_config,
            None,
            *agent_flags(prometheus_tool("prometheus"), tmp_path / "agent" / "wal"),
            # Its last sends go nowhere once the receiver has stopped: do not wait 1 min for them.
            "--storage.remote.flush-deadline=1s",
        ) as agent:

            async def failed_sends() -> float:
                text = (await agent.get("/metrics")).text
                return sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("prometheus_remote_storage_samples_failed_total")
                    or line.startswith("prometheus_remote_storage_samples_retried_total")
                )

            await poll(failed_sends)  # it scraped, and could not send: the depot is "offline"
            central_from = time.time()
            async with prometheus(
                receiver_config,
                tmp_path / "central" / "data",
                "--web.enable-remote-write-receiver",
                port=receiver_port,
            ) as central:
                await assert_fleet_view(central)
                # Samples older than the receiver itself: buffered in the agent's WAL.
                series = await poll(
                    lambda: query(central, f'up{{job="flipturn-gateway",site="{SITE}"}}[5m]')
                )
                first = min(float(t) for t, _ in series[0]["values"])
                assert first < central_from, (first, central_from)
