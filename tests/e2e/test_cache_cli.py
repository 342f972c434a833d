"""The ``sync`` and ``tags lookup`` commands, run as real subprocesses of the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.store.engine import Store
from tests.flipturn_fake import FakeFlipturn, access_id, serving, vehicle


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPTURN_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def write_config(tmp_path: Path, api_url: str, api_key: str = "secret-key") -> Path:
    """A config with its store, made the way `run` makes it (only `run` creates a store)."""
    db = tmp_path / "gateway.db"
    if not db.exists():
        asyncio.run(_create_store(db))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[flipturn]\napi_url = "{api_url}"\napi_key = "{api_key}"\n'
        f'[store]\npath = "{tmp_path / "gateway.db"}"\n'
    )
    return config


async def _create_store(path: Path) -> None:
    await (await Store.open(path)).close()


def test_sync_then_lookup(tmp_path: Path) -> None:
    fleet = [
        access_id(1, tag="AABBCCDDEEFF", kind="Vehicle"),
        access_id(2, tag="R2", status="Revoked"),
    ]
    with serving(FakeFlipturn(fleet, [vehicle(1)], page_size=1)) as url:
        config = write_config(tmp_path, url)
        synced = run_cli(config, "sync")
        assert synced.returncode == 0, synced.stderr
        counts = json.loads(synced.stdout)
        assert counts["accessIds"] == 2 and counts["vehicles"] == 1

        found = run_cli(config, "tags", "lookup", "vid:aa:bb:cc:dd:ee:ff")
        assert found.returncode == 0, found.stderr
        view = json.loads(found.stdout)
        assert view["key"] == "AABBCCDDEEFF"
        assert view["accessId"]["id"] == 1
        assert view["decision"]["idTagInfo"] == {"status": "Accepted"}

        revoked = json.loads(run_cli(config, "tags", "lookup", "r2").stdout)
        assert revoked["decision"]["idTagInfo"] == {"status": "Blocked"}
        unknown = json.loads(run_cli(config, "tags", "lookup", "nobody").stdout)
        assert unknown["accessId"] is None
        assert unknown["decision"] == {
            "source": "policy",
            "idTagInfo": {"status": "Invalid"},
            "idTokenInfo": {"status": "Invalid"},
        }


def test_failed_sync_exits_1_and_keeps_the_cache(tmp_path: Path) -> None:
    with serving(FakeFlipturn([access_id(1)])) as url:
        assert run_cli(write_config(tmp_path, url), "sync").returncode == 0
        refused = run_cli(write_config(tmp_path, url, api_key="wrong-key"), "sync")
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr and "wrong-key" not in refused.stderr
    assert refused.stdout == ""
    view = json.loads(run_cli(write_config(tmp_path, url), "tags", "lookup", "TAG000001").stdout)
    assert view["decision"]["source"] == "synced"


def test_sync_without_api_key_fails(tmp_path: Path) -> None:
    result = run_cli(write_config(tmp_path, "http://127.0.0.1:9", api_key=""), "sync")
    assert result.returncode == 1 and "api_key" in result.stderr
