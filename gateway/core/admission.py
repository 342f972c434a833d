"""Who may open a charger connection: path, charge point id and Basic credentials. Pure.

OCPP-J: the URL is the endpoint + ``/`` + the percent-encoded charge point id; an unknown id is refused
with HTTP 404. Security profiles 1 and 2 use HTTP Basic auth with username = charge point id.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import unquote

from gateway.config import ChargersSettings

__all__ = ["Admitted", "Refused", "admit", "charge_point_id"]

MAX_ID_LENGTH: Final = 48  # OCPP 2.0.1 identity string; 1.6 CiString25 fits in it


@dataclass(frozen=True, slots=True)
class Admitted:
    charger_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    status: HTTPStatus
    reason: str


def charge_point_id(path: str, prefix: str) -> str | None:
    """The charge point id in ``path`` under ``prefix``, or None if the path is not a valid one."""
    path = path.split("?", 1)[0]
    if not path.startswith(prefix + "/"):
        return None
    raw = path[len(prefix) + 1 :]
    if not raw or "/" in raw:
        return None
    cpid = unquote(raw, errors="strict") if "%" in raw else raw
    if len(cpid) > MAX_ID_LENGTH or "/" in cpid:
        return None
    if not all(0x21 <= ord(c) <= 0x7E for c in cpid):  # printable ASCII, no spaces
        return None
    return cpid


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
    cpid = None
    with contextlib.suppress(UnicodeDecodeError):
        cpid = charge_point_id(path, settings.path_prefix)
    if cpid is None or (settings.auth == "basic" and ":" in cpid):
        return Refused(HTTPStatus.NOT_FOUND, "unknown charge point path")
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
