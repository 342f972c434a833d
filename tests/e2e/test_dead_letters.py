"""Dead letters: made by a cloud that refuses a message, then listed, requeued (delivered in the
original order), dropped and exported, through the HTTP API and the real CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_store_forward import drained_and_online
from tests.procs import GatewayProcess, base_config, cli
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for

T0 = "2026-11-21T12:00:00Z"
REFUSED = {6, 7, 8, 9}  # connector ids whose StatusNotification the cloud refuses while `refusing`


def status(connector: int) -> dict[str, Any]:
    return {"connectorId": connector, "errorCode": "NoError", "status": "Available"}


class Refuser:
    """The cloud's answers: refuses StatusNotifications of REFUSED connectors while ``on``."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, cid: str, action: str, payload: dict[str, Any]) -> Any:
        if self.on and action == "StatusNotification" and payload["connectorId"] in REFUSED:
            return ("error", "PropertyConstraintViolation")
        return {"currentTime": T0} if action == "Heartbeat" else {}


async def make_dead_letters(cp: Any, cloud: FakeCloud, connectors: list[int]) -> None:
    """Queue StatusNotifications while the cloud is down; it refuses some on replay."""
    await cp.call("Heartbeat", {})
    await cloud.stop()
    for connector in connectors:
        await cp.call("StatusNotification", status(connector))
    await cloud.restart()
    await wait_for(
        lambda: len(cloud.calls("CP", "StatusNotification")) == len(connectors), timeout=10
    )


def connectors_seen(cloud: FakeCloud) -> list[int]:
    return [f[3]["connectorId"] for f in cloud.calls("CP", "StatusNotification")]


async def test_api_lists_requeues_in_order_and_drops(tmp_path: Path, cloud: FakeCloud) -> None:
    refuser = Refuser()
    cloud.responder = refuser
    settings = make_settings(tmp_path, upstream={"url": cloud.url, "call_timeout_s": 1.0})
    async with (
        running_gateway(settings) as gw,
        charger(gw.charger_port, "CP") as cp,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api,
    ):
        await make_dead_letters(cp, cloud, [7, 1, 8, 9, 6])
        await wait_for(lambda: drained_and_online(gw, "CP"))
        dead = (await api.get("/api/outbox/dead")).json()["data"]
        assert [d["payload"]["connectorId"] for d in dead] == [7, 8, 9, 6]  # oldest queued first
        first = dead[0]
        assert set(first) == {
            "id",
            "chargerId",
            "action",
            "messageId",
            "payload",
            "error",
            "attempts",
            "queuedAt",
            "deadAt",
        }
        assert first["chargerId"] == "CP" and first["action"] == "StatusNotification"
        assert first["messageId"] == "m2" and first["payload"] == status(7)
        assert first["error"].startswith("PropertyConstraintViolation")
        assert first["attempts"] == 1
        queued = datetime.fromisoformat(first["queuedAt"])
        assert queued.tzinfo is not None and datetime.fromisoformat(first["deadAt"]) >= queued
        health = (await api.get("/health")).json()
        assert health["status"] == "degraded" and health["outbox"]["deadLetters"] == 4
        assert "flipturn_gateway_outbox_dead 4.0" in (await api.get("/metrics")).text

        # Requeued in reverse order while the cloud is down: replayed in the original order.
        refuser.on = False
        await cloud.stop()
        for d in (dead[2], dead[0]):
            answer = await api.post(f"/api/outbox/dead/{d['id']}/requeue")
            assert answer.status_code == 200 and answer.json() == {"status": "Requeued"}
        await cloud.restart()
        await wait_for(lambda: len(cloud.calls("CP", "StatusNotification")) == 2, timeout=10)
        assert connectors_seen(cloud) == [7, 9]
        assert [f[1] for f in cloud.calls("CP")] == [dead[0]["messageId"], dead[2]["messageId"]]
        await wait_for(lambda: drained_and_online(gw, "CP"), timeout=10)

        # Requeued while online: the running session replays it, the charger sends nothing.
        assert (await api.post(f"/api/outbox/dead/{dead[1]['id']}/requeue")).status_code == 200
        await wait_for(lambda: len(cloud.calls("CP", "StatusNotification")) == 3, timeout=10)
        assert connectors_seen(cloud) == [7, 9, 8]

        remaining = (await api.get("/api/outbox/dead")).json()["data"]
        assert [d["id"] for d in remaining] == [dead[3]["id"]]
        gone = await api.delete(f"/api/outbox/dead/{dead[3]['id']}")
        assert gone.status_code == 200 and gone.json() == {"status": "Deleted"}
        assert (await api.get("/api/outbox/dead")).json()["data"] == []
        await wait_for(lambda: drained_and_online(gw, "CP"), timeout=10)
        health = (await api.get("/health")).json()
        assert health["status"] == "ok" and health["outbox"]["deadLetters"] == 0
        assert connectors_seen(cloud) == [7, 9, 8]  # the dropped one was never sent
        for method, path in (
            ("POST", f"/api/outbox/dead/{dead[3]['id']}/requeue"),
            ("DELETE", f"/api/outbox/dead/{dead[3]['id']}"),
            ("POST", "/api/outbox/dead/999999/requeue"),
            ("DELETE", "/api/outbox/dead/not-a-number"),
        ):
            missing = await api.request(method, path)
            assert missing.status_code == 404 and "error" in missing.json(), path
        assert "flipturn_gateway_outbox_dead 0.0" in (await api.get("/metrics")).text


