"""Markdown answers and thinking on the screen, per profile, read through pyte's cells."""

from __future__ import annotations

import re

from kindlessh import Server

from .fake_gemini import FakeGemini, Reply
from .helpers import connected
from .sshterm import Terminal

ANSWER = [
    "# Boiling water\n\nIt boils at **70 °C** on Everest; see `boil()`.\n\n",
    "- low pressure\n- less heat needed\n\n",
    "> Bring a lid.\n\n",
    "```python\ndef boil(p):\n    return 100 - p\n```\n\n",
    "| Place | °C |\n|---|---|\n| Sea | 100 |\n| Everest | 70 |\n",
]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _cells(term: Terminal, word: str) -> list[object]:
    """pyte's cells of the first on-screen occurrence of ``word``."""
    for y, row in enumerate(term.screen.display):
        x = row.find(word)
        if x >= 0:
            line = term.screen.buffer[y]
            return [line[x + i] for i in range(len(word))]
    raise AssertionError(f"{word!r} is not on the screen:\n{term.text()}")


def _sgr_params(raw: str) -> set[str]:
    return {p for m in SGR.finditer(raw) for p in (m.group(1) or "0").split(";")}


async def _ask(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.text(ANSWER, chunk_delay=0.002))
    await term.ask("water on Everest?")
    await term.wait_for("Everest  70")
    await term.wait_for(lambda t: "ready" in t.text())


async def test_markdown_on_a_laptop_screen(server: Server, fake_gemini: FakeGemini) -> None:
    async with connected(server, cols=60, rows=30) as term:
        await _ask(term, fake_gemini)
        text = term.text()
        # The marks are rendered, not shown.
        for mark in ("**", "```", "# Boiling", "- low", "|---"):
            assert mark not in text, mark
        assert " • low pressure" in text
        assert "│ Bring a lid." in text
        assert "  def boil(p):" in text and "      return 100 - p" in text
        assert all(cell.bold for cell in _cells(term, "70 °C"))  # type: ignore[attr-defined]
        assert all(cell.bold for cell in _cells(term, "Boiling water"))  # type: ignore[attr-defined]
        # Inline code in colour (a 16-colour foreground), never 24-bit.
        assert {cell.fg for cell in _cells(term, "boil()")} == {"magenta"}  # type: ignore[attr-defined]
        assert "38;2" not in term.raw_text()


async def test_markdown_on_eink_is_one_bit(server: Server, fake_gemini: FakeGemini) -> None:
    async with connected(server, command="eink", cols=60, rows=30) as term:
        await _ask(term, fake_gemini)
        assert " • low pressure" in term.text()
        assert all(cell.bold for cell in _cells(term, "70 °C"))  # type: ignore[attr-defined]
        code = _cells(term, "boil()")
        assert all(cell.reverse for cell in code)  # type: ignore[attr-defined]
        # Only reset, bold, underline and reverse ever go over the wire: no colour at all.
        assert _sgr_params(term.raw_text()) <= {"0", "1", "4", "7"}


async def test_a_table_on_a_20_column_screen(server: Server, fake_gemini: FakeGemini) -> None:
    async with connected(server, cols=20, rows=8) as term:
        fake_gemini.enqueue(
            Reply.text(["| Mountain | Boiling point |\n|---|---|\n| Everest | 70 degrees |\n"])
        )
        await term.ask("t")
        await term.wait_for("70 degrees")
        await term.wait_for(lambda t: "ready" in t.text())
        assert "Everest" in term.text() and "70 degrees" in term.text()
        assert all(len(row.rstrip()) <= 20 for row in term.screen.display)


async def test_thinking_is_hidden_until_asked_for(server: Server, fake_gemini: FakeGemini) -> None:
    async with connected(server, cols=60, rows=40) as term:
        await _thinking(term, fake_gemini)


async def _thinking(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.fixture("02_thinking_include_thoughts.sse"))
    await term.ask("boiling point on Everest?")
    await term.wait_for("one third of the pressure at sea level.")
    assert "Clarifying the question" not in term.joined()
    assert "Thinking:" not in term.text()

    await term.send("/thoughts\r")
    await term.wait_for("Thinking is shown")
    fake_gemini.enqueue(Reply.fixture("02_thinking_include_thoughts.sse"))
    await term.ask("again?")
    # The first answer is still on the screen: wait for the second one.
    await term.wait_for(lambda t: t.joined().count("one third of the pressure") == 2)
    await term.wait_for(lambda t: "ready" in t.text())
    text = term.text()
    thinking = text.index("Thinking:")
    answer = text.index("At the top of Mount Everest", thinking)
    # The thoughts sit between the marker and the answer, each row marked with a bar,
    # their Markdown rendered.
    between = text[thinking:answer].splitlines()[1:]
    marked = [row for row in between if row.strip()]
    assert marked and all(row.startswith("│") for row in marked)
    assert "│ Estimating the value" in text
    assert "**" not in text

    await term.send("/thoughts\r")
    await term.wait_for("Thinking is hidden")
