"""Load pacing: intervals stretch while the event loop falls behind, and come back."""

from __future__ import annotations

import asyncio
import time

from kindlessh._pace import Pace
from kindlessh._throttle import CommitThrottle


def test_a_calm_loop_leaves_intervals_alone() -> None:
    pace = Pace()
    for _ in range(20):
        pace.observe(0.001)
    assert pace.factor == 1.0
    assert pace.stretch(0.05) == 0.05


def test_lag_stretches_then_relaxes_within_bounds() -> None:
    pace = Pace()
    for _ in range(30):
        pace.observe(0.2)  # the loop wakes 200 ms late, again and again
    assert pace.factor == 10.0
    assert pace.stretch(0.05) == 0.5
    assert pace.stretch(1.0) == 2.0  # never beyond 2 s (or the interval itself)
    assert pace.stretch(3.0) == 3.0
    for _ in range(60):
        pace.observe(0.0)
    assert pace.factor == 1.0


def test_the_throttle_commits_at_the_stretched_interval() -> None:
    now = [0.0]
    commits: list[float] = []
    throttle = CommitThrottle(0.05, lambda: commits.append(now[0]), clock=lambda: now[0],
                              pace=lambda interval: interval * 4)

    async def run() -> None:
        throttle.poke()  # leading edge: at once, paced or not
        now[0] = 0.1
        throttle.poke()  # 0.1 s after: a plain 50 ms throttle would commit now
        assert commits == [0.0]
        throttle.cancel()

    asyncio.run(run())


async def test_the_probe_sees_a_blocked_loop() -> None:
    pace = Pace(period=0.01)
    pace.start()
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.15)  # the loop is blocked: the next probe wakes 150 ms late
        await asyncio.sleep(0.03)
        assert pace.factor > 1.0
    finally:
        await pace.aclose()
