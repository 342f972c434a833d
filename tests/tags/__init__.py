"""Tag rules on plain values; the cache and sync over a real SQLite file and a fake Flipturn API."""
