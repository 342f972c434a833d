"""Tag matching and the offline authorization decision. Pure: no I/O, ``now`` is an input.

The gateway answers a charger's Authorize (and the idTagInfo of StartTransaction, the idTokenInfo of
TransactionEvent) itself only when the cloud cannot. The answer comes from, in this order
(design.md "Offline action table"):

1. the access ids synced from the Flipturn API: ``Authorized`` -> Accepted, ``Revoked`` -> Blocked;
2. the learned cache of idTagInfo / idTokenInfo answers the cloud gave while online; an entry whose
   expiry date has passed answers Expired;
3. the ``offline.unknown_tags`` policy: ``reject`` -> Invalid, ``accept`` -> Accepted.

Learned 2.0.1 answers are stored with their 2.0.1 status as the cloud sent it and mapped to the 1.6
vocabulary of :class:`Decision` when they are used (see :func:`learned_status`); the 2.0.1 answer is
then built from that 1.6 status, every one of which also exists in the 2.0.1 enumeration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from gateway.core.access import LearnedTag, SyncedTag

__all__ = [
    "AUTHORIZATION_STATUSES_16",
    "AUTHORIZATION_STATUSES_201",
    "Decision",
    "LearnedTag",
    "SyncedTag",
    "decide",
    "id_tag_info",
    "id_token_info",
    "learnable",
    "learned_status",
    "normalise",
    "parse_datetime",
]

# OCPP 1.6 §7.2 AuthorizationStatus.
AUTHORIZATION_STATUSES_16: Final = frozenset(
    {"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"}
)
# OCPP 2.0.1 part 2 AuthorizationStatusEnumType.
AUTHORIZATION_STATUSES_201: Final = frozenset(
    {
        "Accepted",
        "Blocked",
        "ConcurrentTx",
        "Expired",
        "Invalid",
        "NoCredit",
        "NotAllowedTypeEVSE",
        "NotAtThisLocation",
        "NotAtThisTime",
        "Unknown",
    }
)

# A learned 2.0.1 status that has no 1.6 equivalent is a refusal; Invalid is the 1.6 refusal that
# does not claim anything about the tag's state (unlike Blocked or Expired).
_LEARNED_TO_16: Final = {
    "Accepted": "Accepted",
    "Blocked": "Blocked",
    "Expired": "Expired",
    "Invalid": "Invalid",
    # ConcurrentTx says the credential is valid but was busy at the time the cloud answered. Offline
    # the gateway cannot know whether that transaction still runs; replaying ConcurrentTx would lock
    # the driver out for as long as the link is down, so a learned ConcurrentTx counts as Accepted.
    "ConcurrentTx": "Accepted",
    "NoCredit": "Invalid",
    "NotAllowedTypeEVSE": "Invalid",
    "NotAtThisLocation": "Invalid",
    "NotAtThisTime": "Invalid",
    "Unknown": "Invalid",
}

_MAC_SEPARATED: Final = re.compile(r"[0-9A-F]{2}([:-])[0-9A-F]{2}(?:\1[0-9A-F]{2}){4}")
_MAC_BARE: Final = re.compile(r"[0-9A-F]{12}")
_MAC_DOTTED: Final = re.compile(r"[0-9A-F]{4}\.[0-9A-F]{4}\.[0-9A-F]{4}")  # Cisco: AABB.CCDD.EEFF
_VID_PREFIX: Final = "VID:"
_MAX_TAG_LENGTH: Final = 255  # far above OCPP's 20 (1.6) / 36 (2.0.1); guards the store from junk


def normalise(tag: str) -> str:
    """The lookup key for ``tag``, normalised the way Flipturn normalises ``ocppIdTag``.

    design.md "Tag matching": trim, upper-case; MAC-address forms (``aa:bb:cc:dd:ee:ff``,
    ``AA-BB-CC-DD-EE-FF``, ``AABB.CCDD.EEFF``, ``AABBCCDDEEFF``, each with or without a ``VID:`` prefix in any case)
    collapse to 12 upper-case hex digits. Anything else is only trimmed and upper-cased.
    """
    key = tag.strip().upper()
    body = key[len(_VID_PREFIX) :].strip() if key.startswith(_VID_PREFIX) else key
    if _MAC_BARE.fullmatch(body):
        return body
    if _MAC_SEPARATED.fullmatch(body):
        return body.replace(":", "").replace("-", "")
    if _MAC_DOTTED.fullmatch(body):
        return body.replace(".", "")
    return key


def parse_datetime(value: str) -> datetime | None:
    """An ISO 8601 date-time as an aware UTC datetime; None if ``value`` is not one.

    OCPP date-times are RFC 3339 (``Z`` or an offset); a value without an offset is read as UTC.
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Decision:
    """An offline authorization answer. ``status`` uses the 1.6 AuthorizationStatus vocabulary."""

    status: str  # Accepted | Blocked | Expired | Invalid | ConcurrentTx
    expiry_date: str | None
    parent_id_tag: str | None
    source: str  # synced | learned | policy


