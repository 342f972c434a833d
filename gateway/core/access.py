"""What the gateway knows of an id tag: the access id synced from the Flipturn API, and the
answer the cloud last gave for it. Values only; :mod:`gateway.tags.rules` decides with them and
:mod:`gateway.store.tags` reads them from the store.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LearnedTag", "SyncedTag"]


@dataclass(frozen=True, slots=True)
class SyncedTag:
    """An access id from the Flipturn API, as far as authorization needs it."""

    id: int
    ocpp_id_tag: str
    authorization_status: str  # Authorized | Revoked
    revoked_at: str | None = None


@dataclass(frozen=True, slots=True)
class LearnedTag:
    """The last idTagInfo / idTokenInfo the cloud answered for a tag while online."""

    id_tag: str  # as the charger spelled it when the answer was learned
    status: str  # as the cloud sent it: 1.6 or 2.0.1 AuthorizationStatus
    expiry_date: str | None
    parent_id_tag: str | None
    learned_at: str
