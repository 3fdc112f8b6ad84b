"""A fake clock for timers: time moves only when a test says so.

``FakeTimers.clock`` stands in for ``time.monotonic`` and ``FakeTimers.call_later`` for
the loop's ``call_later`` (as :class:`kindlessh._throttle.CommitThrottle` takes them);
``advance(seconds)`` moves the clock, running each callback that falls due, in order,
at its own time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class FakeTimer:
    """One scheduled callback; ``cancel()`` drops it."""

    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeTimers:
    now: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    @property
    def pending(self) -> list[float]:
        """When the scheduled callbacks that are still waiting fall due."""
        return sorted(t.when for t in self.timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, running what falls due on the way."""
        end = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = end
