"""The real CLI with TLS files: check-config and run refuse bad ones; SIGHUP swaps certificates."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
from pathlib import Path

from tests.pki import CertificateAuthority, handshake_fails
from tests.procs import GatewayProcess, cli, side_by_side, write_config
from tests.support import FakeCloud, charger, wait_for


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=30, env=os.environ)


def config_text(tmp_path: Path, cert: Path, key: str | Path, *, upstream: str = "") -> str:
    return f"""
[chargers]
host = "127.0.0.1"
port = 0
tls_cert = "{cert}"
tls_key = "{key}"
[upstream]
url = "{upstream}"
[api]
port = 0
[store]
path = "{tmp_path / "gateway.db"}"
"""


def test_check_config_refuses_bad_tls_files_naming_the_key(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    good = ca.issue("gateway", server=True)
    other = ca.issue("other", server=True)
    expired = ca.issue("old", server=True, days=-2)
    cases = {
        "missing": (tmp_path / "nope.crt", good.key, "chargers.tls_cert", "no such file"),
        "unreadable": (tmp_path, good.key, "chargers.tls_cert", "cannot be read"),
        "mismatched": (good.cert, other.key, "chargers.tls_key", "not the private key"),
        "expired": (expired.cert, expired.key, "chargers.tls_cert", "expired on"),
    }
    runs = [
        (name, config_key, why, command, config_text(tmp_path, cert, key))
        for name, (cert, key, config_key, why) in cases.items()
        for command in ("check-config", "run")
    ]
    for name, *_, text in runs:
        write_config(tmp_path / f"{name}.toml", text)
    results = side_by_side(
        lambda run: run_cli("--config", str(tmp_path / f"{run[0]}.toml"), run[3]), runs
    )
    for (name, config_key, why, command, _), result in zip(runs, results, strict=True):
        assert result.returncode == 2, (name, command, result.stderr)
        assert f"{config_key}: " in result.stderr and why in result.stderr, (name, command)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "gateway.db").exists()  # run refused before opening anything


def test_check_config_warns_of_a_certificate_expiring_within_30_days(tmp_path: Path) -> None:
    soon = CertificateAuthority(tmp_path / "ca").issue("gateway", server=True, days=20)
    config = write_config(tmp_path / "c.toml", config_text(tmp_path, soon.cert, soon.key))
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    assert "warning: chargers.tls_cert: " in result.stderr and "in 20 days" in result.stderr
    assert json.loads(result.stdout)["chargers"]["tls_cert"] == str(soon.cert)


async def test_sighup_swaps_the_certificate_with_a_charger_connected_throughout(
    tmp_path: Path, cloud: FakeCloud
) -> None:
    first_ca = CertificateAuthority(tmp_path / "ca1", "Depot CA 2026")
    second_ca = CertificateAuthority(tmp_path / "ca2", "Depot CA 2027")
    trust = tmp_path / "trust.pem"  # the chargers trust both CAs (a CA rollover)
    trust.write_bytes(first_ca.cert.read_bytes() + second_ca.cert.read_bytes())
    old = first_ca.issue("gateway", server=True)
    new = second_ca.issue("gateway", server=True, file_name="gateway-new")
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    shutil.copy(old.cert, cert)
    shutil.copy(old.key, key)
    config = write_config(tmp_path / "c.toml", config_text(tmp_path, cert, key, upstream=cloud.url))
    context = ssl.create_default_context(cafile=trust)

    def served(cp_ws: object) -> bytes:
        ssl_object = cp_ws.transport.get_extra_info("ssl_object")  # type: ignore[attr-defined]
        return bytes(ssl_object.getpeercert(binary_form=True))

    async with (
        GatewayProcess(config) as gw,
        charger(gw.charger_port, "CP-OLD", ssl=context) as before,
    ):
        assert served(before.ws) == old.der
        await before.call("Heartbeat", {})
        # swap the files in place (as certbot or an operator would), then SIGHUP
        shutil.copy(new.cert, cert)
        shutil.copy(new.key, key)
        gw.signal(signal.SIGHUP)
        await wait_for(lambda: any("TLS files reloaded" in x for x in gw.log), timeout=10)
        async with charger(gw.charger_port, "CP-NEW", ssl=context) as after:
            assert served(after.ws) == new.der  # a new handshake sees the new certificate
            await after.call("Heartbeat", {})
        # the old socket stayed open and still relays, both ways
        assert served(before.ws) == old.der
        answer = await before.call("Heartbeat", {})
        assert answer[0] == 3 and len(cloud.calls("CP-OLD", "Heartbeat")) == 2
        reset = asyncio.create_task(cloud.call("CP-OLD", "Reset", {"type": "Soft"}))
        call = await asyncio.wait_for(before.calls.get(), 5)
        assert call[2:] == ["Reset", {"type": "Soft"}]
        await before.answer(call, {"status": "Accepted"})
        assert (await reset)[2] == {"status": "Accepted"}

        # a reload with a broken pair keeps the certificate in use and says why
        shutil.copy(old.key, key)  # new certificate, old key
        gw.signal(signal.SIGHUP)
        await wait_for(lambda: any("TLS reload failed" in x for x in gw.log), timeout=10)
        assert any("chargers.tls_key" in x for x in gw.log if "TLS reload failed" in x)
        async with charger(gw.charger_port, "CP-NEXT", ssl=context) as next_one:
            assert served(next_one.ws) == new.der
        assert (await before.call("Heartbeat", {}))[0] == 3
    assert gw.proc is not None and gw.proc.returncode == 0


async def test_run_logs_the_expiry_warning_once_and_serves(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    soon = ca.issue("gateway", server=True, days=5)
    config = write_config(tmp_path / "c.toml", config_text(tmp_path, soon.cert, soon.key))
    async with GatewayProcess(config) as gw:
        async with charger(
            gw.charger_port, "CP-1", ssl=ssl.create_default_context(cafile=ca.cert)
        ) as cp:
            assert (await cp.call("Heartbeat", {}))[0] == 3
        warnings = [x for x in gw.log if "chargers.tls_cert" in x and "expires on" in x]
        assert len(warnings) == 1 and "WARNING" in warnings[0], gw.log


async def test_profile3_in_the_real_process(tmp_path: Path) -> None:
    """The CLI's own event loop (uvloop where installed): CN check and handshake refusal."""
    from websockets.exceptions import InvalidStatus

    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.issue("gateway", server=True)
    text = config_text(tmp_path, server.cert, server.key).replace(
        "[upstream]", f'tls_ca = "{ca.cert}"\nclient_certs = "required"\n[upstream]'
    )
    config = write_config(tmp_path / "c.toml", text)

    def context(name: str | None) -> ssl.SSLContext:
        result = ssl.create_default_context(cafile=ca.cert)
        if name is not None:
            issued = ca.issue(name)
            result.load_cert_chain(issued.cert, issued.key)
        return result

    async with GatewayProcess(config) as gw:
        async with charger(gw.charger_port, "CP-1", ssl=context("CP-1")) as cp:
            assert (await cp.call("Heartbeat", {}))[0] == 3
        try:
            async with charger(gw.charger_port, "CP-1", ssl=context("CP-2")):
                raise AssertionError("a certificate for CP-2 was admitted as CP-1")
        except InvalidStatus as refused:
            assert refused.response.status_code == 403
        await handshake_fails(gw.charger_port, "CP-1", context(None))
        await wait_for(lambda: any("client certificate is for 'CP-2'" in x for x in gw.log))
