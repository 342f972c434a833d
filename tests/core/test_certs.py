"""The pure certificate helpers: notAfter from DER, PEM blocks, the client-certificate decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.certs import (
    CertificateError,
    check_client_certificate,
    common_name,
    not_after,
    pem_certificates,
)
from tests.pki import CertificateAuthority

KEY = ec.generate_private_key(ec.SECP256R1())


def _certificate(end: datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(7)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(end)
        .sign(KEY, hashes.SHA256())
    )


@pytest.mark.parametrize(
    "end",
    [
        datetime(2027, 3, 4, 5, 6, 7, tzinfo=UTC),  # UTCTime
        datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),  # UTCTime, last year it can hold
        datetime(2050, 1, 1, tzinfo=UTC),  # GeneralizedTime (RFC 5280 §4.1.2.5)
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # "no well-defined expiration"
    ],
)
def test_not_after_reads_both_time_forms(end: datetime) -> None:
    certificate = _certificate(end)
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert not_after(der) == end == certificate.not_valid_after_utc


def test_not_after_of_issued_rsa_and_ec_certificates(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    for kind in ("rsa", "ec"):
        issued = ca.issue(f"CP-{kind}", kind=kind, days=12.5)
        assert not_after(issued.der) == issued.certificate.not_valid_after_utc.replace(
            microsecond=0
        )


def test_pem_blocks_of_a_chain_in_order(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    leaf = ca.issue("CP-1")
    chain = leaf.cert.read_bytes() + b"\n# a comment between blocks\n" + ca.cert.read_bytes()
    blocks = pem_certificates(chain)
    assert blocks == [
        leaf.der,
        ca.certificate.public_bytes(serialization.Encoding.DER),
    ]
    assert pem_certificates(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----") == []
    with pytest.raises(CertificateError):
        pem_certificates(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----")


DER = _certificate(datetime(2030, 1, 1, tzinfo=UTC)).public_bytes(serialization.Encoding.DER)


@given(st.integers(min_value=0, max_value=len(DER) - 1))
def test_truncated_der_is_a_certificate_error(cut: int) -> None:
    with pytest.raises(CertificateError):
        not_after(DER[:cut])


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        result = not_after(data)
    except CertificateError:
        return
    assert isinstance(result, datetime)


def test_flipped_bytes_never_raise_anything_else() -> None:
    for i in range(len(DER)):
        damaged = DER[:i] + bytes([DER[i] ^ 0xFF]) + DER[i + 1 :]
        try:
            result = not_after(damaged)
        except CertificateError:
            continue
        assert isinstance(result, datetime)


def _peercert(cn: str | None) -> dict[str, object]:
    subject = [(("organizationName", "Depot"),)]
    if cn is not None:
        subject.append((("commonName", cn),))
    return {"subject": tuple(subject), "notAfter": "Jan  1 00:00:00 2030 GMT"}


def test_common_name() -> None:
    assert common_name(_peercert("CP-1")) == "CP-1"
    assert common_name(_peercert(None)) is None
    assert common_name(None) is None and common_name({}) is None


@pytest.mark.parametrize(
    ("mode", "cn", "refused"),
    [
        ("none", None, False),
        ("none", "CP-2", False),  # not asked for, not looked at
        ("optional", "absent", False),
        ("optional", "CP-1", False),
        ("optional", "CP-2", True),
        ("optional", "cp-1", True),  # charge point ids are case-sensitive
        ("optional", None, True),
        ("required", "absent", True),
        ("required", "CP-1", False),
        ("required", "CP-2", True),
        ("required", None, True),
    ],
)
def test_client_certificate_decision(mode: str, cn: str | None, refused: bool) -> None:
    peercert = None if cn == "absent" else _peercert(cn)
    why = check_client_certificate("CP-1", peercert, mode)  # type: ignore[arg-type]
    assert (why is not None) == refused
    if cn not in (None, "absent", "CP-1") and refused:
        assert why == f"client certificate is for {cn!r}"  # the id it names, for the log


def test_expiry_is_a_utc_instant(tmp_path: Path) -> None:
    issued = CertificateAuthority(tmp_path).issue("CP-1", days=3)
    left = not_after(issued.der) - datetime.now(UTC)
    assert timedelta(days=2.9) < left <= timedelta(days=3)
