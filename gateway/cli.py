"""``flipturn-gateway [--config PATH] COMMAND [--config PATH]``.

Exit codes: 0 ok, 2 bad config or usage, 1 failure. Only ``run`` creates the store; every other
command uses the store at ``store.path`` (the service's, with the shipped config) and fails
(exit 1, naming the path) if there is none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from gateway import __version__, checks, logs
from gateway.config import Settings, load_settings, redacted, resolve_config_path
from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:  # the store is imported by the commands that need it
    from gateway.store.engine import Store

__all__ = ["main"]

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


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
    from gateway.net.tls import check_tls_files

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
        gateway = Gateway(settings, config_path=args.config_path)
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


def _refused(settings: Settings) -> bool:
    """Print the start-up refusals and warnings (stderr); True if the command must stop."""
    for warning in checks.warnings(settings):
        print(f"flipturn-gateway: warning: {warning}", file=sys.stderr)
    refused = checks.refusals(settings)
    for finding in refused:
        print(f"flipturn-gateway: invalid configuration: {finding}", file=sys.stderr)
    return bool(refused)


def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store.engine import Store
    from gateway.tags.sync import FlipturnClient, sync_once

    api_key = settings.flipturn.api_key.get_secret_value()
    if not api_key:
        print("flipturn-gateway: flipturn.api_key is not set; nothing to sync", file=sys.stderr)
        return EXIT_FAILURE

    async def main() -> int:
        store = await Store.open(settings.store.path, create=False)
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

    from gateway.store.engine import Store
    from gateway.tags.cache import TagCache

    async def main() -> int:
        store = await Store.open(settings.store.path, create=False)
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


def cmd_store_check(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store.engine import check_file

    try:
        problems = check_file(settings.store.path)
    except GatewayError as exc:
        print(f"flipturn-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if problems:
        print(f"store {settings.store.path} failed PRAGMA integrity_check:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"store {settings.store.path}: integrity_check ok")
    return EXIT_OK


def cmd_store_backup(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store.engine import backup_file

    try:
        size = backup_file(settings.store.path, args.path)
    except (GatewayError, OSError) as exc:
        print(f"flipturn-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps({"source": settings.store.path, "path": args.path, "bytes": size}))
    return EXIT_OK


def cmd_support_bundle(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.support import write_bundle

    try:
        written = write_bundle(settings, Path(args.path), args.config_path)
    except GatewayError as exc:
        print(f"flipturn-gateway: support-bundle: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not written["gatewayRunning"]:
        print(
            "flipturn-gateway: the gateway did not answer on its local API; the bundle says so",
            file=sys.stderr,
        )
    print(json.dumps(written))
    return EXIT_OK


def cmd_version(settings: Settings | None, args: argparse.Namespace) -> int:
    print(__version__)
    return EXIT_OK


def _with_store(settings: Settings, work: Callable[[Store], Coroutine[Any, Any, int]]) -> int:
    """Run ``work`` on the existing store (never creating one); exit 1 naming what failed."""
    from gateway.store.engine import Store

    async def main() -> int:
        store = await Store.open(settings.store.path, create=False)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return _run_async(main)
    except GatewayError as exc:
        print(f"flipturn-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_outbox_dead(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.api.outbox import dead_letter_json, dead_letter_table

    async def work(store: Store) -> int:
        rows = await store.dead_letter_rows(limit=1_000_000)
        if args.json:
            for row in rows:
                print(json.dumps(dead_letter_json(row)))
        elif rows:
            print(dead_letter_table(rows))
        else:
            print("no dead letters", file=sys.stderr)
        return EXIT_OK

    return _with_store(settings, work)


def cmd_outbox_requeue(settings: Settings, args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        if args.all:
            seqs = [row.seq for row in await store.dead_letter_rows(limit=1_000_000)]
        else:
            seqs = [args.id]
        for seq in seqs:  # oldest first: each goes back under its original position
            if await store.requeue_dead_letter(seq) is None:
                print(f"flipturn-gateway: no dead letter {seq}", file=sys.stderr)
                return EXIT_FAILURE
        print(f"requeued {len(seqs)}")
        return EXIT_OK

    return _with_store(settings, work)


def cmd_outbox_drop(settings: Settings, args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        if not await store.drop_dead_letter(args.id):
            print(f"flipturn-gateway: no dead letter {args.id}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"dropped {args.id}")
        return EXIT_OK

    return _with_store(settings, work)


def _common(*, top: bool) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    default = None if top else argparse.SUPPRESS
    common.add_argument("--config", metavar="PATH", default=default, help="TOML config file")
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help='debug logging (as log.level = "debug")',
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flipturn-gateway",
        description="Flipturn Edge Gateway: local OCPP proxy",
        parents=[_common(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = _common(top=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        parent: Any, name: str, summary: str, func: Any = None, **defaults: Any
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=summary, description=summary, parents=[sub]
        )
        if func is not None:
            p.set_defaults(func=func, **defaults)
        return p

    command(commands, "run", "run the gateway until SIGTERM/SIGINT (SIGHUP reloads)", cmd_run)
    command(
        commands,
        "check-config",
        "validate the config and print it with secrets redacted",
        cmd_check_config,
    )
    command(
        commands,
        "sync",
        "sync access ids and vehicles from the Flipturn API now; print the counts",
        cmd_sync,
    )
    tags = command(commands, "tags", "inspect the access-id cache")
    tag_commands = tags.add_subparsers(dest="tags_command", metavar="COMMAND", required=True)
    lookup = command(
        tag_commands,
        "lookup",
        "print the cached record and the offline decision for TAG",
        cmd_tags_lookup,
    )
    lookup.add_argument("tag", metavar="TAG")
    outbox = command(commands, "outbox", "dead letters: list, requeue or drop them")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", metavar="COMMAND", required=True)
    dead = command(
        outbox_commands,
        "dead",
        "list the messages the cloud refused for good (a table, or --json lines)",
        cmd_outbox_dead,
    )
    dead.add_argument("--json", action="store_true", help="one JSON object per line")
    requeue = command(
        outbox_commands,
        "requeue",
        "put a dead letter (or --all) back at the head of its charger's queue",
        cmd_outbox_requeue,
    )
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("id", metavar="ID", type=int, nargs="?", help="the dead letter's id")
    which.add_argument("--all", action="store_true", help="every dead letter, oldest first")
    drop = command(outbox_commands, "drop", "delete a dead letter for good", cmd_outbox_drop)
    drop.add_argument("id", metavar="ID", type=int)
    store = command(commands, "store", "check or back up the SQLite store")
    store_commands = store.add_subparsers(dest="store_command", metavar="COMMAND", required=True)
    command(
        store_commands,
        "check",
        "run SQLite's integrity check on the store (exit 1 if it fails)",
        cmd_store_check,
    )
    backup = command(
        store_commands,
        "backup",
        "write a consistent copy of the store to PATH, also while the gateway runs",
        cmd_store_backup,
    )
    backup.add_argument("path", metavar="PATH")
    bundle = command(
        commands,
        "support-bundle",
        "write one .tar.gz for support: config (redacted), API answers, logs, store check",
        cmd_support_bundle,
    )
    bundle.add_argument("path", metavar="PATH", help="the .tar.gz to write")
    command(commands, "version", "print the version", cmd_version, needs_config=False)
    return parser


# Commands refused (exit 2) on the checks of gateway.checks; the others only warn.
_CHECKED = frozenset({cmd_run, cmd_check_config})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "needs_config", True):
        return int(args.func(None, args))
    try:
        args.config_path = resolve_config_path(args.config)
        settings = load_settings(args.config_path)
    except ConfigError as exc:
        print(f"flipturn-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.verbose:
        settings = settings.model_copy(
            update={"log": settings.log.model_copy(update={"level": "debug"})}
        )
    logs.configure(settings.log.level, settings.log.format)
    if args.func in _CHECKED and _refused(settings):
        return EXIT_USAGE
    try:
        return int(args.func(settings, args))
    except KeyboardInterrupt:
        return EXIT_OK
