"""The tasks one charger's session starts: each kept until it ends, a failure counted and logged.

A session runs its store I/O and its hooks as tasks (a local answer, a replay outcome, a hook's
``on_charger_call`` ...). None of them is awaited by the code that starts it; an exception is
counted under ``errors{kind="internal"}`` and logged with the charger's id, never lost, and the
session cancels whatever still runs when it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any

__all__ = ["SessionTasks"]

log = logging.getLogger("gateway.net.session")  # the lines are the session's


class SessionTasks:
    """The running tasks of one session."""

    __slots__ = (
        "_charger_id",
        "_errors",
        "_tasks",
    )

    def __init__(self, charger_id: str, errors: Counter[str]) -> None:
        self._charger_id = charger_id
        self._errors = errors
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task; ``what`` names it in the log line of its failure."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._errors["internal"] += 1
                log.error("%s: %s failed", self._charger_id, what, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def cancel(self, *others: asyncio.Task[Any] | None) -> None:
        """Cancel every task still running (and ``others``), and wait for them to end."""
        tasks = [t for t in (*others, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
