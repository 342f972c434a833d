"""``flipturn-gateway support-bundle PATH`` with the real CLI, beside a running gateway and with
none: what the bundle holds, and that no secret is in it anywhere (each file, the tar stream, the
.tar.gz bytes).

Secrets are planted in the config file (``flipturn.api_key``, ``api.token``, a charger password,
a password in the upstream URL), in the environment (a ``FLIPTURN_GATEWAY_*`` override) and in a
TLS key file; a stand-in ``journalctl`` (the systemd journal is another system) prints 2,500
lines, the arguments it was given, and a line carrying a secret.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import socket
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from tests.procs import GatewayProcess, cli, write_config

API_KEY_IN_FILE = "file-apikey-SECRET-5b0c1e"
API_KEY_IN_ENV = "env-apikey-SECRET-d41f77"
TOKEN = "api-token-SECRET-93ab20"
CHARGER_PASSWORD = "charger-pass-SECRET-51f0aa"
URL_PASSWORD = "url-pass-SECRET-88aa3c"
ENV = {"FLIPTURN_GATEWAY_FLIPTURN__API_KEY": API_KEY_IN_ENV}
SECRETS = [API_KEY_IN_FILE, API_KEY_IN_ENV, TOKEN, CHARGER_PASSWORD, URL_PASSWORD]

FAKE_JOURNALCTL = f"""#!/bin/sh
echo "ARGS: $*"
i=0
while [ $i -lt 2500 ]; do echo "line $i"; i=$((i+1)); done
echo "a line that carries {TOKEN} and {CHARGER_PASSWORD}"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def secret_config(
    tmp_path: Path, certificate: tuple[str, str], *, upstream: str = "", api_port: int = 0
) -> Path:
    cert, key = certificate
    return write_config(
        tmp_path / "gateway.toml",
        f"""
[chargers]
host = "127.0.0.1"
port = 0
auth = "basic"
tls_cert = "{cert}"
tls_key = "{key}"
[chargers.passwords]
CP-1 = "{CHARGER_PASSWORD}"
[upstream]
url = "{upstream}"
[flipturn]
api_url = "http://127.0.0.1:{free_port()}"
api_key = "{API_KEY_IN_FILE}"
[api]
port = {api_port or free_port()}
token = "{TOKEN}"
[store]
path = "{tmp_path / "gw.db"}"
""",
    )


def key_lines(key: str) -> list[str]:
    """The base64 body of the TLS key: none of it may be in the bundle."""
    lines = Path(key).read_text().splitlines()
    return [line for line in lines if line and not line.startswith("-----")]


def path_with_journalctl(tmp_path: Path) -> str:
    fake = tmp_path / "bin" / "journalctl"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(FAKE_JOURNALCTL)
    fake.chmod(0o755)
    return f"{fake.parent}:{os.environ.get('PATH', '')}"


