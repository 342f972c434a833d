"""Certificates as data: PEM blocks, the validity end of an X.509 certificate, the charger's CN. Pure.

The standard library loads certificates into TLS contexts but does not say when one expires;
reading ``notAfter`` takes a walk of a few DER headers (RFC 5280 §4.1), done here rather than by
adding a cryptography library to every device.

Security profile 3: the CSMS checks that the subject CN of a charger's client certificate names
that charger (OCPP 1.6 security white paper, edition 3, A00.FR.405 and A00.FR.511, which call the
CN the charger's unique serial number). The gateway takes the charge point id in the URL as that
name: a verified certificate whose CN is another id is refused with HTTP 403
(:func:`check_client_certificate`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.errors import CertificateError

__all__ = [
    "CertificateError",
    "ClientCertificates",
    "check_client_certificate",
    "common_name",
    "not_after",
    "pem_certificates",
]

ClientCertificates = Literal["none", "optional", "required"]

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)

_SEQUENCE, _UTC_TIME, _GENERALIZED_TIME, _EXPLICIT_0 = 0x30, 0x17, 0x18, 0xA0


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER bytes of every ``CERTIFICATE`` block in a PEM file (a chain or a CA bundle)."""
    blocks = []
    for match in _PEM.finditer(data):
        try:
            blocks.append(base64.b64decode(b"".join(match[1].split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise CertificateError("a CERTIFICATE block is not valid base64") from exc
    return blocks


def _header(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise CertificateError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4 or pos + size > len(der):
            raise CertificateError("bad DER length")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    if pos + length > len(der):
        raise CertificateError("truncated DER")
    return tag, pos, pos + length


def _time(tag: int, text: bytes) -> datetime:
    try:
        value = text.decode("ascii")
        if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280 §4.1.2.5.1: 50-99 are 19xx
            year = int(value[:2])
            value = f"{1900 + year if year >= 50 else 2000 + year}{value[2:]}"
        return datetime.strptime(value, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CertificateError("bad validity time") from exc


def not_after(der: bytes) -> datetime:
    """When the certificate stops being valid (``validity.notAfter``, RFC 5280 §4.1.2.5)."""
    tag, start, _ = _header(der, 0)  # Certificate
    if tag != _SEQUENCE:
        raise CertificateError("not a certificate")
    tag, pos, end = _header(der, start)  # TBSCertificate
    if tag != _SEQUENCE:
        raise CertificateError("not a certificate")
    fields: list[tuple[int, int, int]] = []
    while pos < end and len(fields) < 5:
        tag, content, pos = _header(der, pos)
        fields.append((tag, content, pos))
    if fields and fields[0][0] == _EXPLICIT_0:  # version [0], absent for v1
        fields.pop(0)
    if len(fields) < 4 or fields[3][0] != _SEQUENCE:  # serial, signature, issuer, validity
        raise CertificateError("not a certificate")
    _, content, validity_end = fields[3]
    _, _, after_not_before = _header(der, content)
    tag, value, value_end = _header(der, after_not_before)
    if tag not in (_UTC_TIME, _GENERALIZED_TIME) or value_end > validity_end:
        raise CertificateError("bad validity")
    return _time(tag, der[value:value_end])


def common_name(peercert: Mapping[str, Any] | None) -> str | None:
    """The subject CN of a certificate in :meth:`ssl.SSLSocket.getpeercert` form, if it has one."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def check_client_certificate(
    charger_id: str, peercert: Mapping[str, Any] | None, mode: ClientCertificates
) -> str | None:
    """Why a charger's TLS client certificate refuses it (HTTP 403), or None if it may go on.

    ``peercert`` is what the TLS layer verified against ``chargers.tls_ca`` (None: no certificate;
    an unverified one never gets here, the handshake failed). ``optional`` admits a charger without
    a certificate; a certificate, when there is one, must name the charger.
    """
    if mode == "none":
        return None
    if not peercert:
        return None if mode == "optional" else "no client certificate"
    cn = common_name(peercert)
    if cn is None:
        return "client certificate has no subject CN"
    if cn != charger_id:
        return f"client certificate is for {cn!r}"
    return None
