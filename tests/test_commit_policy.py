"""The commit policy: what one change of a streaming answer makes the screen do."""

from __future__ import annotations

import pytest

from kindlessh._throttle import CommitAction, commit_action


def action(
    *,
    active: bool = True,
    answer: int = 0,
    thoughts: int = 0,
    shown: tuple[int, int] = (0, 0),
    show_thoughts: bool = False,
) -> CommitAction:
    return commit_action(
        active=active,
        answer=answer,
        thoughts=thoughts,
        shown_answer=shown[0],
        shown_thoughts=shown[1],
        show_thoughts=show_thoughts,
    )


@pytest.mark.parametrize("show_thoughts", [False, True])
@pytest.mark.parametrize("shown", [(0, 0), (5, 3), (10, 8)])
def test_an_ended_answer_is_committed_at_once(show_thoughts: bool, shown: tuple[int, int]) -> None:
    # Done, stopped, failed, or no turn at all: the final state shows without waiting.
    assert action(active=False, answer=10, thoughts=8, shown=shown,
                  show_thoughts=show_thoughts) is CommitAction.FLUSH
    assert action(active=False) is CommitAction.FLUSH


@pytest.mark.parametrize("show_thoughts", [False, True])
def test_the_first_words_are_committed_at_once(show_thoughts: bool) -> None:
    assert action(answer=3, show_thoughts=show_thoughts) is CommitAction.FLUSH
    # Even after thoughts were shown: the answer's own first words are the leading edge.
    assert action(answer=3, thoughts=9, shown=(0, 9),
                  show_thoughts=show_thoughts) is CommitAction.FLUSH


def test_the_first_shown_thoughts_are_committed_at_once() -> None:
    assert action(thoughts=4, show_thoughts=True) is CommitAction.FLUSH


def test_more_answer_goes_through_the_throttle() -> None:
    assert action(answer=20, shown=(3, 0)) is CommitAction.POKE
    assert action(answer=20, thoughts=7, shown=(3, 0)) is CommitAction.POKE
    assert action(answer=20, thoughts=7, shown=(3, 7), show_thoughts=True) is CommitAction.POKE
    # Nothing new since the last commit: poking again costs nothing (the throttle's
    # trailing commit lands the same text).
    assert action(answer=20, shown=(20, 0)) is CommitAction.POKE


def test_more_shown_thoughts_go_through_the_throttle() -> None:
    assert action(thoughts=9, shown=(0, 4), show_thoughts=True) is CommitAction.POKE


def test_hidden_thinking_repaints_once_then_nothing() -> None:
    assert action(thoughts=4) is CommitAction.MARK_THOUGHTS
    assert action(thoughts=9, shown=(0, 4)) is CommitAction.NOTHING
    # Shown thoughts that have all been committed: nothing new to show either.
    assert action(thoughts=9, shown=(0, 9), show_thoughts=True) is CommitAction.NOTHING


def test_a_state_change_without_text_repaints() -> None:
    # Waiting for a slot, retrying after a 503: the status line changes, nothing else.
    assert action() is CommitAction.REPAINT
    assert action(show_thoughts=True) is CommitAction.REPAINT