async def support_bundle(config: Path, path: Path, *, search_path: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cli("--config", str(config), "support-bundle", str(path)),
        env={**os.environ, **ENV, "PATH": search_path},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def unpack(path: Path) -> tuple[str, dict[str, str]]:
    """The bundle's top directory and its files (name below it → text)."""
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
        tops = {m.name.split("/", 1)[0] for m in members}
        assert len(tops) == 1, tops
        files = {}
        for member in members:
            assert member.isfile(), member.name
            data = tar.extractfile(member)
            assert data is not None
            files[member.name.split("/", 1)[1]] = data.read().decode()
    return tops.pop(), files


def assert_no_secret(path: Path, files: dict[str, str], extra: list[str]) -> None:
    raw = path.read_bytes()
    stream = gzip.decompress(raw)
    for secret in [*SECRETS, *extra]:
        needle = secret.encode()
        assert needle not in raw, secret
        assert needle not in stream, secret
        for name, text in files.items():
            assert secret not in text, (secret, name)


async def test_bundle_of_a_running_gateway(tmp_path: Path, certificate: tuple[str, str]) -> None:
    config = secret_config(tmp_path, certificate)
    bundle = tmp_path / "support.tar.gz"
    async with GatewayProcess(config, env=ENV):
        code, out, err = await support_bundle(
            config, bundle, search_path=path_with_journalctl(tmp_path)
        )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["path"] == str(bundle) and summary["gatewayRunning"] is True
    assert summary["bytes"] == bundle.stat().st_size
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    top, files = unpack(bundle)
    assert top.startswith("flipturn-gateway-support-")
    assert (
        sorted(files)
        == sorted(summary["files"])
        == [
            "README.txt",
            "api/answers.json",
            "api/chargers.json",
            "api/health.json",
            "api/metrics.txt",
            "api/site.json",
            "config.json",
            "journal.txt",
            "store-check.txt",
            "versions.json",
        ]
    )
    answers = json.loads(files["api/answers.json"])
    assert answers["gatewayRunning"] is True
    # /api/* answered 200 with the token: it was sent; /api/site is 404 until the site guard.
    assert answers["/health"]["status"] in (200, 503)
    assert answers["/api/chargers"] == {"status": 200}
    assert answers["/api/site"]["status"] in (200, 404)
    assert json.loads(files["api/health.json"])["version"] == __version__
    assert json.loads(files["api/chargers.json"]) == {"data": []}
    assert "flipturn_gateway_store_up 1.0" in files["api/metrics.txt"]
    config_json = json.loads(files["config.json"])
    assert config_json["flipturn"]["api_key"] == "***"
    assert config_json["api"]["token"] == "***"
    assert config_json["chargers"]["passwords"] == {"CP-1": "***"}
    journal = files["journal.txt"]
    assert "ARGS: -u flipturn-gateway -n 2000 --no-pager" in journal
    assert "line 2499" in journal
    assert "a line that carries *** and ***" in journal  # scrubbed on the way in
    assert "integrity_check ok" in files["store-check.txt"]
    versions = json.loads(files["versions.json"])
    assert versions["gateway"] == __version__
    assert versions["distributions"]["flipturn-gateway"] == __version__
    assert {"websockets", "httpx", "prometheus_client"} <= {
        name.replace("-", "_").lower() for name in versions["distributions"]
    } | {"prometheus_client"}
    assert versions["python"].split()[0].count(".") == 2
    assert "answered on its local API" in files["README.txt"]
    assert_no_secret(bundle, files, key_lines(certificate[1]))


async def test_bundle_with_the_gateway_stopped_and_no_journal(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    upstream = f"ws://ops:{URL_PASSWORD}@127.0.0.1:{free_port()}/ocpp"
    config = secret_config(tmp_path, certificate, upstream=upstream)
    # The store exists (a gateway ran once), the gateway is stopped now.
    async with GatewayProcess(config, env=ENV):
        pass
    no_journal = tmp_path / "empty-bin"
    no_journal.mkdir()
    bundle = tmp_path / "support.tar.gz"
    code, out, err = await support_bundle(config, bundle, search_path=str(no_journal))
    assert code == 0, err
    assert "did not answer" in err
    assert json.loads(out)["gatewayRunning"] is False
    _, files = unpack(bundle)
    assert sorted(files) == [
        "README.txt",
        "api/answers.json",
        "config.json",
        "journal.txt",
        "store-check.txt",
        "versions.json",
    ]
    answers = json.loads(files["api/answers.json"])
    assert answers["gatewayRunning"] is False
    assert "not running" in answers["note"]
    assert "no answer from" in answers["/health"]["error"]
    assert "NOT RUNNING" in files["README.txt"]
    assert "journalctl is not available" in files["journal.txt"]
    assert "integrity_check ok" in files["store-check.txt"]
    config_json = json.loads(files["config.json"])
    assert config_json["upstream"]["url"].startswith("ws://ops:***@127.0.0.1:")
    assert_no_secret(bundle, files, key_lines(certificate[1]))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing-dir/support.tar.gz", "is not a directory"),
        (".", "is a directory"),
    ],
)
def test_an_unwritable_path_fails_with_a_clear_message(
    tmp_path: Path, target: str, message: str
) -> None:
    config = write_config(
        tmp_path / "c.toml", f'[api]\nport = {free_port()}\n[store]\npath = "{tmp_path}/gw.db"\n'
    )
    result = subprocess.run(
        cli("--config", str(config), "support-bundle", str(tmp_path / target)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "support-bundle" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("**/*.partial"))


def test_without_a_path_is_a_usage_error() -> None:
    result = subprocess.run(cli("support-bundle"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PATH" in result.stderr


def test_the_tarball_is_readable_by_tar(tmp_path: Path) -> None:
    """Support opens it with the tar command, not Python."""
    config = write_config(
        tmp_path / "c.toml", f'[api]\nport = {free_port()}\n[store]\npath = "{tmp_path}/gw.db"\n'
    )
    bundle = tmp_path / "b.tar.gz"
    result = subprocess.run(
        cli("--config", str(config), "support-bundle", str(bundle)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(["tar", "tzf", str(bundle)], capture_output=True, text=True)
    assert listing.returncode == 0
    names: list[Any] = listing.stdout.split()
    assert any(n.endswith("/README.txt") for n in names)
    # No store yet: the check says so, the rest is there.
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("store-check.txt"))
        text = io.TextIOWrapper(tar.extractfile(member) or io.BytesIO()).read()
    assert "not checked" in text and "gw.db" in text
