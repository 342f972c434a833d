"""Frames and schema validation on plain strings."""
