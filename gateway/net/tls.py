"""TLS on both sides: the contexts, the checks of their files, and re-reading them on SIGHUP.

Toward chargers the gateway is the TLS server (security profile 2; with ``chargers.client_certs``
profile 3: chargers present certificates signed by ``chargers.tls_ca``). Toward the cloud it is the
TLS client, verifying the cloud (hostname included) against ``upstream.tls_ca`` or the system store,
and presenting ``upstream.tls_cert`` when the cloud asks for one (OCPP 2.0.1 Part 4 §6.5: a Local
Controller holds its own certificates toward the CSMS).

Versions and suites (OCPP 2.0.1 Part 2 A00.FR.313/A00.FR.416: TLS 1.2 or above only; A00.FR.318/
A00.FR.421: a CSMS supports at least TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_RSA_WITH_AES_128_GCM_SHA256 and
TLS_RSA_WITH_AES_256_GCM_SHA384; A00.FR.321: no TLS compression): TLS 1.2 offers exactly those four
plus the two ECDHE_RSA GCM suites (forward secrecy for chargers with RSA certificates); TLS 1.3 uses
OpenSSL's defaults. Which suites a handshake can pick depends on the key type of ``tls_cert``:
ECDSA serves the ECDHE_ECDSA ones, RSA the others.

Reloading: a listening socket keeps the context it was created with, so the server context's SNI
callback, run for every ClientHello, hands each new handshake the context built from the newest
files. Existing connections keep their TLS session; nothing is dropped. A reload whose files fail
the checks keeps the previous contexts and says why.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import ChargersSettings, Settings, UpstreamSettings
from gateway.core.certs import CertificateError, not_after, pem_certificates
from gateway.errors import ConfigError

__all__ = [
    "CIPHERS_TLS12",
    "EXPIRY_WARNING_S",
    "CertificateExpiryCollector",
    "TlsCheck",
    "TlsContexts",
    "check_tls_files",
    "client_context",
    "server_context",
]

log = logging.getLogger(__name__)

CIPHERS_TLS12 = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        "ECDHE-ECDSA-AES256-GCM-SHA384",  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        "ECDHE-RSA-AES128-GCM-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        "ECDHE-RSA-AES256-GCM-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        "AES128-GCM-SHA256",  # TLS_RSA_WITH_AES_128_GCM_SHA256
        "AES256-GCM-SHA384",  # TLS_RSA_WITH_AES_256_GCM_SHA384
    ]
)

EXPIRY_WARNING_S = 30 * 86400  # a certificate expiring sooner is a warning


def _no_passphrase() -> str:
    raise ConfigError("the private key is encrypted; the gateway needs it unencrypted")


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context(settings: ChargersSettings) -> ssl.SSLContext | None:
    """The charger-facing server context, or None when ``tls_cert`` is unset (plain ws://)."""
    if not settings.tls_cert:
        return None
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE  # ECDHE before static RSA
    context.load_cert_chain(settings.tls_cert, settings.tls_key, password=_no_passphrase)
    if settings.client_certs != "none":
        context.load_verify_locations(cafile=settings.tls_ca)
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.client_certs == "required" else ssl.CERT_OPTIONAL
        )
    return context


def client_context(settings: UpstreamSettings) -> ssl.SSLContext | None:
    """The context for the cloud links, or None when ``url`` is not wss://."""
    if not settings.url.startswith("wss://"):
        return None
    # check_hostname and CERT_REQUIRED come with the default context.
    context = _harden(ssl.create_default_context(cafile=settings.tls_ca or None))
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=_no_passphrase)
    return context


# --- checks --------------------------------------------------------------------------------------


@dataclass
class TlsCheck:
    """What :func:`check_tls_files` found: expiry per metric label, and warnings to show."""

    expiry: dict[str, float] = field(default_factory=dict)  # which → Unix time of earliest notAfter
    warnings: list[str] = field(default_factory=list)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: {path}: cannot be read ({exc.strerror or exc})") from None


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _check_certificates(
    key: str, path: str, *, bundle: bool, now: float, result: TlsCheck, which: str
) -> None:
    data = _read(key, path)
    try:
        ends = [not_after(der) for der in pem_certificates(data)]
    except CertificateError as exc:
        raise ConfigError(f"{key}: {path}: not a PEM certificate file ({exc})") from None
    if not ends:
        raise ConfigError(f"{key}: {path}: no PEM certificate in it")
    earliest = min(ends)
    result.expiry[which] = earliest.timestamp()
    expired = [end for end in ends if end.timestamp() <= now]
    if bundle and len(expired) < len(ends):  # a bundle may still hold a retired CA
        if expired:
            result.warnings.append(
                f"{key}: {path}: {len(expired)} of its {len(ends)} certificates expired"
                f" (the first on {_day(min(expired))})"
            )
            earliest = min(end for end in ends if end.timestamp() > now)
    elif expired:
        raise ConfigError(f"{key}: {path}: certificate expired on {_day(min(expired))}")
    left_s = earliest.timestamp() - now
    if left_s < EXPIRY_WARNING_S:
        result.warnings.append(
            f"{key}: {path}: certificate expires on {_day(earliest)} (in {left_s / 86400:.0f} days)"
        )