def learned_status(status: str) -> str:
    """The 1.6 AuthorizationStatus a learned (1.6 or 2.0.1) status answers offline."""
    return _LEARNED_TO_16.get(status, "Invalid")


def decide(
    synced: SyncedTag | None,
    learned: LearnedTag | None,
    *,
    unknown_tags: str,
    now: datetime,
) -> Decision:
    """The offline answer for a tag: synced list, then learned cache, then unknown-tag policy."""
    if synced is not None:
        # design.md: revoked access ids answer Blocked. Sync admits only Authorized | Revoked.
        status = "Accepted" if synced.authorization_status == "Authorized" else "Blocked"
        return Decision(status, None, None, "synced")
    if learned is not None:
        expiry = parse_datetime(learned.expiry_date) if learned.expiry_date else None
        if expiry is not None and expiry <= now:
            return Decision("Expired", learned.expiry_date, learned.parent_id_tag, "learned")
        return Decision(
            learned_status(learned.status), learned.expiry_date, learned.parent_id_tag, "learned"
        )
    status = "Accepted" if unknown_tags == "accept" else "Invalid"
    return Decision(status, None, None, "policy")


def id_tag_info(decision: Decision) -> dict[str, Any]:
    """The OCPP 1.6 IdTagInfo for ``decision`` (§7.29: status, optional expiryDate, parentIdTag)."""
    info: dict[str, Any] = {"status": decision.status}
    if decision.expiry_date is not None:
        info["expiryDate"] = decision.expiry_date
    if decision.parent_id_tag is not None:
        info["parentIdTag"] = decision.parent_id_tag
    return info


def id_token_info(decision: Decision) -> dict[str, Any]:
    """The OCPP 2.0.1 IdTokenInfoType for ``decision``.

    Every 1.6 status exists in AuthorizationStatusEnumType; the expiry becomes
    ``cacheExpiryDateTime`` and the parent a ``groupIdToken`` of type Central.
    """
    status = decision.status if decision.status in AUTHORIZATION_STATUSES_201 else "Invalid"
    info: dict[str, Any] = {"status": status}
    if decision.expiry_date is not None:
        info["cacheExpiryDateTime"] = decision.expiry_date
    if decision.parent_id_tag is not None:
        info["groupIdToken"] = {"idToken": decision.parent_id_tag, "type": "Central"}
    return info


# (id tag as the charger sent it, status, expiry, parent)
Learnable = tuple[str, str, str | None, str | None]

_LEARN_16: Final = frozenset({"Authorize", "StartTransaction", "StopTransaction"})
_LEARN_201: Final = frozenset({"Authorize", "TransactionEvent"})


def _tag(value: Any) -> str | None:
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_TAG_LENGTH:
        return value
    return None


def _expiry(value: Any) -> str | None:
    # An expiry that is not a date-time cannot be honoured; the entry is learned without one.
    if isinstance(value, str) and parse_datetime(value) is not None:
        return value
    return None


def _learn_16(action: str, request: dict[str, Any], response: dict[str, Any]) -> list[Learnable]:
    if action not in _LEARN_16:
        return []
    tag = _tag(request.get("idTag"))
    info = response.get("idTagInfo")
    if tag is None or not isinstance(info, dict):
        return []
    status = info.get("status")
    if status not in AUTHORIZATION_STATUSES_16:
        return []
    return [(tag, status, _expiry(info.get("expiryDate")), _tag(info.get("parentIdTag")))]


def _learn_201(action: str, request: dict[str, Any], response: dict[str, Any]) -> list[Learnable]:
    if action not in _LEARN_201:
        return []
    token = request.get("idToken")
    info = response.get("idTokenInfo")
    if not isinstance(token, dict) or not isinstance(info, dict):
        return []
    # NoAuthorization tokens carry no identity (2.0.1 IdTokenEnumType); nothing to learn.
    if token.get("type") == "NoAuthorization":
        return []
    tag = _tag(token.get("idToken"))
    status = info.get("status")
    if tag is None or status not in AUTHORIZATION_STATUSES_201:
        return []
    group = info.get("groupIdToken")
    parent = _tag(group.get("idToken")) if isinstance(group, dict) else None
    return [(tag, status, _expiry(info.get("cacheExpiryDateTime")), parent)]


def learnable(version: str, action: str, request: Any, response: Any) -> list[Learnable]:
    """The learned-cache entries in the cloud's answer ``response`` to the charger's ``request``.

    1.6: Authorize and StartTransaction (request ``idTag``, response ``idTagInfo``), StopTransaction
    (both optional). 2.0.1: Authorize and TransactionEvent (request ``idToken.idToken``, response
    ``idTokenInfo``; TransactionEvent has both optional). Odd payloads give ``[]``; never raises.
    """
    if not isinstance(request, dict) or not isinstance(response, dict):
        return []
    flavour = version.removeprefix("ocpp") if isinstance(version, str) else ""
    if flavour == "1.6":
        return _learn_16(action, request, response)
    if flavour in ("2.0.1", "2.0", "2.1"):
        return _learn_201(action, request, response)
    return []
