"""Access ids: matching rules, the Flipturn API shapes, the cache, sync, local lists."""
