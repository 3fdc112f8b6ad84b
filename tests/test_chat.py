"""End to end: the real server, a real SSH client with a PTY, a fake Gemini, a pyte screen."""

from __future__ import annotations

import asyncio
import json

from kindlessh import Server

from .conftest import FIXTURES, ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, open_chat
from .sshterm import Terminal

MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
ANSWER_01 = MANIFEST["01_text_multichunk.sse"]["expect"]["text"]


async def test_streamed_answer_is_shown(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse", split="awkward"))
    await term.ask("What are the primary colours?")
    await term.wait_for("green and blue.)")
    screen = term.joined()
    assert "> What are the primary colours?" in screen
    assert "the longest visible wavelength (about 620–750 nm)" in screen
    request = fake_gemini.requests[0]
    assert request.json["contents"] == [
        {"role": "user", "parts": [{"text": "What are the primary colours?"}]}
    ]
    assert request.headers["x-goog-api-key"] == "test-key"
    assert "test-key" not in request.target
    await term.wait_for(lambda t: "ready" in t.text())


async def test_every_split_of_a_fixture_gives_the_whole_answer(
    server: Server, fake_gemini: FakeGemini
) -> None:
    async with connected(server, cols=80, rows=30) as term:
        for i, split in enumerate(("bytes", "events", "whole", "awkward")):
            fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse", split=split))
            await term.send("/new\r")
            # The last answer gone from the screen: /new was done (one answer at a time).
            await term.wait_for(
                lambda t: "New conversation" in t.text() and "green" not in t.text()
            )
            await term.ask(f"question {i}")
            await term.wait_for("green and blue.)")
            await term.wait_for(lambda t: "ready" in t.text())
            assert "(In light, the additive primaries are red, green and blue.)" in term.joined()


async def test_second_turn_carries_the_history(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse"))
    fake_gemini.enqueue(Reply.text(["Because ", "of Rayleigh ", "scattering."]))
    await term.ask("What are the primary colours?")
    await term.wait_for("green and blue.)")
    await term.wait_for(lambda t: "ready" in t.text())
    await term.ask("Why is the sky blue?")
    await term.wait_for("Because of Rayleigh scattering.")
    contents = fake_gemini.requests[1].json["contents"]
    assert contents == [
        {"role": "user", "parts": [{"text": "What are the primary colours?"}]},
        {"role": "model", "parts": [{"text": ANSWER_01}]},
        {"role": "user", "parts": [{"text": "Why is the sky blue?"}]},
    ]


async def test_new_starts_a_fresh_conversation(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.text(["First answer."]))
    fake_gemini.enqueue(Reply.text(["Second answer."]))
    await term.ask("first question")
    await term.wait_for("First answer.")
    await term.wait_for(lambda t: "ready" in t.text())
    await term.send("/new\r")
    await term.wait_for("New conversation")
    assert "first question" not in term.text()
    assert "First answer." not in term.text()
    await term.ask("second question")
    await term.wait_for("Second answer.")
    assert fake_gemini.requests[1].json["contents"] == [
        {"role": "user", "parts": [{"text": "second question"}]}
    ]


async def test_ctrl_c_stops_the_answer_and_keeps_what_arrived(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.hang(after=["The first words ", "of a long answer"]))
    fake_gemini.enqueue(Reply.text(["Next answer."]))
    await term.ask("tell me a long story")
    await term.wait_for("of a long answer")
    await term.send("\x03")
    await term.wait_for("[stopped; the text above is what arrived]")
    assert "The first words of a long answer" in term.joined()
    # The upstream response is closed promptly, not left streaming.
    await asyncio.wait_for(fake_gemini.responses[0].client_closed.wait(), 1.0)
    await term.wait_for(lambda t: "ready" in t.text())
    await term.ask("and now?")
    await term.wait_for("Next answer.")
    # The partial answer is part of the history: it is what the reader saw.
    contents = fake_gemini.requests[1].json["contents"]
    assert contents[1] == {"role": "model", "parts": [{"text": "The first words of a long answer"}]}


async def test_help_lists_commands(term: Terminal) -> None:
    await term.send("/help\r")
    await term.wait_for("this list")
    text = term.joined()
    assert "/quit" in text and "Ctrl-C" in text and "gemini-2.5-flash" in text


async def test_unknown_command_says_so(term: Terminal) -> None:
    await term.send("/frobnicate\r")
    await term.wait_for("Unknown command /frobnicate")


async def test_quit_command_closes_the_session(term: Terminal) -> None:
    await term.send("/quit\r")
    await term.wait_closed()
    assert "kindlessh: bye." in term.raw_text()


async def test_ctrl_d_on_empty_line_quits(term: Terminal) -> None:
    await term.send("\x04")
    await term.wait_closed()


async def test_ctrl_d_with_text_does_not_quit(term: Terminal, fake_gemini: FakeGemini) -> None:
    await term.send("abc\x01\x04")  # Ctrl-A to the start, Ctrl-D deletes a character
    await term.wait_for("> bc")
    assert not term.closed.is_set()


async def test_thoughts_are_not_mixed_into_the_answer(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.fixture("02_thinking_include_thoughts.sse"))
    await term.ask("boiling point on Everest?")
    await term.wait_for("one third of the pressure at sea level.")
    assert "Clarifying the question" not in term.joined()


async def test_finish_reason_is_shown(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.fixture("04_max_tokens.sse"))
    await term.ask("list every sorting algorithm")
    await term.wait_for("[answer cut at the length limit")


async def test_blocked_prompt_is_explained(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.fixture("07_prompt_blocked.sse"))
    await term.ask("something unsafe")
    await term.wait_for("question blocked by Gemini")


async def test_midstream_error_keeps_the_partial_answer(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.fixture("09_midstream_error_503.sse"))
    await term.ask("sorting algorithms?")
    await term.wait_for("[interrupted: Gemini is overloaded")
    assert "The simplest ones, such as bubble sort," in term.joined()


async def test_dropped_upstream_connection_keeps_the_partial_answer(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.drop_after(["Half of ", "an answer"]))
    await term.ask("question")
    await term.wait_for("[interrupted: The connection to Gemini broke off.]")
    assert "Half of an answer" in term.joined()


async def test_second_question_while_answering_is_refused_and_kept(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.hang(after=["Still going"]))
    await term.ask("first")
    await term.wait_for("Still going")
    await term.ask("second")
    await term.wait_for("An answer is still coming")
    assert "> second" in term.text()  # still in the input line, not lost
    assert len(fake_gemini.requests) == 1


async def test_no_api_key_says_how_to_set_it(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"api_key": None})
    async with connected(server, ready="No Gemini API key is set on the server") as term:
        await term.ask("hello?")
        await term.wait_for(lambda t: t.joined().count("GEMINI_API_KEY") >= 2)
        assert fake_gemini.requests == []
        await term.send("/help\r")
        await term.wait_for("this list")


async def test_wrong_api_key_is_one_clear_line(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"api_key": "not-the-key"})
    async with connected(server) as term:
        await term.ask("hello?")
        await term.wait_for("Gemini rejected the API key: API key not valid.")
        assert "not-the-key" not in term.raw_text()
        await term.send("/help\r")
        await term.wait_for("this list")


