"""What one charger's traffic shows the rest of the gateway: the depot view, hooks and watchers.

The relay core reports the CALLs it sees (``ChargerCallSeen``, ``CloudCallSeen``) and the
charger's answers to the cloud's CALLs (``ChargerAnswered``); this driver shows them to their
observers: the depot view folds the charger's own payloads (status, meter values, transactions),
a :class:`~gateway.net.host.SessionHook` (reservations) hears the actions it asked for and has
its say on an offline answer's auth info, a :class:`~gateway.net.host.ChargerWatcher` (the local
list push) is told synchronously before a watched cloud CALL is queued. A relayed frame reaches
this module only when the core reports one of those actions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from gateway.core.depot import FOLDED_CALLS, DepotView
from gateway.net.host import ChargerWatcher, SessionHook
from gateway.ocpp import frames
from gateway.ocpp.frames import Call, CallError, CallResult, OcppVersion

__all__ = ["ObservedSession", "ObserversHost", "SessionObservers", "trace_frame"]

# The session's logger: its frame lines are the session's lines (log.level = "debug").
session_log = logging.getLogger("gateway.net.session")


def trace_frame(charger_id: str, direction: str, message: str | bytes) -> None:
    """The debug line of one frame: direction, charger, message type, action, message id."""
    kind, action, message_id = frames.describe(message)
    session_log.debug(
        "%s: frame %s %s %s %s",
        charger_id,
        direction,
        kind,
        action,
        message_id,
        extra={"charger": charger_id},
    )


class ObservedSession(Protocol):
    """What the observers read of their session (and the hooks and watchers are given)."""

    @property
    def charger_id(self) -> str: ...
    @property
    def version(self) -> OcppVersion: ...
    @property
    def last_seen_at(self) -> float | None:
        """Unix time of the charger's last frame."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> object: ...


# The session type (``gateway.net.session.ChargerSession``); contravariant in the hosts' protocols.
S = TypeVar("S", bound=ObservedSession)
S_contra = TypeVar("S_contra", bound=ObservedSession, contravariant=True)


class ObserversHost(Protocol[S_contra]):
    """What the observers need from the hub (a part of :class:`~gateway.net.host.SessionHost`)."""

    @property
    def hooks(self) -> Sequence[SessionHook[S_contra]]: ...
    @property
    def hooked_charger_actions(self) -> frozenset[str]: ...
    @property
    def watchers(self) -> Sequence[ChargerWatcher[S_contra]]: ...
    @property
    def depot(self) -> DepotView: ...


class SessionObservers(Generic[S]):
    """Shows one session's CALLs and answers to the depot view, the hooks and the watchers."""

    __slots__ = (
        "_clock",
        "_host",
        "_session",
        "_wall",
    )

    def __init__(
        self,
        session: S,
        host: ObserversHost[S],
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._host = host
        self._clock = clock  # the relay's (monotonic): when a sampled CALL came
        self._wall = wall_clock  # unix time: what the depot view shows

    def charger_call(self, call: Call, at: float | None = None) -> None:
        """The charger sent ``call`` (reported for folded and hooked actions only); ``at``: when,
        on the relay's clock, if it is shown later than it came (a sampled CALL)."""
        session, host = self._session, self._host
        if call.action in FOLDED_CALLS:  # the depot view, from the charger's own payload
            # The frame's arrival, as the API shows it live.
            seen = session.last_seen_at if at is None else self._wall() - (self._clock() - at)
            host.depot.charger_call(
                session.charger_id,
                session.version,
                call.action,
                call.payload,
                seen if seen is not None else self._wall(),
            )
        for hook in host.hooks if call.action in host.hooked_charger_actions else ():
            if call.action in hook.charger_actions:
                session.spawn(hook.on_charger_call(session, call), f"hook for {call.action}")

    def cloud_call(self, call: Call) -> None:
        """The cloud sent ``call``; it is not yet queued toward the charger."""
        for watcher in self._host.watchers:
            if call.action in watcher.cloud_calls:
                watcher.cloud_call(self._session, call)

    def cloud_call_answered(self, call: Call, answer: CallResult | CallError) -> None:
        """The charger answered the cloud's ``call``."""
        session = self._session
        for hook in self._host.hooks:
            if call.action in hook.cloud_actions:
                session.spawn(hook.on_cloud_call_answered(session, call, answer), "hook")

    async def gate(self, call: Call, auth_info: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The auth info to answer ``call`` offline with, after each hook's say."""
        for hook in self._host.hooks:
            auth_info = await hook.gate(self._session, call, auth_info, now)
        return auth_info
