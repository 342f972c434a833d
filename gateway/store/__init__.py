"""The SQLite store: one file in WAL mode, group commit, every SQL statement of the gateway.

Layer 3, above the pure layers, below every driver. Every sqlite error becomes a
``gateway.errors.StoreError`` here and nowhere else.

- ``engine``  the connection, migrations, group commit, health, and the named operations
"""