def _check_pair(section: str, cert: str, key: str) -> None:
    _read(f"{section}.tls_key", key)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_cert_chain(cert, key, password=_no_passphrase)
    except ConfigError as exc:
        raise ConfigError(f"{section}.tls_key: {key}: {exc}") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            why = f"not the private key of {section}.tls_cert"
        else:
            why = f"not a usable PEM private key for {section}.tls_cert ({exc.reason or exc})"
        raise ConfigError(f"{section}.tls_key: {key}: {why}") from None


def _check_bundle_loads(key: str, path: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{key}: {path}: not a usable CA bundle ({exc.reason or exc})") from None


def check_tls_files(settings: Settings, now: float | None = None) -> TlsCheck:
    """Check every TLS file the settings name: present, readable, a matching pair, not expired.

    Raise :class:`ConfigError` naming the key; return the expiry times and the warnings
    (a certificate that expires within 30 days).
    """
    now = time.time() if now is None else now
    result = TlsCheck()
    chargers, upstream = settings.chargers, settings.upstream
    if chargers.tls_cert:
        _check_certificates(
            "chargers.tls_cert", chargers.tls_cert, bundle=False, now=now, result=result,
            which="chargers",
        )  # fmt: skip
        _check_pair("chargers", chargers.tls_cert, chargers.tls_key)
    if chargers.tls_ca and chargers.client_certs != "none":
        _check_certificates(
            "chargers.tls_ca", chargers.tls_ca, bundle=True, now=now, result=result,
            which="chargers_ca",
        )  # fmt: skip
        _check_bundle_loads("chargers.tls_ca", chargers.tls_ca)
    if upstream.tls_cert:
        _check_certificates(
            "upstream.tls_cert", upstream.tls_cert, bundle=False, now=now, result=result,
            which="upstream",
        )  # fmt: skip
        _check_pair("upstream", upstream.tls_cert, upstream.tls_key)
    if upstream.tls_ca:
        _check_certificates(
            "upstream.tls_ca", upstream.tls_ca, bundle=True, now=now, result=result,
            which="upstream_ca",
        )  # fmt: skip
        _check_bundle_loads("upstream.tls_ca", upstream.tls_ca)
    return result


# --- the running gateway's contexts ----------------------------------------------------------------


class TlsContexts:
    """The contexts a running gateway uses; :meth:`reload` re-reads their files.

    ``charger_listener`` is given to the listening socket once; its SNI callback switches each new
    handshake to the newest charger context. ``upstream`` is read by the upstream opener at every
    connect. Raises :class:`ConfigError` (naming the key) if the files fail the checks at start.
    """

    def __init__(self, settings: Settings, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._settings = settings
        check = check_tls_files(settings, now())
        self.expiry = check.expiry
        for warning in check.warnings:
            log.warning("%s", warning)
        self._charger = self._build(lambda: server_context(settings.chargers), "chargers")
        self.upstream = self._build(lambda: client_context(settings.upstream), "upstream")
        self.charger_listener = self._charger
        if self.charger_listener is not None:
            self.charger_listener.sni_callback = self._choose_context

    @property
    def settings(self) -> Settings:
        """The settings whose TLS files are in use (the last successful load)."""
        return self._settings

    @staticmethod
    def _build(build: Callable[[], ssl.SSLContext | None], name: str) -> ssl.SSLContext | None:
        try:
            return build()
        except (OSError, ssl.SSLError) as exc:  # the checks passed, so the files changed since
            raise ConfigError(f"{name}: TLS set-up failed: {exc}") from exc

    def _choose_context(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        if self._charger is not None and self._charger is not context:
            connection.context = self._charger

    def reload(self, settings: Settings | None = None) -> bool:
        """Re-read the certificate, key and CA files (of ``settings`` if given, with new paths).

        New handshakes use the new files; open connections stay as they are. On a failed check the
        previous contexts stay in use, the reason is logged, and False is returned. Whether TLS is
        on at all, and ``client_certs``, are fixed for the life of the listening socket.
        """
        settings = settings or self._settings
        running, wanted = self._settings.chargers, settings.chargers
        if wanted.client_certs != running.client_certs or bool(wanted.tls_cert) != bool(
            running.tls_cert
        ):  # the listening socket's verify mode cannot change under it
            log.warning(
                "turning TLS toward chargers on or off, or changing chargers.client_certs, needs a"
                " restart; the [chargers] TLS files stay as they are until then"
            )
            settings = settings.model_copy(update={"chargers": running})
        try:
            check = check_tls_files(settings, self._now())
            charger = self._build(lambda: server_context(settings.chargers), "chargers")
            upstream = self._build(lambda: client_context(settings.upstream), "upstream")
        except ConfigError as exc:
            log.error("TLS reload failed, keeping the previous certificates: %s", exc)
            return False
        self._settings, self._charger, self.upstream = settings, charger, upstream
        self.expiry = check.expiry
        for warning in check.warnings:
            log.warning("%s", warning)
        log.info("TLS files reloaded: %s", ", ".join(sorted(self.expiry)) or "none in use")
        return True


class CertificateExpiryCollector(Collector):
    """``flipturn_gateway_certificate_expiry_timestamp_seconds{which}`` for each file in use."""

    def __init__(self, contexts: TlsContexts) -> None:
        self._contexts = contexts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "flipturn_gateway_certificate_expiry_timestamp_seconds",
            "When the earliest certificate in each TLS file in use expires (Unix time)",
            labels=["which"],
        )
        for which, timestamp in sorted(self._contexts.expiry.items()):
            family.add_metric([which], timestamp)
        yield family
