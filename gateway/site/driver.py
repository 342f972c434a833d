"""The site power guard's driver: the pure core (``gateway.site``) applied to the live chargers.

What it reads, without work per relayed frame:

- the connected chargers and their cloud links, from the hub's sessions (``connected``,
  ``upstream_connected``), once per step: a link's change is timed by the step that sees it
  (at most :data:`rounds.ROUND_EVERY_S` late);
- transactions and MeterValues from the depot view (``gateway.core.depot``), which already folds
  them: a start or stop wakes the guard at once (``DepotView.on_transactions``); a reading is
  read once, in the next step, by its count (``Transaction.readings``);
- the cloud's Set/ClearChargingProfile, told synchronously before the relay queues them (it is a
  :class:`~gateway.net.host.ChargerWatcher`): a station maximum the cloud sets bounds the cap
  (``profiles.cloud_station_max_a``), and one that touches the station maximum makes the gateway
  send its cap again after it (``sequencer.follow_cloud``; the relay queues the cloud's CALL
  first, so the gateway's follows it).

What it does: one :meth:`SiteGuard.step` (a round at once after a start, a stop or an answer,
else once a second) runs the engaged/released table, lending and the round, and starts one
:class:`~gateway.site.program.CapProgram` per change on :class:`gateway.net.runner.CallRunner`.
A charger that connects gets its cap again in :meth:`SiteGuard.charger_attached`, before the
hub tells any other watcher, so its cap is the first CALL the gateway queues for it.

What it keeps: each charger's ``sequencer.record`` with its capabilities and the cloud's maximum,
and the engaged flag, in the store (``gateway.store.site``), written when they change (never per
frame); read back at start-up (``sequencer.restore``) so that caps survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from gateway.config import SiteSettings
from gateway.core.depot import DepotView
from gateway.metrics import SiteFigures
from gateway.net.runner import CallRunner, CallTarget
from gateway.ocpp.frames import Call
from gateway.site import guard as table
from gateway.site import lending, profiles, rounds, sequencer
from gateway.site.profiles import Capabilities
from gateway.site.program import CapProgram
from gateway.site.sequencer import Slot
from gateway.store.site import SiteTable

__all__ = ["GuardedSession", "SiteGuard"]

log = logging.getLogger(__name__)

CLOUD_CALLS: Final = frozenset({"SetChargingProfile", "ClearChargingProfile"})


class GuardedSession(CallTarget, Protocol):
    """What the guard reads of a charger's session (``ChargerSession``)."""

    @property
    def connected(self) -> bool: ...
    @property
    def upstream_connected(self) -> bool: ...


@dataclass(slots=True)
class _Tx:
    order: int  # the site's start order
    readings: int = 0  # the depot's reading count last read
    draw_a: float | None = None
    phases: int | None = None


