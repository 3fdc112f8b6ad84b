"""The fake Gemini is as strict as the real one: unknown fields, thoughts only when asked,
thinking paid out of maxOutputTokens, and the real quota and key payloads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kindlessh._sse import SSEDecoder

from .fake_gemini import FIXTURES, MANIFEST, FakeGemini, Reply
from .gemini_schema import check_request

QUESTION = {"contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"}]}]}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as c:
        yield c


async def post(
    client: httpx.AsyncClient, fg: FakeGemini, body: Any, model: str = "gemini-2.5-flash"
) -> tuple[int, list[dict[str, Any]] | dict[str, Any]]:
    """The status and either the parsed events (200) or the parsed error body."""
    url = f"{fg.base_url}/v1beta/models/{model}:streamGenerateContent"
    response = await client.post(
        url, params={"alt": "sse"}, json=body, headers={"x-goog-api-key": "test-key"}
    )
    if response.status_code != 200:
        return response.status_code, json.loads(response.content)
    decoder = SSEDecoder()
    events = [json.loads(e.data) for e in decoder.feed(response.content)]
    return 200, events


def with_config(**generation: Any) -> dict[str, Any]:
    return {**QUESTION, "generationConfig": generation}


def parts(events: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for event in events:
        content = event["candidates"][0].get("content", {})
        found += content.get("parts", [])
    return found


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (with_config(tempratue=1.0), 'Unknown name "tempratue" at \'generation_config\''),
        ({**QUESTION, "thinking": True}, 'Unknown name "thinking": Cannot find field.'),
        (
            with_config(thinkingConfig={"budget": 5}),
            'Unknown name "budget" at \'generation_config.thinking_config\'',
        ),
        (
            {"contents": [{"role": "user", "parts": [{"txt": "x"}]}]},
            "Unknown name \"txt\" at 'contents[0].parts[0]'",
        ),
    ],
)
async def test_unknown_fields_are_refused_as_the_api_words_it(
    fake_gemini: FakeGemini, client: httpx.AsyncClient, body: Any, message: str
) -> None:
    status, error = await post(client, fake_gemini, body)
    assert status == 400
    assert isinstance(error, dict)
    assert error["error"]["status"] == "INVALID_ARGUMENT"
    assert message in error["error"]["message"]
    assert error["error"]["message"].startswith("Invalid JSON payload received. Unknown name")


def test_the_documented_request_shape_is_accepted() -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Hi", "thoughtSignature": "c2ln"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 1.0, "maxOutputTokens": 8192,
                             "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}},
        "tools": [{"google_search": {}}],
    }
    assert check_request(body, "gemini-2.5-flash") is None
    level = {**body, "generationConfig": {"thinkingConfig": {"thinkingLevel": "low"}}}
    assert check_request(level, "gemini-3-flash-preview") is None
    assert check_request(level, "gemini-2.5-flash") is not None  # a level on 2.5
    both = {"generationConfig": {"thinkingConfig": {"thinkingLevel": "low", "thinkingBudget": 1}}}
    assert check_request(both, "gemini-3-flash-preview") is not None


async def test_thought_parts_only_when_asked(
    fake_gemini: FakeGemini, client: httpx.AsyncClient
) -> None:
    for reply in (Reply.fixture("02_thinking_include_thoughts.sse"), Reply.thinking(["Light."])):
        fake_gemini.enqueue(reply, reply)
        _, plain = await post(client, fake_gemini, QUESTION)
        _, asked = await post(
            client, fake_gemini, with_config(thinkingConfig={"includeThoughts": True})
        )
        assert not [p for p in parts(plain) if p.get("thought")]
        assert [p for p in parts(asked) if p.get("thought")]
        assert plain[-1]["usageMetadata"]["thoughtsTokenCount"] > 0  # type: ignore[index]


async def test_thinking_is_paid_out_of_max_output_tokens(
    fake_gemini: FakeGemini, client: httpx.AsyncClient
) -> None:
    answer = ["A long answer. " * 20]  # 75 tokens
    # The whole limit spent on thinking: MAX_TOKENS, a content with no parts at all.
    fake_gemini.enqueue(Reply.thinking(answer, thinking_tokens=900))
    _, events = await post(client, fake_gemini, with_config(maxOutputTokens=512))
    (last,) = events
    assert last["candidates"][0] == {  # type: ignore[index, call-overload]
        "content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0
    }
    assert last["usageMetadata"]["thoughtsTokenCount"] == 512  # type: ignore[index, call-overload]
    # Some room left: the text is cut there.
    fake_gemini.enqueue(Reply.thinking(answer, thinking_tokens=900))
    _, events = await post(client, fake_gemini, with_config(maxOutputTokens=920))
    assert events[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"  # type: ignore[index]
    assert len(parts(events)[0]["text"]) == 80
    # A budget bounds the thinking, and the whole answer fits.
    fake_gemini.enqueue(Reply.thinking(answer, thinking_tokens=900))
    _, events = await post(client, fake_gemini, with_config(
        maxOutputTokens=920, thinkingConfig={"thinkingBudget": 256}))
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"  # type: ignore[index]
    assert events[-1]["usageMetadata"]["thoughtsTokenCount"] == 256  # type: ignore[index]
    assert parts(events)[0]["text"] == answer[0]


@pytest.mark.parametrize(
    ("name", "status", "needle"),
    [
        ("err_429_limit_zero.json", 429, "limit: 0"),
        ("err_429_per_day.json", 429, "PerDay"),
        ("err_429_minimal.json", 429, "Resource has been exhausted"),
        ("err_400_api_key_expired.json", 400, "API key expired"),
    ],
)
async def test_the_real_payloads_are_served(
    fake_gemini: FakeGemini, client: httpx.AsyncClient, name: str, status: int, needle: str
) -> None:
    assert MANIFEST[name]["bytes"] == len((FIXTURES / name).read_bytes())
    fake_gemini.enqueue(Reply.error(name))
    got, body = await post(client, fake_gemini, QUESTION)
    assert got == status
    assert needle in json.dumps(body)
