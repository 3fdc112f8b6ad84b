"""Transcript wrapping and the commit throttle, below the UI."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_toolkit.utils import get_cwidth

from kindlessh._throttle import CommitThrottle
from kindlessh._view import wrap

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


async def test_throttle_leading_edge_then_one_per_interval() -> None:
    commits: list[int] = []
    throttle = CommitThrottle(0.05, lambda: commits.append(1))
    throttle.poke()  # first words: at once
    assert commits == [1]
    for _ in range(20):
        throttle.poke()
    assert commits == [1]  # the rest waits for the interval
    await asyncio.sleep(0.08)  # the scheduled trailing commit lands, once
    assert len(commits) == 2
    throttle.flush()
    assert len(commits) == 3 and throttle.commits == 3


async def test_throttle_cancel_drops_the_pending_commit() -> None:
    commits: list[int] = []
    throttle = CommitThrottle(0.05, lambda: commits.append(1))
    throttle.poke()
    throttle.poke()
    throttle.cancel()
    await asyncio.sleep(0.1)
    assert commits == [1]
