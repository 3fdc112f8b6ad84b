"""Transcript wrapping and the commit throttle, below the UI."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.utils import get_cwidth

from kindlessh._throttle import CommitThrottle
from kindlessh._view import wrap

from .fake_clock import FakeTimers

PROSE = (
    "The three primary colors of traditional color theory are red, yellow, and blue. "
    "In light, the additive primaries are red, green and blue."
)


@pytest.mark.parametrize("width", [12, 20, 54, 80])
def test_wrap_keeps_words_whole_and_within_width(width: int) -> None:
    lines = wrap(PROSE, width)
    assert all(get_cwidth(line) <= width for line in lines)
    assert " ".join(lines).split() == PROSE.split()
    words = set(PROSE.split())
    for line in lines:
        for word in line.split():
            assert word in words  # never cut inside a word that fits on a line


def test_wrap_cuts_only_words_longer_than_the_line() -> None:
    assert wrap("ab " + "x" * 25 + " cd", 10) == ["ab", "x" * 10, "x" * 10, "xxxxx cd"]


def test_wrap_keeps_paragraphs_and_hangs_list_items() -> None:
    text = "Intro line.\n\n* a list item that is long enough to wrap\n2. numbered item wraps too"
    assert wrap(text, 20) == [
        "Intro line.",
        "",
        "* a list item that",
        "  is long enough to",
        "  wrap",
        "2. numbered item",
        "   wraps too",
    ]


def test_wrap_measures_wide_characters_in_cells() -> None:
    lines = wrap("漢字漢字漢字 漢字漢字", 10)
    assert all(get_cwidth(line) <= 10 for line in lines)
    assert "".join(lines).replace(" ", "") == "漢字漢字漢字漢字漢字"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab cd\n漢é-*1."), max_size=200), st.integers(2, 60))
def test_wrap_never_overflows_and_loses_no_text(text: str, width: int) -> None:
    lines = wrap(text, width)
    assert all(get_cwidth(line) <= width for line in lines)
    assert "".join("".join(lines).split()) == "".join(text.split())


def test_throttle_leading_edge_then_one_per_interval() -> None:
    timers = FakeTimers()
    commits: list[float] = []
    throttle = CommitThrottle(
        0.05, lambda: commits.append(timers.now), clock=timers.clock, schedule=timers.call_later
    )
    throttle.poke()  # first words: at once
    assert commits == [0.0]
    for _ in range(20):
        timers.advance(0.001)
        throttle.poke()
    assert commits == [0.0]  # the rest waits for the interval
    assert timers.pending == [pytest.approx(0.05)]  # one trailing commit, not twenty
    timers.advance(0.1)  # the scheduled trailing commit lands, once, on time
    assert commits == [0.0, pytest.approx(0.05)]
    throttle.flush()
    assert len(commits) == 3 and throttle.commits == 3


def test_throttle_after_a_quiet_spell_commits_at_once_again() -> None:
    timers = FakeTimers()
    commits: list[float] = []
    throttle = CommitThrottle(
        0.05, lambda: commits.append(timers.now), clock=timers.clock, schedule=timers.call_later
    )
    throttle.poke()
    timers.advance(0.2)
    throttle.poke()
    assert commits == [0.0, 0.2] and timers.pending == []


def test_throttle_cancel_drops_the_pending_commit() -> None:
    timers = FakeTimers()
    commits: list[int] = []
    throttle = CommitThrottle(
        0.05, lambda: commits.append(1), clock=timers.clock, schedule=timers.call_later
    )
    throttle.poke()
    throttle.poke()
    assert len(timers.pending) == 1
    throttle.cancel()
    timers.advance(1.0)
    assert commits == [1]
    assert timers.pending == []


async def test_throttle_schedules_on_the_running_loop_by_default() -> None:
    # The default seam: a real loop timer (the fake-clock tests above cover the timing).
    second = asyncio.get_running_loop().create_future()
    commits: list[int] = []

    def commit() -> None:
        commits.append(1)
        if len(commits) == 2:
            second.set_result(None)

    throttle = CommitThrottle(0.01, commit)
    throttle.poke()
    throttle.poke()
    assert commits == [1]
    await asyncio.wait_for(second, 5.0)  # a generous bound: only "it lands" is checked
