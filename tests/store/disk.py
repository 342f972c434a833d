"""Filling a small file system, for the store's disk-full and small-disk tests."""

from __future__ import annotations

import os
from pathlib import Path


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` until it refuses more bytes (appending, so a second
    call fills what was freed since); returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                break
    finally:
        os.close(fd)
    return filler
