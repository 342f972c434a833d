"""The SQLite store: one file in WAL mode, group commit, every SQL statement of the gateway.

Layer 3, above the pure layers, below every driver; nothing else imports sqlite3 or aiosqlite. Every
sqlite error becomes a ``gateway.errors.StoreError`` in the engine (``Store._failed`` for writes,
``Store._read_failed`` for reads), and nowhere else.

- ``engine``        ``Store``: the connection, migrations, group commit with fsync, health, the
                    read-only point-read connection; it inherits every table's named operations
- ``base``          ``Table``: the engine primitives the table modules build on
- ``outbox``        messages stored for the cloud, replay, dead letters, resend keys, 1.6 tx ids
- ``tags``          access ids, vehicles, learned tags, the sync's stage-and-swap
- ``boot``          stored BootNotifications
- ``reservations``  recorded reservations
- ``local_lists``   the chargers' Local Authorization Lists as last sent, snapshots, tag usage
- ``depot``         the depot view's saved records
- ``site``          the site power guard's caps and engaged state
"""
