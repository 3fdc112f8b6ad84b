"""Glyph modes through SSH: emoji as words, rare symbols folded, wide words kept whole;
the stored answer keeps every character."""

from __future__ import annotations

import asyncio

import pytest

from kindlessh import Server
from kindlessh._glyphs import allowed

from .fake_gemini import FakeGemini, Reply
from .helpers import connected, until
from .sshterm import Terminal

ANSWER = (
    "# Results 🎉\n\n"
    "Great job 👍 — “quoted” text ⇒ done ✅ and ⚠️ careful. ＦＵＬＬ ＷＩＤＴＨ words "
    "ＦＵＬＬ ＦＵＬＬ ＦＵＬＬ 🇫🇷 👨‍👩‍👧 ★ → café Ελληνικά Кириллица 日本語 🔹 x² ½\n\n"
    "- first 🔹 point ＦＵＬＬ\n- second ✔ point\n\n"
    "> a quote with 😀\n\n---\n\n"
    + " ".join(["ＦＵＬＬ"] * 30)
)


def _screen_chars(term: Terminal) -> set[str]:
    return {char for row in term.screen.display for char in row}


async def _answered(server: Server, term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.text([ANSWER]))
    await term.ask("symbols?")
    await until(lambda: fake_gemini.responses and fake_gemini.responses[0].finished.is_set())
    await term.wait_for(lambda t: "ready" in t.screen.display[-2])


@pytest.mark.parametrize(("cols", "rows"), [(54, 20), (66, 20), (54, 30)])
@pytest.mark.parametrize("mode", ["full", "kindle", "ascii"])
async def test_each_glyph_mode_on_the_screen_and_not_in_the_store(
    server: Server, fake_gemini: FakeGemini, mode: str, cols: int, rows: int
) -> None:
    async with connected(server, cols=cols, rows=rows, command="eink") as term:
        await term.send(f"/glyphs {mode}\r")
        await term.wait_for(f"Glyphs: {mode}.")
        await _answered(server, term, fake_gemini)
        await term.send("/top\r")
        await term.wait_for("> symbols?")
        seen: set[str] = set()
        rows_seen: list[str] = []
        for _ in range(6):  # every page of the answer
            seen |= _screen_chars(term)
            rows_seen += term.screen.display[:-2]
            await term.send("\x1b[6~")
            await term.wait_for(lambda t: True)
        outside = {c for c in seen if not allowed(c, mode)}  # type: ignore[arg-type]
        assert not outside, outside
        text = "\n".join(rows_seen)
        if mode != "full":
            assert "(thumbs up)" in text and "👍" not in text
        else:
            assert "👍" in text
        # A word of wide characters is never split across lines.
        for row in rows_seen:
            for word in row.split():
                if "Ｆ" in word or "Ｌ" in word:
                    assert word.strip(".,") in ("ＦＵＬＬ", "ＷＩＤＴＨ"), row
        if mode == "ascii":
            assert "•" not in text and "─" not in text and "│" not in text
        (chat,) = server.ctx.session.hub.chats
        assert [t.answer for t in chat.conversation.turns] == [ANSWER]  # never changed
        store = server.ctx.session.hub.store
        stored: list[str] = []

        async def saved() -> bool:
            if chat.id is None:  # not stored yet: the conversation comes with its turn
                return False
            stored[:] = [row.answer for row in await store.load_turns("reader", chat.id)]
            return stored == [ANSWER]

        for _ in range(100):  # the recorder saves on its own interval
            if await saved():
                break
            await asyncio.sleep(0.05)
        assert stored == [ANSWER]


async def test_glyphs_without_a_mode_says_which_and_a_bad_one_is_refused(
    server: Server,
) -> None:
    async with connected(server, command="eink") as term:
        await term.send("/glyphs\r")
        await term.wait_for("Glyphs: kindle.")
        await term.send("/glyphs emoji\r")
        await term.wait_for("Glyphs are full, kindle or ascii")
    async with connected(server) as term:
        await term.send("/glyphs\r")
        await term.wait_for("Glyphs: full.")
