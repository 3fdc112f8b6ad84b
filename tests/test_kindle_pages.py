"""Long answers on e-ink: page numbers, /top, Home and End, a reattach opening on the
first page of an answer that finished while the reader was away, and a resize that
keeps the reader on the same part of the answer. Through SSH, on a pyte screen."""

from __future__ import annotations

import asyncio
import re

import asyncssh
import pytest

from kindlessh import Server

from .fake_gemini import FakeGemini, Reply
from .helpers import connected, open_chat
from .sshterm import Terminal

HOME, END, PAGE_DOWN = "\x1b[H", "\x1b[F", "\x1b[6~"
PARAGRAPHS = 20
# Twenty paragraphs of twenty words: each word names its paragraph (p07c), so a row says
# where in the answer it is, at any width.
ANSWER = "\n\n".join(
    " ".join(f"p{p:02d}{chr(97 + w)}" for w in range(20)) for p in range(PARAGRAPHS)
)
PAGE = re.compile(r"page (\d+)/(\d+)")


def _status(term: Terminal) -> str:
    return term.screen.display[term.screen.lines - 2]


def _page(term: Terminal) -> tuple[int, int] | None:
    found = PAGE.search(_status(term))
    return (int(found.group(1)), int(found.group(2))) if found else None


def _first_word(term: Terminal) -> str:
    """The first answer word on the screen (p07c), or ``""``."""
    for row in term.screen.display:
        found = re.search(r"p\d\d[a-t]", row)
        if found:
            return found.group(0)
    return ""


async def _long_answer(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.text([ANSWER]))
    await term.ask("long?")
    await term.wait_for(lambda t: "p19t" in t.text() and "ready" in _status(t))


@pytest.mark.parametrize(("cols", "rows"), [(54, 20), (66, 20), (54, 30)])
async def test_page_numbers_top_home_and_end(
    server: Server, fake_gemini: FakeGemini, cols: int, rows: int
) -> None:
    async with connected(server, cols=cols, rows=rows, command="eink") as term:
        await _long_answer(term, fake_gemini)
        page = _page(term)
        assert page is not None and page[0] == page[1] > 1, _status(term)
        total = page[1]
        await term.send("/top\r")
        await term.wait_for(lambda t: _page(t) == (1, total))
        assert term.screen.display[0].startswith("> long?")  # the question on top
        await term.send(PAGE_DOWN)
        await term.wait_for(lambda t: _page(t) == (2, total))
        assert "PgDn reads on" in _status(term)
        await term.send(END)
        await term.wait_for(lambda t: _page(t) == (total, total))
        await term.send(HOME)
        await term.wait_for(lambda t: _page(t) == (1, total))
        # With text in the input line, Home and End move in the text instead.
        await term.send("ab" + END)
        await asyncio.sleep(0.1)
        assert _page(term) == (1, total)


@pytest.mark.parametrize("rows", [20, 30])
async def test_reattach_opens_on_the_first_page_of_an_answer_finished_away(
    server: Server, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini, rows: int
) -> None:
    gate = asyncio.Event()
    fake_gemini.enqueue(Reply.text(["Begins. ", ANSWER]).gated(1, gate))
    first = await open_chat(server, client_key, cols=54, rows=rows, command="eink")
    await first.ask("long?")
    await first.wait_for("Begins.")
    await first.close()  # the Kindle's Wi-Fi sleeps
    gate.set()
    await asyncio.wait_for(fake_gemini.responses[0].finished.wait(), 5)
    for _ in range(250):  # stored and out of memory
        if not server.ctx.session.hub.chats:
            break
        await asyncio.sleep(0.02)

    away = "Finished while you were away"
    async with connected(server, cols=54, rows=rows, command="eink", ready=away) as second:
        found = re.search(r"Finished while you were away: (\d+) pages\. PgDn reads on\.",
                          _status(second))
        assert found, _status(second)
        total = int(found.group(1))
        assert second.screen.display[0].startswith("> long?")
        assert "p19t" not in second.text()
        await second.send(PAGE_DOWN)
        await second.wait_for(lambda t: _page(t) == (2, total))
    # A second reattach is no longer "away": it opens on the newest page.
    async with connected(server, cols=54, rows=rows, command="eink") as third:
        await third.wait_for("p19t")
        assert "away" not in third.text()


async def test_an_answer_seen_to_its_end_is_not_finished_away(
    server: Server, fake_gemini: FakeGemini
) -> None:
    async with connected(server, command="eink") as term:
        await _long_answer(term, fake_gemini)
    async with connected(server, command="eink") as term:
        await term.wait_for("p19t")
        assert "away" not in term.text()


async def test_a_resize_keeps_the_reader_on_the_same_part_of_the_answer(
    server: Server, fake_gemini: FakeGemini
) -> None:
    async with connected(server, cols=54, rows=20, command="eink") as term:
        await _long_answer(term, fake_gemini)
        await term.send("/top\r")
        await term.wait_for(lambda t: _page(t) is not None and _page(t)[0] == 1)  # type: ignore[index]
        await term.send(PAGE_DOWN + PAGE_DOWN)
        await term.wait_for(lambda t: _page(t) is not None and _page(t)[0] == 3)  # type: ignore[index]
        place = _first_word(term)
        top_row = term.screen.display[0]
        # The keyboard hides: more rows, same width; the same line stays on top.
        term.resize(54, 30)
        await term.wait_for(lambda t: t.screen.display[0] == top_row and _first_word(t) == place)
        # A font change: another width; the top row is in the same paragraph, within
        # the words of a line.
        term.resize(66, 20)
        await term.wait_for(lambda t: len(_status(t).rstrip()) > 54 and _page(t) is not None)
        word = _first_word(term)
        assert word[:3] == place[:3], (place, term.text())
        assert abs(ord(word[3]) - ord(place[3])) <= 12
        assert "PgDn reads on" in _status(term)
