"""Schema validation of the frames the gateway itself acts on (never of frames it only relays).

The JSON schemas are the ones the ``ocpp`` package ships; ``fastjsonschema`` compiles each into Python
code on first use (a 3-phase MeterValues validates in ~30 µs, against ~500 µs with jsonschema's
interpreter; see docs/benchmarks.md). As with the ``ocpp`` package's own validator, ``format`` is not
asserted: chargers in the field send timestamps without a zone, and refusing those offline would lose
a charging session over a spelling the cloud accepts.

Validation never changes the payload: fastjsonschema by default writes each schema ``default`` into
the dict it validates (``"multiplier": 0`` into every 2.0.1 ``unitOfMeasure``, ``"offline": false``
into TransactionEvents), and that dict is what the gateway stores and replays. The schemas are
compiled with ``use_default=False``, which costs nothing per call, where validating a deep copy
would cost more than the validation itself (docs/benchmarks.md "Store integrity").
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any, Final

import fastjsonschema

from gateway.errors import FrameError
from gateway.ocpp.frames import CALL, CALLRESULT, OcppVersion

__all__ = ["validate_call", "validate_result"]

Validator = Any  # a compiled fastjsonschema function: payload -> payload, raises on violation

# schema keyword → OCPP-J error code (2.0.1 spelling; frames.error_code_for adapts it to 1.6).
_CODES: Final = {
    "type": "TypeConstraintViolation",
    "maxLength": "TypeConstraintViolation",
    "required": "OccurrenceConstraintViolation",
    "minItems": "OccurrenceConstraintViolation",
    "maxItems": "OccurrenceConstraintViolation",
    "additionalProperties": "FormatViolation",
    "enum": "PropertyConstraintViolation",
}
_ANY_FORMAT: Final = {"date-time": lambda _: True, "uri": lambda _: True}
# The ``ocpp`` package's schema folder per version (2.1: OCPP 2.1 Part 3, edition 1).
_FOLDERS: Final[dict[str, str]] = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}


@cache
def _validator(kind: int, action: str, version: OcppVersion) -> Validator | None:
    folder = _FOLDERS[version]
    name = action
    if kind == CALLRESULT:
        name += "Response"
    elif version != "1.6":
        name += "Request"
    if not name.isidentifier():
        return None
    resource = files("ocpp") / folder / "schemas" / f"{name}.json"
    try:
        # The 2.0.1 schema files start with a byte order mark.
        schema = json.loads(resource.read_text(encoding="utf-8-sig"))
    except (FileNotFoundError, OSError):
        return None
    schema.pop("$schema", None)  # compile as draft 4 whatever the header's URL spelling
    return fastjsonschema.compile(schema, formats=_ANY_FORMAT, use_default=False)


def _check(kind: int, action: str, payload: dict[str, Any], version: OcppVersion, mid: str) -> None:
    validator = _validator(kind, action, version)
    if validator is None:
        raise FrameError("NotImplemented", f"unknown action {action}", mid)
    try:
        validator(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        code = _CODES.get(str(exc.rule), "PropertyConstraintViolation")
        where = str(exc.name).removeprefix("data.").removeprefix("data") or action
        got = json.dumps(exc.value, default=str)[:60]
        raise FrameError(code, f"{where}: {exc.message} (got {got})"[:200], mid) from exc


def validate_call(version: OcppVersion, action: str, payload: dict[str, Any], mid: str) -> None:
    """Raise FrameError (with the OCPP error code) if a CALL payload breaks its schema."""
    _check(CALL, action, payload, version, mid)


def validate_result(version: OcppVersion, action: str, payload: dict[str, Any], mid: str) -> None:
    """Raise FrameError if a CALLRESULT payload for ``action`` breaks its schema."""
    _check(CALLRESULT, action, payload, version, mid)
