"""Noticing that the event loop was held up, so that the server's slowness is not
blamed on its clients.

Contract:
- :class:`StallWatch` runs a timer every ``tick`` seconds once :meth:`StallWatch.start`
  is called, until :meth:`StallWatch.stop`. A timer that fires late means the loop was
  busy with something else for that long; each lateness over ``tick`` is kept for
  ``keep`` seconds (at most :data:`MAX_KEPT` of them).
- :meth:`StallWatch.stalled` is the sum of those stalls within the last ``seconds``.
- ``clock`` (monotonic seconds) is a plain attribute; :meth:`StallWatch.note` records
  a stall directly, for tests.

Cost: one timer callback every ``tick`` (a quarter second), whatever the load.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

MAX_KEPT = 1000


class StallWatch:
    """How long the event loop was held up, recently (see the contract)."""

    def __init__(self, tick: float = 0.25, keep: float = 300.0) -> None:
        self.tick = tick
        self.keep = keep
        self.clock: Callable[[], float] = time.monotonic
        self._stalls: deque[tuple[float, float]] = deque(maxlen=MAX_KEPT)  # (when, seconds)
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Begin watching (on the running loop)."""
        if self._timer is None:
            self._arm()

    def stop(self) -> None:
        """Stop watching."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._due = self.clock() + self.tick
        self._timer = asyncio.get_running_loop().call_later(self.tick, self._fired)

    def _fired(self) -> None:
        now = self.clock()
        late = now - self._due
        # A timer a little late is normal; one later than its whole tick was held up.
        if late > self.tick:
            self.note(late, now)
        self._arm()

    def note(self, seconds: float, when: float | None = None) -> None:
        """Record that the loop was held up for ``seconds``, ending at ``when`` (now)."""
        self._stalls.append((self.clock() if when is None else when, seconds))

    def stalled(self, seconds: float) -> float:
        """Seconds the loop was held up within the last ``seconds``."""
        now = self.clock()
        while self._stalls and self._stalls[0][0] < now - self.keep:
            self._stalls.popleft()
        since = now - seconds
        return sum(length for when, length in self._stalls if when >= since)
