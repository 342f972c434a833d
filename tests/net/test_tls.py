"""Security profiles 2 and 3 over real loopback TLS: charger handshakes, the cloud link, file checks."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from gateway.core.certs import not_after, pem_certificates
from gateway.errors import ConfigError
from gateway.net.tls import CIPHERS_TLS12, check_tls_files
from tests.pki import CertificateAuthority, Issued, handshake_fails
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}


@pytest.fixture
def depot(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "depot", "Depot CA")


@pytest.fixture
def stranger(tmp_path: Path) -> CertificateAuthority:
    """A CA the gateway does not trust."""
    return CertificateAuthority(tmp_path / "stranger", "Stranger CA")


def charger_context(
    ca: CertificateAuthority, client: Issued | None = None, **tls: Any
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca.cert)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    for name, value in tls.items():
        setattr(context, name, value)
    return context


def profile3(tmp_path: Path, depot: CertificateAuthority, mode: str, **chargers: Any) -> Any:
    server = depot.issue("gateway.depot", server=True)
    return make_settings(
        tmp_path,
        chargers={
            "tls_cert": str(server.cert),
            "tls_key": str(server.key),
            "tls_ca": str(depot.cert),
            "client_certs": mode,
            **chargers,
        },
    )


async def boots(port: int, charger_id: str, context: ssl.SSLContext) -> bool:
    """A charger connects over wss and has its BootNotification answered."""
    async with charger(port, charger_id, ssl=context, open_timeout=5) as cp:
        answer = await cp.call("BootNotification", BOOT)
        return bool(answer[0] == 3 and answer[2]["status"] == "Accepted")


# --- profile 2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ec", "rsa"])
async def test_profile2_tls12_and_13_with_the_ocpp_suites(
    tmp_path: Path, depot: CertificateAuthority, kind: str
) -> None:
    server = depot.issue("gateway.depot", server=True, kind=kind)
    settings = make_settings(
        tmp_path, chargers={"tls_cert": str(server.cert), "tls_key": str(server.key)}
    )
    ocpp_suites = {  # A00.FR.318: the four a CSMS must support, per key type of its certificate
        "ec": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"],
        "rsa": ["AES128-GCM-SHA256", "AES256-GCM-SHA384"],
    }[kind]
    async with running_gateway(settings) as gw:
        assert await boots(gw.charger_port, "CP-1", charger_context(depot))  # TLS 1.3
        for suite in ocpp_suites:
            context = charger_context(depot, maximum_version=ssl.TLSVersion.TLSv1_2)
            context.set_ciphers(suite)
            async with charger(gw.charger_port, "CP-1", ssl=context) as cp:
                cipher = cp.ws.transport.get_extra_info("cipher")
                assert cipher[0] == suite and cipher[1] == "TLSv1.2"
                assert (await cp.call("Heartbeat", {}))[0] == 3
        # a TLS 1.2 suite outside the list (CBC, no AEAD) is refused
        cbc = charger_context(depot, maximum_version=ssl.TLSVersion.TLSv1_2)
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:AES128-SHA256")
        await handshake_fails(gw.charger_port, "CP-1", cbc)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_profile2_refuses_tls_below_1_2(tmp_path: Path, depot: CertificateAuthority) -> None:
    server = depot.issue("gateway.depot", server=True, kind="rsa")
    settings = make_settings(
        tmp_path, chargers={"tls_cert": str(server.cert), "tls_key": str(server.key)}
    )
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(depot.cert)
    try:
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    async with running_gateway(settings) as gw:
        await handshake_fails(gw.charger_port, "CP-1", old)
        assert await boots(gw.charger_port, "CP-1", charger_context(depot))


def test_cipher_list_is_the_ocpp_one() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(CIPHERS_TLS12)
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
    }


# --- profile 3 -----------------------------------------------------------------------------------


async def test_profile3_required(
    tmp_path: Path, depot: CertificateAuthority, stranger: CertificateAuthority
) -> None:
    settings = profile3(tmp_path, depot, "required")
    right = depot.issue("CP-1")
    wrong_cn = depot.issue("CP-2")
    wrongly_signed = stranger.issue("CP-1")
    async with running_gateway(settings) as gw:
        port = gw.charger_port
        assert await boots(port, "CP-1", charger_context(depot, right))
        # no certificate: the handshake fails (TLS 1.2 and 1.3)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            context = charger_context(depot, maximum_version=version)
            await handshake_fails(port, "CP-1", context)
        # a certificate from a CA the gateway does not trust: the handshake fails
        await handshake_fails(port, "CP-1", charger_context(depot, wrongly_signed))
        # a good certificate for another charger: HTTP 403
        with pytest.raises(InvalidStatus) as refused:
            await boots(port, "CP-1", charger_context(depot, wrong_cn))
        assert refused.value.response.status_code == 403
        # ... and it is the right certificate for the charger it names
        assert await boots(port, "CP-2", charger_context(depot, wrong_cn))
        assert gw.stats.errors["refused_403"] == 1


async def test_profile3_mismatch_is_logged_with_the_ids_not_the_certificate(
    tmp_path: Path, depot: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    settings = profile3(tmp_path, depot, "required")
    wrong_cn = depot.issue("CP-2")
    async with running_gateway(settings) as gw:
        with pytest.raises(InvalidStatus):
            await boots(gw.charger_port, "CP-1", charger_context(depot, wrong_cn))
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == ["CP-1: client certificate refused: client certificate is for 'CP-2'"]
    pem_body = wrong_cn.cert.read_text().splitlines()[1]
    assert all(pem_body not in r.getMessage() for r in caplog.records)


async def test_profile3_optional(
    tmp_path: Path, depot: CertificateAuthority, stranger: CertificateAuthority
) -> None:
    settings = profile3(tmp_path, depot, "optional")
    async with running_gateway(settings) as gw:
        port = gw.charger_port
        assert await boots(port, "CP-1", charger_context(depot))  # none presented: admitted
        assert await boots(port, "CP-1", charger_context(depot, depot.issue("CP-1")))
        with pytest.raises(InvalidStatus) as refused:
            await boots(port, "CP-1", charger_context(depot, depot.issue("CP-9")))
        assert refused.value.response.status_code == 403
        # a presented certificate is verified: an untrusted one fails the handshake
        await handshake_fails(port, "CP-1", charger_context(depot, stranger.issue("CP-1")))


async def test_profile3_with_basic_auth_too(tmp_path: Path, depot: CertificateAuthority) -> None:
    settings = profile3(
        tmp_path, depot, "required", auth="basic", passwords={"CP-1": "correct-horse-battery"}
    )
    context = charger_context(depot, depot.issue("CP-1"))
    async with running_gateway(settings) as gw:
        with pytest.raises(InvalidStatus) as refused:  # certificate right, password missing
            await boots(gw.charger_port, "CP-1", context)
        assert refused.value.response.status_code == 401
        ws = await connect(
            f"wss://CP-1:correct-horse-battery@127.0.0.1:{gw.charger_port}/ocpp/CP-1",
            subprotocols=[Subprotocol("ocpp1.6")],
            ssl=context,
        )
        await ws.send('[2, "1", "Heartbeat", {}]')
        assert json.loads(await ws.recv())[0] == 3
        await ws.close()


async def test_expiry_metric(tmp_path: Path, depot: CertificateAuthority) -> None:
    settings = profile3(tmp_path, depot, "required")
    server = Path(settings.chargers.tls_cert)
    expected = {
        "chargers": not_after(pem_certificates(server.read_bytes())[0]).timestamp(),  # noqa: ASYNC240
        "chargers_ca": not_after(depot.certificate.public_bytes(Encoding.DER)).timestamp(),
    }
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api,
    ):
        metrics = (await api.get("/metrics")).text
    for which, timestamp in expected.items():
        line = f'flipturn_gateway_certificate_expiry_timestamp_seconds{{which="{which}"}}'
        value = next(x for x in metrics.splitlines() if x.startswith(line)).split()[-1]
        assert float(value) == timestamp
    assert 'which="upstream' not in metrics  # no file in use there


# --- the cloud link ------------------------------------------------------------------------------


@pytest.fixture
async def tls_cloud(tmp_path: Path) -> Any:
    """A wss cloud that requires a client certificate signed by its own CA."""
    cloud_ca = CertificateAuthority(tmp_path / "cloud", "Cloud CA")
    server = cloud_ca.issue("cloud", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cloud_ca.cert)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(server.cert, server.key)
    cloud = await FakeCloud(ssl_context=context).start()
    try:
        yield cloud, cloud_ca
    finally:
        await cloud.stop()


async def test_cloud_requiring_the_gateways_certificate(tmp_path: Path, tls_cloud: Any) -> None:
    cloud, cloud_ca = tls_cloud
    gateway_cert = cloud_ca.issue("depot-gateway-1")
    settings = make_settings(
        tmp_path,
        upstream={
            "url": cloud.url,
            "tls_ca": str(cloud_ca.cert),
            "tls_cert": str(gateway_cert.cert),
            "tls_key": str(gateway_cert.key),
        },
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1") as cp:
        await cloud.wait_connected("CP-1")
        assert (await cp.call("BootNotification", BOOT))[2]["interval"] == 60  # the cloud's
        assert cloud.calls("CP-1", "BootNotification")[0][3] == BOOT
        presented = cloud.connections["CP-1"].transport.get_extra_info("peercert")
        assert dict(x[0] for x in presented["subject"])["commonName"] == "depot-gateway-1"


async def test_cloud_refuses_a_gateway_without_its_certificate(
    tmp_path: Path, tls_cloud: Any
) -> None:
    cloud, cloud_ca = tls_cloud
    settings = make_settings(tmp_path, upstream={"url": cloud.url, "tls_ca": str(cloud_ca.cert)})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1") as cp:
        await wait_for(lambda: gw.stats.upstream_failures >= 1)
        answer = await cp.call("BootNotification", BOOT)  # answered by the gateway itself
        assert answer[2]["interval"] == settings.offline.heartbeat_interval_s
        assert cloud.connections == {} and cloud.received == {}


async def test_cloud_not_trusted_without_its_ca(tmp_path: Path, tls_cloud: Any) -> None:
    cloud, cloud_ca = tls_cloud
    gateway_cert = cloud_ca.issue("depot-gateway-1")
    settings = make_settings(  # no tls_ca: the system store does not know the cloud's CA
        tmp_path,
        upstream={
            "url": cloud.url,
            "tls_cert": str(gateway_cert.cert),
            "tls_key": str(gateway_cert.key),
        },
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1"):
        await wait_for(lambda: gw.stats.upstream_failures >= 1)
        assert cloud.connections == {}


async def test_cloud_hostname_is_checked(tmp_path: Path) -> None:
    cloud_ca = CertificateAuthority(tmp_path / "cloud", "Cloud CA")
    elsewhere = cloud_ca.issue("elsewhere", server=True, hostnames=("ocpp.elsewhere.example",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(elsewhere.cert, elsewhere.key)
    cloud = await FakeCloud(ssl_context=context).start()
    try:
        settings = make_settings(
            tmp_path, upstream={"url": cloud.url, "tls_ca": str(cloud_ca.cert)}
        )
        async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1"):
            await wait_for(lambda: gw.stats.upstream_failures >= 1)
            assert cloud.connections == {}  # signed by the trusted CA, but for another host
    finally:
        await cloud.stop()


# --- file checks ---------------------------------------------------------------------------------


def _settings(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    return make_settings(tmp_path, **sections)


def test_check_accepts_good_files_and_reports_expiry(
    tmp_path: Path, depot: CertificateAuthority
) -> None:
    settings = profile3(tmp_path, depot, "required")
    check = check_tls_files(settings)
    assert set(check.expiry) == {"chargers", "chargers_ca"} and check.warnings == []


def test_check_refusals_name_the_key(
    tmp_path: Path, depot: CertificateAuthority, stranger: CertificateAuthority
) -> None:
    good = depot.issue("gateway.depot", server=True)
    other = depot.issue("other", server=True)
    expired = depot.issue("old", server=True, days=-1)
    encrypted = depot.issue("locked", server=True, passphrase=b"secret")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"tls_cert": str(tmp_path / "nope.crt"), "tls_key": str(good.key)},
         "chargers.tls_cert", "no such file"),
        ({"tls_cert": str(tmp_path), "tls_key": str(good.key)},
         "chargers.tls_cert", "cannot be read"),
        ({"tls_cert": str(good.cert), "tls_key": str(tmp_path / "nope.key")},
         "chargers.tls_key", "no such file"),
        ({"tls_cert": str(good.cert), "tls_key": str(other.key)},
         "chargers.tls_key", "not the private key of chargers.tls_cert"),
        ({"tls_cert": str(garbage), "tls_key": str(good.key)},
         "chargers.tls_cert", "no PEM certificate"),
        ({"tls_cert": str(good.cert), "tls_key": str(garbage)},
         "chargers.tls_key", "not a usable PEM private key"),
        ({"tls_cert": str(expired.cert), "tls_key": str(expired.key)},
         "chargers.tls_cert", "expired on"),
        ({"tls_cert": str(encrypted.cert), "tls_key": str(encrypted.key)},
         "chargers.tls_key", "encrypted"),
        ({"tls_cert": str(good.cert), "tls_key": str(good.key), "client_certs": "required",
          "tls_ca": str(garbage)}, "chargers.tls_ca", "no PEM certificate"),
    ]  # fmt: skip
    for chargers, key, why in cases:
        with pytest.raises(ConfigError) as refused:
            check_tls_files(_settings(tmp_path, chargers=chargers))
        assert str(refused.value).startswith(f"{key}: ") and why in str(refused.value), chargers
    upstream = {
        "url": "wss://127.0.0.1:1/ocpp",
        "tls_cert": str(good.cert),
        "tls_key": str(other.key),
    }
    with pytest.raises(ConfigError, match=r"^upstream\.tls_key: .*not the private key"):
        check_tls_files(_settings(tmp_path, upstream=upstream))
    upstream = {"url": "wss://127.0.0.1:1/ocpp", "tls_ca": str(tmp_path / "nope.pem")}
    with pytest.raises(ConfigError, match=r"^upstream\.tls_ca: .*no such file"):
        check_tls_files(_settings(tmp_path, upstream=upstream))


def test_check_warns_of_expiry_within_30_days(tmp_path: Path, depot: CertificateAuthority) -> None:
    soon = depot.issue("gateway.depot", server=True, days=10)
    settings = _settings(tmp_path, chargers={"tls_cert": str(soon.cert), "tls_key": str(soon.key)})
    check = check_tls_files(settings)
    assert len(check.warnings) == 1
    assert check.warnings[0].startswith("chargers.tls_cert: ") and "in 10 days" in check.warnings[0]
    later = depot.issue("gateway.depot", server=True, days=31)
    settings = _settings(
        tmp_path, chargers={"tls_cert": str(later.cert), "tls_key": str(later.key)}
    )
    assert check_tls_files(settings).warnings == []
    # the same certificate, checked 22 days on, warns; 32 days on, is refused
    assert check_tls_files(settings, now=time.time() + 22 * 86400).warnings
    with pytest.raises(ConfigError, match="expired"):
        check_tls_files(settings, now=time.time() + 32 * 86400)


def test_ca_bundle_with_a_retired_ca_is_a_warning(tmp_path: Path) -> None:
    retired = CertificateAuthority(tmp_path / "old", "Old CA", days=-1)
    current = CertificateAuthority(tmp_path / "new", "New CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(retired.cert.read_bytes() + current.cert.read_bytes())
    server = current.issue("gateway.depot", server=True)
    chargers = {
        "tls_cert": str(server.cert),
        "tls_key": str(server.key),
        "client_certs": "required",
    }
    check = check_tls_files(_settings(tmp_path, chargers={**chargers, "tls_ca": str(bundle)}))
    assert any("1 of its 2 certificates expired" in w for w in check.warnings)
    assert check.expiry["chargers_ca"] < time.time()  # the metric shows the earliest
    with pytest.raises(ConfigError, match=r"^chargers\.tls_ca: .*expired"):
        check_tls_files(_settings(tmp_path, chargers={**chargers, "tls_ca": str(retired.cert)}))


def test_config_refuses_inconsistent_tls_keys(tmp_path: Path) -> None:
    from gateway.config import load_settings

    cases = {
        '[chargers]\nclient_certs = "required"\n': "client_certs needs TLS",
        '[chargers]\ntls_cert = "a"\ntls_key = "b"\nclient_certs = "optional"\n': "needs tls_ca",
        '[chargers]\nclient_certs = "sometimes"\n': "chargers.client_certs",
        '[upstream]\nurl = "wss://x/ocpp"\ntls_cert = "a"\n': "tls_key must be set",
        '[upstream]\nurl = "ws://x/ocpp"\ntls_ca = "a"\n': "tls_ca is set but url is ws://",
    }
    for text, why in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=why):
            load_settings(path)


def test_existing_self_signed_fixture_passes_the_checks(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    check = check_tls_files(_settings(tmp_path, chargers={"tls_cert": cert, "tls_key": key}))
    # made by openssl with -days 1: accepted, with a warning that it expires soon
    assert len(check.warnings) == 1 and check.warnings[0].startswith("chargers.tls_cert: ")
    assert "expires on" in check.warnings[0]


async def test_reload_gives_new_cloud_links_the_new_client_certificate(
    tmp_path: Path, tls_cloud: Any, stranger: CertificateAuthority
) -> None:
    cloud, cloud_ca = tls_cloud
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    wrong = stranger.issue("depot-gateway-1")  # a certificate the cloud does not accept
    cert.write_bytes(wrong.cert.read_bytes())
    key.write_bytes(wrong.key.read_bytes())
    settings = make_settings(
        tmp_path,
        upstream={
            "url": cloud.url,
            "tls_ca": str(cloud_ca.cert),
            "tls_cert": str(cert),
            "tls_key": str(key),
        },
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1") as cp:
        await wait_for(lambda: gw.stats.upstream_failures >= 1)
        assert cloud.connections == {}
        right = cloud_ca.issue("depot-gateway-1")
        cert.write_bytes(right.cert.read_bytes())
        key.write_bytes(right.key.read_bytes())
        assert gw.reload_tls()
        await cloud.wait_connected("CP-1")  # the next reconnect presents the new certificate
        assert (await cp.call("Heartbeat", {}))[0] == 3
        await wait_for(lambda: len(cloud.calls("CP-1", "Heartbeat")) >= 1)
        # a failed reload keeps what works: the link stays, and reconnects keep the good pair
        key.write_bytes(wrong.key.read_bytes())
        assert not gw.reload_tls()
        assert gw.tls is not None and gw.upstream_opener is not None
        assert gw.upstream_opener.ssl_context is gw.tls.upstream
        assert "CP-1" in cloud.connections


async def test_reload_swaps_the_ca_that_signs_the_chargers(
    tmp_path: Path, depot: CertificateAuthority
) -> None:
    successor = CertificateAuthority(tmp_path / "next", "Depot CA 2027", days=3000)
    ca_file = tmp_path / "chargers-ca.pem"
    ca_file.write_bytes(depot.cert.read_bytes())
    settings = profile3(tmp_path, depot, "required", tls_ca=str(ca_file))
    old_charger, new_charger = depot.issue("CP-1"), successor.issue("CP-2")
    async with running_gateway(settings) as gw:
        assert gw.tls is not None
        before = gw.tls.expiry["chargers_ca"]
        port = gw.charger_port
        assert await boots(port, "CP-1", charger_context(depot, old_charger))
        async with charger(port, "CP-1", ssl=charger_context(depot, old_charger)) as connected:
            ca_file.write_bytes(successor.cert.read_bytes())
            assert gw.reload_tls()
            await handshake_fails(port, "CP-1", charger_context(depot, old_charger))
            assert await boots(port, "CP-2", charger_context(depot, new_charger))
            assert (await connected.call("Heartbeat", {}))[0] == 3  # still up
        assert gw.tls.expiry["chargers_ca"] != before
        assert (
            gw.tls.expiry["chargers_ca"]
            == successor.certificate.not_valid_after_utc.replace(microsecond=0).timestamp()
        )
        # client_certs cannot change under a listening socket: it stays, and says so
        relaxed = settings.model_copy(
            update={"chargers": settings.chargers.model_copy(update={"client_certs": "optional"})}
        )
        assert gw.reload_tls(relaxed)
        await handshake_fails(port, "CP-1", charger_context(depot))  # still required
