"""The OpenAI-compatible provider: the recorded streams of each server family, split every
way, and each HTTP error, against a fake server on loopback."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import httpx
import pytest

from kindlessh._config import ModelConfig
from kindlessh._errors import (
    ApiKeyInvalid,
    BadRequest,
    ModelNotFound,
    RateLimited,
    TruncatedStream,
    UpstreamError,
    UpstreamUnavailable,
)
from kindlessh._openai import ChunkReader, OpenAIProvider, check_entry
from kindlessh._provider import (
    ChatRequest,
    Finish,
    Message,
    StreamEvent,
    TextDelta,
    ThoughtDelta,
    Usage,
)

from .fake_openai import FIXTURES, FakeOpenAI, Reply, chunk

ENTRY = ModelConfig(name="local", base_url="http://127.0.0.1:9/v1", model="llama3.2",
                    first_byte_timeout=5.0, chunk_timeout=5.0)

# fixture: (answer, thoughts, finish reason, normal, (input, output+thoughts, total))
EXPECTED = {
    "01_openai_text_usage.sse": (
        "I'm unable to provide real-time weather updates. To get the current weather in San "
        "Francisco, I recommend checking a reliable weather website or a weather app.",
        "", "stop", True, (14, 30, 44)),
    "02_openai_length.sse": ('{"', "", "length", False, (79, 1, 80)),
    "03_openai_refusal.sse": ("I'm sorry, I can't assist with that request.", "", "stop", False,
                              None),
    "06_ollama_legacy_reasoning.sse": ("Hello there!", "The user says", "stop", True,
                                       (68, 41, 109)),
    "07_llamacpp_b6097_usage_timings.sse": ("Hello! How can I help?", "", "stop", True,
                                            (1085, 247, 1332)),
    "08_vllm_continuous_usage.sse": ("Hello Sam.", "", "stop", True, (46, 26, 72)),
    "09_deepseek_reasoning_content.sse": ("Hello! 😊", "Hmm, the user just said", "stop", True,
                                          (6, 169, 175)),
    "10_openrouter_comments_usage.sse": (
        "The installed version of LLM on this system is 0.fixed-version.", "", "stop", True,
        (105, 16, 121)),
}
ERRORS = {
    "05_openai_midstream_error.sse": ('The question "', "The server had an error"),
    "11_openrouter_midstream_error.sse": ("Partial answer", "Provider disconnected unexpectedly"),
}


def splits(data: bytes) -> dict[str, list[bytes]]:
    rng = random.Random(len(data))
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, 40)
        pieces.append(data[i:i + n])
        i += n
    return {"whole": [data], "bytes": [data[i:i + 1] for i in range(len(data))],
            "random": pieces}


def read_all(pieces: list[bytes]) -> tuple[list[StreamEvent], BaseException | None]:
    reader = ChunkReader(ENTRY)
    events: list[StreamEvent] = []
    try:
        for piece in pieces:
            for event in reader.feed(piece):
                events.append(event)
        events += reader.close()
    except UpstreamError as exc:
        return events, exc
    return events, None


def texts(events: list[StreamEvent]) -> tuple[str, str]:
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    thoughts = "".join(e.text for e in events if isinstance(e, ThoughtDelta))
    return answer, thoughts


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_recorded_streams_parse_however_split(name: str, how: str) -> None:
    answer, thoughts, reason, normal, usage = EXPECTED[name]
    events, error = read_all(splits((FIXTURES / name).read_bytes())[how])
    assert error is None
    got_answer, got_thoughts = texts(events)
    assert got_answer == answer
    assert got_thoughts.startswith(thoughts)
    assert thoughts or not got_thoughts
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == reason and finish.normal is normal
    assert sum(isinstance(e, Finish) for e in events) == 1
    if usage is not None:
        last = [e for e in events if isinstance(e, Usage)][-1]
        assert (last.input_tokens, last.output_tokens + last.thoughts_tokens,
                last.total_tokens) == usage


@pytest.mark.parametrize("name", sorted(ERRORS))
@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_errors_inside_a_200_stream_raise_after_the_partial_text(name: str, how: str) -> None:
    partial, message = ERRORS[name]
    events, error = read_all(splits((FIXTURES / name).read_bytes())[how])
    assert texts(events)[0] == partial
    assert isinstance(error, UpstreamUnavailable) and message in str(error)


def test_tool_calls_end_with_a_note_not_an_answer() -> None:
    events, error = read_all([(FIXTURES / "04_openai_tool_calls.sse").read_bytes()])
    assert error is None and texts(events) == ("", "")
    finish = events[-1]
    assert isinstance(finish, Finish) and not finish.normal and "tool" in (finish.note or "")


@pytest.mark.parametrize("reason,word", [("length", "length limit"),
                                         ("content_filter", "content filter")])
def test_finish_reasons_are_worded(reason: str, word: str) -> None:
    events, _ = read_all([chunk({"content": "x"}), chunk({}, reason), b"data: [DONE]\n\n"])
    finish = events[-1]
    assert isinstance(finish, Finish) and not finish.normal and word in (finish.note or "")


THINK = (b"".join([chunk({"content": "<think>"}), chunk({"content": "Let me see"}),
                   chunk({"content": ".</think>\n\nThe answer"}), chunk({"content": " is 4."}),
                   chunk({}, "stop")]) + b"data: [DONE]\n\n")


@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_inline_think_tags_split_anywhere_are_thoughts(how: str) -> None:
    # Ollama's Go encoder escapes < and > in JSON: the same text, other bytes.
    for body in (THINK, THINK.replace(b"<", b"\\u003c").replace(b">", b"\\u003e")):
        events, error = read_all(splits(body)[how])
        assert error is None
        assert texts(events) == ("The answer is 4.", "Let me see.")


def test_think_tag_split_inside_the_tag_itself() -> None:
    pieces = ["<th", "ink>mull", "ing</th", "ink>Ans", "wer"]
    body = b"".join(chunk({"content": p}) for p in pieces) + chunk({}, "stop")
    events, error = read_all([body])
    assert error is None and texts(events) == ("Answer", "mulling")


def test_a_later_think_tag_is_answer_text() -> None:
    body = chunk({"content": "Use <think> tags"}) + chunk({}, "stop")
    events, _ = read_all([body])
    assert texts(events) == ("Use <think> tags", "")


def test_a_stream_without_finish_is_truncated_but_keeps_its_text() -> None:
    events, error = read_all([chunk({"content": "Half"})])
    assert texts(events)[0] == "Half" and isinstance(error, TruncatedStream)
    events, error = read_all([chunk({"content": "Half"}), b"data: [DONE]\n\n"])
    assert isinstance(error, TruncatedStream)


def test_old_llama_server_error_field_is_raised() -> None:
    body = (b'error: {"code":400,"message":"request (9000 tokens) exceeds the available '
            b'context size (4096 tokens), try increasing it","type":"exceed_context_size_error"}'
            b"\n\ndata: [DONE]\n\n")
    _, error = read_all([body])
    assert isinstance(error, BadRequest) and "too long" in str(error)


# ----- against the fake server ---------------------------------------------------------


def request(*texts_: str) -> ChatRequest:
    msgs = [Message("user" if i % 2 == 0 else "model", t) for i, t in enumerate(texts_)]
    return ChatRequest(messages=tuple(msgs), system_instruction="Be brief.",
                       temperature=0.5, max_output_tokens=100)


async def collect(provider: OpenAIProvider, req: ChatRequest) -> list[StreamEvent]:
    return [e async for e in provider.stream(req)]


def entry(fake: FakeOpenAI, **changes: object) -> ModelConfig:
    values: dict[str, object] = {"base_url": fake.base_url, **changes}
    return ModelConfig(**{**ENTRY.__dict__, **values})  # type: ignore[arg-type]


async def test_request_is_chat_completions_with_roles_and_usage_asked() -> None:
    async with FakeOpenAI() as fake:
        provider = OpenAIProvider(entry(fake))
        try:
            events = await collect(provider, request("Hi", "Hello.", "How are you?"))
        finally:
            await provider.aclose()
    assert texts(events)[0] == "Hello there."
    sent = fake.requests[0]
    assert sent.path == "/v1/chat/completions" and "authorization" not in sent.headers
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "How are you?"}]
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["model"] == "llama3.2" and sent.body["max_tokens"] == 100


@pytest.mark.parametrize("fixture,kind,words", [
    ("err_ollama_404_model_not_found.json", ModelNotFound, "ollama pull llama3.2"),
    ("err_lmstudio_404_model_not_found.json", ModelNotFound, "does not know the model"),
    ("err_openai_400_context_length.json", BadRequest, "too long for llama3.2"),
    ("err_llamacpp_400_exceed_context.json", BadRequest, "exceeds the available context"),
    ("err_openrouter_429_upstream.json", RateLimited, "temporarily rate-limited upstream"),
])
async def test_error_bodies_map_to_the_tree(fixture: str, kind: type, words: str) -> None:
    async with FakeOpenAI() as fake:
        fake.enqueue(Reply.error(fixture, headers=[("Retry-After", "7")]))
        provider = OpenAIProvider(entry(fake))
        try:
            with pytest.raises(kind) as caught:
                await collect(provider, request("Hi"))
        finally:
            await provider.aclose()
    assert words in str(caught.value)
    if kind is RateLimited:
        assert caught.value.retry_after == 7.0


async def test_bad_key_and_server_errors() -> None:
    async with FakeOpenAI(key="right") as fake:
        provider = OpenAIProvider(entry(fake, api_key="wrong", api_key_env="LOCAL_KEY"))
        try:
            with pytest.raises(ApiKeyInvalid, match="local refused the API key.*LOCAL_KEY"):
                await collect(provider, request("Hi"))
            assert fake.requests[0].headers["authorization"] == "Bearer wrong"
        finally:
            await provider.aclose()
    async with FakeOpenAI() as fake:
        fake.enqueue(Reply.status_only(
            503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'))
        provider = OpenAIProvider(entry(fake))
        try:
            with pytest.raises(UpstreamUnavailable, match="still loading.*Loading model"):
                await collect(provider, request("Hi"))
        finally:
            await provider.aclose()


async def test_connection_refused_names_the_entry_and_url() -> None:
    provider = OpenAIProvider(ENTRY)
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await collect(provider, request("Hi"))
    finally:
        await provider.aclose()
    assert "local (http://127.0.0.1:9/v1)" in str(caught.value)
    assert "refused" in str(caught.value)


async def test_first_byte_timeout_says_the_model_may_be_loading() -> None:
    async with FakeOpenAI() as fake:
        fake.enqueue(dataclasses.replace(Reply.text(["late"]), first_byte_delay=2.0))
        provider = OpenAIProvider(entry(fake, first_byte_timeout=0.2))
        try:
            with pytest.raises(UpstreamUnavailable, match="still loading"):
                await collect(provider, request("Hi"))
        finally:
            await provider.aclose()


async def test_stream_split_per_byte_over_http() -> None:
    async with FakeOpenAI() as fake:
        fake.enqueue(Reply.fixture("09_deepseek_reasoning_content.sse", split="bytes"))
        provider = OpenAIProvider(entry(fake))
        try:
            events = await collect(provider, request("Hi"))
        finally:
            await provider.aclose()
    answer, thoughts = texts(events)
    assert answer == "Hello! 😊" and thoughts.startswith("Hmm")


async def test_check_entry_lists_models() -> None:
    async with FakeOpenAI(models=("llama3.2:latest",)) as fake:
        assert "present" in await check_entry(entry(fake))
        with pytest.raises(ModelNotFound):
            await check_entry(entry(fake, model="qwen3"))
    with pytest.raises(UpstreamUnavailable, match="refused"):
        await check_entry(ENTRY)


def test_fixture_files_are_all_covered() -> None:
    names = {p.name for p in Path(FIXTURES).glob("*.sse")}
    assert names == set(EXPECTED) | set(ERRORS) | {"04_openai_tool_calls.sse"}


async def test_the_fake_sends_usage_only_when_asked_as_the_real_servers_do() -> None:
    async with FakeOpenAI() as fake:
        async with httpx.AsyncClient() as client:
            for asked, has_usage in ((True, True), (False, False)):
                fake.enqueue(Reply.text(["Hi."]))
                body: dict[str, object] = {"model": "m", "messages": [], "stream": True}
                if asked:
                    body["stream_options"] = {"include_usage": True}
                response = await client.post(f"{fake.base_url}/chat/completions", json=body)
                assert ('"usage"' in response.text) is has_usage
