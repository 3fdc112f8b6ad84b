"""The transcript view: untrusted text in, wrapped styled lines out.

Contract:
- This is the one place that turns untrusted text (model output, questions, upstream
  messages, usernames) into screen fragments, and every such string passes
  :func:`~kindlessh._sanitize.sanitize` here first. Fragments are plain
  ``(style, text)`` pairs: never ``ANSI()``, never the zero-width escape style.
- Lines are pre-wrapped to the width (prompt-toolkit's own wrapping mis-scrolls long
  wrapped lines), at word boundaries, measuring cells with ``get_cwidth`` so wide
  characters never overflow.
- What the screen can draw (:mod:`._glyphs`) is applied here, to the sanitised text
  before it is wrapped (so a word of names wraps as words) and to the view's own
  drawing after; the stored text is never changed.
- Items cache their lines per width and content, so a repaint costs only the item that
  changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.utils import get_cwidth

from ._conversation import Turn, source_line
from ._glyphs import GlyphMode, fold, ui_char
from ._markdown import render_markdown
from ._sanitize import sanitize

Line = StyleAndTextTuples


def _split_cells(word: str, width: int) -> list[str]:
    """Cut ``word`` into pieces of at most ``width`` cells (for words longer than a line)."""
    pieces: list[str] = []
    current, used = "", 0
    for ch in word:
        w = get_cwidth(ch)
        if used + w > width and current:
            pieces.append(current)
            current, used = "", 0
        current += ch
        used += w
    if current:
        pieces.append(current)
    return pieces


_BULLET = re.compile(r"( *)([-*+•]|\d{1,3}[.)]) ")


def _emphasised(style: str, line: str, words: list[str]) -> Line:
    """``line`` in ``style``, each occurrence of one of ``words`` in bold as well (bold is
    what e-ink shows; a match cut by wrapping stays plain)."""
    words = [w for w in words if w]
    if not words:
        return [(style, line)]
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
    out: Line = []
    at = 0
    for match in pattern.finditer(line):
        if match.start() > at:
            out.append((style, line[at : match.start()]))
        out.append((style + " bold", match.group()))
        at = match.end()
    if at < len(line):
        out.append((style, line[at:]))
    return out


def wrap(text: str, width: int) -> list[str]:
    """Word-wrap ``text`` (already sanitised) to ``width`` cells.

    Paragraph breaks (``\\n``) are kept. Continuation lines keep the paragraph's leading
    indentation, and list items (``* x``, ``1. x``) get a hanging indent, as long as the
    indent takes less than half the width. Words longer than a line are cut.
    """
    width = max(1, width)
    out: list[str] = []
    for para in text.split("\n"):
        para = para.rstrip(" ")
        if get_cwidth(para) <= width:
            out.append(para)
            continue
        bullet = _BULLET.match(para)
        lead = para[: len(para) - len(para.lstrip(" "))]
        cont = " " * (bullet.end() if bullet else len(lead))
        if len(cont) * 2 >= width:
            lead = cont = ""
        line, used, empty = lead, len(lead), True
        for word in para.split(" "):
            if not word:
                continue
            w = get_cwidth(word)
            gap = 0 if empty else 1
            if used + gap + w <= width:
                line, used, empty = line + " " * gap + word, used + gap + w, False
                continue
            if not empty:
                out.append(line)
                line, used, empty = cont, len(cont), True
            while used + w > width:
                head = _split_cells(word, width - used)[0]
                out.append(line + head)
                word = word[len(head) :]
                w = get_cwidth(word)
                line, used = cont, len(cont)
            if word:
                line, used, empty = line + word, used + w, False
        if not empty:
            out.append(line)
    return out


@dataclass
class Notice:
    """A line from the server itself (help, errors about input, status of the session)."""

    text: str
    kind: str = "info"  # "info" or "error"
    bold: tuple[str, ...] = ()  # words shown bold wherever they stand (search matches)


@dataclass(frozen=True)
class Shown:
    """What of a turn is on the screen: the committed part of its answer and thoughts."""

    answer: str
    thoughts: str = ""


@dataclass(frozen=True)
class Look:
    """How the transcript is drawn: the width, colour or 1-bit, thoughts shown or not."""

    width: int
    color: bool = False
    thoughts: bool = False
    glyphs: GlyphMode = "full"


@dataclass
class Item:
    """One entry of the transcript: a turn of the conversation or a notice."""

    turn: Turn | None = None
    notice: Notice | None = None
    _cache_key: tuple[object, ...] | None = field(default=None, repr=False)
    _cache: list[Line] = field(default_factory=list, repr=False)

    def lines(self, look: Look, shown: Callable[[Turn], Shown]) -> list[Line]:
        """The styled lines of this item; ``shown`` gives the part of a turn to display
        (the committed part while it streams)."""
        if self.notice is not None:
            key: tuple[object, ...] = (look, self.notice.text)
            if key != self._cache_key:
                self._cache = _drawn(self._notice(look), look.glyphs)
        else:
            assert self.turn is not None
            t = self.turn
            part = shown(t)
            key = (look, len(part.answer), len(part.thoughts), t.state, t.note, len(t.question),
                   len(t.sources))
            if key != self._cache_key:
                self._cache = _drawn(self._turn(look, part), look.glyphs)
        self._cache_key = key
        return self._cache

    def _notice(self, look: Look) -> list[Line]:
        assert self.notice is not None
        width = look.width
        style = "class:error" if self.notice.kind == "error" else "class:notice"
        mark = "! " if self.notice.kind == "error" else "· "
        body = wrap(fold(sanitize(self.notice.text), look.glyphs), width - 2)
        words = [fold(sanitize(w), look.glyphs) for w in self.notice.bold]
        return [
            _emphasised(style, (mark if i == 0 else "  ") + ln, words)
            for i, ln in enumerate(body)
        ]

    def _turn(self, look: Look, part: Shown) -> list[Line]:
        assert self.turn is not None
        turn, width = self.turn, look.width
        lines: list[Line] = []
        glyphs = look.glyphs
        for i, ln in enumerate(wrap(fold(sanitize(turn.question), glyphs), width - 2)):
            lines.append([("class:question", ("> " if i == 0 else "  ") + ln)])
        lines.append([])
        if turn.model_changed:
            lines += [[("class:note", ln)] for ln in wrap(f"[{sanitize(turn.model)}]", width)]
        if look.thoughts and part.thoughts:
            # Marked, not only dimmed: e-ink has no dim, and a thought must never be
            # mistaken for the answer.
            lines.append([("class:thought-head", "Thinking:")])
            thoughts = fold(sanitize(part.thoughts), glyphs)
            for line in render_markdown(thoughts, width - 2, color=look.color):
                body = [("class:thought " + style, text) for style, text in line]
                lines.append([("class:thought", "│ "), *body])
            lines.append([])
        if part.answer:
            for line in render_markdown(fold(sanitize(part.answer), glyphs), width,
                                        color=look.color):
                lines.append([("class:answer " + style, text) for style, text in line])
        elif turn.active:
            who = fold(sanitize(turn.upstream), glyphs)
            waiting = "(thinking)" if part.thoughts else f"(waiting for {who})"
            lines.append([("class:notice", waiting)])
        if turn.sources and not turn.active:
            lines.append([("class:note", "Sources:")])
            for i, source in enumerate(turn.sources, 1):
                for ln in wrap(fold(f"{i}. {source_line(source)}", glyphs), width):
                    lines.append([("class:note", ln)])
        if turn.note:
            for ln in wrap(fold(sanitize(f"[{turn.note}]"), glyphs), width):
                lines.append([("class:note", ln)])
        lines.append([])
        return lines


def _drawn(lines: list[Line], glyphs: GlyphMode) -> list[Line]:
    """``lines`` with the view's own drawing (bullets, rules, bars) as ``glyphs`` shows it."""
    if glyphs != "ascii":
        return lines
    return [[(frag[0], ui_char(frag[1], glyphs)) for frag in line] for line in lines]
