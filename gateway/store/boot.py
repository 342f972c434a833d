"""Stored BootNotifications: the one a charger sent while the cloud was away, until it is delivered."""

from __future__ import annotations

from gateway.store.base import Table

__all__ = ["BootTable"]


class BootTable(Table):
    """The store's operations on these tables (a part of Store)."""

    async def mark_boot_delivered(self, charger_id: str, message_id: str) -> None:
        """The cloud answered this BootNotification (a newer one saved meanwhile stays undelivered)."""
        await self.write(
            [
                (
                    "UPDATE boot_notifications SET delivered = 1"
                    " WHERE charger_id = ? AND message_id = ?",
                    (charger_id, message_id),
                )
            ]
        )

    async def save_boot(
        self,
        charger_id: str,
        version: str,
        message_id: str,
        payload: str,
        received_at: float,
        *,
        delivered: bool,
    ) -> None:
        """Keep a charger's latest BootNotification (durably: it is replayed first)."""
        await self.write(
            [
                (
                    "INSERT OR REPLACE INTO boot_notifications (charger_id, ocpp_version,"
                    " message_id, payload, received_at, delivered) VALUES (?, ?, ?, ?, ?, ?)",
                    (charger_id, version, message_id, payload, received_at, int(delivered)),
                )
            ]
        )

    async def undelivered_boot(
        self, charger_id: str, version: str | None = None
    ) -> tuple[str, str] | None:
        """(message id, payload) of a BootNotification the cloud has not seen, if any; with
        ``version``, only one stored under it (versions are never translated)."""
        row = await self.fetchone(
            "SELECT message_id, payload FROM boot_notifications"
            " WHERE charger_id = ? AND delivered = 0 AND ocpp_version = coalesce(?, ocpp_version)",
            (charger_id, version),
        )
        return (str(row[0]), str(row[1])) if row else None

    async def boot_delivered(self, charger_id: str) -> None:
        await self.write(
            [("UPDATE boot_notifications SET delivered = 1 WHERE charger_id = ?", (charger_id,))]
        )
