"""The charger's Local Authorization List as the gateway keeps it: pure rules, no I/O.

OCPP 1.6 §5.10/§5.15 (GetLocalListVersion, SendLocalList) and 2.0.1 part 2 D01/D02 let a CSMS put
a list of idTags on the charger, which the charger uses when it cannot reach its CSMS (and, with
``LocalPreAuthorize``, even when it can). The gateway keeps that list equal to the synced
Authorized access ids, so chargers keep authorizing while the gateway itself is down.

- :func:`desired_entries`: the list the charger should hold, most recently used tags first.
- :func:`plan`: (desired list, charger capacity, per-message limit, charger version, what the
  gateway last sent) → the SendLocalList CALLs to send, in order.
- :func:`payload`: one step as a 1.6 ``SendLocalList.req`` or 2.0.1 ``SendLocalListRequest``.
- :func:`capacity_16` / :func:`capacity_201`, :func:`list_version`, :func:`outcome`: the
  charger's answers, read (after schema validation by the caller).

Versions. A Full update sets the version given; a Differential one gives "the version number of
the list after the update is applied" (1.6 §6.41), and chargers refuse a Differential whose version
is not above their own (VersionMismatch). A list larger than the charger's per-message limit is
sent as one Full update with the first part and Differential updates with the rest, each one
version higher (2.0.1 D01.FR.11). Versions are above 0 (D01.FR.18) and above both the charger's
version and the last one sent, so a list interrupted half-way never matches what was recorded and
is sent again in full on the next connect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal

from gateway.ocpp.frames import CallError, CallResult, dumps, loads

__all__ = [
    "DEFAULT_PER_MESSAGE",
    "MAX_VERSION",
    "TAG_LIMITS",
    "VARIABLES_201",
    "Capacity",
    "Entry",
    "Outcome",
    "Plan",
    "Sent",
    "Step",
    "capacity_16",
    "capacity_201",
    "configuration_keys_16",
    "desired_entries",
    "digest",
    "entries_from_body",
    "get_variables_201",
    "list_version",
    "outcome",
    "payload",
    "plan",
    "presented",
    "refuses",
    "snapshot_body",
]

UpdateType = Literal["Full", "Differential"]

# Used when the charger does not say how many entries one SendLocalList may carry (1.6
# SendLocalListMaxLength and 2.0.1 ItemsPerMessage are required where the feature exists).
DEFAULT_PER_MESSAGE: Final = 100
MAX_VERSION: Final = 2**31 - 1  # OCPP integers are 32-bit signed
PAYLOAD_OVERHEAD_BYTES: Final = 96  # the CALL frame and the payload's other fields
# Longest idTag / idToken a list entry may carry (1.6 IdToken ≤ 20, 2.0.1 IdTokenType.idToken ≤ 36).
TAG_LIMITS: Final = {"1.6": 20, "2.0.1": 36}
# 2.0.1 IdTokenEnumType for an access id that no charger has presented yet, by Flipturn type.
DEFAULT_TOKEN_TYPES: Final = {"RFID": "ISO14443", "Vehicle": "MacAddress"}
TOKEN_TYPES_201: Final = frozenset(
    {"Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress"}
)

_ACCEPTED: Final = {"status": "Accepted"}

# 1.6 configuration keys read on connect (§9.4 Local Auth List Management Profile).
KEY_MAX_LENGTH: Final = "LocalAuthListMaxLength"
KEY_PER_MESSAGE: Final = "SendLocalListMaxLength"
KEY_ENABLED: Final = "LocalAuthListEnabled"
# 2.0.1 LocalAuthListCtrlr variables read on connect (part 2 appendix, LocalAuthListCtrlr).
# Entries' maxLimit is a characteristic that only GetReport shows; GetVariables has no attribute
# for it, so MaxSet is asked as the nearest one some stations fill, and ``max_entries`` covers
# the others.
VARIABLES_201: Final = (
    ("Entries", "MaxSet"),
    ("ItemsPerMessage", "Actual"),
    ("BytesPerMessage", "Actual"),
    ("Enabled", "Actual"),
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One list entry: the idTag (1.6) or idToken (2.0.1) as sent, always ``Accepted``."""

    id_tag: str
    token_type: str | None = None  # 2.0.1 IdTokenEnumType; None for 1.6


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the charger said about its list; None where it did not say."""

    max_entries: int | None = None
    per_message: int | None = None
    bytes_per_message: int | None = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """What the gateway last put on a charger: the version it ended at and the entries."""

    version: int
    entries: frozenset[Entry]


@dataclass(frozen=True, slots=True)
class Step:
    """One SendLocalList CALL: removals first, then additions."""

    update_type: UpdateType
    version: int
    add: tuple[Entry, ...] = ()
    remove: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """The CALLs to send and what the charger holds once every one is accepted."""

    steps: tuple[Step, ...]
    entries: tuple[Entry, ...]
    truncated: bool
    final_version: int

    @property
    def full(self) -> bool:
        return bool(self.steps) and self.steps[0].update_type == "Full"


class Outcome(Enum):
    """A charger's answer to one SendLocalList (also the ``result`` label of the metric)."""

    ACCEPTED = "accepted"
    FAILED = "failed"
    VERSION_MISMATCH = "version_mismatch"
    NOT_SUPPORTED = "not_supported"  # status NotSupported, or CALLERROR NotSupported/NotImplemented
    ERROR = "error"  # any other CALLERROR


