"""Keeps each charger's Local Authorization List equal to the synced Authorized access ids.

The decisions are :mod:`gateway.tags.local_list`'s pure functions; this driver sends their CALLs
through the charger's one CALL slot with :class:`gateway.net.runner.CallRunner` (the queue cloud
CALLs, reservations and the site guard share; the runner paces the entries and validates the
answers against the schemas) and writes rows.

When a round runs (``[local_list] push = true`` only; one round at a time per charger, at most
``concurrency`` chargers at once):

- a charger connects, or sends a BootNotification;
- a sync changed the Authorized access ids (``after_sync``).

A round reads the charger's capacity (1.6 GetConfiguration, 2.0.1 GetVariables) and list version
(GetLocalListVersion), plans, and sends the SendLocalList CALLs one after the other. The state is
recorded only once every CALL was accepted, so an interrupted round leaves the charger at a
version the gateway never recorded, and the next round sends the list in full.

Left alone, and remembered in the store: a charger that refuses (CALLERROR NotSupported /
NotImplemented, status NotSupported or Failed, 1.6 list version -1), and a charger whose cloud sent
a SendLocalList itself (the cloud owns that list from then on).

Tag usage (the order of a truncated list) is learned from Authorize, StartTransaction and
TransactionEvent CALLs and written in batches every ``usage_flush_s``, never per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

from prometheus_client import CollectorRegistry, Counter

from gateway.core.limits import LimitedLog, LogLimiter
from gateway.core.program import Reply, Request
from gateway.errors import (
    ChargerNotConnected,
    ChargerQueueFull,
    ChargerTimeout,
    GatewayError,
    StoreError,
)
from gateway.net.runner import CallRunner
from gateway.ocpp.frames import Call, CallError, CallResult
from gateway.store.engine import LocalListRow, Store
from gateway.tags import local_list
from gateway.tags.list_program import End, Planned, ReadProgram, SendProgram, make_plan
from gateway.tags.local_list import Capacity, Entry, Sent
from gateway.tags.rules import normalise

if TYPE_CHECKING:
    from gateway.net.hub import Hub
    from gateway.net.session import ChargerSession

__all__ = ["LocalListPusher"]

log = logging.getLogger(__name__)

USAGE_ACTIONS: Final = frozenset({"Authorize", "StartTransaction", "TransactionEvent"})
REORDER_AFTER_S: Final = 60.0
SETTLE_S: Final = 5.0  # after a connect or BootNotification, before the charger is asked
# List entries sent per second over all chargers. Unpaced, 100 chargers x 10,000 tags took 1.6 s
# of which the push held the event loop ~0.8 s, and the other chargers' relayed p99 rose 1.8x
# (docs/benchmarks.md); paced, the same push spreads over ~10 s.
PUSH_ENTRIES_PER_S: Final = 100_000.0  # a truncated list follows new usage at most this often
# Bounded memory: a plan of 10,000 tags holds ~3 MB of payloads, a snapshot ~1.5 MB of entries.
_SNAPSHOT_CACHE: Final = 4
_PLAN_CACHE: Final = 4


# Control flow inside one push round, caught in ``_push``; in the tree like every exception here.
class _Refused(GatewayError):
    """The charger does not take a local list from us (the message says why)."""


class _Skip(GatewayError):
    """This round cannot go on (no answer, an odd answer); the next trigger tries again."""


def _family(version: str) -> str:
    return "1.6" if version == "1.6" else "2.0.1"


class LocalListPusher:
    """Session hook (usage, BootNotification) and charger watcher (connect, cloud SendLocalList).

    Register it with the hub as a watcher always (so cloud ownership is known even with push off)
    and as a session hook only with push on (then Authorize/Start/TransactionEvent are observed).
    """

    charger_actions: frozenset[str] = USAGE_ACTIONS | {"BootNotification"}
    cloud_actions: frozenset[str] = frozenset()
    cloud_calls: frozenset[str] = frozenset({"SendLocalList"})

    def __init__(
        self,
        store: Store,
        *,
        push: bool,
        max_entries: int = 0,
        registry: CollectorRegistry | None = None,
        usage_flush_s: float = 60.0,
        concurrency: int = 16,
        settle_s: float = SETTLE_S,
        entries_per_s: float = PUSH_ENTRIES_PER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.push = push
        self._store = store
        self._max_entries = max_entries
        self._usage_flush_s = usage_flush_s
        self._clock = clock
        self._settle_s = settle_s
        self._runner = CallRunner(per_s=entries_per_s)  # one entry budget for every charger
        self._closed = False
        self._delayed: dict[str, asyncio.TimerHandle] = {}
        self._hub: Hub | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._states: dict[str, LocalListRow] = {}
        self._usage: dict[str, tuple[float, str | None]] = {}
        self._usage_dirty: dict[str, tuple[float, str | None]] = {}
        self._usage_changes = 0
        self._access: list[tuple[str, str, str]] | None = None
        self._access_digest: str | None = None
        self._generation = 0
        self._desired: dict[str, tuple[int, int, float, asyncio.Future[tuple[Entry, ...]]]] = {}
        self._plans: dict[tuple[Any, ...], asyncio.Future[Planned]] = {}
        self._snapshots: dict[str, frozenset[Entry]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._warned_disabled: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._pushes = (
            Counter(
                "flipturn_gateway_local_list_pushes",
                "SendLocalList CALLs the gateway sent to chargers, by result",
                ["result"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, hub: Hub) -> None:
        """Load the persisted states (and usage); start the usage writer when pushing."""
        self._hub = hub
        self._states = {row.charger_id: row for row in await self._store.local_lists()}
        if self.push:
            self._usage = await self._store.tag_usage()
            self._flusher = asyncio.create_task(self._flush_loop())

    async def close(self) -> None:
        """Stop rounds and write the usage not yet written."""
        self._closed = True
        for handle in self._delayed.values():
            handle.cancel()
        tasks = [t for t in (self._flusher, *self._running.values(), *self._tasks) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self.flush_usage()

    # --- what the API shows ----------------------------------------------------------------

    def describe(self, charger_id: str) -> dict[str, Any]:
        """``localList`` of ``/api/chargers/{id}``: owner, version, entries, truncated."""
        state = self._states.get(charger_id)
        if state is None:
            return {"owner": "none", "version": None, "entries": 0, "truncated": False}
        owner = state.owner
        if state.refused is not None or (owner == "gateway" and not self.push):
            owner = "none"
        return {
            "owner": owner,
            "version": state.version,
            "entries": state.entries,
            "truncated": state.truncated,
        }

    def refusal(self, charger_id: str) -> str | None:
        """Why the gateway leaves this charger's list alone after it refused, if it did."""
        state = self._states.get(charger_id)
        return state.refused if state is not None else None

    # --- session hook ----------------------------------------------------------------------

    async def on_charger_call(self, session: ChargerSession, call: Call) -> None:
        """Note who presented which tag; a BootNotification re-checks the charger's list."""
        if call.action == "BootNotification":
            self.trigger(session.charger_id, self._settle_s)  # once the boot has been answered
            return
        presented = local_list.presented(session.version, call.action, call.payload)
        if presented is None:
            return
        tag, token_type = presented
        key = normalise(tag)
        value = (self._clock(), token_type or (self._usage.get(key, (0.0, None))[1]))
        self._usage[key] = self._usage_dirty[key] = value
        self._usage_changes += 1

    async def on_cloud_call_answered(
        self, session: ChargerSession, call: Call, answer: CallResult | CallError
    ) -> None:
        return None

    async def gate(
        self, session: ChargerSession, call: Call, auth_info: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        return auth_info

    # --- charger watcher -------------------------------------------------------------------

    def charger_attached(self, session: ChargerSession) -> None:
        # Not at once: a charger that just connected usually sends its BootNotification first,
        # and some refuse CSMS requests until it is answered.
        self.trigger(session.charger_id, self._settle_s)

    def cloud_call(self, session: ChargerSession, call: Call) -> None:
        """The cloud sends SendLocalList: from now on the cloud owns this charger's list.

        Runs before the CALL is queued, with no await: a round checks the owner right before
        queueing each of its CALLs, so none of ours goes after the cloud's.
        """
        cid = session.charger_id
        state = self._states.get(cid)
        body = call.payload
        number = body.get("listVersion", body.get("versionNumber"))
        items = body.get("localAuthorizationList")
        entries = state.entries if state is not None else 0
        if body.get("updateType") == "Full":
            entries = len(items) if isinstance(items, list) else 0
        row = LocalListRow(
            cid,
            "cloud",
            number if isinstance(number, int) else None,
            entries,
            False,
            None,
            None,
            self._clock(),
        )
        if state is None or state.owner != "cloud":
            log.warning(
                "%s: the cloud sent SendLocalList; it owns this charger's local authorization"
                " list now, and the gateway no longer pushes to it",
                cid,
            )
        self._states[cid] = row
        self._spawn(self._store.put_local_list(row), "recording the cloud's local list")

    # --- triggers --------------------------------------------------------------------------

    def trigger(self, charger_id: str, delay_s: float = 0.0) -> None:
        """Run a round for ``charger_id`` (after ``delay_s``), or again once the running one ends."""
        if not self.push or self._closed:
            return
        if delay_s > 0:
            if charger_id not in self._delayed:  # one waiting trigger per charger is enough
                loop = asyncio.get_running_loop()
                self._delayed[charger_id] = loop.call_later(
                    delay_s, self._delayed_trigger, charger_id
                )
            return
        if charger_id in self._running:
            self._again.add(charger_id)
            return
        task = asyncio.create_task(self._run(charger_id))
        self._running[charger_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._running.get(charger_id) is t:
                del self._running[charger_id]
            if not t.cancelled() and t.exception() is not None:
                log.error("%s: local list push failed", charger_id, exc_info=t.exception())

        task.add_done_callback(done)

    def _delayed_trigger(self, charger_id: str) -> None:
        self._delayed.pop(charger_id, None)
        self.trigger(charger_id)

    async def after_sync(self) -> None:
        """After a successful sync: push to every connected charger if the Authorized ids changed."""
        if not self.push:
            return
        rows = await self._store.authorized_access_ids()
        name = await asyncio.to_thread(_rows_digest, rows)
        changed = name != self._access_digest
        self._set_access(rows, name)
        if not changed or self._hub is None:
            return
        for charger_id, session in list(self._hub.sessions.items()):
            if session.connected:
                self.trigger(charger_id)

    async def idle(self) -> None:
        """Wait until no round runs or waits to run (tests, benchmarks)."""
        while self._running or self._delayed:
            if not self._running:
                await asyncio.sleep(0.01)  # a delayed trigger (settle_s) is still due
                continue
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    # --- one round -------------------------------------------------------------------------

    async def _run(self, charger_id: str) -> None:
        try:
            while True:
                self._again.discard(charger_id)
                async with self._slots:
                    await self._round(charger_id)
                if charger_id not in self._again:
                    return
        finally:
            if all(t is asyncio.current_task() for t in self._running.values()):
                self._plans.clear()  # the last round ended: its payloads are not needed now

    def _left_alone(self, charger_id: str) -> bool:
        state = self._states.get(charger_id)
        return state is not None and (state.owner == "cloud" or state.refused is not None)

    async def _round(self, charger_id: str) -> None:
        session = self._hub.get(charger_id) if self._hub is not None else None
        if session is None or not session.connected or self._left_alone(charger_id):
            return
        try:
            read = await self._read(session)
            capacity, charger_version = read.capacity, read.list_version
            if capacity.enabled is False and charger_id not in self._warned_disabled:
                self._warned_disabled.add(charger_id)
                log.warning(
                    "%s: the charger's local authorization list is disabled"
                    " (LocalAuthListEnabled / LocalAuthListCtrlr.Enabled); pushing it anyway",
                    charger_id,
                )
            family = _family(session.version)
            state = self._states.get(charger_id)
            last = await self._last_sent(state)
            planned = await self._plan(family, capacity, charger_version, last, state)
            if not planned.plan.steps:
                if state is not None and state.truncated != planned.plan.truncated:
                    await self._record(charger_id, planned)
                return
            retry = await self._send(session, planned)
            if retry:  # a Differential failed: send the whole list (1.6 §5.15)
                version = max(charger_version, planned.plan.final_version)
                planned = await self._plan(family, capacity, version, None, None)
                if await self._send(session, planned, retried=True):
                    raise _Skip("the charger refused the list again")
            await self._record(charger_id, planned)
        except _Refused as exc:
            await self._refuse(charger_id, str(exc))
        except _Skip as exc:
            log.info("%s: local list not pushed this time: %s", charger_id, exc)
        except ChargerNotConnected:
            return
        except (ChargerTimeout, ChargerQueueFull) as exc:
            log.info("%s: local list not pushed this time: %s", charger_id, exc)

    async def _read(self, session: ChargerSession) -> ReadProgram:
        """The charger's capacity and list version (raises like :meth:`_send`)."""
        program = ReadProgram(session.version)
        await self._runner.run(session, program)
        if program.end is not End.DONE:
            self._stop(session.charger_id, program.end, program.reason)
        return program

    async def _send(
        self, session: ChargerSession, planned: Planned, *, retried: bool = False
    ) -> bool:
        """Send every step; True if a Differential failed and a Full update should follow."""
        cid = session.charger_id
        program = SendProgram(planned.plan.steps, planned.payloads, planned.texts, retried)
        counted = 0

        def still_ours(request: Request) -> bool:
            # Right before queueing each step (after its pacing): a CALL of ours queued after
            # the cloud's SendLocalList would undo the cloud's list.
            return not self._left_alone(cid)

        async def count(request: Request, reply: Reply) -> None:
            nonlocal counted
            for result in program.results[counted:]:
                self._count(result)
            counted = len(program.results)

        await self._runner.run(session, program, before=still_ours, after=count)
        if program.end is None:
            raise _Skip("the cloud took over the list")
        if program.end is End.DONE:
            return False
        if program.end is End.FULL:
            log.info("%s: %s; sending the list in full", cid, program.reason)
            return True
        self._stop(cid, program.end, program.reason)

    @staticmethod
    def _stop(cid: str, end: End | None, reason: str) -> NoReturn:
        """The exception a program's end is, for ``_round`` to act on."""
        if end is End.REFUSED:
            raise _Refused(reason)
        if end is End.TIMEOUT:
            raise ChargerTimeout(f"{cid} did not answer")
        if end is End.QUEUE_FULL:
            raise ChargerQueueFull(f"charger queue full: not sent to {cid}")
        if end is End.GONE:
            raise ChargerNotConnected(cid)
        raise _Skip(reason)

    async def _record(self, charger_id: str, planned: Planned) -> None:
        result, name = planned.plan, planned.digest
        body = None
        if name not in self._snapshots:
            body = planned.body
            self._cache_snapshot(name, planned.entries)
        row = LocalListRow(
            charger_id,
            "gateway",
            result.final_version,
            len(result.entries),
            result.truncated,
            name,
            None,
            self._clock(),
        )
        if self._left_alone(charger_id):
            return  # the cloud took over while the last answer was on its way
        self._states[charger_id] = row
        await self._store.put_local_list(row, body)
        if result.steps:
            log.info(
                "%s: local authorization list version %d, %d entries%s (%d CALLs)",
                charger_id,
                result.final_version,
                len(result.entries),
                ", truncated to capacity" if result.truncated else "",
                len(result.steps),
            )

    async def _refuse(self, charger_id: str, reason: str) -> None:
        state = self._states.get(charger_id)
        row = LocalListRow(
            charger_id,
            "none",
            state.version if state is not None else None,
            state.entries if state is not None else 0,
            state.truncated if state is not None else False,
            None,
            reason,
            self._clock(),
        )
        self._states[charger_id] = row
        # A charger reconnecting in a loop is refused each time: the hub's limiter holds it.
        limit = self._hub.log_limit if self._hub is not None else LogLimiter()
        lines = LimitedLog(log, limit, charger_id)
        lines.warning(time.monotonic(), "not pushing a local authorization list", "%s", reason)
        await self._store.put_local_list(row)

    def _count(self, result: str) -> None:
        if self._pushes is not None:
            self._pushes.labels(result=result).inc()

    # --- the lists -------------------------------------------------------------------------

    def _set_access(self, rows: list[tuple[str, str, str]], name: str) -> None:
        if name != self._access_digest:
            self._access, self._access_digest = rows, name
            self._generation += 1

    async def _desired_list(self, family: str) -> tuple[tuple[int, int], tuple[Entry, ...]]:
        """The desired list of a version family and a key naming it (cached, built once)."""
        if self._access is None:
            rows = await self._store.authorized_access_ids()
            if self._access is None:
                self._set_access(rows, await asyncio.to_thread(_rows_digest, rows))
        access = self._access
        assert access is not None
        now = self._clock()
        cached = self._desired.get(family)
        if cached is not None:
            generation, changes, built_at, task = cached
            if generation == self._generation and (
                changes == self._usage_changes or now - built_at < REORDER_AFTER_S
            ):
                return (generation, changes), await asyncio.shield(task)
        # Built in a thread: 10,000 tags take tens of ms, which would stall every relayed frame.
        task = asyncio.ensure_future(
            asyncio.to_thread(local_list.desired_entries, family, access, dict(self._usage))
        )
        key = (self._generation, self._usage_changes)
        self._desired[family] = (*key, now, task)
        return key, await asyncio.shield(task)

    async def _plan(
        self,
        family: str,
        capacity: Capacity,
        charger_version: int,
        last: Sent | None,
        state: LocalListRow | None,
    ) -> Planned:
        """The plan for one charger; chargers in the same situation share one (built once)."""
        desired_key, desired = await self._desired_list(family)
        key = (
            family,
            desired_key,
            capacity,
            charger_version,
            None if last is None else (last.version, state.snapshot if state else None),
        )
        task = self._plans.get(key)
        if task is None:
            task = asyncio.ensure_future(
                asyncio.to_thread(
                    make_plan, family, desired, capacity, charger_version, last, self._max_entries
                )
            )
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = task
        return await asyncio.shield(task)  # shared: one round cancelled must not cancel it

    async def _last_sent(self, state: LocalListRow | None) -> Sent | None:
        if state is None or state.owner != "gateway" or state.snapshot is None:
            return None
        if state.version is None:
            return None
        entries = self._snapshots.get(state.snapshot)
        if entries is None:
            body = await self._store.local_list_snapshot(state.snapshot)
            if body is None:
                return None
            entries = await asyncio.to_thread(
                lambda: local_list.entries_from_body(zlib.decompress(body))
            )
            self._cache_snapshot(state.snapshot, entries)
        return Sent(state.version, entries)

    def _cache_snapshot(self, name: str, entries: frozenset[Entry]) -> None:
        if len(self._snapshots) >= _SNAPSHOT_CACHE:
            self._snapshots.pop(next(iter(self._snapshots)))
        self._snapshots[name] = entries

    # --- usage ------------------------------------------------------------------------------

    async def flush_usage(self) -> None:
        """Write the usage noted since the last write, in one transaction."""
        if not self._usage_dirty:
            return
        dirty, self._usage_dirty = self._usage_dirty, {}
        try:
            await self._store.record_tag_usage([(k, t, kind) for k, (t, kind) in dirty.items()])
        except StoreError:
            for key, value in dirty.items():
                self._usage_dirty.setdefault(key, value)
            raise

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._usage_flush_s)
            try:
                await self.flush_usage()
            except StoreError:
                log.exception("could not write tag usage; will retry")

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", what, exc_info=t.exception())

        task.add_done_callback(done)


def _rows_digest(rows: list[tuple[str, str, str]]) -> str:
    text = "\n".join("\t".join(row) for row in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()
