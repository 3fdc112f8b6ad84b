"""Probes shared by the benchmarks: the event loop's lag, and a test terminal that
timestamps when its screen first shows what a probe looks for (keystroke echo latency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.sshterm import Terminal


async def loop_lag(lags: list[float], stop: asyncio.Event, tick: float) -> None:
    """Until ``stop`` is set, sleep ``tick`` seconds again and again and append how late
    each wake-up was, in milliseconds, to ``lags``."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + tick
        await asyncio.sleep(tick)
        lags.append((loop.time() - expected) * 1000)


class ProbeTerminal(Terminal):
    """A Terminal that timestamps the moment its screen first satisfies a probe."""

    def __init__(self, cols: int, rows: int) -> None:
        super().__init__(cols, rows)
        self._probe: Callable[[], bool] | None = None
        self._hit: asyncio.Future[float] | None = None

    def _feed(self, data: str) -> None:
        super()._feed(data)
        hit = self._hit
        if hit is not None and not hit.done() and self._probe is not None and self._probe():
            hit.set_result(time.perf_counter())

    def input_line(self) -> str:
        """The bottom row: the prompt and what is typed."""
        return str(self.screen.display[-1]).rstrip()

    async def keystroke(self, key: str, shows: Callable[[], bool], timeout: float = 5.0) -> float:
        """Type ``key``; milliseconds until the screen satisfies ``shows``."""
        self._probe = shows
        self._hit = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        try:
            await self.send(key)
            hit = await asyncio.wait_for(self._hit, timeout)
        finally:
            self._probe = None
            self._hit = None
        return (hit - start) * 1000


def input_is(term: ProbeTerminal, line: str) -> Callable[[], bool]:
    """A probe: the input line shows exactly ``line``."""
    return lambda: term.input_line() == line