class SiteGuard:
    """The site power guard of one gateway (only built when ``site.max_current_a`` > 0)."""

    cloud_calls: frozenset[str] = CLOUD_CALLS

    def __init__(
        self,
        site: SiteSettings,
        store: SiteTable,
        depot: DepotView,
        *,
        runner: CallRunner | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self._store = store
        self._depot = depot
        self._runner = runner or CallRunner()
        self._clock = clock
        self._wall = wall_clock
        self._sessions: Mapping[str, GuardedSession] = {}
        self.state = table.GuardState.RELEASED
        self.slots: dict[str, Slot] = {}
        self.caps: dict[str, Capabilities] = {}  # what each charger said it takes
        self.cloud_max: dict[str, int] = {}  # the station maximum the cloud set
        self._read: set[str] = set()  # chargers whose capabilities were read this connection
        self._order: dict[str, int] = {}  # connection order
        self._links: dict[str, table.Link] = {}
        self._txs: dict[str, dict[str, _Tx]] = {}  # charger → transaction key → its state
        self._lending: dict[str, lending.Lend] = {}
        self._next = 0  # connection and start order counter
        self._inflight: dict[str, int] = {}  # charger → the token of its program in flight
        # Chargers whose cap was in flight when the cloud touched the station maximum: the
        # cloud's CALL is queued after it and may remove it, so the cap goes again once answered.
        self._follow: set[str] = set()
        self._token = 0
        self._last_round: float | None = None
        self._urgent = True
        self.changes: Counter[str] = Counter()  # profile CALLs by result
        self._saved: dict[str, str] = {}  # what the store holds, per charger
        self._saved_engaged: bool | None = None
        self._wake = asyncio.Event()
        self._started: float | None = None  # when start() ran (the release hold-off after it)
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        depot.on_transactions = self._transactions_changed

    # --- set-up ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @property
    def engaged(self) -> bool:
        return self.state is table.GuardState.ENGAGED

    async def load(self) -> None:
        """Read back what the chargers hold and whether the guard was engaged."""
        records, engaged = await self._store.site_records()
        for charger_id, text in records.items():
            try:
                data = json.loads(text)
                slot = sequencer.restore(data)
            except (ValueError, TypeError, AttributeError) as exc:
                log.error("site guard: %s: stored record ignored: %s", charger_id, exc)
                continue
            self.slots[charger_id] = slot
            caps = data.get("caps")
            if isinstance(caps, dict) and caps.get("rateUnit") in ("A", "W"):
                level = caps.get("stackLevel")
                if isinstance(level, int) and not isinstance(level, bool) and level >= 0:
                    self.caps[charger_id] = Capabilities(caps["rateUnit"], level)
            cloud = data.get("cloudMaxA")
            if isinstance(cloud, int) and not isinstance(cloud, bool) and cloud >= 0:
                self.cloud_max[charger_id] = cloud
            self._saved[charger_id] = text
        self._saved_engaged = engaged
        if engaged:
            self.state = table.GuardState.ENGAGED
        if self.slots:
            log.info(
                "site guard: %d chargers restored, %s",
                len(self.slots),
                "engaged" if engaged else "released",
            )

    def start(self, sessions: Mapping[str, GuardedSession]) -> None:
        """Run the steps (``sessions``: the hub's, read each step)."""
        self._sessions = sessions
        self._started = self._now()
        self.step(self._started)  # the state is current from the start (mode always: engaged)
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._tasks] if t), return_exceptions=True)
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        await self._save()  # the last answers

    async def _loop(self) -> None:
        # A timer sets the event rather than asyncio.wait_for with a timeout: on Python 3.11 a
        # cancellation arriving as that timeout expires is lost (the loop would never end).
        loop = asyncio.get_running_loop()
        while True:
            timer = loop.call_later(rounds.ROUND_EVERY_S, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            try:
                self.step(self._now())
            except Exception:
                log.exception("site guard: a step failed")

    # --- what it is told -------------------------------------------------------------------

    def _transactions_changed(self, charger_id: str) -> None:
        if charger_id in self.slots:
            self._urgent = True
            self._wake.set()

    def charger_attached(self, session: Any) -> None:
        """A charger connected: it counts at what it holds; its cap goes again at once."""
        cid, now = session.charger_id, self._now()
        slot = self.slots.get(cid)
        if slot is not None and slot.busy:
            # A new connection replaced one with a CALL in flight: that CALL gets no answer.
            self.slots = sequencer.disconnected(self.slots, cid, now)
        self.slots = sequencer.connected(self.slots, cid, self.site.charger_max_a(cid), now)
        self._order[cid] = self._next = self._next + 1
        self._links[cid] = table.Link(up=bool(session.upstream_connected), since=now)
        self._read.discard(cid)
        self._inflight.pop(cid, None)
        self._follow.discard(cid)
        self._urgent = True
        try:
            self.step(now, attached=session)
        except Exception:  # the charger is served whatever the guard's step does
            log.exception("site guard: a step failed")

    def cloud_call(self, session: Any, call: Call) -> None:
        """The cloud sends Set/ClearChargingProfile to a charger (not yet queued)."""
        cid, version = session.charger_id, session.version
        before = self.cloud_max.get(cid)
        if call.action == "SetChargingProfile":
            found = profiles.cloud_station_max_a(
                version, call.payload, voltage_v=self.site.voltage_v, phases=None
            )
            if found is not None:
                self.cloud_max[cid] = found
        elif profiles.touches_station_max(version, call.action, call.payload):
            self.cloud_max.pop(cid, None)
        if self.cloud_max.get(cid) != before and cid in self.slots:
            self._persist()
        if profiles.touches_station_max(version, call.action, call.payload) and self.engaged:
            slot = self.slots.get(cid)
            if slot is not None and slot.busy:
                self._follow.add(cid)
            self.slots = sequencer.follow_cloud(self.slots, cid)
            self._urgent = True
            self._wake.set()

    # --- one step --------------------------------------------------------------------------

    def step(self, now: float, *, attached: Any = None) -> None:
        """Links, the engaged state, transactions and lending, then a round if one is due."""
        sessions = dict(self._sessions)
        if attached is not None:
            sessions[attached.charger_id] = attached
        self._follow_connections(sessions, now)
        self._follow_links(sessions, now)
        self._follow_transactions(now)
        if not rounds.round_due(self._last_round, now, urgent=self._urgent):
            return
        self._urgent = False
        self._last_round = now
        chargers = [
            rounds.Charger(
                id=cid,
                connected=self._order.get(cid, 0),
                transactions={key: tx.order for key, tx in self._txs.get(cid, {}).items()},
                cloud_max_a=self.cloud_max.get(cid),
            )
            for cid, slot in self.slots.items()
            if slot.connected
        ]
        result = rounds.run_round(
            self.slots,
            chargers,
            {k: v for k, v in self._lending.items() if v.ceiling_a is not None},
            limit_a=self.site.max_current_a,
            min_a=self.site.min_current_a,
            now=now,
            engaged=self.engaged,
        )
        self.slots = result.slots
        for change in result.changes:
            session = sessions.get(change.charger)
            if session is None:  # cannot happen (connected slots have sessions): count it gone
                self.slots = sequencer.answered(
                    self.slots, change.charger, sequencer.Answer.TIMEOUT, now
                )
                continue
            self._dispatch(session, change)
        if result.changes or self.engaged != self._saved_engaged or attached is not None:
            self._persist()  # what a record holds changed (never on a quiet second)

    def _follow_connections(self, sessions: Mapping[str, Any], now: float) -> None:
        for cid, slot in list(self.slots.items()):
            if not slot.connected:
                continue
            session = sessions.get(cid)
            if session is None or not session.connected:
                self.slots = sequencer.disconnected(self.slots, cid, now)
                self._inflight.pop(cid, None)
                self._follow.discard(cid)
                self._links.pop(cid, None)
                self._txs.pop(cid, None)
                self._urgent = True

    def _follow_links(self, sessions: Mapping[str, Any], now: float) -> None:
        for cid in list(self._links):
            session = sessions.get(cid)
            if session is None or not session.connected:
                del self._links[cid]
                continue
            up = bool(session.upstream_connected)
            if self._links[cid].up != up:
                self._links[cid] = table.Link(up=up, since=now)
        cond = table.condition(
            self._links.values(),
            now,
            mode=self.site.mode,
            engage_after_s=self.site.engage_after_s,
            release_after_s=self.site.release_after_s,
        )
        started = self._started if self._started is not None else now
        if cond is table.Condition.UP_LONG and now - started < self.site.release_after_s:
            # Restarted engaged: no link has been seen up for release_after_s yet, and the
            # chargers that hold caps have not reconnected yet.
            cond = table.Condition.BETWEEN
        before = self.state
        self.state = table.step(before, cond, max_current_a=self.site.max_current_a)
        if self.engaged and before is not table.GuardState.ENGAGED:
            log.warning("site guard engaged: capping the chargers at %d A", self.site.max_current_a)
            self.slots = sequencer.engage(self.slots)
            self._urgent = True
        elif before is table.GuardState.ENGAGED and not self.engaged:
            log.info("site guard released: clearing the chargers' caps")
            self.slots = sequencer.release(self.slots)
            self._lending.clear()
            self._urgent = True

    def _follow_transactions(self, now: float) -> None:
        """Transactions (start order) and their readings (lending), from the depot view."""
        live: set[str] = set()
        for cid, slot in self.slots.items():
            if not slot.connected:
                continue
            view = self._depot.chargers.get(cid)
            txs = self._txs.setdefault(cid, {})
            current = {f"{cid}/{k}": t for k, t in view.transactions.items()} if view else {}
            for key in [k for k in txs if k not in current]:
                del txs[key]
                self._urgent = True
            count = len(current)
            for key, depot_tx in current.items():
                live.add(key)
                tx = txs.get(key)
                if tx is None:
                    self._next += 1
                    tx = txs[key] = _Tx(order=self._next, readings=depot_tx.readings)
                    self._urgent = True
                    found = lending.reading(depot_tx.latest_meter, self.site.voltage_v)
                    if found is not None:
                        tx.draw_a, tx.phases = found.draw_a, found.phases
                    continue
                if depot_tx.readings == tx.readings:
                    continue
                tx.readings = depot_tx.readings
                found = lending.reading(depot_tx.latest_meter, self.site.voltage_v)
                if found is None:
                    continue
                tx.draw_a, tx.phases = found.draw_a, found.phases
                if self.engaged:
                    held = slot.accepted_a if slot.accepted_a is not None else slot.max_a
                    self._lending[key] = lending.observe(
                        self._lending.get(key, lending.Lend()),
                        found.draw_a,
                        held // max(1, count),  # its share of the cap in force
                        self.site.min_current_a,
                    )
        for key in [k for k in self._lending if k not in live]:
            del self._lending[key]

    # --- sending ---------------------------------------------------------------------------

    def _phases(self, cid: str) -> int | None:
        phases = {tx.phases for tx in self._txs.get(cid, {}).values() if tx.phases is not None}
        return max(phases) if phases else None

    def _dispatch(self, session: Any, change: sequencer.Change) -> None:
        cid = change.charger
        self._token += 1
        token = self._inflight[cid] = self._token
        program = CapProgram(
            session.version,
            change,
            self.caps.get(cid),
            read=cid not in self._read,
            now=self._wall(),
            voltage_v=self.site.voltage_v,
            phases=self._phases(cid),
        )
        if change.cap_a is not None:
            self._read.add(cid)
        task = asyncio.ensure_future(self._run(session, program, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, session: Any, program: CapProgram, token: int) -> None:
        try:
            await self._runner.run(session, program)
        finally:
            self._answered(program, token)

    def _answered(self, program: CapProgram, token: int) -> None:
        cid = program.change.charger
        if program.caps is not None and self.caps.get(cid) != program.caps:
            self.caps[cid] = program.caps
        if program.result is not None:
            self.changes[program.result] += 1
            if program.result != "accepted":
                what = "Clear" if program.change.cap_a is None else f"cap {program.change.cap_a} A"
                log.warning("site guard: %s: %s %s", cid, what, program.result)
        if self._inflight.get(cid) != token:
            return  # the charger went away meanwhile: its slot already counts it unanswered
        del self._inflight[cid]
        self.slots = sequencer.answered(self.slots, cid, program.answer, self._now())
        if cid in self._follow:
            self._follow.discard(cid)
            self.slots = sequencer.follow_cloud(self.slots, cid)
        self._urgent = True
        self._wake.set()
        self._persist()

    # --- keeping it ------------------------------------------------------------------------

    def _records(self) -> dict[str, str]:
        out = {}
        for cid, slot in self.slots.items():
            data: dict[str, Any] = sequencer.record(slot)
            caps = self.caps.get(cid)
            if caps is not None:
                data["caps"] = {"rateUnit": caps.rate_unit, "stackLevel": caps.stack_level}
            if cid in self.cloud_max:
                data["cloudMaxA"] = self.cloud_max[cid]
            out[cid] = json.dumps(data, sort_keys=True)
        return out

    def _persist(self) -> None:
        """Write what changed (one writer at a time; a change meanwhile is written after it)."""
        if self._writing is None or self._writing.done():
            self._writing = asyncio.ensure_future(self._save())

    async def _save(self) -> None:
        while True:
            records = self._records()
            changed: dict[str, str | None] = {
                cid: text for cid, text in records.items() if self._saved.get(cid) != text
            }
            engaged = self.engaged if self.engaged != self._saved_engaged else None
            if not changed and engaged is None:
                return
            try:
                await self._store.save_site(changed, engaged, self._wall())
            except Exception:
                log.exception("site guard: cannot save the caps; will retry")
                await asyncio.sleep(1.0)
                continue
            self._saved.update({k: v for k, v in changed.items() if v is not None})
            if engaged is not None:
                self._saved_engaged = engaged

    # --- views -----------------------------------------------------------------------------

    def measured_a(self) -> float:
        return sum(
            tx.draw_a
            for cid, txs in self._txs.items()
            for tx in txs.values()
            if tx.draw_a is not None
        )

    def allocated_a(self) -> int:
        return sequencer.counted_sum(self.slots) if self.engaged else 0

    def describe(self) -> dict[str, Any]:
        """``GET /api/site``."""
        chargers = []
        for cid in sorted(self.slots):
            slot = self.slots[cid]
            txs = self._txs.get(cid, {})
            draws = [tx.draw_a for tx in txs.values() if tx.draw_a is not None]
            chargers.append(
                {
                    "id": cid,
                    "maxA": slot.max_a,
                    "capA": slot.accepted_a,
                    "drawA": round(sum(draws), 1) if draws else None,
                    "transactions": len(txs),
                    "managed": slot.unmanaged_until is None,
                }
            )
        return {
            "maxCurrentA": self.site.max_current_a,
            "mode": self.site.mode,
            "engaged": self.engaged,
            "allocatedA": self.allocated_a(),
            "measuredA": round(self.measured_a(), 1),
            "chargers": chargers,
        }

    def figures(self) -> SiteFigures:
        """The metrics' figures."""
        return SiteFigures(
            limit_a=self.site.max_current_a,
            allocated_a=self.allocated_a(),
            measured_a=self.measured_a(),
            engaged=self.engaged,
            profile_changes=self.changes,
        )
