"""Flipturn Edge Gateway: a local OCPP-J proxy between depot chargers and the Flipturn cloud."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flipturn-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
