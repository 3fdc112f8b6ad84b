"""Every way an answer can fail, through the real SSH path: what the reader sees, and that
the next question in the same session works."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import FIXTURES, ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected

MANIFEST: dict[str, Any] = json.loads((FIXTURES / "MANIFEST.json").read_text())


def fixture_text(name: str) -> str:
    return str(MANIFEST[name]["expect"].get("text", ""))


@dataclass
class Case:
    replies: list[Reply]
    shows: list[str]  # text that must be on the screen (partial answer and message)
    absent: list[str] = field(default_factory=list)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)


def last_line(text: str) -> str:
    return text.rstrip().split("\n")[-1]


CASES: dict[str, Case] = {
    "thinking": Case(
        [Reply.fixture("02_thinking_include_thoughts.sse")],
        ["one third of the pressure at sea level."],
        absent=["Clarifying the question"],
    ),
    "final-signature": Case(
        [Reply.fixture("03_gemini3_final_signature.sse", split="bytes")],
        ["the year exhales slow."],
        absent=["[", "interrupted"],
    ),
    "max-tokens": Case(
        [Reply.fixture("04_max_tokens.sse")],
        [last_line(fixture_text("04_max_tokens.sse")), "[answer cut at the length limit;"],
    ),
    "max-tokens-thinking": Case(
        [Reply.fixture("05_max_tokens_while_thinking.sse")],
        ["[no answer: the length limit was spent on thinking (254 tokens)"],
    ),
    "safety-mid-answer": Case(
        [Reply.fixture("06_safety_block_mid_answer.sse")],
        ["the two compounds are combined in", "[answer stopped by Gemini's safety filter]"],
    ),
    "prompt-blocked": Case(
        [Reply.fixture("07_prompt_blocked.sse")],
        ["[question blocked by Gemini (prohibited content)"],
    ),
    "prompt-blocked-legacy": Case(
        [Reply.fixture("07b_prompt_blocked_safety_ratings.sse")],
        ["[question blocked by Gemini (safety)"],
    ),
    "function-call": Case(
        [Reply.fixture("08_function_call.sse")],
        ["[Gemini sent no text (Model generated function call(s)); try asking"],
    ),
    "midstream-error": Case(
        [Reply.fixture("09_midstream_error_503.sse", split="awkward")],
        ["such as bubble sort,", "[interrupted: Gemini is overloaded (503)"],
    ),
    "malformed-event": Case([Reply.fixture("10_malformed_json_event.sse")], ["Hello!"]),
    "malformed-function-call": Case(
        [Reply.fixture("11_malformed_function_call.sse")],
        ["[answer stopped: the model produced a broken tool call]"],
    ),
    "empty-final-text": Case(
        [Reply.fixture("12_empty_final_text.sse")], ["Comment puis-je vous aider"]
    ),
    "recitation": Case(
        [Reply.fixture("13_recitation.sse")],
        ["here are the opening lines:", "[answer stopped: it was reciting a source"],
    ),
    "truncated-mid-event": Case(
        [Reply.fixture("14_truncated_no_terminator.sse")],
        ["The capital of Australia is", "[interrupted: The answer stream broke off"],
    ),
    "eof-without-finish": Case(
        [Reply.text(["Half of ", "an answer"], finish_reason=None)],
        ["Half of an answer", "[interrupted: Gemini's answer stopped before it was"],
    ),
    "network-drop": Case(
        [Reply.drop_after(["Words ", "before the drop"])],
        ["Words before the drop", "[interrupted: The connection to Gemini broke off.]"],
    ),
    "idle-gap": Case(
        [Reply.hang(["Words then ", "silence"])],
        ["Words then silence", "[interrupted: Gemini went silent for 0.3 s in the middle"],
        config={"gemini": {"chunk_timeout": 0.3}},
    ),
    "silent-before-answering": Case(
        [Reply.hang()],
        ["Gemini went silent for 0.3 s before answering."],
        config={"gemini": {"first_byte_timeout": 0.3, "max_retries": 0}},
    ),
    "whole-answer-too-long": Case(
        [Reply.text([f"w{i} " for i in range(40)], chunk_delay=0.05)],
        ["w0 w1", "[interrupted: The answer took longer than 0.5 s and was stopped.]"],
        config={"gemini": {"answer_timeout": 0.5}},
    ),
    "bad-key": Case(
        [], ["Gemini rejected the API key: API key not valid."],
        config={"gemini": {"api_key": "nope"}},
    ),
    "leaked-key": Case(
        [Reply.error("err_403_leaked_key.json")], ["Gemini refused the API key: Your API key"]
    ),
    "per-minute-quota": Case(
        [Reply.error("err_429_minimal.json")] * 5, ["Gemini refused for now (429: Resource has"]
    ),
    "quota-wait-beyond-budget": Case(
        [Reply.error("err_429_resource_exhausted.json")],
        ["Gemini's per-minute quota for gemini-2.5-flash is used up"],
    ),
    "internal-error": Case([Reply.error(500)] * 5, ["Gemini had an internal error (500)"]),
    "bad-request": Case(
        [Reply.error("err_400_unknown_field.json")], ["Gemini rejected the request (400)"]
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_failure_is_shown_and_the_next_question_works(
    name: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    case = CASES[name]
    server = await make_server(**case.config)
    for reply in case.replies:
        fake_gemini.enqueue(reply)
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("the question")
        for text in case.shows:
            await term.wait_for(text)
        await term.wait_for(lambda t: "ready" in t.text())
        for text in case.absent:
            assert text not in term.joined().split("> the question", 1)[1]
        if name == "bad-key":
            return  # nothing can work with a rejected key; the session stays up
        fake_gemini.enqueue(Reply.text(["The next ", "one works."]))
        await term.ask("next question")
        await term.wait_for("The next one works.")


async def test_api_key_never_appears_in_logs_or_screen(
    make_server: ServerFactory, fake_gemini: FakeGemini,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    server = await make_server(gemini={"api_key": "AIzaSECRETvalue"})
    async with connected(server) as term:
        await term.ask("hello")
        await term.wait_for("rejected the API key")
        assert "AIzaSECRETvalue" not in term.raw_text()
        assert "AIzaSECRETvalue" not in caplog.text
        assert "AIzaSECRETvalue" not in fake_gemini.requests[0].target
