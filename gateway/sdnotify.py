"""A small systemd notify client (``sd_notify(3)`` protocol), with no dependency beyond the stdlib.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a filesystem path, or an abstract
socket written with a leading ``@``. The service sends newline-separated ``KEY=VALUE`` datagrams:
``READY=1`` once it serves, ``STATUS=…`` for ``systemctl status``, ``WATCHDOG=1`` at least every
``$WATCHDOG_USEC`` microseconds when ``WatchdogSec=`` is set, and ``STOPPING=1`` when it shuts down.

Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a no-op. Sending never raises: a failed
send is logged once at WARNING (later ones at DEBUG) and reported as ``False``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["Notifier", "watchdog_interval_s", "watchdog_loop"]

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _socket_address(value: str) -> str | None:
    """The address to send to: a path, or an abstract name (``@name`` becomes ``\\0name``)."""
    if value.startswith("@"):
        return "\0" + value[1:] if len(value) > 1 else None
    # sd_notify(3) accepts absolute paths only (and vsock addresses, which a Pi never has).
    return value if value.startswith("/") else None


class Notifier:
    """Sends ``sd_notify`` messages to one socket address, or does nothing when it has none."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        if address and self._address is None:
            log.warning("ignoring unsupported %s=%r", NOTIFY_SOCKET, address)
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (a no-op one when it is unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get(NOTIFY_SOCKET) or None)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a usable notify socket."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (each ``KEY=VALUE``) as one datagram; ``True`` if it was sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a wedged systemd: a full queue is a failed send.
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                log.warning(
                    "systemd notification failed (further failures logged at debug): %s", exc
                )
                self._warned = True
            else:
                log.debug("systemd notification failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (with an optional status line): start-up is complete."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line shown by ``systemctl status``."""
        return self.notify(_status_field(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive and healthy."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: a graceful shutdown has begun."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.notify(*fields)

    def close(self) -> None:
        """Release the socket; later notifications open a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_field(text: str) -> str:
    # One datagram carries newline-separated fields, so a status must stay on one line.
    return "STATUS=" + " ".join(text.splitlines())


def watchdog_interval_s(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, or ``None`` without a watchdog.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; any other process
    (``pid``, by default this one) gets ``None``, as in ``sd_watchdog_enabled(3)``.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get(WATCHDOG_PID)
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    # sd_watchdog_enabled(3): "send a keep-alive ping at half the interval".
    return usec / 2_000_000


async def watchdog_loop(
    notifier: Notifier,
    interval_s: float,
    is_healthy: Callable[[], Awaitable[bool]],
    why: Callable[[], str | None] | None = None,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval_s`` while ``is_healthy()`` holds; runs until cancelled.

    When the check fails, raises or takes longer than ``interval_s``, no ping is sent, so a wedged
    store lets systemd's watchdog restart the service. Pings resume if the check recovers in time.
    ``why()``, if given, names the reason of a failed check for the log and ``systemctl status``.
    The gateway's check is ``Store.healthy``: true while neither the last commit nor the last
    look at the store's file found a fault, no commit hangs and the store's probe completes its
    rounds. It commits nothing itself: this loop running at all shows the event loop is alive.
    """
    loop = asyncio.get_running_loop()
    healthy_before = True
    next_at = loop.time()
    while True:
        next_at += interval_s
        try:
            async with asyncio.timeout(interval_s):
                healthy = await is_healthy()
        except TimeoutError:
            healthy = False
            reason = f"health check took longer than {interval_s:g} s"
        except Exception as exc:  # a failing check means unhealthy, never a dead watchdog task
            healthy = False
            reason = f"health check raised {type(exc).__name__}"
        else:
            reason = (why() if why is not None else None) or "health check failed"
        if healthy:
            notifier.watchdog()
            if not healthy_before:
                log.info("health check passes again; watchdog pings resumed")
                notifier.status("running")
        elif healthy_before:
            log.error("%s; withholding watchdog pings", reason)
            notifier.status(f"unhealthy: {reason}")
        healthy_before = healthy
        # Keep a steady cadence: the time the check took counts against the interval.
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at = max(next_at, loop.time())
