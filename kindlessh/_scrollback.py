"""The transcript of one screen: its items, what of each answer is committed, and where
the reader is (scrolled up a few lines, or paged back a few pages).

Contract:
- :class:`Scrollback` is plain state: no prompt-toolkit application, no event loop. It is
  told how it is drawn (``paged``, ``color``, ``show_thoughts``) and calls ``on_change``
  whenever what it would show changes (the screen asks for a repaint there).
- :meth:`Scrollback.lines` is what the screen's transcript area draws: the lines that fit
  in ``height`` rows at ``width`` cells, at the reader's position.
- A streaming answer shows only what was committed (:meth:`Scrollback.commit`), so the
  commit throttle decides when text appears; finished turns show whole.
- Anything the server says (:meth:`Scrollback.say`), a new question, or a profile switch
  brings the reader back to the newest lines.
- :meth:`Scrollback.sync` follows the conversation's turns, whichever screen changed them.
- :meth:`Scrollback.top` goes to the first page of the latest answer (``/top``, Home;
  ``away=True`` when it finished while the reader was away). :attr:`Scrollback.page`
  says which page of the latest answer is shown, as of the last :meth:`Scrollback.lines`.
- A resize keeps the reader on the same part of the answer: the page being read is
  held by how much of the answer's text comes before its first line (its non-blank
  characters, which do not depend on the width), not by a line or page number.

Strategy, smooth (scrolling): the newest lines are at the bottom; scrolled up, the page
being read stays still while the answer grows below it. E-ink (paged): the last question
starts a page at the top of the screen; its answer fills down and flips to a new page (one
line of overlap) when full. A flip repaints the screen once; scrolling would repaint every
row on every commit, and e-ink pays for each changed pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._conversation import Turn
from ._glyphs import GlyphMode
from ._view import Item, Line, Look, Notice, Shown


@dataclass(frozen=True)
class Page:
    """Where the e-ink reader is in the latest answer: page ``number`` of ``total``."""

    number: int
    total: int


def _ink(line: Line) -> int:
    """The characters of ``line`` that are the same at any width: not spaces, and not
    the rules drawn as wide as the screen."""
    return sum(len(text) - text.count(" ") - text.count("─") for _, text, *_ in line)


class Scrollback:
    """One screen's transcript and reading position (see the module contract).

    Args:
        on_change: called when what the transcript shows changed (ask for a repaint).
        paged: e-ink paging instead of scrolling.
        color: draw in colour (False: 1-bit).
    """

    def __init__(
        self,
        on_change: Callable[[], None] = lambda: None,
        *,
        paged: bool = False,
        color: bool = False,
    ) -> None:
        self.on_change = on_change
        self.paged = paged
        self.color = color
        self.show_thoughts = False
        self.glyphs: GlyphMode = "full"
        self.items: list[Item] = []
        self._shown: dict[int, tuple[int, int]] = {}  # turn id -> committed answer, thoughts
        self.lines_up = 0  # smooth: lines scrolled up from the bottom
        self.page_back = 0  # eink: pages back from the current one (as last laid out)
        self._pinned: int | None = None  # eink: first line of the page being read
        self._move = 0  # eink: pages to move at the next layout (positive: back)
        self._top = False  # go to the first page of the latest answer at the next layout
        self._place: tuple[int, int, int] | None = None  # width, anchor, ink before _pinned
        self._last_total = 0
        self.page: Page | None = None  # eink: the page of the latest answer shown
        self.away = False  # the latest answer finished while the reader was away

    # ----- what is in it --------------------------------------------------------------

    def say(self, text: str, kind: str = "info", bold: tuple[str, ...] = ()) -> Notice:
        """Add a notice from the server (``bold``: words shown bold in it); the reader is
        brought back to it."""
        notice = Notice(text, kind, bold)
        self.items.append(Item(notice=notice))
        self.bottom()
        return notice

    def retract(self, notice: Notice) -> bool:
        """Take ``notice`` back if it is still the last item (a notice about to be
        replaced by a fuller one); returns whether it was."""
        if self.items and self.items[-1].notice is notice:
            self.items.pop()
            return True
        return False

    def show_turns(self, turns: list[Turn]) -> None:
        """Add ``turns``, as far as they have arrived: a screen attached mid-answer shows
        what has arrived at once, then it streams on."""
        for turn in turns:
            self.items.append(Item(turn=turn))
            self._shown[turn.id] = (len(turn.answer), len(turn.thoughts))

    def clear(self) -> None:
        """Empty the transcript (another conversation is shown) and go to the bottom."""
        self.items = []
        self._shown.clear()
        self.bottom()

    def sync(self, turns: list[Turn]) -> None:
        """Follow the conversation's ``turns``, whichever screen changed them (a question
        asked, or an answer replaced by /retry, on another connection of the user)."""
        shown = [item.turn for item in self.items if item.turn is not None]
        if shown == turns:
            return
        if shown and not turns:
            # Every turn gone at once: the conversation was deleted (here or elsewhere).
            self.items = []
            self._shown.clear()
            self.say("This conversation was deleted; a new one starts here.")
            return
        present = set(turns)
        self.items = [item for item in self.items if item.turn is None or item.turn in present]
        kept = {item.turn for item in self.items if item.turn is not None}
        for turn in turns:
            if turn not in kept:
                self.items.append(Item(turn=turn))
        # A new question is where the reader looks next.
        self.bottom()

    # ----- what of a streaming answer is on the screen --------------------------------

    def committed(self, turn: Turn) -> tuple[int, int]:
        """The characters of ``turn``'s answer and thoughts committed so far."""
        return self._shown.get(turn.id, (0, 0))

    def commit(self, turn: Turn) -> None:
        """Show everything of ``turn`` that has arrived."""
        self._shown[turn.id] = (len(turn.answer), len(turn.thoughts))
        self.on_change()

    def mark_thoughts(self, turn: Turn) -> None:
        """Count ``turn``'s thoughts as shown (hidden: the screen says it is thinking),
        keeping its answer as committed."""
        answer, _ = self.committed(turn)
        self._shown[turn.id] = (answer, len(turn.thoughts))
        self.on_change()

    def shown(self, turn: Turn) -> Shown:
        """The part of a turn that has been committed to the screen."""
        if turn.active:
            answer, thoughts = self._shown.get(turn.id, (0, 0))
            return Shown(turn.answer[:answer], turn.thoughts[:thoughts])
        return Shown(turn.answer, turn.thoughts)

    # ----- where the reader is --------------------------------------------------------

    def look(self, width: int) -> Look:
        """How the transcript is drawn at ``width``."""
        return Look(width, self.color, self.show_thoughts, self.glyphs)

    def restyle(self, *, paged: bool, color: bool) -> None:
        """Draw with another profile from now on; the reader goes to the bottom."""
        self.paged = paged
        self.color = color
        self.bottom()

    def bottom(self) -> None:
        """Back to the newest lines."""
        self.lines_up = self.page_back = self._move = 0
        self._pinned = self._place = None
        self._top = self.away = False
        self.on_change()

    def top(self, *, away: bool = False) -> None:
        """To the first page of the latest answer (its question at the top);
        ``away``: it finished while the reader was away (the status line says so)."""
        self.bottom()
        self._top = True
        self.away = away
        self.on_change()

    def scroll(self, pages: int, rows: int) -> None:
        """Scroll by ``pages`` screens (positive: back in time) on a screen of ``rows``
        rows: e-ink flips whole pages; smooth moves ``rows - 5`` lines at a time (the
        status, the input and a little overlap)."""
        self.away = False
        if self.paged:
            self._move += pages
            self.page_back = max(0, self.page_back + pages)  # exact at the next layout
        else:
            self.lines_up = max(0, self.lines_up + pages * max(1, rows - 5))
        self.on_change()

    def lines(self, width: int, height: int) -> list[Line]:
        """The lines that fit in ``height`` rows at the reader's position."""
        lines: list[Line] = []
        anchor = 0
        look = self.look(width)
        for item in self.items:
            if item.turn is not None:
                anchor = len(lines)
            lines.extend(item.lines(look, self.shown))
        if self.paged:
            return self._page(lines, anchor, width, height)
        total = len(lines)
        if self._top:
            self._top = False
            self.lines_up = max(0, total - anchor - height)
        if self.lines_up and total > self._last_total:
            # Keep the page the reader is looking at still while the answer grows.
            self.lines_up += total - self._last_total
        self._last_total = total
        self.lines_up = max(0, min(self.lines_up, total - height))
        end = total - self.lines_up
        return lines[max(0, end - height) : end]

    def _page(self, lines: list[Line], anchor: int, width: int, height: int) -> list[Line]:
        """E-ink paging from the last question at ``anchor`` (see the module strategy)."""
        step = max(1, height - 1)
        end = len(lines)
        while end > anchor and not "".join(text for _, text, *_ in lines[end - 1]).strip():
            end -= 1  # trailing blank lines never cause a flip
        rest = end - anchor
        flips = 0 if rest <= height else -(-(rest - height) // step)
        current = anchor + flips * step
        pinned = self._pinned
        if pinned is not None and self._place is not None and self._place[0] != width:
            # Resized: the same text, not the same line number, is read on.
            pinned = self._find(lines, anchor, self._place[2])
        if self._top:
            self._top = False
            pinned = anchor
        if self._move:
            pinned = max(0, (current if pinned is None else pinned) - self._move * step)
            self._move = 0
        if pinned is not None and pinned >= current:
            pinned = None  # back on the newest page: follow the answer again
        self._pinned = pinned
        if pinned is None:
            self.page_back, self._place = 0, None
            first = current
        else:
            first = pinned
            self.page_back = max(1, round((current - pinned) / step))
            ink = sum(_ink(line) for line in lines[anchor:pinned]) if pinned >= anchor else -1
            self._place = (width, anchor, ink)
        if first >= anchor and flips:
            number = min(flips + 1, max(1, round((first - anchor) / step) + 1))
            self.page = Page(number if first < current else flips + 1, flips + 1)
        else:
            self.page = None
        return lines[first : first + height]

    @staticmethod
    def _find(lines: list[Line], anchor: int, ink: int) -> int | None:
        """The first line at or after ``anchor`` with ``ink`` characters of the answer
        before it (the same place at another width), or None (before the answer)."""
        if ink < 0:
            return None
        seen = 0
        for index in range(anchor, len(lines)):
            if seen >= ink:
                return index
            seen += _ink(lines[index])
        return len(lines)
