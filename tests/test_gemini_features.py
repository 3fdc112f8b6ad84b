"""Answers with sources (/web, Google Search grounding) and system prompts (/system),
through SSH against the strict fake: what the reader sees, what is sent, what is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected

GROUNDING = {
    "webSearchQueries": ["why is the sky blue"],
    "searchEntryPoint": {"renderedContent": "<style>.chip{}</style><div class=chip>sky</div>"},
    "groundingChunks": [
        {"web": {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/AbC1",
                 "title": "Rayleigh scattering - Wikipedia", "domain": "en.wikipedia.org"}},
        {"web": {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/XyZ2",
                 "title": "nasa.gov"}},
    ],
    "groundingSupports": [{"segment": {"startIndex": 0, "endIndex": 21,
                                       "text": "Blue light scatters."},
                           "groundingChunkIndices": [0, 1]}],
}


def body(fake: FakeGemini, n: int = -1) -> dict[str, Any]:
    found = fake.requests[n].json
    assert isinstance(found, dict)
    return found


def grounded(text: str = "Blue light scatters more.") -> Reply:
    return Reply.thinking([text], grounding=GROUNDING, thinking_tokens=50)


# ----- /web ----------------------------------------------------------------------------------


async def test_web_search_lists_numbered_sources_and_keeps_them(
    make_server: ServerFactory, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    server = await make_server()
    async with connected(server, cols=54, rows=20) as term:
        fake_gemini.enqueue(grounded("Off the web."))
        await term.ask("why blue?")
        await term.wait_for("Off the web.")
        await term.wait_for(lambda t: "ready" in t.text())
        assert "tools" not in body(fake_gemini)
        assert "Sources:" not in term.joined()  # no search tool: no grounding sent

        await term.ask("/web")
        await term.wait_for("Web search is on for this conversation")
        fake_gemini.enqueue(grounded())
        await term.ask("why blue, really?")
        await term.wait_for("Blue light scatters more.")
        await term.wait_for("2. nasa.gov")
        assert body(fake_gemini)["tools"] == [{"google_search": {}}]
        shown = term.joined()
        assert "Sources: 1. Rayleigh scattering - Wikipedia (en.wikipedia.org) 2. nasa.gov" \
            in shown
        assert "vertexaisearch" not in term.raw_text() and "chip" not in term.raw_text()

        await term.ask("/export")
        await term.wait_for(".md")
    [export] = list((tmp_path / "data" / "exports").rglob("*.md"))
    text = export.read_text()
    assert "Sources:\n1. Rayleigh scattering - Wikipedia (en.wikipedia.org) <https://" in text
    assert "2. nasa.gov <https://vertexaisearch" in text

    # Stored with the turn, and the choice with the conversation: after a restart.
    await server.close()
    again = await make_server()
    async with connected(again, cols=54, rows=20) as term:
        await term.wait_for("2. nasa.gov")
        fake_gemini.enqueue(grounded("Still searching."))
        await term.ask("and sunsets?")
        await term.wait_for("Still searching.")
    assert body(fake_gemini)["tools"] == [{"google_search": {}}]


async def test_web_search_on_by_default_can_be_turned_off(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"google_search": True})
    async with connected(server, cols=80, rows=30) as term:
        fake_gemini.enqueue(grounded())
        await term.ask("why blue?")
        await term.wait_for("1. Rayleigh scattering - Wikipedia (en.wikipedia.org)")
        await term.ask("/web")
        await term.wait_for("Web search is off for this conversation.")
        fake_gemini.enqueue(grounded("No search now."))
        await term.ask("again")
        await term.wait_for("No search now.")
    assert "tools" not in body(fake_gemini)


# ----- /system ---------------------------------------------------------------------------------


async def test_system_prompts_for_the_server_and_for_one_conversation(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(chat={"system_prompt": "Answer in one line."})
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("/system")
        await term.wait_for("System prompt (the server's): Answer in one line.")
        fake_gemini.enqueue(Reply.text(["One."]))
        await term.ask("q1")
        await term.wait_for("One.")
        assert body(fake_gemini)["systemInstruction"] == {
            "parts": [{"text": "Answer in one line."}]
        }

        await term.ask("/system Answer in French, please.")
        await term.wait_for("System prompt for this conversation: Answer in French, please.")
        fake_gemini.enqueue(Reply.text(["Deux."]))
        await term.ask("q2")
        await term.wait_for("Deux.")
        assert body(fake_gemini)["systemInstruction"] == {
            "parts": [{"text": "Answer in French, please."}]
        }
        await term.ask("/system")
        await term.wait_for("System prompt (this conversation's): Answer in French, please.")

    # Kept with the conversation across a restart.
    await server.close()
    again = await make_server(chat={"system_prompt": "Answer in one line."})
    async with connected(again, cols=80, rows=30) as term:
        await term.wait_for("Deux.")
        fake_gemini.enqueue(Reply.text(["Trois."]))
        await term.ask("q3")
        await term.wait_for("Trois.")
        assert body(fake_gemini)["systemInstruction"]["parts"][0]["text"] == (
            "Answer in French, please."
        )
        await term.ask("/system off")
        await term.wait_for("System prompt off for this conversation.")
        fake_gemini.enqueue(Reply.text(["Quatre."]))
        await term.ask("q4")
        await term.wait_for("Quatre.")
        assert "systemInstruction" not in body(fake_gemini)
        await term.ask("/system")
        await term.wait_for("No system prompt in this conversation; /system TEXT sets one.")
        # A fresh conversation has the server's again.
        await term.ask("/new")
        fake_gemini.enqueue(Reply.text(["Cinq."]))
        await term.ask("q5")
        await term.wait_for("Cinq.")
        assert body(fake_gemini)["systemInstruction"]["parts"][0]["text"] == (
            "Answer in one line."
        )


async def test_a_system_prompt_too_long_is_refused(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(chat={"max_prompt_chars": 50})
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("/system " + "x" * 60)
        await term.wait_for("That system prompt has 60 characters; the limit is 50.")
        await term.ask("/system")
        await term.wait_for("System prompt (the server's): You are answering in a text")
