"""The store's schema: one SQL script per version, applied in order at start-up.

Each entry of :data:`MIGRATIONS` migrates from version i to i+1 and runs in its own transaction
(``PRAGMA user_version`` records the version reached). A new schema version is a new entry at the
end; entries already shipped never change.
"""

from __future__ import annotations

import aiosqlite

from gateway.errors import StoreError
from gateway.store.base import log
from gateway.store.site import SITE_MIGRATION
from gateway.store.versions import MIGRATION as CLOUD_VERSIONS_MIGRATION

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]


# Each entry migrates from version i to i+1; applied in order at start-up, each in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE access_ids (
        id INTEGER PRIMARY KEY,
        ocpp_id_tag TEXT NOT NULL,
        tag_key TEXT NOT NULL UNIQUE,          -- normalised ocppIdTag (tags.normalise)
        type TEXT NOT NULL,                    -- RFID | Vehicle
        name TEXT NOT NULL,
        authorization_status TEXT NOT NULL,    -- Authorized | Revoked
        authorized_at TEXT,
        revoked_at TEXT,
        created_at TEXT,
        updated_at TEXT,
        vehicle TEXT,                          -- JSON object or NULL
        customer TEXT                          -- JSON object or NULL
    );
    CREATE TABLE vehicles (
        id INTEGER PRIMARY KEY,
        name TEXT,
        make TEXT,
        model TEXT,
        vin TEXT,
        license_plate TEXT,
        has_telematics INTEGER NOT NULL DEFAULT 0,
        customer TEXT,                         -- JSON object or NULL
        access_ids TEXT NOT NULL DEFAULT '[]'  -- JSON list of {id, ocppIdTag, authorizationStatus}
    );
    CREATE TABLE learned_tags (                -- idTagInfo / idTokenInfo the cloud answered while online
        tag_key TEXT PRIMARY KEY,
        id_tag TEXT NOT NULL,
        status TEXT NOT NULL,
        expiry_date TEXT,
        parent_id_tag TEXT,
        learned_at TEXT NOT NULL
    );
    CREATE TABLE sync_state (
        name TEXT PRIMARY KEY,
        last_success_at TEXT,
        last_error TEXT,
        access_ids INTEGER NOT NULL DEFAULT 0,
        vehicles INTEGER NOT NULL DEFAULT 0,
        duration_s REAL
    );
    CREATE TABLE outbox (                      -- charger CALLs answered locally, waiting for the cloud
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        charger_id TEXT NOT NULL,
        ocpp_version TEXT NOT NULL,
        message_id TEXT NOT NULL,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,                 -- JSON exactly as the charger sent it
        created_at REAL NOT NULL,              -- unix seconds
        local_tx_id INTEGER,                   -- 1.6 StartTransaction answered locally: its local id
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX outbox_by_charger ON outbox (charger_id, seq);
    CREATE TABLE dead_letters (                -- replayed messages the cloud refused for good
        seq INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL,
        ocpp_version TEXT NOT NULL,
        message_id TEXT NOT NULL,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        failed_at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        error_code TEXT NOT NULL,
        error_description TEXT NOT NULL
    );
    CREATE TABLE boot_notifications (          -- the latest BootNotification of each charger
        charger_id TEXT PRIMARY KEY,
        ocpp_version TEXT NOT NULL,
        message_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at REAL NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE tx_ids (                      -- OCPP 1.6 transaction ids answered locally
        charger_id TEXT NOT NULL,
        local_id INTEGER NOT NULL,
        cloud_id INTEGER,                      -- NULL until the replayed StartTransaction is answered
        created_at REAL NOT NULL,
        PRIMARY KEY (charger_id, local_id)
    );
    CREATE INDEX tx_ids_by_cloud ON tx_ids (charger_id, cloud_id);
    CREATE TABLE reservations (
        charger_id TEXT NOT NULL,
        reservation_id INTEGER NOT NULL,
        connector_id INTEGER,                  -- 1.6 connectorId / 2.0.1 evseId (NULL: any)
        id_tag TEXT NOT NULL,                  -- as sent to the charger (compared normalised)
        parent_id_tag TEXT,
        expiry_date TEXT NOT NULL,             -- ISO 8601 UTC
        source TEXT NOT NULL,                  -- api | cloud
        status TEXT NOT NULL,                  -- the charger's answer (Accepted, ...), or NoAnswer
        state TEXT NOT NULL,                   -- active | used | cancelled | expired | removed |
                                               -- refused | failed (see gateway.reservations)
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (charger_id, reservation_id)
    );
    CREATE INDEX reservations_by_state ON reservations (state, charger_id);
    """,
    # 2: the depot view (gateway.core.depot), one JSON record per charger, written in batches
    """
    CREATE TABLE depot_chargers (
        charger_id TEXT PRIMARY KEY,
        record TEXT NOT NULL,                  -- JSON (gateway.depot.DepotView.record)
        updated_at REAL NOT NULL               -- unix seconds
    );
    """,
    # 3: charger resends answered like the first time (design.md "Store integrity and exactly-once")
    """
    ALTER TABLE outbox ADD COLUMN digest BLOB;     -- call_digest(action, payload); NULL: not deduped
    ALTER TABLE outbox ADD COLUMN answer TEXT;     -- the CALLRESULT payload the charger was given
    CREATE INDEX outbox_by_message ON outbox (charger_id, message_id);
    CREATE TABLE answered (                    -- delivered or dead-lettered CALLs, kept RESEND_WINDOW_S
        charger_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        digest BLOB NOT NULL,
        answer TEXT NOT NULL,
        done_at REAL NOT NULL,                 -- unix seconds
        PRIMARY KEY (charger_id, message_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX answered_by_age ON answered (done_at);
    -- Whatever removes a queued CALL (delivered, dead-lettered, pruned) keeps its key: in the
    -- DELETE's own statement, so a delivery stays one statement (one database-thread hop).
    CREATE TRIGGER outbox_keeps_answered AFTER DELETE ON outbox
    WHEN old.digest IS NOT NULL AND old.answer IS NOT NULL
    BEGIN
        INSERT OR REPLACE INTO answered (charger_id, message_id, digest, answer, done_at)
        VALUES (old.charger_id, old.message_id, old.digest, old.answer,
                (julianday('now') - 2440587.5) * 86400.0);
    END;
    CREATE TABLE store_probe (                 -- one row, rewritten by the health probe
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL
    );
    """,
    # 4: the chargers' Local Authorization Lists (gateway.tags.local_list)
    """
    CREATE TABLE local_lists (                 -- per charger: who owns its list, what is on it
        charger_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,                   -- gateway | cloud | none
        version INTEGER,                       -- the list version the charger last reported/accepted
        entries INTEGER NOT NULL DEFAULT 0,
        truncated INTEGER NOT NULL DEFAULT 0,
        snapshot TEXT,                         -- local_list_snapshots.digest of what the gateway sent
        refused TEXT,                          -- why the charger is left alone (NULL: it is not)
        updated_at REAL NOT NULL
    );
    CREATE TABLE local_list_snapshots (        -- list contents, shared by chargers holding the same
        digest TEXT PRIMARY KEY,
        body BLOB NOT NULL                     -- zlib of JSON [[idTag, idToken type], ...]
    );
    CREATE TABLE tag_usage (                   -- when a tag was last presented (most recent first)
        tag_key TEXT PRIMARY KEY,              -- normalised tag (tags.normalise)
        last_used_at REAL NOT NULL,            -- unix seconds
        token_type TEXT                        -- 2.0.1 idToken type as presented, if any
    );
    """,
    # 5: the version the cloud last selected per charger (gateway.store.versions)
    CLOUD_VERSIONS_MIGRATION,
    # 6: the site power guard's caps and engaged state (gateway.store.site)
    SITE_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(db: aiosqlite.Connection) -> None:
    """Apply the migrations this file lacks; StoreError if it is newer than this gateway."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {current} is newer than this gateway ({SCHEMA_VERSION})"
        )
    for version in range(current, SCHEMA_VERSION):
        script = MIGRATIONS[version]
        await db.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version + 1};\nCOMMIT;"
        )
        log.info("store migrated to schema version %d", version + 1)
