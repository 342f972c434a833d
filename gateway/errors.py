"""The gateway's exceptions, rooted at one class.

::

    GatewayError
    ├── ConfigError                 invalid configuration (CLI exit 2)
    ├── FrameError                  an OCPP-J frame that cannot be accepted (→ CALLERROR)
    ├── StoreError                  SQLite store unusable
    ├── CloudUnavailable            the cloud CSMS cannot be reached / did not answer
    │   └── CloudRefused            it refused the handshake, or selected no offered subprotocol
    ├── CertificateError            bytes that are not the certificate they claim to be (PEM, DER)
    ├── InvalidTransition           a link event impossible in the current state (a driver bug)
    ├── UnmappedTransaction         a 1.6 local transaction id the cloud has not mapped (yet)
    ├── TransactionIdsExhausted     the reserved range of local 1.6 transaction ids is used up
    ├── FlipturnShapeError          the Flipturn API sent something without its documented shape
    │   ├── InvalidPage             a list page: the sync cannot continue (→ SyncError)
    │   └── InvalidItem             one list item: rejected and counted, the rest is kept
    ├── SyncError                   Flipturn REST API sync failed
    │   ├── SyncAuthError           401/403: the api_key is wrong; no retry until the next interval
    │   └── SyncRateLimited         429 with a Retry-After too long to wait inside one sync
    ├── SupportBundleError          ``support-bundle`` cannot write its PATH (CLI exit 1)
    ├── ReservationError            a local API reservation request that cannot be carried out
    │   ├── InvalidReservationRequest   bad body (HTTP 422), ``field`` names the field
    │   └── UnknownPort             portId not in [[ports]] (HTTP 404)
    └── ChargerCallError            a gateway-originated CALL to a charger failed
        ├── ChargerNotConnected
        ├── ChargerTimeout          the charger did not answer within chargers.call_timeout_s
        ├── ChargerQueueFull        chargers.max_queued_calls CALLs already wait (HTTP 503)
        ├── ChargerCallRefused      the charger answered with a CALLERROR (``code``)
        └── ChargerBadAnswer        the charger's CALLRESULT breaks the schema

Third-party exceptions are translated only in the adapter that calls the library
(``raise CloudUnavailable(...) from exc``); every SQLite error becomes a ``StoreError`` in the store.
Each class is defined here; the module that raises it also exports it under its old name
(``gateway.core.link.InvalidTransition``, ``gateway.tags.flipturn.InvalidPage``, …).
The private control-flow exceptions of one module, caught in that module (``_Refused`` and
``_Skip`` of ``gateway.tags.local_list_push``), derive from ``GatewayError`` there.
"""

from __future__ import annotations

__all__ = [
    "CertificateError",
    "ChargerBadAnswer",
    "ChargerCallError",
    "ChargerCallRefused",
    "ChargerNotConnected",
    "ChargerQueueFull",
    "ChargerTimeout",
    "CloudRefused",
    "CloudUnavailable",
    "ConfigError",
    "FlipturnShapeError",
    "FrameError",
    "GatewayError",
    "InvalidItem",
    "InvalidPage",
    "InvalidReservationRequest",
    "InvalidTransition",
    "ReservationError",
    "StoreError",
    "SupportBundleError",
    "SyncAuthError",
    "SyncError",
    "SyncRateLimited",
    "TransactionIdsExhausted",
    "UnknownPort",
    "UnmappedTransaction",
]


class GatewayError(Exception):
    """Root of every exception the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the key."""


class FrameError(GatewayError):
    """An OCPP-J frame that cannot be accepted.

    ``code`` is the OCPP-J error code (2.0.1 spelling; see ``frames.error_code_for``), ``message_id``
    the id to answer with (``"-1"`` when it could not be read, OCPP-J 1.6 §4.2.3 errata).
    ``answer`` is False for a frame that must get no answer at all: a 2.1 SEND (OCPP 2.1 Part 4
    §4.2.4: "The receiver SHALL NOT respond to a SEND message with a CALLRESULT or CALLERROR").
    """

    def __init__(
        self, code: str, description: str, message_id: str = "-1", *, answer: bool = True
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.message_id = message_id
        self.answer = answer


class StoreError(GatewayError):
    """The SQLite store cannot be used."""


class CloudUnavailable(GatewayError):
    """The cloud CSMS is unreachable or did not answer in time."""


class CloudRefused(CloudUnavailable):
    """The cloud answered the handshake but refused it (an HTTP status other than 101) or selected
    none of the offered subprotocols (RFC 6455 §4.2.2): perhaps it does not speak that version."""


class CertificateError(GatewayError):
    """Bytes that are not the certificate they claim to be."""


class InvalidTransition(GatewayError):
    """An event that cannot happen in the current link state (a bug in the driver)."""


class UnmappedTransaction(GatewayError):
    """A charger→cloud message carries a local id the cloud has not mapped (yet)."""

    def __init__(self, local_id: int) -> None:
        super().__init__(f"local transaction id {local_id} has no cloud id")
        self.local_id = local_id


class TransactionIdsExhausted(GatewayError):
    """Every id of the reserved local 1.6 transaction-id range has been handed out."""


class FlipturnShapeError(GatewayError):
    """The Flipturn REST API sent something without its documented shape; the message says why."""


class InvalidPage(FlipturnShapeError):
    """A list page does not have the Flipturn shape; the sync cannot continue."""


class InvalidItem(FlipturnShapeError):
    """One list item does not have the Flipturn shape; the message says why."""


class SyncError(GatewayError):
    """A sync from the Flipturn REST API failed; the cache was left untouched."""


class SyncAuthError(SyncError):
    """The Flipturn API refused the api_key (401/403)."""


class SyncRateLimited(SyncError):
    """The Flipturn API asked (429) to wait ``retry_after_s`` seconds before the next request."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ChargerCallError(GatewayError):
    """A CALL the gateway itself sent to a charger failed."""


class ChargerNotConnected(ChargerCallError):
    """The charger is not connected to the gateway."""


class ChargerTimeout(ChargerCallError):
    """The charger did not answer in time."""


class ChargerQueueFull(ChargerCallError):
    """``chargers.max_queued_calls`` CALLs already wait for this charger; nothing was sent."""


class ChargerCallRefused(ChargerCallError):
    """The charger answered a gateway-originated CALL with a CALLERROR."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"charger answered with CALLERROR {code}: {description}".rstrip(": "))
        self.code = code


class ChargerBadAnswer(ChargerCallError):
    """The charger answered, but not with a payload its schema allows."""


class ReservationError(GatewayError):
    """A reservation request of the local API that cannot be carried out."""


class InvalidReservationRequest(ReservationError):
    """The request body is invalid; ``field`` names the (first) offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownPort(ReservationError):
    """No ``[[ports]]`` entry has this portId."""


class SupportBundleError(GatewayError):
    """``flipturn-gateway support-bundle`` cannot write its PATH (a directory, no such parent)."""
