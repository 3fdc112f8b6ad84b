"""Retries before the first token, never after; /retry asks again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kindlessh import (
    ApiKeyInvalid,
    ChatRequest,
    Finish,
    Message,
    QuotaExhausted,
    RateLimited,
    TextDelta,
    UpstreamError,
    UpstreamUnavailable,
)
from kindlessh._retry import RetryPolicy, stream_with_retries

from .conftest import FIXTURES, ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import ScriptedProvider, Step, connected
from .sshterm import Terminal

REQUEST = ChatRequest(messages=(Message("user", "hi"),))


async def run(provider: ScriptedProvider, policy: RetryPolicy) -> tuple[list[Any], list[float]]:
    waits: list[float] = []
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    events = [
        e
        async for e in stream_with_retries(
            provider, REQUEST, policy, on_wait=lambda s, e: waits.append(s), sleep=sleep,
            rand=lambda: 0.5, clock=lambda: sum(slept),
        )
    ]
    assert waits == slept
    return events, waits


OK: list[Step] = [TextDelta("fine"), Finish("STOP")]
BUSY: list[Step] = [UpstreamUnavailable("busy", status=503)]


async def test_overload_before_the_first_token_is_retried_with_backoff() -> None:
    provider = ScriptedProvider([BUSY, BUSY, BUSY, OK])
    events, waits = await run(provider, RetryPolicy())
    assert provider.calls == 4
    assert events == [TextDelta("fine"), Finish("STOP")]  # once, no duplicate text
    assert waits == [1.0, 2.0, 4.0]


async def test_retries_stop_after_four() -> None:
    provider = ScriptedProvider([BUSY] * 6)
    with pytest.raises(UpstreamUnavailable):
        await run(provider, RetryPolicy())
    assert provider.calls == 5


async def test_retries_stop_at_the_time_budget() -> None:
    provider = ScriptedProvider([BUSY] * 6)
    with pytest.raises(UpstreamUnavailable):
        await run(provider, RetryPolicy(budget=5.0))
    assert provider.calls == 3  # waits 1 + 2 fit in 5 s; the next 4 would not


async def test_retry_delay_from_the_server_is_honoured() -> None:
    provider = ScriptedProvider([[RateLimited("quota", retry_after=7.5)], OK])
    events, waits = await run(provider, RetryPolicy())
    assert waits == [7.5] and provider.calls == 2


async def test_a_wait_longer_than_the_budget_is_not_attempted() -> None:
    provider = ScriptedProvider([[RateLimited("quota", retry_after=45.0)], OK])
    with pytest.raises(RateLimited):
        await run(provider, RetryPolicy())
    assert provider.calls == 1


@pytest.mark.parametrize(
    "error", [QuotaExhausted("daily"), ApiKeyInvalid("key"), UpstreamError("other")]
)
async def test_permanent_errors_are_not_retried(error: UpstreamError) -> None:
    provider = ScriptedProvider([[error], OK])
    with pytest.raises(type(error)):
        await run(provider, RetryPolicy())
    assert provider.calls == 1


async def test_nothing_is_retried_after_the_first_token() -> None:
    provider = ScriptedProvider([[TextDelta("half an "), UpstreamUnavailable("dropped")], OK])
    with pytest.raises(UpstreamUnavailable):
        await run(provider, RetryPolicy())
    assert provider.calls == 1


@pytest.mark.slow
async def test_busy_gemini_is_retried_with_a_status_line(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(gemini={"retry_base_delay": 0.4})
    for _ in range(3):
        fake_gemini.enqueue(Reply.error(503))
    fake_gemini.enqueue(Reply.text(["After ", "three tries."]))
    async with connected(server) as term:
        await term.ask("hello?")
        await term.wait_for("Gemini is busy, retrying in")
        await term.wait_for("After three tries.")
        assert len(fake_gemini.requests) == 4
        assert term.joined().count("After three tries.") == 1


async def test_gemini_down_for_good_says_so_after_the_retries(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    for _ in range(5):
        fake_gemini.enqueue(Reply.error(503))
    await term.ask("hello?")
    await term.wait_for("Gemini is overloaded (503)")
    assert len(fake_gemini.requests) == 5


async def test_daily_quota_is_not_retried(term: Terminal, fake_gemini: FakeGemini) -> None:
    body = json.loads((FIXTURES / "err_429_resource_exhausted.json").read_text())
    for detail in body["error"]["details"]:
        for violation in detail.get("violations", []):
            violation["quotaId"] = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    data = (json.dumps(body, indent=2) + "\n").encode()
    fake_gemini.enqueue(
        Reply.raw(429, {"Content-Type": "text/event-stream", "Content-Length": str(len(data))},
                  [data])
    )
    await term.ask("hello?")
    await term.wait_for("daily quota")
    assert "midnight Pacific" in term.joined()
    assert len(fake_gemini.requests) == 1


async def test_retry_command_asks_the_last_question_again(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.text(["First try."]))
    fake_gemini.enqueue(Reply.text(["Second try."]))
    await term.ask("a question")
    await term.wait_for("First try.")
    await term.wait_for(lambda t: "ready" in t.text())
    await term.send("/retry\r")
    await term.wait_for("Second try.")
    assert "First try." not in term.joined()
    assert term.joined().count("> a question") == 1
    assert fake_gemini.requests[1].json["contents"] == [
        {"role": "user", "parts": [{"text": "a question"}]}
    ]


async def test_retry_with_nothing_to_retry(term: Terminal) -> None:
    await term.send("/retry\r")
    await term.wait_for("Nothing to retry yet")