# --- the desired list ------------------------------------------------------------------------


def desired_entries(
    version: str,
    access_ids: Iterable[tuple[str, str, str]],
    usage: Mapping[str, tuple[float, str | None]],
) -> tuple[Entry, ...]:
    """The list a charger of ``version`` should hold, in priority order (most recently used first).

    ``access_ids``: (tag key, ocppIdTag, Flipturn type) of every Authorized access id.
    ``usage``: tag key → (unix time last presented by any charger, 2.0.1 idToken type presented).
    Tags never presented follow in key order. Tags too long for the version are left out (a
    charger would refuse the whole message for one of them).
    """
    limit = TAG_LIMITS["1.6" if version == "1.6" else "2.0.1"]
    used: list[tuple[float, str, Entry]] = []
    unused: list[tuple[str, Entry]] = []
    for key, id_tag, kind in access_ids:
        if not id_tag or len(id_tag) > limit:
            continue
        seen = usage.get(key)
        token_type: str | None = None
        if version != "1.6":
            token_type = seen[1] if seen is not None and seen[1] in TOKEN_TYPES_201 else None
            token_type = token_type or DEFAULT_TOKEN_TYPES.get(kind, "Central")
        entry = Entry(id_tag, token_type)
        if seen is not None:
            used.append((-seen[0], key, entry))
        else:
            unused.append((key, entry))
    used.sort(key=lambda item: (item[0], item[1]))
    unused.sort(key=lambda item: item[0])
    return tuple(e for _, _, e in used) + tuple(e for _, e in unused)


def digest(entries: Iterable[Entry]) -> str:
    """A name for a list's contents, independent of order."""
    text = "\n".join(sorted(f"{e.id_tag}\t{e.token_type or ''}" for e in entries))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def presented(version: str, action: str, payload: dict[str, Any]) -> tuple[str, str | None] | None:
    """(tag, 2.0.1 idToken type) a charger CALL presents, if any: what tag usage is learned from.

    1.6 Authorize and StartTransaction ``idTag``; 2.0.1 Authorize and TransactionEvent ``idToken``
    (not of type NoAuthorization, which names no one).
    """
    if version == "1.6":
        if action in ("Authorize", "StartTransaction"):
            tag = payload.get("idTag")
            return (tag, None) if isinstance(tag, str) and tag.strip() else None
        return None
    token = payload.get("idToken")
    if action not in ("Authorize", "TransactionEvent") or not isinstance(token, dict):
        return None
    tag, kind = token.get("idToken"), token.get("type")
    if not isinstance(tag, str) or not tag.strip() or kind == "NoAuthorization":
        return None
    return tag, kind if isinstance(kind, str) else None


# --- the planner -----------------------------------------------------------------------------


def _limit(capacity: Capacity, max_entries: int) -> int | None:
    limits = [n for n in (capacity.max_entries, max_entries or None) if n is not None and n >= 0]
    return min(limits) if limits else None


def _entry_bytes(entry: Entry) -> int:
    # {"idToken":{"idToken":"…","type":"…"},"idTokenInfo":{"status":"Accepted"}}, — a bound, not exact
    return len(entry.id_tag) + len(entry.token_type or "") + 72


