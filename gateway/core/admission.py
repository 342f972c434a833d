"""Who may open a charger connection: path, charge point id and Basic credentials. Pure.

OCPP-J: the URL is the endpoint + ``/`` + the percent-encoded charge point id; an unknown id is refused
with HTTP 404, as is a path whose id is empty, not valid UTF-8 once percent-decoded (or has a bad
escape such as ``%ZZ``), contains ``/`` (also as ``%2F``) or is longer than 48 characters (the OCPP
2.0.1 identity string). Security profiles 1 and 2 use HTTP Basic auth with username = charge
point id.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from gateway.config import ChargersSettings

__all__ = ["Admitted", "Refused", "admit", "charge_point_id"]

MAX_ID_LENGTH: Final = 48  # OCPP 2.0.1 identity string; 1.6 CiString25 fits in it
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Admitted:
    charger_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    status: HTTPStatus
    reason: str


def _percent_decoded(raw: str) -> str | None:
    """``raw`` with its %XX escapes decoded, or None for a bad escape (``%ZZ``, a lone ``%``)
    or bytes that are not UTF-8 (RFC 3986 §2.1: an escape is exactly two hex digits)."""
    if "%" not in raw:
        return raw
    try:
        data = raw.encode("utf-8")
        out = bytearray()
        i = 0
        while i < len(data):
            if data[i] == 0x25:  # "%"
                pair = data[i + 1 : i + 3]
                if len(pair) != 2 or not all(c in _HEX_DIGITS for c in pair):
                    return None
                out.append(int(pair, 16))
                i += 3
            else:
                out.append(data[i])
                i += 1
        return out.decode("utf-8")
    except UnicodeError:
        return None


def _parse_id(path: str, prefix: str) -> str | Refused:
    """The charge point id in ``path``, or why it is none (every case is HTTP 404)."""
    path = path.split("?", 1)[0]
    if not path.startswith(prefix + "/"):
        return Refused(HTTPStatus.NOT_FOUND, "unknown charge point path")
    raw = path[len(prefix) + 1 :]
    if "/" in raw:
        return Refused(HTTPStatus.NOT_FOUND, "charge point id contains /")
    cpid = _percent_decoded(raw)
    if cpid is None:
        return Refused(HTTPStatus.NOT_FOUND, "charge point id is not valid percent-encoded UTF-8")
    if not cpid:
        return Refused(HTTPStatus.NOT_FOUND, "charge point id is empty")
    if "/" in cpid:
        return Refused(HTTPStatus.NOT_FOUND, "charge point id contains /")
    if len(cpid) > MAX_ID_LENGTH:
        return Refused(HTTPStatus.NOT_FOUND, f"charge point id longer than {MAX_ID_LENGTH}")
    # Control characters and spaces would break log lines, URLs and Basic auth user names.
    if not cpid.isprintable() or any(c.isspace() for c in cpid):
        return Refused(HTTPStatus.NOT_FOUND, "charge point id has spaces or control characters")
    return cpid


def charge_point_id(path: str, prefix: str) -> str | None:
    """The charge point id in ``path`` under ``prefix``, or None if the path is not a valid one:
    the percent-decoded segment after the prefix, valid UTF-8, not empty, without ``/``, at most
    48 characters."""
    cpid = _parse_id(path, prefix)
    return cpid if isinstance(cpid, str) else None


def _password_matches(given: bytes, configured: str) -> bool:
    candidates = [configured.encode()]
    # OCPP 1.6 AuthorizationKey is raw bytes, usually configured as hex (security profile 1/2).
    if len(configured) % 2 == 0:
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(configured))
    return any(hmac.compare_digest(given, c) for c in candidates)


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode(), password
    except UnicodeDecodeError:
        return None


def admit(path: str, authorization: str | None, settings: ChargersSettings) -> Admitted | Refused:
    """Decide a charger's WebSocket handshake from its request path and Authorization header."""
    cpid = _parse_id(path, settings.path_prefix)
    if isinstance(cpid, Refused):
        return cpid
    if settings.auth == "basic" and ":" in cpid:  # RFC 7617: a user-id cannot hold a colon
        return Refused(HTTPStatus.NOT_FOUND, "charge point id contains : (Basic auth)")
    configured = settings.password_for(cpid)
    if not settings.allow_unknown and configured is None:
        return Refused(HTTPStatus.NOT_FOUND, f"unknown charge point {cpid}")
    if settings.auth == "basic":
        creds = _basic_credentials(authorization)
        if (
            creds is None
            or configured is None
            or creds[0] != cpid
            or not _password_matches(creds[1], configured)
        ):
            return Refused(HTTPStatus.UNAUTHORIZED, "invalid credentials")
    return Admitted(cpid)
