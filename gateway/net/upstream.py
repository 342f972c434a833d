"""Opening the upstream (cloud) WebSocket for one charger.

The opener offers the cloud the versions it is given, in that order (the charger's order of
preference), and returns the connection with the one the cloud selected (``ws.subprotocol``);
the cloud refusing them all is :class:`~gateway.errors.CloudRefused`, distinct from a cloud that
cannot be reached (``CloudUnavailable``): the link then offers the charger's other versions.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from urllib.parse import quote

from websockets.exceptions import (
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    NegotiationError,
    WebSocketException,
)
from websockets.extensions.base import ClientExtensionFactory
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.typing import Subprotocol

from gateway import __version__
from gateway.config import redact_url
from gateway.errors import CloudRefused, CloudUnavailable
from gateway.net.wsclient import ClientConnection, connect
from gateway.net.wsconn import Keepalive, Timeouts
from gateway.ocpp.frames import OcppVersion

__all__ = [
    "DEFLATE_MEM_LEVEL",
    "DEFLATE_WINDOW_BITS",
    "UpstreamOpener",
    "deflate_offers",
    "upstream_headers",
]

USER_AGENT = f"flipturn-gateway/{__version__}"
# HTTP answers to the handshake that may mean "none of the offered subprotocols" (CloudRefused).
VERSION_REFUSAL_STATUSES: frozenset[int] = frozenset({400, 406})  # as the Flipturn API client says

# permessage-deflate on both kinds of link: a 2 KB LZ77 window and zlib memLevel 2. A link's
# compressor holds 2^(bits+2) + 2^(memLevel+9) bytes and its decompressor 2^bits, for as long as
# the link is open, and a long-lived link touches all of it: with websockets' defaults (a 32 KB
# window toward a cloud that does not limit it) that is ~190 KB per cloud link, with these ~25 KB.
# An OCPP frame is mostly like the one before it, which a 2 KB window still holds: a 3-phase
# MeterValues compresses to ~88 bytes instead of ~76 (docs/benchmarks.md "Memory per charger").
DEFLATE_WINDOW_BITS = 11
DEFLATE_MEM_LEVEL = 2


def deflate_offers() -> list[ClientExtensionFactory]:
    """What the cloud is offered: first with its own window limited too (RFC 7692 §7.1.2.1), then
    without, for a cloud that declines to limit its window (it may: §7.1.2.1)."""
    settings = {"memLevel": DEFLATE_MEM_LEVEL}
    return [
        ClientPerMessageDeflateFactory(
            server_max_window_bits=DEFLATE_WINDOW_BITS,
            client_max_window_bits=DEFLATE_WINDOW_BITS,
            compress_settings=settings,
        ),
        ClientPerMessageDeflateFactory(
            client_max_window_bits=DEFLATE_WINDOW_BITS, compress_settings=settings
        ),
    ]


def charger_url(base: str, charger_id: str) -> str:
    """A charger's cloud endpoint: ``{upstream.url}/{cpid}``, the id percent-encoded (OCPP-J §3.1)."""
    return f"{base}/{quote(charger_id, safe='')}"


def upstream_headers(request: Request | None, pass_authorization: bool) -> dict[str, str]:
    """Headers of a charger's cloud handshake: its Authorization (``upstream.pass_authorization``)."""
    auth = request.headers.get("Authorization") if request is not None else None
    return {"Authorization": auth} if auth and pass_authorization else {}


class UpstreamOpener:
    """``await opener(url, version, headers, alternatives=())`` → an open connection speaking
    ``version`` or one of ``alternatives`` (offered after it, in that order): the cloud selects."""

    def __init__(
        self,
        *,
        open_timeout_s: float,
        max_message_bytes: int,
        compression: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeouts = Timeouts(open_s=open_timeout_s, close_s=2.0)
        # The cloud may send larger frames than a charger may (e.g. charging profiles).
        self._max_size = max(max_message_bytes, 1 << 20)
        self._keepalive = Keepalive(interval_s=20.0, timeout_s=20.0)
        self._extensions = deflate_offers() if compression else []
        # For wss:// (gateway.tls.client_context); replaced on reload, read at every connect.
        self.ssl_context = ssl_context

    async def __call__(
        self,
        url: str,
        version: OcppVersion,
        headers: dict[str, str],
        *,
        alternatives: Sequence[OcppVersion] = (),
    ) -> ClientConnection:
        offer = [Subprotocol(f"ocpp{v}") for v in (version, *alternatives)]
        try:
            ws = await connect(
                url,
                subprotocols=offer,
                headers={"User-Agent": USER_AGENT, **headers},
                max_size=self._max_size,
                extensions=self._extensions,
                timeouts=self._timeouts,
                keepalive=self._keepalive,
                ssl_context=self.ssl_context,
            )
        except InvalidStatus as exc:
            # RFC 6455 §4.2.2: a server that speaks none of the offered subprotocols may refuse
            # the upgrade (400 Bad Request; 406 from some). Any other status (5xx, 429, 401, 404)
            # says nothing about the version: an outage or this charger's problem, backed off.
            if exc.response.status_code in VERSION_REFUSAL_STATUSES:
                raise CloudRefused(f"{redact_url(url)}: {exc}") from exc
            raise CloudUnavailable(f"{redact_url(url)}: {exc}") from exc
        except NegotiationError as exc:
            if "subprotocol" in str(exc):  # it selected one that was not offered
                raise CloudRefused(f"{redact_url(url)}: {exc}") from exc
            raise CloudUnavailable(f"{redact_url(url)}: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, WebSocketException) as exc:
            shown = redact_url(url)  # the message is logged: no password of the URL in it
            detail = (str(exc) or type(exc).__name__).replace(url, shown)
            raise CloudUnavailable(f"{shown}: {detail}") from exc
        if ws.subprotocol not in offer:
            ws.close(1002, "subprotocol not accepted")
            names = ", ".join(offer)
            raise CloudRefused(f"{redact_url(url)}: cloud selected none of {names}")
        return ws
