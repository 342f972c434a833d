"""``flipturn-gateway [--config PATH] COMMAND``. Exit codes: 0 ok, 2 bad config or usage, 1 failure."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gateway import __version__
from gateway.config import Settings, load_settings, redacted, resolve_config_path
from gateway.errors import ConfigError, GatewayError

__all__ = ["main"]

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("websockets", "uvicorn", "httpx", "httpcore", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pure-Python fallback where no wheel exists
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def _check_tls(settings: Settings, *, warn: bool = True) -> bool:
    """Refuse (False, message on stderr) TLS files that cannot be used; warn of near expiry."""
    from gateway.tls import check_tls_files

    try:
        check = check_tls_files(settings)
    except ConfigError as exc:
        print(f"flipturn-gateway: {exc}", file=sys.stderr)
        return False
    for warning in check.warnings if warn else ():
        print(f"flipturn-gateway: warning: {warning}", file=sys.stderr)
    return True


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.sdnotify import Notifier

    if not _check_tls(settings, warn=False):  # the gateway logs the warnings as it starts
        return EXIT_USAGE

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gateway = Gateway(settings)
        loop.add_signal_handler(signal.SIGHUP, gateway.reload)
        try:
            await gateway.run(stop, Notifier.from_env())
        except GatewayError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
        except OSError as exc:  # e.g. address already in use
            log.error("cannot start: %s", exc)
            return EXIT_FAILURE
        return EXIT_OK

    return _run_async(main)


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    if not _check_tls(settings):
        return EXIT_USAGE
    print(json.dumps(redacted(settings), indent=2))
    print("configuration OK", file=sys.stderr)
    return EXIT_OK


def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store import Store
    from gateway.sync import FlipturnClient, sync_once

    api_key = settings.flipturn.api_key.get_secret_value()
    if not api_key:
        print("flipturn-gateway: flipturn.api_key is not set; nothing to sync", file=sys.stderr)
        return EXIT_FAILURE

    async def main() -> int:
        store = await Store.open(settings.store.path)
        try:
            async with FlipturnClient(settings.flipturn.api_url, api_key) as client:
                result = await sync_once(store, client)
        finally:
            await store.close()
        print(
            json.dumps(
                {
                    "accessIds": result.access_ids,
                    "vehicles": result.vehicles,
                    "durationS": round(result.duration_s, 3),
                }
            )
        )
        return EXIT_OK

    try:
        return _run_async(main)
    except GatewayError as exc:
        print(f"flipturn-gateway: sync failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_tags_lookup(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gateway.cache import TagCache
    from gateway.store import Store

    async def main() -> int:
        store = await Store.open(settings.store.path)
        try:
            cache = TagCache(store, unknown_tags=settings.offline.unknown_tags)
            view = await cache.describe(args.tag, datetime.now(UTC))
        finally:
            await store.close()
        print(json.dumps(view, indent=2))
        return EXIT_OK

    try:
        return _run_async(main)
    except GatewayError as exc:
        print(f"flipturn-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_version(settings: Settings | None, args: argparse.Namespace) -> int:
    print(__version__)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flipturn-gateway", description="Flipturn Edge Gateway: local OCPP proxy"
    )
    parser.add_argument("--config", metavar="PATH", help="TOML config file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("run", help="run the gateway until SIGTERM/SIGINT").set_defaults(
        func=cmd_run
    )
    commands.add_parser(
        "check-config", help="validate the config and print it with secrets redacted"
    ).set_defaults(func=cmd_check_config)
    commands.add_parser(
        "sync", help="sync access ids and vehicles from the Flipturn API now; print the counts"
    ).set_defaults(func=cmd_sync)
    tags = commands.add_parser("tags", help="inspect the access-id cache")
    tag_commands = tags.add_subparsers(dest="tags_command", metavar="COMMAND", required=True)
    lookup = tag_commands.add_parser(
        "lookup", help="print the cached record and the offline decision for TAG"
    )
    lookup.add_argument("tag", metavar="TAG")
    lookup.set_defaults(func=cmd_tags_lookup)
    commands.add_parser("version", help="print the version").set_defaults(
        func=cmd_version, needs_config=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(args.verbose)
    if not getattr(args, "needs_config", True):
        return int(args.func(None, args))
    try:
        settings = load_settings(resolve_config_path(args.config))
    except ConfigError as exc:
        print(f"flipturn-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(settings, args))
    except KeyboardInterrupt:
        return EXIT_OK
