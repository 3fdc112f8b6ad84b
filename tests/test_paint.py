"""Cheap repaints (``kindlessh/_paint.py``): a scrolling transcript is scrolled by the
terminal, unchanged rows are skipped, and the screen reads exactly as a full repaint."""

from __future__ import annotations

import io
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncssh
import pyte
import pytest
from prompt_toolkit import renderer as pt_renderer
from prompt_toolkit.data_structures import Point, Size
from prompt_toolkit.layout import Window
from prompt_toolkit.layout.controls import UIContent, UIControl
from prompt_toolkit.layout.mouse_handlers import MouseHandlers
from prompt_toolkit.layout.screen import Char, Screen, WritePosition
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.output.vt100 import Vt100_Output
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from kindlessh._paint import (
    Key,
    Line,
    Transcript,
    best_shift,
    scroll_sequence,
    skip_unchanged_rows,
)

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, only_session
from .ptyclient import CLIENTS, PtyClient

# Forty short lines, one per text event: each commit adds a line or two at the bottom of
# a full transcript, so every repaint scrolls it.
LINES = [f"line {i:02d}: the quick brown fox jumps over" for i in range(40)]
ANSWER_BYTES = len("\n".join(LINES).encode())


def _cells(screen: pyte.Screen) -> list[list[Any]]:
    """Every cell's character and attributes, and the cursor."""
    rows = [[screen.buffer[y][x] for x in range(screen.columns)] for y in range(screen.lines)]
    return [*rows, [screen.cursor.x, screen.cursor.y]]


