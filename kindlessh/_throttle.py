"""When streamed text is committed to the screen: what a change asks for, and how often.

Contract:
- :func:`commit_action` is the commit policy, a pure function: given one change of the
  conversation (the last turn's state and lengths, and how much of it the screen has
  committed) it says what the screen does: commit at once, commit through the throttle,
  mark hidden thoughts as seen, repaint, or nothing. The screen applies the action.
- :class:`CommitThrottle`: ``poke()`` says new text arrived. The first poke after a quiet
  spell commits at once (leading edge: the first words show immediately); later pokes
  commit at most once per ``interval`` seconds, the last one always landing (trailing
  edge), so nothing is lost. ``flush()`` commits now (the answer ended). ``cancel()``
  drops any pending commit. With ``pace``, the interval used is ``pace(interval)``:
  longer while the server is overloaded; with ``spread``, a commit is handed to it to run
  in turn with other screens' commits (see :mod:`._pace`). ``clock`` and ``schedule``
  (default: the running loop's ``call_later``) are the throttle's only view of time, so a
  test can drive it with a fake clock.

Strategy: throttle the *answer*, not prompt-toolkit's renderer. ``min_redraw_interval``
would also delay the echo of typed keys, which must stay immediate on every screen.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Protocol


class CommitAction(enum.Enum):
    """What the screen does about one change of the conversation."""

    FLUSH = "flush"  # commit now: the final state, or the first words or thoughts
    POKE = "poke"  # commit through the throttle: more of the same text
    MARK_THOUGHTS = "mark thoughts"  # hidden thinking began: mark it seen, repaint once
    REPAINT = "repaint"  # a state change with no text yet (waiting, retrying)
    NOTHING = "nothing"  # more hidden thinking: nothing on the screen changes


def commit_action(
    *,
    active: bool,
    answer: int,
    thoughts: int,
    shown_answer: int,
    shown_thoughts: int,
    show_thoughts: bool,
) -> CommitAction:
    """The commit policy for one change (see the module contract).

    Args:
        active: whether the last turn may still grow (False also when there is none).
        answer: the characters of the answer that have arrived.
        thoughts: the characters of the thoughts that have arrived.
        shown_answer: the characters of the answer committed to the screen.
        shown_thoughts: the characters of the thoughts committed to the screen.
        show_thoughts: whether the screen shows thoughts.
    """
    if not active:
        return CommitAction.FLUSH  # the final state, at once
    if answer and not shown_answer:
        return CommitAction.FLUSH  # leading edge: the first words at once
    if show_thoughts and thoughts and not shown_thoughts and not answer:
        return CommitAction.FLUSH  # the first thoughts, likewise
    if answer or (show_thoughts and thoughts > shown_thoughts):
        return CommitAction.POKE
    if thoughts and not shown_thoughts:
        # Hidden thinking: one repaint says so; later thoughts repaint nothing.
        return CommitAction.MARK_THOUGHTS
    if not thoughts:
        return CommitAction.REPAINT
    return CommitAction.NOTHING


class Timer(Protocol):
    """A scheduled call that can be cancelled (an :class:`asyncio.TimerHandle`)."""

    def cancel(self) -> None: ...


def call_later(delay: float, callback: Callable[[], None]) -> Timer:
    """Schedule ``callback`` in ``delay`` seconds on the running loop."""
    return asyncio.get_running_loop().call_later(delay, callback)


class CommitThrottle:
    """Rate-limits calls to ``commit`` to one per ``interval`` seconds."""

    def __init__(
        self,
        interval: float,
        commit: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        pace: Callable[[float], float] | None = None,
        spread: Callable[[object, Callable[[], None]], None] | None = None,
        schedule: Callable[[float, Callable[[], None]], Timer] = call_later,
    ) -> None:
        self.interval = interval
        self._pace = pace
        self._spread = spread
        self._commit = commit
        self._clock = clock
        self._schedule = schedule
        self._last = -float("inf")
        self._timer: Timer | None = None
        self.commits = 0

    def poke(self) -> None:
        """New text arrived: commit now if the interval has passed, else schedule it."""
        if self._timer is not None:
            return
        interval = self._pace(self.interval) if self._pace is not None else self.interval
        wait = self._last + interval - self._clock()
        if wait <= 0:
            self._fire()
        else:
            self._timer = self._schedule(wait, self._fire)

    def flush(self) -> None:
        """Commit now, cancelling any scheduled commit."""
        self.cancel()
        self._fire()

    def cancel(self) -> None:
        """Drop a scheduled commit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._last = self._clock()
        self.commits += 1
        if self._spread is not None:
            self._spread(self, self._commit)
        else:
            self._commit()
