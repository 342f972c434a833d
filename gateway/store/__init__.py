"""The SQLite store: one file in WAL mode, group commit, every SQL statement of the gateway.

Layer 3, above the pure layers, below every driver; nothing else imports sqlite3 or aiosqlite. Every
sqlite error becomes a ``gateway.errors.StoreError`` in the engine (``Store._failed`` for writes,
``Store._read_failed`` for reads), and nowhere else.

- ``engine``        ``Store``: the connection, start-up (down on a full disk), the periodic
                    probe, the read-only point-read connection; it inherits health, group
                    commit and every table's named operations
- ``migrations``    the schema: one SQL script per version, applied at start-up
- ``commit``        ``GroupCommit``: transactions and durable group commit with fsync
- ``probe``         ``HealthProbe``: /health and the watchdog's answers, the look at the file
                    before each commit, one probe round (stat/statvfs; WAL sizing, checkpoints)
- ``health``        the decisions on values: what an SQLite error or a look at the file says,
                    how big the WAL may grow; the health state
- ``files``         the operator commands on a store file (check, backup) and file checks
- ``base``          ``Table``: the engine primitives the table modules build on
- ``outbox``        messages stored for the cloud, replay, dead letters, resend keys, 1.6 tx ids
- ``tags``          access ids, vehicles, learned tags, the sync's stage-and-swap
- ``boot``          stored BootNotifications
- ``reservations``  recorded reservations
- ``local_lists``   the chargers' Local Authorization Lists as last sent, snapshots, tag usage
- ``depot``         the depot view's saved records
- ``versions``      the OCPP version the cloud last selected per charger
- ``site``          the site power guard's caps and engaged state
"""
