"""Flipturn Edge Gateway: a local OCPP-J proxy between depot chargers and the Flipturn cloud."""

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it from here

__all__ = ["__version__"]
