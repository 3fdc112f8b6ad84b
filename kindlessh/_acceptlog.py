"""Logging "cannot accept a connection" once per interval, not once per try.

Contract:
- :class:`AcceptFailureLog` is an event loop exception handler. asyncio reports a
  failed ``accept()`` for lack of file descriptors or memory through the loop's
  exception handler, with a traceback, each time it retries (every second, per
  listening socket); under a flood that is megabytes of log a minute. This handler
  logs one line for the first such failure and then at most one per ``interval``
  seconds, saying how many there were since the last line; every other report goes to
  ``fallback`` (default: the loop's own handler).
- :func:`install_accept_log` sets it on a loop (``kindlessh serve`` does).
- ``clock`` (monotonic seconds) is a plain attribute so tests can replace it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kindlessh.server")

ACCEPT_FAILURE = "socket.accept() out of system resource"  # asyncio's message
INTERVAL = 60.0  # seconds between two lines about failed accepts


class AcceptFailureLog:
    """The loop exception handler described in the module contract."""

    def __init__(
        self,
        interval: float = INTERVAL,
        fallback: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None,
    ) -> None:
        self.interval = interval
        self.fallback = fallback
        self.clock: Callable[[], float] = time.monotonic
        self.failures = 0  # every failed accept reported
        self._unlogged = 0  # failures since the last line
        self._logged_at: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILURE:
            if self.fallback is not None:
                self.fallback(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failures += 1
        self._unlogged += 1
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return
        exc = context.get("exception")
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error(
            "cannot accept new connections: %s (%d time(s) since the last report; "
            "retrying every second, reported at most every %g s)",
            why, self._unlogged, self.interval,
        )
        self._logged_at = now
        self._unlogged = 0


def install_accept_log(loop: asyncio.AbstractEventLoop) -> AcceptFailureLog:
    """Set an :class:`AcceptFailureLog` as ``loop``'s exception handler, keeping any
    handler already set as its fallback."""
    handler = AcceptFailureLog(fallback=loop.get_exception_handler())
    loop.set_exception_handler(handler)
    return handler