def _chunks(
    ops: Sequence[tuple[bool, Entry]], per_message: int, max_bytes: int | None
) -> list[list[tuple[bool, Entry]]]:
    """Consecutive runs of at most ``per_message`` ops (and ``max_bytes`` estimated bytes), never
    two of the same idTag in one message (all idTags in a list must be unique)."""
    chunks: list[list[tuple[bool, Entry]]] = []
    current: list[tuple[bool, Entry]] = []
    tags: set[str] = set()
    size = PAYLOAD_OVERHEAD_BYTES
    for op in ops:
        cost = _entry_bytes(op[1])
        full = len(current) >= per_message or (
            max_bytes is not None and current and size + cost > max_bytes
        )
        if current and (full or op[1].id_tag in tags):
            chunks.append(current)
            current, tags, size = [], set(), PAYLOAD_OVERHEAD_BYTES
        current.append(op)
        tags.add(op[1].id_tag)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def _step(update_type: UpdateType, version: int, ops: Sequence[tuple[bool, Entry]]) -> Step:
    return Step(
        update_type,
        version,
        add=tuple(e for adding, e in ops if adding),
        remove=tuple(e for adding, e in ops if not adding),
    )


def plan(
    desired: Sequence[Entry],
    *,
    capacity: Capacity,
    charger_version: int,
    last: Sent | None,
    max_entries: int = 0,
) -> Plan:
    """The SendLocalList CALLs that make the charger's list ``desired`` (truncated to capacity).

    ``desired`` is in priority order; over capacity (the charger's, or ``max_entries`` when set and
    lower) the first entries are kept. If the charger's version is the one last sent, only the
    differences go (Differential, removals first so the list never exceeds its capacity on the
    way); otherwise a Full update, split by the per-message limit into Full + Differential.
    Nothing to change gives no steps.
    """
    limit = _limit(capacity, max_entries)
    chosen = tuple(desired) if limit is None else tuple(desired[:limit])
    truncated = limit is not None and len(desired) > limit
    per_message = max(1, capacity.per_message or DEFAULT_PER_MESSAGE)
    max_bytes = capacity.bytes_per_message
    if last is not None and charger_version == last.version:
        wanted = set(chosen)
        removals = [(False, e) for e in sorted(last.entries - wanted, key=_order)]
        additions = [(True, e) for e in chosen if e not in last.entries]
        if not removals and not additions:
            return Plan((), chosen, truncated, last.version)
        chunks = _chunks(removals + additions, per_message, max_bytes)
        base = last.version + 1
        if base + len(chunks) - 1 <= MAX_VERSION:
            steps = tuple(_step("Differential", base + i, ops) for i, ops in enumerate(chunks))
            return Plan(steps, chosen, truncated, steps[-1].version)
    chunks = _chunks([(True, e) for e in chosen], per_message, max_bytes) or [[]]
    base = max(charger_version, last.version if last is not None else 0, 0) + 1
    if base + len(chunks) - 1 > MAX_VERSION:
        base = 1  # a Full update may set any version; start the numbering again
    steps = tuple(
        _step("Full" if i == 0 else "Differential", base + i, ops) for i, ops in enumerate(chunks)
    )
    return Plan(steps, chosen, truncated, steps[-1].version)


def _order(entry: Entry) -> tuple[str, str]:
    return entry.id_tag, entry.token_type or ""


# --- wire shapes -----------------------------------------------------------------------------


def payload(version: str, step: Step) -> dict[str, Any]:
    """The SendLocalList payload of ``step`` (an entry without idTagInfo/idTokenInfo removes)."""
    items: list[dict[str, Any]]
    if version == "1.6":
        items = [{"idTag": e.id_tag} for e in step.remove]
        items += [{"idTag": e.id_tag, "idTagInfo": _ACCEPTED} for e in step.add]
        body: dict[str, Any] = {"listVersion": step.version, "updateType": step.update_type}
    else:
        items = [{"idToken": {"idToken": e.id_tag, "type": e.token_type}} for e in step.remove]
        items += [
            {"idToken": {"idToken": e.id_tag, "type": e.token_type}, "idTokenInfo": _ACCEPTED}
            for e in step.add
        ]
        body = {"versionNumber": step.version, "updateType": step.update_type}
    if items:  # 2.0.1: minItems 1; an absent list with Full empties the charger's list
        body["localAuthorizationList"] = items
    return body


