"""Per-charger decisions: text, ids and ``now`` in, decisions out. Pure."""