async def test_unknown_model_is_one_clear_line(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"model": "gemini-9.9-ultra"})
    async with connected(server, cols=80) as term:
        await term.ask("hello?")
        await term.wait_for("Gemini does not know the model 'gemini-9.9-ultra'")


async def test_unreachable_upstream_is_one_clear_line(make_server: ServerFactory) -> None:
    # A port that was just free: nothing listens there.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    server = await make_server(gemini={"base_url": f"http://127.0.0.1:{port}"})
    async with connected(server) as term:
        await term.ask("hello?")
        await term.wait_for("Gemini could not be reached")
        await term.send("/help\r")
        await term.wait_for("this list")


async def test_disconnect_mid_answer_leaves_nothing_running(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    """With finish_on_disconnect off, a dropped connection stops its answer."""
    server = await make_server(chat={"finish_on_disconnect": False})
    baseline = len(asyncio.all_tasks())
    term = await open_chat(server)
    fake_gemini.enqueue(Reply.hang(after=["Words before the drop"]))
    await term.ask("question")
    await term.wait_for("Words before the drop")
    assert len(server.ctx.session.sessions) == 1
    await term.close()
    await asyncio.wait_for(fake_gemini.responses[0].client_closed.wait(), 2.0)
    for _ in range(100):
        if not server.ctx.session.sessions and len(asyncio.all_tasks()) <= baseline:
            break
        await asyncio.sleep(0.02)
    assert not server.ctx.session.sessions
    assert len(asyncio.all_tasks()) <= baseline
    # The server still serves others.
    fake_gemini.enqueue(Reply.text(["Still here."]))
    async with connected(server) as other:
        await other.ask("are you there?")
        await other.wait_for("Still here.")


async def test_ctrl_c_in_the_same_keystrokes_as_enter_stops_cleanly(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    await term.send("quick question\r\x03")  # one batch: the answer never starts
    await term.wait_for("[stopped]")
    await term.wait_for(lambda t: "ready" in t.text())
    fake_gemini.enqueue(Reply.text(["Works again."]))
    await term.ask("next")
    await term.wait_for("Works again.")
    assert len(fake_gemini.requests) == 1


async def test_server_close_says_goodbye_to_connected_clients(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server()
    term = await open_chat(server)
    fake_gemini.enqueue(Reply.hang(["Half an answer"]))
    await term.ask("question")
    await term.wait_for("Half an answer")
    await asyncio.wait_for(server.close(), 10)
    await term.wait_closed()
    assert "the server is shutting down; bye." in term.raw_text()
    await asyncio.wait_for(fake_gemini.responses[0].client_closed.wait(), 2.0)


async def test_a_huge_claimed_terminal_is_clamped(server: Server) -> None:
    async with connected(server, cols=600, rows=300):
        (session,) = server.ctx.session.sessions
        size = session.screen.app.output.get_size()
        assert (size.columns, size.rows) == (500, 200)
