"""The depot view: what every charger is doing, folded from the frames the gateway sees. No I/O.

The session shows this fold the charger CALLs it parsed (online and offline) and the answers they
got (the cloud's, the gateway's own, and the cloud's answers to replayed CALLs). Per charger it
keeps vendor, model and firmware (BootNotification), connectors with status and error code
(StatusNotification) and the active transactions (1.6 StartTransaction/MeterValues/StopTransaction,
2.0.1/2.1 TransactionEvent).

Cheap on the relay path: the session tests ``action in FOLDED_CALLS`` (a frozenset) and passes the
payload it already parsed. MeterValues only keep a reference to the latest ``meterValue`` list;
it is decoded into energy and power when someone reads the view or it is persisted.

Persistence is the driver's job: :meth:`DepotView.take_dirty` hands over the chargers whose
picture changed (a status, a transaction started or stopped, a cloud id learnt) as records to
write; meter readings alone mark a charger *touched*, written at a slower cadence.

Transactions are keyed by the id the *charger* uses. In 1.6 that is the cloud's id when the cloud
answered StartTransaction, else the gateway's local id; once replay binds the local id to the
cloud's, the view shows the cloud's id (``id``) and ``offline`` turns false. In 2.0.1/2.1 the
charger makes the id; ``offline`` is true from a TransactionEvent the gateway answered itself
until the cloud answers one of that transaction (live or replayed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from gateway.core import txmap
from gateway.core.limits import LimitedLog, LogLimiter

__all__ = [
    "FOLDED_ANSWERS",
    "FOLDED_CALLS",
    "SAMPLED_CALLS",
    "ChargerView",
    "Connector",
    "DepotView",
    "Transaction",
    "decode_meter",
    "sample_key",
]

log = logging.getLogger(__name__)

# Charger CALLs folded when they arrive, and the CALLs whose answer is folded too.
FOLDED_CALLS: Final = frozenset(
    {"BootNotification", "StatusNotification", "MeterValues", "StopTransaction", "TransactionEvent"}
)
FOLDED_ANSWERS: Final = frozenset({"StartTransaction", "TransactionEvent"})

# Charger CALLs of which only the latest per sample_key needs folding (the relay may hold them).
SAMPLED_CALLS: Final = frozenset({"MeterValues", "StatusNotification"})

MAX_CHARGERS: Final = 10_000  # ids beyond this are not folded (memory stays bounded)
MAX_CONNECTORS: Final = 64  # per charger
MAX_TRANSACTIONS: Final = 64  # per charger; the oldest is dropped beyond it
MAX_TEXT: Final = 100  # longest vendor/model/firmware/status/tag kept (OCPP's are 20-50)

ENERGY: Final = "Energy.Active.Import.Register"  # the default measurand (1.6 and 2.0.1)
POWER: Final = "Power.Active.Import"

TxKey = int | str


def _text(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Connector:
    status: str | None
    error_code: str | None
    updated_at: float  # unix time the status or error code last changed (as the gateway saw it)


@dataclass(slots=True)
class Transaction:
    key: TxKey  # the id the charger uses
    connector_id: str | None
    id_tag: str | None
    started_at: str | None  # the charger's timestamp, as sent
    offline: bool
    cloud_id: TxKey | None = None  # 1.6: the cloud's id once replay bound the local one
    meter_start_wh: float | None = None
    register_wh: float | None = None
    power_w: float | None = None
    meter: Any = None  # the latest meterValue list, not decoded yet
    # The latest meterValue list kept for the site guard's lending (never cleared by settle),
    # and how many have arrived: the guard reads a reading once, on its own cadence.
    latest_meter: Any = None
    readings: int = 0

    def settle(self) -> None:
        """Decode the latest meter values into register and power."""
        meter, self.meter = self.meter, None
        if meter is None:
            return
        register, power = decode_meter(meter)
        if register is not None:
            self.register_wh = register
        if power is not None:
            self.power_w = power

    @property
    def energy_wh(self) -> float | None:
        if self.register_wh is None or self.meter_start_wh is None:
            return None
        return max(0.0, self.register_wh - self.meter_start_wh)


@dataclass(slots=True)
class ChargerView:
    version: str = "1.6"
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    connectors: dict[str, Connector] = field(default_factory=dict)
    transactions: dict[TxKey, Transaction] = field(default_factory=dict)
    last_seen_at: float | None = None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _scaled(sample: dict[str, Any], value: float) -> tuple[float, str | None]:
    unit = sample.get("unit")  # 1.6
    uom = sample.get("unitOfMeasure")  # 2.0.1: {unit, multiplier}
    if isinstance(uom, dict):
        unit = uom.get("unit", unit)
        multiplier = uom.get("multiplier")
        if isinstance(multiplier, int) and -6 <= multiplier <= 6:
            value *= 10.0**multiplier
    return value, unit if isinstance(unit, str) else None


def decode_meter(meter_values: object) -> tuple[float | None, float | None]:
    """(energy register in Wh, active import power in W) from a ``meterValue`` list; None if absent.

    Power: the total when one is given, else the sum of the phases.
    """
    register: float | None = None
    power_total: float | None = None
    power_phases: float | None = None
    if not isinstance(meter_values, list):
        return None, None
    for entry in meter_values:
        samples = entry.get("sampledValue") if isinstance(entry, dict) else None
        if not isinstance(samples, list):
            continue
        for sample in samples:
            if not isinstance(sample, dict):
                continue
            measurand = sample.get("measurand", ENERGY)
            if measurand != ENERGY and measurand != POWER:
                continue
            value = _number(sample.get("value"))
            if value is None:
                continue
            value, unit = _scaled(sample, value)
            if unit in ("kWh", "kW"):
                value *= 1000.0
            if measurand == ENERGY:
                if sample.get("phase") is None:
                    register = value
            elif sample.get("phase") is None:
                power_total = value
            else:
                power_phases = (power_phases or 0.0) + value
    return register, power_total if power_total is not None else power_phases


def sample_key(version: str, action: str, payload: dict[str, Any]) -> tuple[Any, ...] | None:
    """The key of a CALL whose fold a later CALL of the same key makes redundant, or None if it
    must be folded itself.

    A MeterValues only sets the latest reading of its connector's transaction; a
    StatusNotification only sets its connector's status — except a 1.6 Available, which also
    ends the transactions still shown on the connector (1.6 §4.9), so it is never skipped.
    """
    key: tuple[Any, ...]
    if action == "MeterValues":
        key = (
            action,
            payload.get("connectorId"),
            payload.get("evseId"),
            payload.get("transactionId"),
        )
    elif action == "StatusNotification":
        if version == "1.6" and payload.get("status") == "Available":
            return None
        key = (action, payload.get("connectorId"), payload.get("evseId"))
    else:
        return None
    try:
        hash(key)  # an id that is an object or array: folded as it is (the fold ignores it)
    except TypeError:
        return None
    return key


class DepotView:
    """Per-charger state folded from frames; knows which chargers changed since the last flush."""

    def __init__(self, *, max_chargers: int = MAX_CHARGERS) -> None:
        self.chargers: dict[str, ChargerView] = {}
        self.dirty: set[str] = set()  # the picture changed: write soon
        self.touched: set[str] = set()  # only meter readings changed: write at a slower cadence
        self._max_chargers = max_chargers
        self._log_limit = LogLimiter()  # its own: ``now`` here is wall-clock time
        # Told a charger's id when one of its transactions starts or stops (the site guard's
        # round runs at once then); never for a meter reading.
        self.on_transactions: Callable[[str], None] | None = None

    # --- folding ---------------------------------------------------------------------------------

    def _charger(self, charger_id: str, version: str) -> ChargerView | None:
        view = self.chargers.get(charger_id)
        if view is None:
            if len(self.chargers) >= self._max_chargers:
                return None
            view = self.chargers[charger_id] = ChargerView(version=version)
            self.dirty.add(charger_id)
        elif view.version != version:
            view.version = version
            self.dirty.add(charger_id)
        return view

    def charger_call(
        self, charger_id: str, version: str, action: str, payload: dict[str, Any], now: float
    ) -> None:
        """Fold a charger CALL (one of FOLDED_CALLS); malformed payloads are ignored."""
        view = self._charger(charger_id, version)
        if view is None:
            return
        view.last_seen_at = now
        try:
            if version == "1.6":
                self._call_16(charger_id, view, action, payload, now)
            else:  # 2.0.1 and 2.1 share these messages
                self._call_20(charger_id, view, action, payload, now)
        except (AttributeError, TypeError, ValueError, KeyError):
            log.debug("%s: %s not folded (malformed)", charger_id, action)
        except Exception:  # the fold never costs the charger its frame
            lines = LimitedLog(log, self._log_limit, charger_id)
            lines.error(now, "CALL not folded", "%s", action, exc_info=True)

    def answered(
        self,
        charger_id: str,
        version: str,
        action: str,
        request: dict[str, Any],
        answer: dict[str, Any],
        *,
        by_cloud: bool,
        local_tx_id: int | None = None,
    ) -> None:
        """Fold the answer to a charger CALL (one of FOLDED_ANSWERS).

        ``by_cloud`` false: the gateway answered it itself. ``local_tx_id``: the local id a
        replayed 1.6 StartTransaction was answered with, which the cloud's answer now binds.
        """
        view = self._charger(charger_id, version)
        if view is None:
            return
        try:
            if action == "StartTransaction" and version == "1.6":
                cloud_id = answer.get("transactionId")
                if not isinstance(cloud_id, int) or isinstance(cloud_id, bool):
                    return
                if local_tx_id is not None:
                    self.bind(charger_id, local_tx_id, cloud_id)
                else:
                    self._start_16(charger_id, view, request, cloud_id, offline=not by_cloud)
            elif action == "TransactionEvent" and version != "1.6":
                info = request.get("transactionInfo")
                key = info.get("transactionId") if isinstance(info, dict) else None
                tx = view.transactions.get(key) if isinstance(key, str) else None
                if tx is not None and tx.offline == by_cloud:
                    tx.offline = not by_cloud
                    self.dirty.add(charger_id)
        except (AttributeError, TypeError, ValueError, KeyError):
            log.debug("%s: answer to %s not folded (malformed)", charger_id, action)
        except Exception:
            log.exception("%s: answer to %s not folded", charger_id, action)

    def bind(self, charger_id: str, local_id: int, cloud_id: int) -> None:
        """Replay learnt the cloud's id for a 1.6 transaction answered locally."""
        view = self.chargers.get(charger_id)
        tx = view.transactions.get(local_id) if view is not None else None
        if tx is not None and (tx.cloud_id != cloud_id or tx.offline):
            tx.cloud_id, tx.offline = cloud_id, False
            self.dirty.add(charger_id)

    def _add_transaction(self, charger_id: str, view: ChargerView, tx: Transaction) -> None:
        txs = view.transactions
        txs.pop(tx.key, None)
        while len(txs) >= MAX_TRANSACTIONS:
            del txs[next(iter(txs))]
        txs[tx.key] = tx
        self._transactions_changed(charger_id)

    def _transactions_changed(self, charger_id: str) -> None:
        self.dirty.add(charger_id)
        if self.on_transactions is not None:
            self.on_transactions(charger_id)

    def _status(
        self,
        charger_id: str,
        view: ChargerView,
        connector_id: str,
        status: object,
        error_code: object,
        now: float,
    ) -> None:
        status, error_code = _text(status), _text(error_code)
        old = view.connectors.get(connector_id)
        if old is not None and old.status == status and old.error_code == error_code:
            return  # the same status again: nothing to write
        if old is None and len(view.connectors) >= MAX_CONNECTORS:
            return
        view.connectors[connector_id] = Connector(status, error_code, now)
        self.dirty.add(charger_id)

    def _boot(
        self, charger_id: str, view: ChargerView, vendor: object, model: object, firmware: object
    ) -> None:
        new = (_text(vendor), _text(model), _text(firmware))
        if new != (view.vendor, view.model, view.firmware):
            view.vendor, view.model, view.firmware = new
            self.dirty.add(charger_id)

    # --- OCPP 1.6 --------------------------------------------------------------------------------

    def _call_16(
        self, charger_id: str, view: ChargerView, action: str, p: dict[str, Any], now: float
    ) -> None:
        if action == "MeterValues":
            tx_id = p.get("transactionId")
            tx = view.transactions.get(tx_id) if tx_id is not None else None
            if tx is None:
                connector = str(p.get("connectorId"))
                if tx_id is None:  # sampled outside a transaction id: the connector's one
                    tx = next(
                        (t for t in view.transactions.values() if t.connector_id == connector), None
                    )
                elif isinstance(tx_id, int) and not isinstance(tx_id, bool):
                    # A transaction whose start the gateway did not see (e.g. installed mid-session).
                    tx = Transaction(tx_id, connector, None, None, txmap.is_local(tx_id))
                    self._add_transaction(charger_id, view, tx)
                if tx is None:
                    return
            tx.meter = tx.latest_meter = p.get("meterValue")
            tx.readings += 1
            self.touched.add(charger_id)
        elif action == "StatusNotification":
            connector = str(p.get("connectorId"))
            self._status(charger_id, view, connector, p.get("status"), p.get("errorCode"), now)
            if p.get("status") == "Available" and view.transactions:
                # 1.6 §4.9: Available is for a new user, so a transaction still shown there is
                # one whose StopTransaction the gateway did not see (or has yet to).
                for key in [k for k, t in view.transactions.items() if t.connector_id == connector]:
                    del view.transactions[key]
                    self._transactions_changed(charger_id)
        elif action == "StopTransaction":
            tx_id = p.get("transactionId")
            if isinstance(tx_id, int) and view.transactions.pop(tx_id, None) is not None:
                self._transactions_changed(charger_id)
        elif action == "BootNotification":
            self._boot(
                charger_id,
                view,
                p.get("chargePointVendor"),
                p.get("chargePointModel"),
                p.get("firmwareVersion"),
            )

    def _start_16(
        self, charger_id: str, view: ChargerView, p: dict[str, Any], tx_id: int, *, offline: bool
    ) -> None:
        tx = Transaction(
            tx_id,
            str(p.get("connectorId")),
            _text(p.get("idTag")),
            _text(p.get("timestamp")),
            offline,
            meter_start_wh=_number(p.get("meterStart")),
        )
        tx.register_wh = tx.meter_start_wh
        self._add_transaction(charger_id, view, tx)

    # --- OCPP 2.0.1 / 2.1 ------------------------------------------------------------------------

    def _call_20(
        self, charger_id: str, view: ChargerView, action: str, p: dict[str, Any], now: float
    ) -> None:
        if action == "TransactionEvent":
            self._transaction_event(charger_id, view, p)
        elif action == "StatusNotification":
            connector = f"{p.get('evseId')}/{p.get('connectorId')}"
            self._status(charger_id, view, connector, p.get("connectorStatus"), None, now)
        elif action == "BootNotification":
            station = p.get("chargingStation")
            if isinstance(station, dict):
                self._boot(
                    charger_id,
                    view,
                    station.get("vendorName"),
                    station.get("model"),
                    station.get("firmwareVersion"),
                )

    def _transaction_event(self, charger_id: str, view: ChargerView, p: dict[str, Any]) -> None:
        info = p.get("transactionInfo")
        key = info.get("transactionId") if isinstance(info, dict) else None
        if not isinstance(key, str):
            return
        event = p.get("eventType")
        tx = view.transactions.get(key)
        if event == "Ended":
            if tx is not None:
                del view.transactions[key]
                self._transactions_changed(charger_id)
            return
        if tx is None:
            # Started, or an Updated of a transaction whose start the gateway did not see.
            tx = Transaction(key, None, None, _text(p.get("timestamp")), False)
            if event == "Started":
                tx.meter_start_wh = decode_meter(p.get("meterValue"))[0]
            self._add_transaction(charger_id, view, tx)
        evse = p.get("evse")
        if isinstance(evse, dict) and "id" in evse:
            connector = f"{evse['id']}/{evse.get('connectorId', 1)}"
            if connector != tx.connector_id:
                tx.connector_id = connector
                self.dirty.add(charger_id)
        token = p.get("idToken")
        if isinstance(token, dict):
            tag = _text(token.get("idToken"))
            if tag != tx.id_tag:
                tx.id_tag = tag
                self.dirty.add(charger_id)
        meter = p.get("meterValue")
        if meter is not None:
            tx.meter = tx.latest_meter = meter
            tx.readings += 1
            self.touched.add(charger_id)

    # --- reading ---------------------------------------------------------------------------------

    def detail(self, charger_id: str) -> dict[str, Any] | None:
        """The depot fields of ``GET /api/chargers/{id}``, or None if the charger is unknown."""
        view = self.chargers.get(charger_id)
        if view is None:
            return None
        return {
            "vendor": view.vendor,
            "model": view.model,
            "firmware": view.firmware,
            "connectors": [
                {
                    "id": cid,
                    "status": c.status,
                    "errorCode": c.error_code,
                    "updatedAt": _iso(c.updated_at),
                }
                for cid, c in sorted(view.connectors.items(), key=_connector_order)
            ],
            "transactions": [_tx_json(tx) for tx in view.transactions.values()],
        }

    # --- persistence records -------------------------------------------------------------------

    def take_dirty(self, *, touched: bool) -> list[tuple[str, dict[str, Any]]]:
        """Records of the chargers changed since the last call (and the touched ones if asked)."""
        ids = self.dirty | self.touched if touched else self.dirty
        self.dirty = set()
        if touched:
            self.touched = set()
        else:
            self.touched -= ids
        return [(cid, self.record(cid)) for cid in sorted(ids) if cid in self.chargers]

    def record(self, charger_id: str) -> dict[str, Any]:
        """What is persisted for a charger (JSON-able; :meth:`load` reads it back)."""
        view = self.chargers[charger_id]
        txs = []
        for tx in view.transactions.values():
            tx.settle()
            txs.append(
                {
                    "key": tx.key,
                    "cloudId": tx.cloud_id,
                    "connectorId": tx.connector_id,
                    "idTag": tx.id_tag,
                    "startedAt": tx.started_at,
                    "offline": tx.offline,
                    "meterStartWh": tx.meter_start_wh,
                    "registerWh": tx.register_wh,
                    "powerW": tx.power_w,
                }
            )
        return {
            "version": view.version,
            "vendor": view.vendor,
            "model": view.model,
            "firmware": view.firmware,
            "lastSeenAt": view.last_seen_at,
            "connectors": {
                cid: [c.status, c.error_code, c.updated_at] for cid, c in view.connectors.items()
            },
            "transactions": txs,
        }

    def load(self, charger_id: str, record: dict[str, Any]) -> None:
        """Restore a charger from its persisted record (at start-up; not marked dirty)."""
        view = ChargerView(
            version=str(record.get("version", "1.6")),
            vendor=record.get("vendor"),
            model=record.get("model"),
            firmware=record.get("firmware"),
            last_seen_at=record.get("lastSeenAt"),
        )
        for cid, (status, error_code, updated_at) in record.get("connectors", {}).items():
            view.connectors[cid] = Connector(status, error_code, float(updated_at))
        for t in record.get("transactions", []):
            tx = Transaction(
                t["key"], t["connectorId"], t["idTag"], t["startedAt"], bool(t["offline"])
            )
            tx.cloud_id = t.get("cloudId")
            tx.meter_start_wh = t.get("meterStartWh")
            tx.register_wh = t.get("registerWh")
            tx.power_w = t.get("powerW")
            view.transactions[tx.key] = tx
        self.chargers[charger_id] = view


def _connector_order(item: tuple[str, Connector]) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in item[0].split("/"))


def _tx_json(tx: Transaction) -> dict[str, Any]:
    tx.settle()
    energy = tx.energy_wh
    return {
        "id": tx.cloud_id if tx.cloud_id is not None else tx.key,
        "connectorId": tx.connector_id,
        "idTag": tx.id_tag,
        "startedAt": tx.started_at,
        "energyWh": round(energy, 1) if energy is not None else None,
        "powerW": round(tx.power_w, 1) if tx.power_w is not None else None,
        "offline": tx.offline,
    }
