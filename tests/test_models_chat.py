"""End to end through SSH: a local OpenAI-compatible model beside Gemini in one chat."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kindlessh import Server

from .conftest import ServerFactory
from .fake_gemini import FakeGemini
from .fake_gemini import Reply as GeminiReply
from .fake_openai import FakeOpenAI, Reply
from .helpers import connected


@pytest.fixture
async def fake_local() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def local_entry(fake: FakeOpenAI, **more: Any) -> dict[str, Any]:
    return {"base_url": fake.base_url, "model": "llama3.2", "first_byte_timeout": 5.0,
            "chunk_timeout": 5.0, **more}


async def ready(term: Any) -> None:
    await term.wait_for(lambda t: "ready" in t.text())


async def test_switching_models_mid_conversation(
    make_server: ServerFactory, fake_gemini: FakeGemini, fake_local: FakeOpenAI
) -> None:
    server = await make_server(**{"models.local": local_entry(fake_local)})
    fake_gemini.enqueue(GeminiReply.text(["Gemini ", "says hi."]))
    fake_local.enqueue(Reply.text(["Llama ", "says hello."]))
    async with connected(server, cols=80, rows=40) as term:
        await term.send("/model\r")
        await term.wait_for("local: openai, llama3.2")
        assert "gemini: gemini, gemini-2.5-flash  <- current" in term.text()
        await term.ask("First?")
        await term.wait_for("Gemini says hi.")
        await ready(term)
        await term.send("/model local\r")
        await term.wait_for("now uses local (llama3.2)")
        await term.ask("Second?")
        await term.wait_for("Llama says hello.")
        await ready(term)
        assert "[llama3.2]" in term.text()  # the answer's model, as it changed
    sent = fake_local.requests[0].body
    assert sent["messages"][-3:] == [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "Gemini says hi."},
        {"role": "user", "content": "Second?"},
    ]
    # Reopened, the conversation goes on with the model of its last answer.
    async with connected(server, cols=80, rows=40) as term:
        await term.wait_for("Llama says hello.")
        await term.send("/model\r")
        await term.wait_for("llama3.2  <- current")


async def test_a_local_default_without_a_gemini_key_is_a_whole_server(
    make_server: ServerFactory, fake_local: FakeOpenAI
) -> None:
    # (tests/test_config.py: a file with only [models.local] has no gemini entry at all)
    server = await make_server(
        gemini={"api_key": None}, chat={"default_model": "local"},
        **{"models.local": local_entry(fake_local)},
    )
    fake_local.enqueue(Reply.text(["Offline ", "answer."], think="Pondering quietly.",
                                  reasoning_field="reasoning"))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("Hi?")
        await term.wait_for("Offline answer.")
        await ready(term)
        text = term.text()
        assert "Pondering" not in text  # thoughts hidden by default
        assert "API key" not in text
    fake_local.enqueue(Reply.text(["Shown ", "now."], think="<mulling>"))
    async with connected(server, cols=80, rows=30) as term:
        await term.send("/thoughts\r")
        await term.ask("Again?")
        await term.wait_for("Shown now.")
        assert "Thinking:" in term.text() and "<mulling>" in term.text()


async def test_inline_think_tags_stay_out_of_the_answer(
    make_server: ServerFactory, fake_local: FakeOpenAI
) -> None:
    server = await make_server(**{"models.local": local_entry(fake_local)},
                               chat={"default_model": "local"})
    fake_local.enqueue(Reply.text(["<thi", "nk>secret pl", "an</th", "ink>Visible ", "text."]))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("Q?")
        await term.wait_for("Visible text.")
        await ready(term)
        assert "secret" not in term.text() and "think>" not in term.text()


ERRORS = [
    (Reply.error("err_ollama_404_model_not_found.json"), "ollama pull llama3.2"),
    (Reply.error("err_openai_400_context_length.json"), "too long for llama3.2"),
    (Reply.status_only(401, b'{"error":{"message":"Invalid API Key","code":401}}'),
     "refused the API key"),
    (Reply.fixture("11_openrouter_midstream_error.sse"), "Provider disconnected"),
    (Reply.status_only(500, b'{"error":{"message":"boom"}}'), "internal error"),
]


@pytest.mark.parametrize("reply,words", ERRORS)
async def test_each_error_is_on_screen(
    make_server: ServerFactory, fake_local: FakeOpenAI, reply: Reply, words: str
) -> None:
    server = await make_server(**{"models.local": local_entry(fake_local)},
                               chat={"default_model": "local"},
                               gemini={"max_retries": 0})
    fake_local.enqueue(reply)
    async with connected(server, cols=100, rows=30) as term:
        await term.ask("Q?")
        await term.wait_for(words)


async def test_a_loading_model_is_waited_for_by_name(
    make_server: ServerFactory, fake_local: FakeOpenAI
) -> None:
    server = await make_server(**{"models.local": local_entry(fake_local)},
                               chat={"default_model": "local"})
    fake_local.enqueue(dataclasses.replace(Reply.text(["Loaded."]), first_byte_delay=1.0))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("Q?")
        await term.wait_for("(waiting for llama3.2 on local)")
        await term.wait_for("Loaded.")


async def test_a_refused_connection_names_the_server(
    make_server: ServerFactory,
) -> None:
    server: Server = await make_server(
        **{"models.local": {"base_url": "http://127.0.0.1:9/v1", "model": "llama3.2"}},
        chat={"default_model": "local"}, gemini={"max_retries": 0},
    )
    async with connected(server, cols=100, rows=30) as term:
        await term.ask("Q?")
        await term.wait_for("local (http://127.0.0.1:9/v1) could not be reached")


async def test_a_model_choice_is_kept_and_named_in_history_and_exports(
    make_server: ServerFactory, fake_gemini: FakeGemini, fake_local: FakeOpenAI, tmp_path: Any
) -> None:
    server = await make_server(**{"models.local": local_entry(fake_local)})
    fake_gemini.enqueue(GeminiReply.text(["Gemini ", "says hi."]))
    async with connected(server, cols=80, rows=40) as term:
        await term.ask("First?")
        await term.wait_for("Gemini says hi.")
        await ready(term)
        await term.send("/history\r")
        await term.wait_for("(1, gemini-2.5-flash)")
        # Switched, and left before asking anything: the choice stays with the chat.
        await term.send("/model local\r")
        await term.wait_for("now uses local (llama3.2)")
    await server.close()
    again = await make_server(**{"models.local": local_entry(fake_local)})
    fake_local.enqueue(Reply.text(["Llama ", "says hello."]))
    async with connected(again, cols=80, rows=40) as term:
        await term.wait_for("Gemini says hi.")
        await term.send("/model\r")
        await term.wait_for("llama3.2  <- current")
        await term.ask("Second?")
        await term.wait_for("Llama says hello.")
        await ready(term)
        await term.send("/history\r")
        await term.wait_for("(2, llama3.2)")
        await term.send("/export\r")
        await term.wait_for(".md")
    [export] = list((tmp_path / "data" / "exports").rglob("*.md"))
    text = export.read_text()
    assert "*Answered by gemini-2.5-flash.*" in text
    assert "*Answered by llama3.2.*" in text
