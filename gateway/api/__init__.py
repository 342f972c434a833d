"""The local HTTP API and the depot dashboard (``static/``, package data)."""
