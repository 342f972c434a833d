"""Wires the gateway together: store, hub, charger server, local API; start and graceful stop."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute

from gateway import checks, logs
from gateway.api.access_ids import cache_routes
from gateway.api.depot import depot_routes
from gateway.api.outbox import dead_letter_routes
from gateway.api.reservations import reservation_routes
from gateway.api.server import ApiContext, ApiServer, build_api
from gateway.api.site import no_guard, site_routes
from gateway.config import Settings, load_settings, redact_url
from gateway.core.backoff import BackoffPolicy
from gateway.core.depot import DepotView
from gateway.core.limits import LogLimiter
from gateway.errors import ConfigError
from gateway.metrics import (
    FleetCollector,
    GatewayCollector,
    RelayStats,
    SiteCollector,
    new_registry,
)
from gateway.net.depot_recorder import DepotRecorder
from gateway.net.host import ChargerWatcher, SessionHook
from gateway.net.hub import Hub
from gateway.net.runner import CallRunner
from gateway.net.server import start_charger_server
from gateway.net.session import ChargerSession
from gateway.net.tls import CertificateExpiryCollector, TlsContexts
from gateway.net.upstream import UpstreamOpener
from gateway.net.wsconn import WsServer
from gateway.reservations.book import ReservationBook
from gateway.reservations.hook import ReservationHook
from gateway.sdnotify import Notifier, watchdog_interval_s, watchdog_loop
from gateway.site.driver import SiteGuard
from gateway.store.engine import Store
from gateway.tags import local_list_push
from gateway.tags.cache import CacheMetrics, TagCache
from gateway.tags.local_list_push import LocalListPusher
from gateway.tags.rules import normalise
from gateway.tags.sync import FlipturnClient, SyncMetrics, SyncService, sync_status

__all__ = ["Gateway"]

log = logging.getLogger(__name__)


class Gateway:
    """One running gateway. ``await start()``, then ``await stop()``; or ``await run(stop_event)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        reconnect_max_s: float | None = None,
        backoff: BackoffPolicy | None = None,
        local_list_settle_s: float = local_list_push.SETTLE_S,
        config_path: Path | None = None,
        log_limit: LogLimiter | None = None,
    ) -> None:
        """``reconnect_max_s`` overrides ``upstream.reconnect_max_s`` and ``backoff`` how fast the
        delays grow (tests use both to reach the cap without waiting for it); ``log_limit`` the
        minute between repeated lines (tests see its counts written without waiting a minute)."""
        self.settings = settings
        self.config_path = config_path  # read again by reload()
        self._api_context: ApiContext | None = None
        self.reconnect_max_s = reconnect_max_s
        self.backoff = backoff
        self.local_list_settle_s = local_list_settle_s
        self.stats = RelayStats()
        # Repeated warnings, once a minute per kind and charger: the store's, the tag cache's and
        # every session's (the hub's sweep writes the counts of those left out).
        self.log_limit = LogLimiter() if log_limit is None else log_limit
        self.registry = new_registry()
        self.store: Store | None = None
        self.reservations: ReservationBook | None = None
        self.hub: Hub | None = None
        self.local_list: LocalListPusher | None = None
        self.site_guard: SiteGuard | None = None
        self.charger_server: WsServer | None = None
        self.api: ApiServer | None = None
        self._api_task: asyncio.Task[None] | None = None
        self.tag_cache: TagCache | None = None
        self.tls: TlsContexts | None = None
        self.upstream_opener: UpstreamOpener | None = None
        self.sync: SyncService | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.depot = DepotView()
        self.depot_recorder: DepotRecorder | None = None
        self._depot_task: asyncio.Task[None] | None = None
        self.charger_port = 0
        self.api_port = 0

    async def start(self) -> None:
        """Open everything; on failure, close what was already opened and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        self.tls = tls = TlsContexts(settings)  # ConfigError naming the key if a file is bad
        self.registry.register(CertificateExpiryCollector(tls))
        self.store = store = await Store.open(settings.store.path)
        store.lines.limiter = self.log_limit
        store.start_monitoring()  # /health and the watchdog follow the store's real state
        self.depot_recorder = DepotRecorder(self.depot, store)
        await self.depot_recorder.load()
        self.tag_cache = TagCache(
            store,
            unknown_tags=settings.offline.unknown_tags,
            metrics=CacheMetrics(self.registry),
        )
        self.reservations = reservations = ReservationBook(
            store, registry=self.registry, normalise=normalise, ports=settings.ports
        )
        self.local_list = local_list = LocalListPusher(
            store,
            push=settings.local_list.push,
            max_entries=settings.local_list.max_entries,
            registry=self.registry,
            settle_s=self.local_list_settle_s,
        )
        # The site guard watches first: a reconnecting charger's cap is the first CALL queued.
        watchers: list[ChargerWatcher[ChargerSession]] = []
        if settings.site.enabled:
            self.site_guard = SiteGuard(settings.site, store, self.depot, runner=CallRunner())
            await self.site_guard.load()
            self.registry.register(SiteCollector(self.site_guard.figures))
            watchers.append(self.site_guard)
        watchers.append(local_list)
        hooks: list[SessionHook[ChargerSession]] = [ReservationHook(reservations)]
        if settings.local_list.push:  # only then are Authorize/Start/TransactionEvent observed
            hooks.append(local_list)
        self.hub = hub = Hub(
            settings,
            store,
            connect_upstream=self._open_upstream(tls),
            stats=self.stats,
            authorizer=self.tag_cache,
            reconnect_max_s=self.reconnect_max_s,
            backoff=self.backoff,
            hooks=hooks,
            watchers=watchers,
            depot=self.depot,
            log_limit=self.log_limit,
        )
        self.registry.register(
            GatewayCollector(
                self.stats,
                chargers_connected=hub.chargers_connected,
                upstreams_connected=hub.upstreams_connected,
                outbox=hub.outbox,
                dead_letters=lambda: hub.dead_letters,
                now=time.time,
            )
        )
        self.registry.register(
            FleetCollector(
                hub.charger_samples,
                store_ok=lambda: store.ok,
                links=not settings.standalone,
                now=time.time,
            )
        )
        await local_list.start(hub)
        hub.set_trace_frames(settings.log.level == "debug")
        await hub.start()
        if self.site_guard is not None:
            self.site_guard.start(hub.sessions)
        api_key = settings.flipturn.api_key.get_secret_value()
        if api_key:  # design.md: api_key = "" disables sync
            self.sync = SyncService(
                store,
                FlipturnClient(settings.flipturn.api_url, api_key),
                interval_s=settings.flipturn.sync_interval_s,
                metrics=SyncMetrics(self.registry),
                after_sync=local_list.after_sync,
            )
        self._api_context = context = ApiContext(
            settings=settings,
            hub=hub,
            store=store,
            registry=self.registry,
            sync_status=functools.partial(sync_status, store),
            local_list=local_list.describe,
        )
        routes: list[BaseRoute] = [
            *depot_routes(
                context,
                self.depot,
                certificates=self.certificates,
                local_list=local_list.describe,
            ),
            *cache_routes(store, self.sync),
            *dead_letter_routes(store, hub),
            *reservation_routes(reservations, hub, settings.ports),
            *site_routes(
                self.site_guard.describe
                if self.site_guard is not None
                else functools.partial(no_guard, settings.site)
            ),
        ]
        self.api = ApiServer(build_api(context, routes), settings.api.host, settings.api.port)
        self.api_port = self.api.port
        self._api_task = asyncio.create_task(self.api.serve())
        self.charger_server = await start_charger_server(
            hub, settings.chargers, ssl_context=tls.charger_listener
        )
        self.charger_port = next(iter(self.charger_server.sockets)).getsockname()[1]
        if self.sync is not None:
            self._sync_task = asyncio.create_task(self.sync.run())
        self._depot_task = asyncio.create_task(self.depot_recorder.run())
        scheme = "wss" if settings.chargers.tls_cert else "ws"
        log.info(
            "listening for chargers on %s://%s:%d%s/{chargePointId}; API on http://%s:%d; %s",
            scheme,
            settings.chargers.host,
            self.charger_port,
            settings.chargers.path_prefix,
            settings.api.host,
            self.api_port,
            f"upstream {redact_url(settings.upstream.url)}"
            if settings.upstream.url
            else "standalone",
        )

    def certificates(self) -> list[dict[str, Any]]:
        """The TLS files in use and when their earliest certificate ends (for the dashboard)."""
        now = time.time()
        expiry = self.tls.expiry if self.tls is not None else {}
        return [
            {
                "name": which,
                "notAfter": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
                "daysLeft": math.floor((ts - now) / 86400),
            }
            for which, ts in sorted(expiry.items())
        ]

    def _open_upstream(self, tls: TlsContexts) -> UpstreamOpener:
        settings = self.settings
        self.upstream_opener = UpstreamOpener(
            open_timeout_s=settings.upstream.call_timeout_s,
            max_message_bytes=settings.chargers.max_message_bytes,
            compression=settings.upstream.compression,
            ssl_context=tls.upstream,
        )
        return self.upstream_opener

    def reload_tls(self, settings: Settings | None = None) -> bool:
        """Re-read the TLS certificate, key and CA files; new handshakes use them (see gateway.tls)."""
        if self.tls is None:
            return False
        reloaded = self.tls.reload(settings)
        if self.upstream_opener is not None:
            self.upstream_opener.ssl_context = self.tls.upstream
        return reloaded

    def reload(self) -> list[str]:
        """SIGHUP: read the config file again and apply what can change while running.

        Applied at once, no connection dropped: ``api.token`` (the next API request),
        ``[chargers.passwords]`` (the next charger handshake), ``log.level``, and the TLS
        certificate, key and CA files (:meth:`reload_tls`: the next handshake). Every other changed
        key is logged as needing a restart and keeps its running value. A file that does not
        load, or would be refused at start-up, changes nothing. Returns the keys applied.
        """
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, running configuration kept: %s", exc)
            return []
        old = self.settings
        applied = old.model_copy(
            update={
                "api": old.api.model_copy(update={"token": new.api.token}),
                "chargers": old.chargers.model_copy(update={"passwords": new.chargers.passwords}),
                "log": old.log.model_copy(update={"level": new.log.level}),
            }
        )
        refused = checks.refusals(applied)
        if refused:
            log.error(
                "reload refused, running configuration kept: %s", "; ".join(map(str, refused))
            )
            return []
        if self.reload_tls(new):  # new handshakes use the (new) files; see TlsContexts.reload
            applied = _with_tls_files(applied, self.tls.settings if self.tls else new)
        before, after, wanted = _flatten(old), _flatten(applied), _flatten(new)
        changed = sorted(k for k in after if after[k] != before.get(k))
        for key in sorted(k for k in wanted if wanted[k] != after.get(k)):
            log.warning("reload: %s changed; needs a restart", key)
        self._apply(applied)
        log.info("reloaded %s", ", ".join(changed) if changed else "(nothing changed)")
        return changed

    def _apply(self, settings: Settings) -> None:
        self.settings = settings
        if self.hub is not None:
            self.hub.settings = settings
            self.hub.set_trace_frames(settings.log.level == "debug")
        if self._api_context is not None:
            self._api_context.settings = settings
        logs.set_level(settings.log.level)

    async def stop(self) -> None:
        """Stop accepting, close chargers and upstreams, finish pending writes, close the store."""
        if self._sync_task is not None:
            await cancel_and_wait(self._sync_task, "periodic sync")
        if self.sync is not None:
            await self.sync.aclose()
        if self.charger_server is not None:
            self.charger_server.close(close_connections=False)
        if self.local_list is not None:
            await self.local_list.close()
        if self.site_guard is not None:
            await self.site_guard.close()
        if self.hub is not None:
            await self.hub.close()
        if self.tag_cache is not None:
            await self.tag_cache.close()  # learned answers still only in memory: written now
        if self.charger_server is not None:
            await self.charger_server.wait_closed()
        if self._depot_task is not None:
            await cancel_and_wait(self._depot_task, "depot recorder")
        if self.depot_recorder is not None and self.store is not None:
            await self.depot_recorder.flush(meters=True)  # what the next start shows
        if self.api is not None:
            self.api.stop()
        if self._api_task is not None:
            await self._api_task
        if self.store is not None:
            await self.store.close()
            log.info("stopped")

    async def run(self, stop: asyncio.Event, notifier: Notifier | None = None) -> None:
        """Serve until ``stop`` is set, telling systemd (if it listens) when ready and alive."""
        notifier = notifier or Notifier(None)
        await self.start()
        watchdog: asyncio.Task[None] | None = None
        interval = watchdog_interval_s()
        if interval is not None and self.store is not None:
            store = self.store
            watchdog = asyncio.create_task(
                watchdog_loop(notifier, interval, store.healthy, store.why_unhealthy)
            )
        notifier.ready(f"serving chargers on port {self.charger_port}")
        try:
            await stop.wait()
        finally:
            notifier.stopping("stopping")
            if watchdog is not None:
                watchdog.cancel()
            await self.stop()
            notifier.close()


async def cancel_and_wait(task: asyncio.Task[Any], what: str, *, every_s: float = 1.0) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it does not.

    A cancellation can be lost inside a library (a timeout scope that expires as the task is
    cancelled turns the cancellation into its own timeout): one ``cancel()`` then leaves a
    periodic loop running and shutdown waiting for it forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)
        if not task.done():
            log.warning("%s ignored its cancellation; cancelling again", what)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", what, exc_info=task.exception())


def _flatten(settings: Settings) -> dict[str, Any]:
    """Dotted key → value (secrets stay SecretStr, which compare by value)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(f"{prefix}{name}.", getattr(value, name))
        elif isinstance(value, dict) and prefix.endswith("passwords."):
            out[prefix.rstrip(".")] = dict(value)
        else:
            out[prefix.rstrip(".")] = value

    walk("", settings)
    return out


_TLS_FILE_KEYS = {
    "chargers": ("tls_cert", "tls_key", "tls_ca"),
    "upstream": ("tls_ca", "tls_cert", "tls_key"),
}


def _with_tls_files(settings: Settings, tls: Settings) -> Settings:
    """``settings`` with the TLS file paths that ``tls`` (what the TLS contexts use) has."""
    update: dict[str, Any] = {}
    for section, keys in _TLS_FILE_KEYS.items():
        current, loaded = getattr(settings, section), getattr(tls, section)
        update[section] = current.model_copy(update={k: getattr(loaded, k) for k in keys})
    return settings.model_copy(update=update)
