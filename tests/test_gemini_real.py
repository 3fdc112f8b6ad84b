"""Gemini as it really is (issue 13), through SSH against the strict fake: thinking paid
out of the output limit, thoughts only when asked, quota and key messages, which failures
are retried, and a plain line for every finish reason."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kindlessh import load_config
from kindlessh._cli import main
from kindlessh._errors import ConfigError, QuotaExhausted, RateLimited, UpstreamUnavailable
from kindlessh._gemini import _FINISH_NOTES, error_from_body
from kindlessh._retry import retryable

from .conftest import FIXTURES, ServerFactory, write_config
from .fake_gemini import FakeGemini, Reply, error_body
from .helpers import connected

# About 1,500 tokens of answer: an ordinary long answer.
LONG_ANSWER = [f"Paragraph {i} explains one more step of the proof in plain words. " * 10
               for i in range(10)] + ["That is the whole proof."]


def generation(fake: FakeGemini, n: int = -1) -> dict[str, Any]:
    body = fake.requests[n].json
    assert isinstance(body, dict)
    config = body.get("generationConfig", {})
    assert isinstance(config, dict)
    return config


# ----- 1. thinking bounded, paid out of the output limit -----------------------------------


async def test_a_hard_question_still_gets_a_whole_answer(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server()
    # The model would think for 30,000 tokens if let: the default budget bounds it.
    fake_gemini.enqueue(Reply.thinking(LONG_ANSWER, thinking_tokens=30_000))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("prove it")
        await term.wait_for("That is the whole proof.")
        await term.wait_for(lambda t: "ready" in t.text())
        assert "[" not in term.joined().split("That is the whole proof.", 1)[1]
    config = generation(fake_gemini)
    assert config["maxOutputTokens"] == 8192
    assert config["thinkingConfig"] == {"thinkingBudget": 2048}


async def test_gemini_3_gets_a_thinking_level(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    fake_gemini.models.add("gemini-3-flash-preview")
    server = await make_server(gemini={"model": "gemini-3-flash-preview"})
    fake_gemini.enqueue(Reply.thinking(LONG_ANSWER, thinking_tokens=30_000))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("prove it")
        await term.wait_for("That is the whole proof.")
    assert generation(fake_gemini)["thinkingConfig"] == {"thinkingLevel": "low"}


async def test_a_limit_spent_on_thinking_says_so_and_what_to_raise(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"max_output_tokens": 1024, "thinking_budget": -1})
    fake_gemini.enqueue(Reply.thinking(LONG_ANSWER, thinking_tokens=5000))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("prove it")
        await term.wait_for(
            "[no answer: the length limit was spent on thinking (1,024 tokens); raise "
            "[gemini] max_output_tokens (now 1,024) or lower [gemini] thinking_budget]"
        )
        assert "answer cut at the length limit" not in term.joined()
        # Some text, most of the limit on thinking: the note says how much.
        fake_gemini.enqueue(Reply.thinking(LONG_ANSWER, thinking_tokens=900))
        await term.ask("again")
        await term.wait_for("[answer cut at the length limit: thinking took 900 of its 1,024")


def test_a_thinking_budget_must_leave_room_for_the_answer(tmp_path: Any) -> None:
    path = write_config(tmp_path / "k.toml", {"gemini": {"max_output_tokens": 1000,
                                                          "thinking_budget": 1000}})
    with pytest.raises(ConfigError, match="thinking_budget .1000. leaves no room"):
        load_config(path)


# ----- 2. thoughts asked for only when shown ----------------------------------------------


async def test_thoughts_are_asked_for_when_shown(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server()
    thoughts = ("**Weighing it**\n\nRayleigh scattering favours blue.\n\n",)
    async with connected(server, cols=80, rows=30) as term:
        fake_gemini.enqueue(Reply.thinking(["Because of scattering."], thoughts=thoughts))
        await term.ask("why blue?")
        await term.wait_for("Because of scattering.")
        assert "includeThoughts" not in generation(fake_gemini)["thinkingConfig"]
        await term.ask("/thoughts")
        await term.wait_for("Thinking is shown")
        fake_gemini.enqueue(Reply.thinking(["Scattering again."], thoughts=thoughts))
        await term.ask("and again?")
        await term.wait_for("Scattering again.")
        await term.wait_for("│ Rayleigh scattering favours blue.")
        assert generation(fake_gemini)["thinkingConfig"]["includeThoughts"] is True


async def test_a_model_that_shares_no_thoughts_is_named_once(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server()
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("/thoughts")
        for i in range(2):
            fake_gemini.enqueue(Reply.text([f"Answer {i} here."], thoughts_tokens=300))
            await term.ask(f"question {i}")
            await term.wait_for(f"Answer {i} here.")
            await term.wait_for(lambda t: "ready" in t.text())
        shown = term.joined()
        assert shown.count("shared no thoughts") == 1
        assert "[gemini-2.5-flash thought but shared no thoughts; /thoughts has nothing" in shown


# ----- 3, 4, 5: quotas, keys and retries ---------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "shows", "absent", "requests"),
    [
        ("err_429_limit_zero.json",
         "Gemini has no quota for gemini-2.5-flash in this API key's Google Cloud project "
         "(limit 0). Enable billing for the project, or set [gemini] model to another",
         ["midnight", "per-minute", "retrying"], 1),
        ("err_429_per_day.json",
         "Gemini's daily quota for gemini-2.5-flash is used up for this Google Cloud project "
         "(limits are per project, not per key); it resets at midnight Pacific time.",
         ["per-minute"], 1),
        ("err_429_minimal.json",
         "Gemini refused for now (429: Resource has been exhausted (e.g. check quota).); the "
         "cause is not known.", ["per-minute", "midnight"], 5),
        ("err_400_api_key_expired.json",
         "Gemini rejected the API key: API key expired. Please renew the API key.",
         ["not valid"], 1),
    ],
)
async def test_quota_and_key_messages(
    make_server: ServerFactory, fake_gemini: FakeGemini,
    fixture: str, shows: str, absent: list[str], requests: int,
) -> None:
    server = await make_server()
    for _ in range(5):
        fake_gemini.enqueue(Reply.error(fixture))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("hello?")
        await term.wait_for(shows)
        await term.wait_for(lambda t: "ready" in t.text())
        after = term.joined().split("> hello?", 1)[1]
        for word in absent:
            assert word not in after
    assert len(fake_gemini.requests) == requests


async def test_a_bare_429_is_retried_without_naming_a_quota(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"retry_base_delay": 0.3})
    fake_gemini.enqueue(Reply.error("err_429_minimal.json"), Reply.text(["Got through."]))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("hello?")
        await term.wait_for("Gemini refused for now (429, cause unknown), retrying in")
        await term.wait_for("Got through.")
    assert len(fake_gemini.requests) == 2


@pytest.mark.parametrize(("status", "tries", "shows"), [
    (501, 1, "Gemini failed (501): Operation is not implemented"),
    (505, 1, "Gemini failed (505)"),
    (502, 5, "Gemini had an internal error (502)"),
    (408, 5, "Gemini took too long (408)"),
])
async def test_only_the_statuses_the_sdks_retry_are_retried(
    make_server: ServerFactory, fake_gemini: FakeGemini, status: int, tries: int, shows: str
) -> None:
    server = await make_server()
    for _ in range(5):
        fake_gemini.enqueue(Reply(status=status, body=(error_body(status),), framing="length"))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("hello?")
        await term.wait_for(shows)
    assert len(fake_gemini.requests) == tries


@pytest.mark.parametrize(("status", "expected"), [
    (408, True), (429, True), (500, True), (502, True), (503, True), (504, True),
    (501, False), (505, False), (511, False), (400, False), (409, False),
])
def test_retryable_statuses(status: int, expected: bool) -> None:
    assert retryable(error_from_body(status, json.loads(error_body(status)), "m")) is expected


def test_daily_quota_ids_and_limit_zero_come_first() -> None:
    daily = {"error": {"code": 429, "message": "Quota exceeded", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaId": "GenerateContentDailyTokens-PaidTier"}]}]}}
    assert isinstance(error_from_body(429, daily, "m"), QuotaExhausted)
    zero = json.loads((FIXTURES / "err_429_limit_zero.json").read_text())
    error = error_from_body(429, zero, "models/gemini-2.5-pro")
    assert isinstance(error, QuotaExhausted) and "no quota for gemini-2.5-pro" in str(error)
    minute = json.loads((FIXTURES / "err_429_resource_exhausted.json").read_text())
    assert isinstance(error_from_body(429, minute, "m"), RateLimited)
    assert isinstance(error_from_body(None, {"error": {"code": 503}}, "m"), UpstreamUnavailable)


# ----- 8. every finish reason ---------------------------------------------------------------

REASONS = [
    "FINISH_REASON_UNSPECIFIED", "MAX_TOKENS", "SAFETY", "RECITATION", "LANGUAGE", "OTHER",
    "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MALFORMED_FUNCTION_CALL", "IMAGE_SAFETY",
    "UNEXPECTED_TOOL_CALL", "IMAGE_PROHIBITED_CONTENT", "NO_IMAGE", "IMAGE_RECITATION",
    "IMAGE_OTHER", "TOO_MANY_TOOL_CALLS", "MISSING_THOUGHT_SIGNATURE", "MALFORMED_RESPONSE",
]


def test_every_sdk_finish_reason_has_its_own_words() -> None:
    assert set(REASONS) == set(_FINISH_NOTES)
    assert len(set(_FINISH_NOTES.values())) == len(_FINISH_NOTES)


async def test_every_finish_reason_gets_a_plain_line(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server()
    async with connected(server, cols=100, rows=12) as term:
        for i, reason in enumerate([*REASONS, "SOMETHING_NEW"]):
            fake_gemini.enqueue(Reply.text([f"Words {i} "], finish_reason=reason))
            await term.ask(f"q{i}")
            note = _FINISH_NOTES.get(reason, "answer ended early, for a reason this server "
                                             "does not know (something new)")
            await term.wait_for(f"[{note}")
            await term.wait_for(lambda t: "ready" in t.text())
        fake_gemini.enqueue(Reply.text(["Still fine."]))
        await term.ask("last")
        await term.wait_for("Still fine.")


# ----- 6. model names as ListModels gives them; kindlessh models ----------------------------


async def test_a_model_named_as_list_models_names_it_works(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"model": "models/gemini-2.5-flash"})
    fake_gemini.enqueue(Reply.text(["Named ", "fine."]))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("hello?")
        await term.wait_for("Named fine.")
        await term.wait_for(lambda t: "gemini-2.5-flash - ready" in t.text())
        assert "models/" not in term.text()
    assert fake_gemini.requests[-1].path == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    )
    assert fake_gemini.responses  # answered, not a 404


def test_a_bad_model_name_is_refused_at_start(tmp_path: Any) -> None:
    path = write_config(tmp_path / "k.toml", {"gemini": {"model": "other/gemini-2.5-flash"}})
    with pytest.raises(ConfigError, match=r"\[gemini\] model"):
        load_config(path)


async def run_models(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], gemini: dict[str, Any]
) -> tuple[int, str, str]:
    path = write_config(tmp_path / "k.toml", {"gemini": gemini})
    code = await asyncio.to_thread(main, ["models", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


async def test_kindlessh_models_lists_the_chat_models(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], fake_gemini: FakeGemini
) -> None:
    fake_gemini.models |= {"gemini-3-flash-preview", "gemini-2.0-flash"}
    fake_gemini.list_page_size = 2  # three pages
    code, out, err = await run_models(tmp_path, capsys, {
        "api_key": "test-key", "base_url": fake_gemini.base_url,
        "model": "models/gemini-2.5-flash",
    })
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Models this key can use for chat (3); set one as [gemini] model:"
    assert [line.split()[0] if line[0] != "*" else line.split()[1] for line in lines[1:]] == [
        "gemini-2.0-flash", "gemini-2.5-flash", "gemini-3-flash-preview"
    ]
    assert lines[2].startswith("* gemini-2.5-flash")  # the configured one
    assert "(in 1,048,576, out 65,536 tokens, thinks)" in lines[2]
    assert "embedding" not in out
    listed = [r for r in fake_gemini.requests if r.path == "/v1beta/models"]
    assert len(listed) == 2  # pageSize 1000, capped at 2 by the fake: 4 entries, 2 pages
    assert listed[0].headers["x-goog-api-key"] == "test-key"
    assert "test-key" not in listed[0].target


async def test_kindlessh_models_with_a_bad_key_says_so(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], fake_gemini: FakeGemini
) -> None:
    code, out, err = await run_models(tmp_path, capsys, {
        "api_key": "wrong", "base_url": fake_gemini.base_url,
    })
    assert code == 1
    assert err == ("kindlessh: Gemini rejected the API key: API key not valid. Please pass a "
                   "valid API key. Check GEMINI_API_KEY or [gemini] api_key.\n")


# ----- 7. thought signatures go back as received; large events -------------------------------


def model_turns(fake: FakeGemini, n: int = -1) -> list[Any]:
    body = fake.requests[n].json
    assert isinstance(body, dict)
    return [c["parts"] for c in body["contents"] if c["role"] == "model"]


async def test_thought_signatures_are_sent_back_even_after_a_restart(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    signature = "Q2lYQVk4OWExOHNpZ25hdHVyZQ==" * 3
    server = await make_server()
    fake_gemini.enqueue(
        Reply.thinking(["First ", "answer."], signature=signature),
        Reply.text(["Second answer."]),
    )
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("one")
        await term.wait_for("First answer.")
        await term.wait_for(lambda t: "ready" in t.text())
        await term.ask("two")
        await term.wait_for("Second answer.")
        await term.wait_for(lambda t: "ready" in t.text())
    # The parts exactly as they came, the signature on the part it came on; a turn
    # without signatures goes back as its text.
    assert model_turns(fake_gemini) == [
        [{"text": "First ", "thoughtSignature": signature}, {"text": "answer."}]
    ]
    await server.close()
    again = await make_server()
    fake_gemini.enqueue(Reply.text(["Third answer."]))
    async with connected(again, cols=80, rows=30) as term:
        await term.wait_for("Second answer.")  # the stored conversation, reopened
        await term.ask("three")
        await term.wait_for("Third answer.")
    assert model_turns(fake_gemini) == [
        [{"text": "First ", "thoughtSignature": signature}, {"text": "answer."}],
        [{"text": "Second answer."}],
    ]


async def test_an_event_of_nearly_4_mib_is_accepted(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    signature = "A" * ((4 << 20) - 4096)
    server = await make_server()
    fake_gemini.enqueue(Reply.thinking(["Big signature, fine."], signature=signature,
                                       split="whole"))
    async with connected(server, cols=80, rows=30) as term:
        await term.ask("one")
        await term.wait_for("Big signature, fine.")
        await term.wait_for(lambda t: "ready" in t.text())
        assert "interrupted" not in term.joined() and "too large" not in term.joined()