async def run_cli_async(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, cli(*args), capture_output=True, text=True, timeout=60
    )


async def test_cli_exports_requeues_to_the_running_gateway_and_drops(
    tmp_path: Path, cloud: FakeCloud
) -> None:
    refuser = Refuser()
    cloud.responder = refuser
    db = tmp_path / "gw.db"
    config = base_config(
        tmp_path, f'[upstream]\nurl = "{cloud.url}"\ncall_timeout_s = 1.0\n', db=db
    )
    async with GatewayProcess(config) as gw, charger(gw.charger_port, "CP") as cp:
        await make_dead_letters(cp, cloud, [7, 1, 8, 9])
        await cloud.wait_connected("CP")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
            for _ in range(500):  # the gateway commits the last dead letter just after the answer
                if len((await api.get("/api/outbox/dead")).json()["data"]) == 3:
                    break
                await asyncio.sleep(0.02)
        table = await run_cli_async("outbox", "dead", "--config", str(config))
        assert table.returncode == 0, table.stderr
        header, *lines = table.stdout.splitlines()
        assert header.split()[:3] == ["ID", "CHARGER", "ACTION"]
        assert len(lines) == 3 and all("PropertyConstraintViolation" in line for line in lines)
        exported = await run_cli_async("--config", str(config), "outbox", "dead", "--json")
        rows = [json.loads(line) for line in exported.stdout.splitlines()]
        assert [r["payload"]["connectorId"] for r in rows] == [7, 8, 9]
        assert all(r["chargerId"] == "CP" and r["queuedAt"].endswith("Z") for r in rows)

        refuser.on = False
        dropped = await run_cli_async("outbox", "drop", str(rows[1]["id"]), "--config", str(config))
        assert dropped.returncode == 0, dropped.stderr
        requeued = await run_cli_async("outbox", "requeue", "--all", "--config", str(config))
        assert requeued.returncode == 0 and requeued.stdout.strip() == "requeued 2"
        # The running gateway notices the shell's change and replays them, in order.
        await wait_for(lambda: len(cloud.calls("CP", "StatusNotification")) == 6, timeout=15)
        assert connectors_seen(cloud)[4:] == [7, 9]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
            for _ in range(500):
                health = (await api.get("/health")).json()
                if health["status"] == "ok":
                    break
                await asyncio.sleep(0.02)
            assert health["status"] == "ok" and health["outbox"]["deadLetters"] == 0

        unknown, again, usage = await asyncio.gather(  # three refusals, side by side
            run_cli_async("outbox", "drop", "4242", "--config", str(config)),
            run_cli_async("outbox", "requeue", "4242", "--config", str(config)),
            run_cli_async("outbox", "requeue", "--config", str(config)),
        )
        assert unknown.returncode == 1 and "4242" in unknown.stderr
        assert again.returncode == 1 and "4242" in again.stderr
        assert usage.returncode == 2  # ID or --all
