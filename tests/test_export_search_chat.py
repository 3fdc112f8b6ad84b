"""/search and /export FMT in the chat, and the EPUB of a conversation with Markdown,
sources and thoughts checked by epubcheck."""

from __future__ import annotations

import subprocess
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from kindlessh._conversation import Turn
from kindlessh._export import render
from kindlessh._provider import Finish, Source, TextDelta

from .chatscreen import chat_screen
from .helpers import epubcheck


async def test_search_in_the_chat_pages_and_opens_a_hit(tmp_path: Path) -> None:
    async with chat_screen(tmp_path, rows=12) as screen:
        numbers = []
        for i in range(4):
            screen.provider.replies.append([TextDelta(f"Answer {i} about zebras."),
                                            Finish("STOP")])
            await screen.command("/new", says="New conversation")
            await screen.ask(f"question {i}")
            numbers.append(screen.ui.chat.id)
        said = await screen.command("/search zebra*", says="Found for zebra*")
        lines = said.splitlines()
        # Two hits a page at 12 rows, newest first, each match in bold.
        assert lines[1].split()[0] == str(numbers[3])
        assert lines[1].endswith("Answer 3 about zebras.")
        hits = next(line for line in screen.ui.visible_lines(80, 10)
                    if "".join(text for _, text, *_ in line).startswith(
                        f"  {numbers[3]:>4}"))
        assert [text for style, text, *_ in hits if "bold" in style] == ["zebras"]
        assert lines[2].split()[0] == str(numbers[2])
        assert lines[-1] == "/open N opens one; /search zebra* +2 shows older ones."
        said = await screen.command("/search zebra* +2", says="Page 2:")
        assert [line.split()[0] for line in said.splitlines()[1:3]] == [
            str(numbers[1]), str(numbers[0])
        ]
        await screen.command("/search nothing-like-it", says="Nothing found for")
        await screen.command("/search", says="Give words to search for")
        await screen.command(f"/open {numbers[0]}", says="")  # the hit opens
        assert screen.ui.chat.id == numbers[0]


async def test_export_formats_in_the_chat(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        await screen.ask("what is exported?")
        said = await screen.command("/export txt", says="Saved as plain text")
        text = Path(said.split(": ", 1)[1]).read_text(encoding="utf-8")
        assert "[1] Question:\n  what is exported?\n" in text
        said = await screen.command("/export epub", says="Saved as an EPUB e-book")
        path = Path(said.split(": ", 1)[1])
        assert path.suffix == ".epub" and zipfile.is_zipfile(path)
        await screen.command("/export pdf", says="Export as one of: md txt epub")


def test_epub_of_markdown_sources_and_thoughts_is_valid(tmp_path: Path) -> None:
    turns = [
        Turn(
            "Compare *A* and <B> \x1b]0;title\x07",
            answer="## Table\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- **two**\n\n"
            "```python\nprint('<x>')\n```\n\n[rel](page.html) [web](https://e.org/?a=1&b=2)"
            " ![pic](https://e.org/p.png) <script>x</script>",
            thoughts="**Weighing** it up",
            sources=(Source("E.org", "e.org", "https://e.org/"),
                     Source("Odd", "odd", "javascript:alert(1)")),
            note="stopped; the text above is what arrived",
        ),
        Turn("Second question", answer="Plain."),
    ]
    data = render("epub", turns, 7, datetime(2026, 5, 4, 3, 2, tzinfo=UTC))
    path = tmp_path / "c.epub"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as book:
        names = book.namelist()
        first = book.read("EPUB/turn-0001.xhtml").decode()
        opf = book.read("EPUB/content.opf").decode()
    assert names[0] == "mimetype"
    assert "EPUB/turn-0002.xhtml" in names  # one chapter per question
    assert "<dc:title>Compare *A* and &lt;B&gt; ^[]0;title^G</dc:title>" in opf
    assert "<dc:date>2026-05-04T03:02:00Z</dc:date>" in opf
    assert "<strong>Weighing</strong>" in first and "<table>" in first
    assert '<a href="https://e.org/?a=1&amp;b=2">web</a>' in first
    assert "page.html" not in first and "javascript" not in first and "<img" not in first
    assert "&lt;script&gt;" in first and "\x1b" not in first
    assert '<a href="https://e.org/">E.org</a>' in first
    assert "[stopped; the text above is what arrived]" in first
    checked = subprocess.run([*epubcheck(), str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 errors / 0 warnings" in checked.stdout
