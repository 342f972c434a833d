"""Schema validation of the frames the gateway itself acts on (never of frames it only relays).

A thin adapter over the ``ocpp`` package's JSON schemas, run synchronously (~55 µs for a MeterValues):
the async thread-pool variant costs more than it saves on a small machine.
"""

from __future__ import annotations

from typing import Any, Final

from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError
from ocpp.messages import get_validator

from gateway.errors import FrameError
from gateway.frames import CALL, CALLRESULT, OcppVersion

__all__ = ["validate_call", "validate_result"]

# jsonschema keyword → OCPP-J error code (2.0.1 spelling; frames.error_code_for adapts it to 1.6).
_CODES: Final = {
    "type": "TypeConstraintViolation",
    "maxLength": "TypeConstraintViolation",
    "required": "OccurrenceConstraintViolation",
    "minItems": "OccurrenceConstraintViolation",
    "maxItems": "OccurrenceConstraintViolation",
    "additionalProperties": "FormatViolation",
    "enum": "PropertyConstraintViolation",
}


def _validator(kind: int, action: str, version: OcppVersion) -> Draft4Validator | None:
    try:
        validator: Draft4Validator = get_validator(kind, action, version)
    except (OSError, ValueError):
        return None
    return validator


def _check(kind: int, action: str, payload: dict[str, Any], version: OcppVersion, mid: str) -> None:
    validator = _validator(kind, action, version)
    if validator is None:
        raise FrameError("NotImplemented", f"unknown action {action}", mid)
    try:
        validator.validate(payload)
    except ValidationError as exc:
        code = _CODES.get(str(exc.validator), "PropertyConstraintViolation")
        where = "/".join(str(p) for p in exc.absolute_path) or action
        raise FrameError(code, f"{where}: {exc.message}"[:200], mid) from exc


def validate_call(version: OcppVersion, action: str, payload: dict[str, Any], mid: str) -> None:
    """Raise FrameError (with the OCPP error code) if a CALL payload breaks its schema."""
    _check(CALL, action, payload, version, mid)


def validate_result(version: OcppVersion, action: str, payload: dict[str, Any], mid: str) -> None:
    """Raise FrameError if a CALLRESULT payload for ``action`` breaks its schema."""
    _check(CALLRESULT, action, payload, version, mid)
