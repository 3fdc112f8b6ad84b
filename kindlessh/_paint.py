"""Cheap repaints of the transcript: cached rows, terminal scrolling, unchanged rows skipped.

Contract:
- :class:`Transcript` is a prompt-toolkit container that draws pre-wrapped lines (from
  ``get_lines(width, height)``) at the top of its area, one line per row, clipped to the
  width. It draws what a ``Window`` with ``wrap_lines=False`` would: the same
  characters, styles, wide and zero-width characters, so the screen reads the same (see
  :func:`line_row` for the two edge cases it leaves out).
- When the lines it draws are the lines of its previous paint moved up by ``k`` rows (a
  streaming answer scrolls the transcript), it asks the terminal to scroll its rows by
  ``k`` (a scroll region and ``k`` line feeds, then the region reset and the cursor put
  back) and tells prompt-toolkit's renderer that the screen it painted last has moved
  likewise. Then only the new rows are painted, instead of every row of the transcript.
  Only on the alternate screen (``full_screen``), where rows are absolute.
- :func:`skip_unchanged_rows` makes prompt-toolkit's screen diff skip rows that did not
  change since the last paint (a C-speed dict comparison per row instead of a Python
  comparison per cell). It changes what is compared, never what is written.

Strategy: a laptop repaints a streaming answer twenty times a second. Without this, each
new line of the answer moves every row of the transcript, so every repaint rewrote most
of the screen: about 17 bytes on the wire per byte of answer and most of the server's CPU
under load. A terminal scrolls its own rows for a few bytes.

Both rely on private parts of prompt-toolkit 3.0 (``Renderer._last_screen`` and
``_cursor_pos``, and the module function ``renderer._output_screen_diff``); if one is
missing or has another shape, the economy is skipped and painting stays correct, only
dearer.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from prompt_toolkit import renderer as pt_renderer
from prompt_toolkit.application.current import get_app
from prompt_toolkit.cache import FastDictCache
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.layout.containers import Container
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.mouse_handlers import MouseHandlers
from prompt_toolkit.layout.screen import Char, Screen, WritePosition

log = logging.getLogger("kindlessh.paint")

Line = StyleAndTextTuples
Row = dict[int, Char]
Key = tuple[tuple[str, str], ...]  # a line's fragments, as a dict key

_CHARS: FastDictCache[tuple[str, str], Char] = FastDictCache(Char, size=100_000)
_EMPTY = Char("", "")  # the cell right of a wide character: differs from everything
_TRANSPARENT = "[transparent]"  # the style of a Screen's unwritten cells


def line_row(line: Line, width: int) -> Row:
    """The cells of ``line`` from column 0, clipped to ``width``, as prompt-toolkit's
    ``Window`` would write them: a wide character blanks the cell to its right, a
    zero-width character joins the character before it. Unlike a ``Window``, a wide
    character that would cross the right edge is left out, not written half off it, and
    a zero-width character is not also left in a cell of its own after the one it
    joined (a ``Window`` leaves it there when nothing follows on the line)."""
    row: Row = {}
    x = 0
    for style, text, *_ in line:
        for c in text:
            char = _CHARS[c, style]
            cells = char.width
            if x + cells > width:
                return row
            if cells == 0:
                if x >= width:
                    return row
                for back in (2, 1):
                    prev = row.get(x - back)
                    if prev is not None and prev.width == back:
                        row[x - back] = _CHARS[prev.char + c, prev.style]
                        break
                continue
            row[x] = char
            for i in range(1, cells):
                row[x + i] = _EMPTY
            x += cells
    return row


def scroll_sequence(top: int, bottom: int, shift: int, row: int, column: int) -> str:
    """The bytes that scroll rows ``top`` to ``bottom`` (1-based) up by ``shift`` rows
    and put the cursor back at ``row``, ``column`` (0-based, from the top left).

    Set the scroll region (DECSTBM), line feeds at its bottom margin (each scrolls the
    region by one row), reset the region and move the cursor back (CUP). Not DECSC and
    DECRC: some terminals keep one saved cursor for both screens, and the alternate
    screen's exit restores the shell's cursor from it. Only numbers go into it: this is
    the one raw write of the package.
    """
    top, bottom, shift, row, column = int(top), int(bottom), int(shift), int(row), int(column)
    return (f"\x1b[{top};{bottom}r\x1b[{bottom};1H" + "\n" * shift
            + f"\x1b[r\x1b[{row + 1};{column + 1}H")


def best_shift(old: Sequence[Key | None], new: Sequence[Key | None]) -> int:
    """How many rows to scroll ``old`` up so that the most rows show ``new``'s lines, or
    0 when scrolling would not leave at least two fewer rows to paint than not scrolling.

    Only rows with text count (blank rows match anywhere and prove nothing). Candidate
    shifts come from where the first few lines of ``new`` are in ``old``, so the search
    costs a few passes over the rows, not one per possible shift.
    """
    height = len(new)
    where: dict[Key, list[int]] = {}
    for j, key in enumerate(old):
        if key:
            where.setdefault(key, []).append(j)

    def matches(shift: int) -> int:
        return sum(1 for i in range(height - shift) if new[i] and new[i] == old[i + shift])

    candidates: set[int] = set()
    anchors = 0
    for i, key in enumerate(new):
        if not key:
            continue
        candidates.update(j - i for j in where.get(key, ()) if j > i)
        anchors += 1
        if anchors == 3 or len(candidates) >= 8:
            break
    if not candidates:
        return 0
    best, shift = max((matches(k), -k) for k in candidates)
    return -shift if best >= matches(0) + 2 else 0


def _key(line: Line) -> Key:
    return tuple((fragment[0], fragment[1]) for fragment in line)


class Transcript(Container):
    """The transcript's area of the screen (see the module contract).

    Args:
        get_lines: the lines to show for a width and height, at most ``height`` of them.
    """

    def __init__(self, get_lines: Callable[[int, int], list[Line]]) -> None:
        self.get_lines = get_lines
        self.scrolls = 0  # terminal scrolls asked for (a count for tests and benchmarks)
        self._rows: dict[Key, Row] = {}  # the last paint's rows, by line (at its width)
        self._keys: list[Key | None] = []  # what each row showed last time
        self._written: list[Row] = []  # the row objects of the last paint's screen
        self._area: tuple[int, int, int, int] | None = None  # x, y, width, height

    def reset(self) -> None:
        self._keys, self._written, self._area = [], [], None

    def preferred_width(self, max_available_width: int) -> Dimension:
        return Dimension()

    def preferred_height(self, width: int, max_available_height: int) -> Dimension:
        return Dimension(weight=1)

    def get_children(self) -> list[Container]:
        return []

    def write_to_screen(
        self,
        screen: Screen,
        mouse_handlers: MouseHandlers,
        write_position: WritePosition,
        parent_style: str,
        erase_bg: bool,
        z_index: int | None,
    ) -> None:
        xpos, ypos = write_position.xpos, write_position.ypos
        width, height = write_position.width, write_position.height
        lines = self.get_lines(width, height)[:height] if width > 0 and height > 0 else []
        keys: list[Key | None] = [_key(line) for line in lines]
        keys += [None] * (height - len(keys))
        area = (xpos, ypos, width, height)
        if area == self._area:
            self._scroll_to(keys, ypos, height)
        # Rows cut at another width (before a resize) are not this width's rows.
        cached = self._rows if self._area is not None and self._area[2] == width else {}
        rows: dict[Key, Row] = {}
        written: list[Row] = []
        buffer = screen.data_buffer
        for y, (key, line) in enumerate(zip(keys, lines, strict=False)):
            assert key is not None
            row = rows.get(key)
            if row is None:
                row = cached.get(key)
                if row is None:
                    row = line_row(line, width)
                rows[key] = row
            target = buffer[ypos + y]
            if xpos:
                target.update({x + xpos: char for x, char in row.items()})
            else:
                target.update(row)
            written.append(target)
        written += [buffer[ypos + y] for y in range(len(lines), height)]
        self._rows, self._keys, self._written, self._area = rows, keys, written, area
        screen.height = max(screen.height, ypos + height)
        screen.width = max(screen.width, xpos + width)

    def _scroll_to(self, keys: list[Key | None], ypos: int, height: int) -> None:
        """Scroll the terminal's rows when that leaves fewer rows to paint."""
        if height < 3 or len(self._keys) != height or keys == self._keys:
            return
        shift = best_shift(self._keys, keys)
        if not shift:
            return
        try:
            app = get_app()
            renderer = app.renderer
            last = renderer._last_screen
            cursor = renderer._cursor_pos
            # Rows are absolute only on the alternate screen, where the renderer's
            # origin is the screen's top left corner.
            if not renderer.full_screen:
                return
        except AttributeError:
            return
        if last is None:
            return  # a full repaint is coming anyway (first paint, resize, Ctrl-L)
        buffer = last.data_buffer
        if any(buffer.get(ypos + y) is not row for y, row in enumerate(self._written)):
            return  # the screen painted last is not the one this paint follows
        app.output.hide_cursor()  # the diff shows it again where it belongs
        app.output.write_raw(scroll_sequence(ypos + 1, ypos + height, shift, cursor.y, cursor.x))
        for y in range(height - shift):
            buffer[ypos + y] = buffer[ypos + y + shift]
        blank = _CHARS[" ", _TRANSPARENT]
        for y in range(height - shift, height):
            buffer[ypos + y] = defaultdict(lambda: blank)
        self.scrolls += 1


