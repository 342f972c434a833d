"""Start-up checks on a loaded configuration beyond what each key's validator can see.

Pure: take the settings, return what is wrong. ``check-config``, ``run`` and a SIGHUP reload all
ask the same questions. A *refusal* stops the command (exit 2, naming the key); a *warning* is
printed and the command goes on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.config import Settings

__all__ = ["Finding", "refusals", "warnings"]


@dataclass(frozen=True, slots=True)
class Finding:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def refusals(settings: Settings) -> list[Finding]:
    """Settings the gateway will not run with."""
    found: list[Finding] = []
    if not _is_loopback(settings.api.host) and not settings.api.token.get_secret_value():
        found.append(
            Finding(
                "api.token",
                f"must be set when api.host ({settings.api.host}) is not a loopback address:"
                " the API would serve POST /api/* to the network without a password",
            )
        )
    return found


def warnings(settings: Settings) -> list[Finding]:
    """Settings that run but are probably not what the operator meant."""
    found: list[Finding] = []
    if settings.chargers.auth == "basic" and not settings.chargers.passwords:
        found.append(
            Finding(
                "chargers.passwords",
                'is empty while chargers.auth = "basic": every charger will be refused (401)',
            )
        )
    return found