async def test_a_scrolling_answer_is_scrolled_by_the_terminal_and_reads_as_a_full_repaint(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    """At the Kindle's 54x20 with the laptop profile: the answer streams a line at a time
    into a full transcript. The terminal scrolls (few bytes per answer byte), and the
    final screen, cell by cell with colours and the cursor, is the one Ctrl-L paints
    from scratch."""
    server = await make_server()
    fake_gemini.enqueue(Reply.text([ln + "\n" for ln in LINES], chunk_delay=0.03))
    async with connected(server, command="smooth") as term:
        await term.send("count lines")
        await term.wait_for("> count lines")
        start = len(term.raw_text().encode())
        await term.send("\r")
        await term.wait_for("line 39")
        await term.wait_for(lambda t: "ready" in t.text())
        sent = len(term.raw_text().encode()) - start
        session = only_session(server)
        assert session.screen.transcript.scrolls >= 2, session.screen.transcript.scrolls
        # Repainting the whole transcript for each new line costs about 6 bytes per
        # answer byte here; scrolling leaves under 3.
        assert sent / ANSWER_BYTES < 3.5, sent / ANSWER_BYTES
        streamed = _cells(term.screen)
        packets = term.packets
        await term.send("\x0c")
        await term.wait_for(lambda t: t.packets > packets)
        await term.wait_for(lambda t: _cells(t.screen) == streamed, timeout=2)
        assert "line 39" in term.text() and "line 24" in term.text()


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
async def test_real_clients_show_a_scrolled_answer_as_a_full_repaint(
    client: str, make_server: ServerFactory, client_key: asyncssh.SSHKey,
    fake_gemini: FakeGemini, tmp_path: Path,
) -> None:
    """OpenSSH, Dropbear and PuTTY pass the scroll region through: after the answer has
    streamed and scrolled, the screen is the one a full repaint (Ctrl-L) gives."""
    server = await make_server()
    argv = CLIENTS[client](server, client_key, tmp_path)
    fake_gemini.enqueue(Reply.text([ln + "\n" for ln in LINES], chunk_delay=0.03))
    term = PtyClient(argv, cols=54, rows=20)
    try:
        await term.wait_for("/help")
        await term.send(b"count lines\r")
        await term.wait_for("line 39")
        await term.wait_until(lambda: "ready" in term.text(), "ready")
        assert only_session(server).screen.transcript.scrolls >= 2
        streamed = _cells(term.screen)
        before = len(term.raw)
        await term.send(b"\x0c")
        await term.wait_until(lambda: len(term.raw) > before, "a repaint")
        await term.wait_until(lambda: _cells(term.screen) == streamed, "the same screen", 2)
    finally:
        term.close()


# ----- the transcript's rows are the rows a Window writes ----------------------------


class _Lines(UIControl):
    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines

    def create_content(self, width: int, height: int | None) -> UIContent:
        return UIContent(get_line=lambda i: self.lines[i], line_count=len(self.lines))


def _written(screen: Screen, width: int, height: int) -> list[dict[int, tuple[str, str]]]:
    """The cells that show something: a character, or a style other than the window's
    own markers (which no style of the chat gives a look)."""
    shown: list[dict[int, tuple[str, str]]] = []
    for y in range(height):
        row = {}
        for x, c in screen.data_buffer[y].items():
            style = " ".join(
                s for s in c.style.split() if s not in ("[transparent]", "class:last-line")
            )
            if x < width and (c.char != " " or style):
                row[x] = (c.char, style)
        shown.append(row)
    return shown


def _window_rows(lines: list[Line], width: int, height: int) -> list[dict[int, tuple[str, str]]]:
    """What a prompt-toolkit Window writes for ``lines``, but for two quirks the
    transcript does not copy: a wide character starting in the last column (a Window
    writes it half off the screen; the view never wraps one there), and a zero-width
    character at the end of a line, which a Window joins to the character before it and
    also leaves in a cell of its own after it."""
    screen = Screen()
    Window(_Lines(lines), wrap_lines=False).write_to_screen(
        screen, MouseHandlers(), WritePosition(xpos=0, ypos=0, width=width, height=height),
        "", erase_bg=False, z_index=None,
    )
    rows = _written(screen, width, height)
    for row in rows:
        edge = row.get(width - 1)
        if edge is not None and get_cwidth(edge[0]) > 1:
            del row[width - 1]
        for x in [x for x, (char, _) in row.items() if char and get_cwidth(char) == 0]:
            del row[x]
    return rows


@pytest.mark.parametrize("width", [1, 2, 5, 12])
def test_transcript_rows_are_what_a_window_writes(width: int) -> None:
    """Wide characters (also at the right edge), combining marks after narrow and wide
    characters, several styles, empty lines, lines longer than the width."""
    lines: list[Line] = [
        [("class:answer", "plain text, longer than the line")],
        [],
        [("class:question", "> "), ("bold", "日本語のテキスト"), ("", "x")],
        [("", "e\u0301te\u0301 "), ("class:a", "語\u0301x")],
        [("underline", "ab語"), ("reverse", "c")],
        [("", "\u0301lead"), ("", "  spaced  ")],
        [("", "🙂 emoji and ﬁ ligature")],
    ]
    height = len(lines) + 2
    position = WritePosition(xpos=0, ypos=0, width=width, height=height)
    ours = Screen()
    Transcript(lambda w, h: lines).write_to_screen(
        ours, MouseHandlers(), position, "", erase_bg=False, z_index=None
    )
    assert _written(ours, width, height) == _window_rows(lines, width, height)
    assert ours.height >= height


def test_transcript_rows_follow_a_new_width() -> None:
    """Rows are cut again at a new width: a line clipped before the accent on its last
    character at 12 columns shows the accent at 20, and wide text cut at 3 shows whole."""
    lines: list[Line] = [[("", "abcdefghijke\u0301")], [("", "語語")]]
    transcript = Transcript(lambda w, h: lines)
    for width in (12, 3, 20):
        ours = Screen()
        position = WritePosition(xpos=0, ypos=0, width=width, height=2)
        transcript.write_to_screen(ours, MouseHandlers(), position, "", False, None)
        assert _written(ours, width, 2) == _window_rows(lines, width, 2), width


def _keys(*texts: str) -> list[Key | None]:
    return [((("", text),) if text else ()) for text in texts]


@pytest.mark.parametrize(
    ("old", "new", "shift"),
    [
        # A line added at the bottom: one row up (the blank row under the answer moves too).
        (_keys("a", "b", "c", "d", ""), _keys("b", "c", "d", "e", ""), 1),
        # Three lines at once.
        (_keys("a", "b", "c", "d", "e", "f"), _keys("d", "e", "f", "g", "h", "i"), 3),
        # Nothing moved, the last line grew: no scroll.
        (_keys("a", "b", "c", "d"), _keys("a", "b", "c", "dd"), 0),
        # An e-ink page flip (one line of overlap): scrolling saves one row, not worth it.
        (_keys("a", "b", "c", "d", "e"), _keys("e", "f", "g", "h", "i"), 0),
        # Blank rows prove nothing: a screen of blanks and one line never scrolls.
        (_keys("", "", "a", "", ""), _keys("", "", "", "", "b"), 0),
        # The same line many times: the smallest shift that matches most.
        (_keys("a", "x", "x", "x", "b", "c", "d"), _keys("x", "x", "x", "b", "c", "d", "e"), 1),
        # Lines moved down (scrolled back): the terminal only scrolls up.
        (_keys("b", "c", "d", "e"), _keys("a", "b", "c", "d"), 0),
    ],
)
def test_best_shift(old: list[Key | None], new: list[Key | None], shift: int) -> None:
    assert best_shift(old, new) == shift


def test_scroll_sequence_is_numbers_and_fixed_controls_only() -> None:
    assert scroll_sequence(1, 16, 2, 19, 3) == "\x1b[1;16r\x1b[16;1H\n\n\x1b[r\x1b[20;4H"


def test_scroll_sequence_scrolls_only_the_region_and_puts_the_cursor_back() -> None:
    screen = pyte.Screen(10, 6)
    stream = pyte.Stream(screen)
    stream.feed("\x1b[H" + "\r\n".join(f"row{i}" for i in range(6)) + "\x1b[6;3H")
    stream.feed(scroll_sequence(1, 4, 2, 5, 2))
    assert [line.rstrip() for line in screen.display] == ["row2", "row3", "", "", "row4", "row5"]
    assert (screen.cursor.x, screen.cursor.y) == (2, 5)
    assert (screen.margins is None) or (screen.margins.top, screen.margins.bottom) == (0, 5)


# ----- skipping unchanged rows writes exactly what the full diff writes ---------------


def _screen(rows: list[list[Char]]) -> Screen:
    screen = Screen()
    for y, row in enumerate(rows):
        for x, char in enumerate(row):
            screen.data_buffer[y][x] = char
    screen.height = len(rows)
    return screen


def _diff(diff: Any, screen: Screen, previous: Screen | None, width: int) -> str:
    out = io.StringIO()
    output = Vt100_Output(out, lambda: Size(rows=len(screen.data_buffer), columns=width),
                          term="xterm")
    style = Style.from_dict({"a": "bold", "b": "reverse"})
    attrs = pt_renderer._StyleStringToAttrsCache(style.get_attrs_for_style_str,
                                                 pt_renderer.DummyStyleTransformation())
    app = SimpleNamespace(layout=SimpleNamespace(current_window=None))
    diff(app, output, screen, Point(0, 0), ColorDepth.DEPTH_8_BIT, previous, None, False,
         full_screen=True, attrs_for_style_string=attrs,
         style_string_has_style=pt_renderer._StyleStringHasStyleCache(attrs),
         size=Size(rows=screen.height, columns=width), previous_width=width)
    output.flush()
    return out.getvalue()


def test_skipping_unchanged_rows_writes_what_the_full_diff_writes() -> None:
    rng = random.Random(7)
    assert skip_unchanged_rows()  # once per process: installs, or is already installed
    skipping = pt_renderer._output_screen_diff
    original = skipping.original  # type: ignore[attr-defined]
    chars = [Char(c, s) for c in " ab語" for s in ("", "class:a", "class:b")]
    width = 8
    for _ in range(300):
        old_rows = [[rng.choice(chars) for _ in range(rng.randint(0, width))]
                    for _ in range(rng.randint(1, 6))]
        new_rows = [row if rng.random() < 0.5 else
                    [rng.choice(chars) for _ in range(rng.randint(0, width))]
                    for row in old_rows + [[]] * rng.randint(0, 2)]
        expected = _diff(original, _screen(new_rows),
                         _screen(old_rows), width)
        new, old = _screen(new_rows), _screen(old_rows)
        before = {y: dict(row) for y, row in new.data_buffer.items()}
        assert _diff(skipping, new, old, width) == expected
        # The screen painted stays whole: it is the previous screen of the next paint.
        assert {y: dict(row) for y, row in new.data_buffer.items()}.keys() >= before.keys()
        for y, row in before.items():
            assert {x: new.data_buffer[y][x] for x in row} == row
