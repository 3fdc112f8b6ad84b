"""Load pacing: intervals stretch while the event loop falls behind, and come back."""

from __future__ import annotations

import asyncio

import pytest

from kindlessh._pace import Pace
from kindlessh._throttle import CommitThrottle

from .fake_clock import FakeTimers


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
    timers = FakeTimers()
    commits: list[float] = []
    throttle = CommitThrottle(0.05, lambda: commits.append(timers.now), clock=timers.clock,
                              pace=lambda interval: interval * 4, schedule=timers.call_later)
    throttle.poke()  # leading edge: at once, paced or not
    timers.advance(0.1)
    throttle.poke()  # 0.1 s after: a plain 50 ms throttle would commit now
    assert commits == [0.0]
    timers.advance(0.099)
    assert commits == [0.0]  # not before the stretched interval...
    timers.advance(0.001)
    assert commits == [0.0, pytest.approx(0.2)]  # ...but at it: 4 x 50 ms after the first
    assert timers.pending == []


async def test_the_probe_sees_a_blocked_loop() -> None:
    # The probe sleeps 10 ms again and again; the fake sleep says how late each wake-up
    # was: on time three times, then 150 ms late (the loop was blocked), then on time.
    now = [0.0]
    lateness = [0.0, 0.0, 0.0, 0.15, 0.0]
    probed = asyncio.Event()
    factors: list[float] = []

    async def sleep(seconds: float) -> None:
        factors.append(pace.factor)  # as the previous probes left it
        if not lateness:
            probed.set()
            await asyncio.Event().wait()  # no more probes: wait to be cancelled
        now[0] += seconds + lateness.pop(0)

    pace = Pace(period=0.01, clock=lambda: now[0], sleep=sleep)
    pace.start()
    try:
        await asyncio.wait_for(probed.wait(), 5.0)
        # On time: nothing stretched. The late wake-up stretches at once, and the lag,
        # smoothed, still stretches at the next probe.
        assert factors == [1.0, 1.0, 1.0, 1.0, 1.5, 2.25]
        assert pace.lag == pytest.approx(0.7 * 0.3 * 0.15)
    finally:
        await pace.aclose()


async def test_spread_runs_one_commit_per_screen_in_turn() -> None:
    async def never(seconds: float) -> None:
        await asyncio.Event().wait()  # the probe stays out of the way

    pace = Pace(sleep=never)
    ran: list[str] = []
    pace.spread("a", lambda: ran.append("before start: at once"))
    assert ran == ["before start: at once"]

    def first() -> None:
        ran.append("a2")
        # Whatever becomes ready during a commit (its repaint, a keystroke) runs before
        # the next screen's commit.
        asyncio.get_running_loop().call_soon(ran.append, "between")

    pace.start()
    try:
        pace.spread("a", lambda: ran.append("a1"))
        pace.spread("b", lambda: ran.append("b"))
        pace.spread("a", first)  # replaces a1, keeps a's place
        assert ran == ["before start: at once"]  # nothing runs in the caller's turn
        for _ in range(20):
            await asyncio.sleep(0)
        assert ran[1:] == ["a2", "between", "b"]
        pace.spread("c", lambda: ran.append("c"))
    finally:
        await pace.aclose()
    assert ran[1:] == ["a2", "between", "b", "c"]  # a commit still waiting runs on close