_DIFF_PARAMETERS = [
    "app", "output", "screen", "current_pos", "color_depth", "previous_screen",
    "last_style", "is_done", "full_screen", "attrs_for_style_string",
    "style_string_has_style", "size", "previous_width",
]


def skip_unchanged_rows() -> bool:
    """Make prompt-toolkit's screen diff skip unchanged rows (once per process).

    Returns whether the diff skips them (False with a prompt-toolkit whose diff has
    another signature: painting is then left as it was).
    """
    diff = pt_renderer._output_screen_diff
    if getattr(diff, "_skips_unchanged_rows", False):
        return True
    if list(inspect.signature(diff).parameters) != _DIFF_PARAMETERS:
        log.warning("prompt-toolkit's screen diff has changed; every row is compared")
        return False

    def diff_changed_rows(
        app: Any, output: Any, screen: Screen, current_pos: Any, color_depth: Any,
        previous_screen: Screen | None, last_style: str | None, is_done: bool,
        full_screen: bool, attrs_for_style_string: Any, style_string_has_style: Any,
        size: Any, previous_width: int,
    ) -> Any:
        hidden: list[tuple[int, defaultdict[int, Char], defaultdict[int, Char]]] = []
        if previous_screen is not None and not is_done and previous_width == size.columns:
            new, old = screen.data_buffer, previous_screen.data_buffer
            escapes, old_escapes = screen.zero_width_escapes, previous_screen.zero_width_escapes
            for y in range(min(screen.height, size.rows)):
                row, before = new.get(y), old.get(y)
                if (
                    row is not None and before is not None and row == before
                    and not escapes.get(y) and not old_escapes.get(y)
                ):
                    hidden.append((y, row, before))
            # An unchanged row is shown to the diff as an empty row on both screens:
            # nothing to write, nothing to trim.
            blank = _CHARS[" ", ""]
            empty: defaultdict[int, Char] = defaultdict(lambda: blank)
            for y, _, _ in hidden:
                new[y] = old[y] = empty
        try:
            return diff(
                app, output, screen, current_pos, color_depth, previous_screen, last_style,
                is_done, full_screen=full_screen, attrs_for_style_string=attrs_for_style_string,
                style_string_has_style=style_string_has_style, size=size,
                previous_width=previous_width,
            )
        finally:
            if hidden:
                for y, kept, kept_before in hidden:
                    new[y], old[y] = kept, kept_before

    diff_changed_rows._skips_unchanged_rows = True  # type: ignore[attr-defined]
    diff_changed_rows.original = diff  # type: ignore[attr-defined]
    pt_renderer._output_screen_diff = diff_changed_rows
    return True
