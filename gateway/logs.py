"""Log output: ``[log] level`` and ``format``, and the systemd journal's priority prefixes.

* ``text``: ``2026-01-01 12:00:00,000 WARNING gateway.net.session: CP-1: ...``. When stderr is the
  journal (``$JOURNAL_STREAM`` set, systemd.exec(5)), each line starts with its syslog priority
  (``<4>``, sd-daemon(3)) and has no timestamp: the journal stamps and filters it
  (``journalctl -p warning``).
* ``json``: one object per line, ``ts``, ``level``, ``logger``, ``msg`` and ``charger`` where the
  line is about one charger.

Which charger a line is about: ``extra={"charger": id}`` if given, else the first argument of a
line of the gateway's own loggers that starts with ``"%s:"`` or ``"%s "`` (the house style:
``log.warning("%s: ...", charger_id, ...)``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["LEVELS", "JournalFormatter", "JsonFormatter", "configure", "set_level"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Libraries whose info lines say nothing an operator needs.
_QUIET = ("websockets", "uvicorn", "httpx", "httpcore", "aiosqlite")
_ROOT = "gateway"


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def charger_of(record: logging.LogRecord) -> str | None:
    """The charger a record is about, if any (see the module docstring)."""
    given = getattr(record, "charger", None)
    if isinstance(given, str):
        return given
    if (
        record.name.startswith(_ROOT)
        and isinstance(record.msg, str)
        and record.msg.startswith(("%s:", "%s "))
        and isinstance(record.args, tuple)
        and record.args
        and isinstance(record.args[0], str)
    ):
        return record.args[0]
    return None


class JournalFormatter(logging.Formatter):
    """``<priority>LEVEL logger: message``; continuation lines (tracebacks) get the prefix too."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        charger = charger_of(record)
        if charger is not None:
            body["charger"] = charger
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def configure(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Install the one stderr handler on the root logger (replacing any earlier one)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif os.environ.get("JOURNAL_STREAM"):
        formatter = JournalFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    set_level(level)


def set_level(level: str) -> None:
    """The gateway's own level (``debug`` traces every frame); libraries stay at warning."""
    value = LEVELS[level]
    logging.getLogger(_ROOT).setLevel(value)
    logging.getLogger().setLevel(min(value, logging.INFO))