def configuration_keys_16() -> dict[str, Any]:
    """The GetConfiguration.req that reads a 1.6 charger's list capacity."""
    return {"key": [KEY_MAX_LENGTH, KEY_PER_MESSAGE, KEY_ENABLED]}


def get_variables_201() -> dict[str, Any]:
    """The GetVariablesRequest that reads a 2.0.1 charger's LocalAuthListCtrlr."""
    return {
        "getVariableData": [
            {
                "component": {"name": "LocalAuthListCtrlr"},
                "variable": {"name": name},
                "attributeType": attribute,
            }
            for name, attribute in VARIABLES_201
        ]
    }


def _int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _bool(value: Any) -> bool | None:
    text = str(value).strip().lower()
    return True if text == "true" else False if text == "false" else None


def capacity_16(result: Mapping[str, Any]) -> Capacity:
    """A validated GetConfiguration.conf → capacity (unknown keys stay None)."""
    values = {
        str(item.get("key", "")).lower(): item.get("value")
        for item in result.get("configurationKey") or ()
        if isinstance(item, Mapping)
    }
    return Capacity(
        max_entries=_int(values.get(KEY_MAX_LENGTH.lower())),
        per_message=_int(values.get(KEY_PER_MESSAGE.lower())) or None,
        enabled=_bool(values.get(KEY_ENABLED.lower())),
    )


def capacity_201(result: Mapping[str, Any]) -> Capacity:
    """A validated GetVariablesResponse → capacity (variables not Accepted stay None)."""
    values: dict[tuple[str, str], Any] = {}
    for item in result.get("getVariableResult") or ():
        if not isinstance(item, Mapping) or item.get("attributeStatus") != "Accepted":
            continue
        name = str((item.get("variable") or {}).get("name", ""))
        values[(name.lower(), str(item.get("attributeType", "Actual")).lower())] = item.get(
            "attributeValue"
        )
    return Capacity(
        max_entries=_int(values.get(("entries", "maxset"))),
        per_message=_int(values.get(("itemspermessage", "actual"))) or None,
        bytes_per_message=_int(values.get(("bytespermessage", "actual"))) or None,
        enabled=_bool(values.get(("enabled", "actual"))),
    )


def list_version(version: str, result: Mapping[str, Any]) -> int | None:
    """The version in a validated GetLocalListVersion answer; None: no list support (1.6: -1)."""
    number = result.get("listVersion" if version == "1.6" else "versionNumber")
    if not isinstance(number, int) or number < 0:
        return None
    return number


_NOT_SUPPORTED_CODES: Final = frozenset({"NotSupported", "NotImplemented"})
_STATUS: Final = {
    "Accepted": Outcome.ACCEPTED,
    "Failed": Outcome.FAILED,
    "VersionMismatch": Outcome.VERSION_MISMATCH,
    "NotSupported": Outcome.NOT_SUPPORTED,  # 1.6 only
}


def refuses(answer: CallResult | CallError) -> bool:
    """Whether a CALLERROR says the charger does not do this at all."""
    return isinstance(answer, CallError) and answer.code in _NOT_SUPPORTED_CODES


def outcome(answer: CallResult | CallError) -> Outcome:
    """The outcome of a SendLocalList (CALLRESULT validated by the caller)."""
    if isinstance(answer, CallError):
        return outcome_of(answer.code, {})
    return outcome_of(None, answer.payload)


def outcome_of(error_code: str | None, result: Mapping[str, Any]) -> Outcome:
    """The outcome of a SendLocalList answered with the CALLERROR ``error_code``, or (None)
    with the validated CALLRESULT payload ``result``."""
    if error_code is not None:
        return Outcome.NOT_SUPPORTED if error_code in _NOT_SUPPORTED_CODES else Outcome.ERROR
    return _STATUS.get(str(result.get("status")), Outcome.ERROR)


def snapshot_body(entries: Iterable[Entry]) -> bytes:
    """A list's entries as stored (JSON lines of [idTag, type])."""
    return dumps([[e.id_tag, e.token_type] for e in entries]).encode()


def entries_from_body(body: bytes) -> frozenset[Entry]:
    """The entries of a stored list (see :func:`snapshot_body`)."""
    return frozenset(
        Entry(str(tag), None if kind is None else str(kind)) for tag, kind in loads(body)
    )
