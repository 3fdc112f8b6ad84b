"""The Gemini provider below the SSH layer, with httpx.MockTransport and the fixtures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from kindlessh import (
    ApiKeyInvalid,
    ApiKeyMissing,
    BadRequest,
    ChatRequest,
    Finish,
    Message,
    ModelNotFound,
    QuotaExhausted,
    RateLimited,
    TextDelta,
    ThoughtDelta,
    TruncatedStream,
    UpstreamError,
    UpstreamUnavailable,
    Usage,
)
from kindlessh._config import GeminiConfig
from kindlessh._gemini import GeminiProvider, finish_event, map_httpx_errors

from .conftest import FIXTURES

MANIFEST: dict[str, Any] = json.loads((FIXTURES / "MANIFEST.json").read_text())
SSE_FIXTURES = sorted(name for name in MANIFEST if name.endswith(".sse"))
REQUEST = ChatRequest(messages=(Message("user", "hi"),), temperature=0.5, max_output_tokens=99)


class Body(httpx.AsyncByteStream):
    """A streamed response body that records when it is closed."""

    def __init__(self, chunks: list[bytes], delay: float = 0.0, hang: bool = False) -> None:
        self.chunks = chunks
        self.delay = delay
        self.hang = hang
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield chunk
        if self.hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed.set()


def provider(handler: Callable[[httpx.Request], httpx.Response], **cfg: Any) -> GeminiProvider:
    config = GeminiConfig(api_key="secret-key", base_url="https://gemini.test", **cfg)
    return GeminiProvider(config, transport=httpx.MockTransport(handler))


def sse_response(name: str, split: int = 0) -> Callable[[httpx.Request], httpx.Response]:
    data = (FIXTURES / name).read_bytes()
    chunks = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Body(chunks)
        )

    return handler


def error_response(name: str) -> Callable[[httpx.Request], httpx.Response]:
    status = MANIFEST[name]["http_status"]
    data = (FIXTURES / name).read_bytes()
    return lambda request: httpx.Response(
        status, headers={"content-type": "text/event-stream"}, content=data
    )


async def collect(p: GeminiProvider, request: ChatRequest = REQUEST) -> list[Any]:
    events: list[Any] = []
    async for event in p.stream(request):
        events.append(event)
    return events


@pytest.mark.parametrize("name", SSE_FIXTURES)
@pytest.mark.parametrize("split", [0, 1, 7])
async def test_fixture_stream_gives_the_expected_answer(name: str, split: int) -> None:
    expect = MANIFEST[name]["expect"]
    events: list[Any] = []
    error: Exception | None = None
    try:
        async for event in provider(sse_response(name, split)).stream(REQUEST):
            events.append(event)
    except UpstreamError as exc:
        error = exc
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    thoughts = "".join(e.text for e in events if isinstance(e, ThoughtDelta))
    finishes = [e for e in events if isinstance(e, Finish)]
    if "text" in expect:
        assert text == expect["text"]
    if "thought_text" in expect:
        assert thoughts == expect["thought_text"]
    if expect.get("finishReason"):
        assert [f.reason for f in finishes] == [expect["finishReason"]]
        assert error is None
    if name.startswith("07"):
        assert finishes and finishes[0].blocked and error is None
    if name.startswith("09"):
        assert isinstance(error, UpstreamUnavailable) and error.status == 503
    if name.startswith("14"):
        assert isinstance(error, TruncatedStream)
    if "usage_final" in expect:
        usage = [e for e in events if isinstance(e, Usage)][-1]
        final = expect["usage_final"]
        assert usage.input_tokens == final["promptTokenCount"]
        assert usage.output_tokens == final.get("candidatesTokenCount", 0)
        assert usage.thoughts_tokens == final.get("thoughtsTokenCount", 0)
        assert usage.total_tokens == final["totalTokenCount"]


async def test_malformed_event_is_skipped_and_the_rest_arrives() -> None:
    events = await collect(provider(sse_response("10_malformed_json_event.sse")))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello!"
    assert [e.reason for e in events if isinstance(e, Finish)] == ["STOP"]


async def test_request_shape_and_key_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse_response("01_text_multichunk.sse")(request)

    await collect(provider(handler, model="gemini-2.5-flash"))
    (request,) = seen
    assert request.url.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert request.url.params["alt"] == "sse"
    assert "secret-key" not in str(request.url)
    assert request.headers["x-goog-api-key"] == "secret-key"
    body = json.loads(request.content)
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert body["generationConfig"] == {
        "temperature": 0.5, "maxOutputTokens": 99, "thinkingConfig": {"thinkingBudget": 2048}
    }


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("err_400_api_key_invalid.json", ApiKeyInvalid, "rejected the API key"),
        ("err_403_unregistered_caller.json", ApiKeyInvalid, "refused the API key"),
        ("err_403_leaked_key.json", ApiKeyInvalid, "leaked"),
        ("err_404_model_not_found.json", ModelNotFound, "does not know the model"),
        ("err_429_resource_exhausted.json", RateLimited, "per-minute quota"),
        ("err_429_minimal.json", RateLimited, "the cause is not known"),
        ("err_500_internal.json", UpstreamUnavailable, "internal error"),
        ("err_503_unavailable.json", UpstreamUnavailable, "overloaded"),
        ("err_400_unknown_field.json", BadRequest, "rejected the request (400)"),
        ("err_400_array_variant.json", BadRequest, "invalid argument"),
    ],
)
async def test_error_bodies_become_clear_messages(
    name: str, kind: type[Exception], words: str
) -> None:
    with pytest.raises(kind) as info:
        await collect(provider(error_response(name)))
    message = str(info.value)
    assert words in message
    assert "\n" not in message and "secret-key" not in message


async def test_retry_delay_is_read_from_retry_info() -> None:
    with pytest.raises(RateLimited) as info:
        await collect(provider(error_response("err_429_resource_exhausted.json")))
    assert info.value.retry_after is not None and info.value.retry_after > 0


async def test_daily_quota_is_not_a_rate_limit() -> None:
    body = json.loads((FIXTURES / "err_429_resource_exhausted.json").read_text())
    for detail in body["error"]["details"]:
        for violation in detail.get("violations", []):
            violation["quotaId"] = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    handler = lambda request: httpx.Response(429, json=body)  # noqa: E731
    with pytest.raises(QuotaExhausted) as info:
        await collect(provider(handler))
    assert "midnight Pacific" in str(info.value)


async def test_missing_key_makes_no_request() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    p = GeminiProvider(GeminiConfig(api_key=""), transport=httpx.MockTransport(handler))
    with pytest.raises(ApiKeyMissing, match="GEMINI_API_KEY"):
        await collect(p)
    assert calls == []


async def test_silence_before_the_first_byte_times_out() -> None:
    body = Body([], hang=True)
    p = provider(lambda r: httpx.Response(200, stream=body), first_byte_timeout=0.05)
    with pytest.raises(UpstreamUnavailable, match="went silent for 0.05 s before answering"):
        await collect(p)
    assert body.closed.is_set()


async def test_silence_between_chunks_times_out_after_text() -> None:
    body = Body([b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}\r\n\r\n'],
                hang=True)
    p = provider(lambda r: httpx.Response(200, stream=body), chunk_timeout=0.05)
    events: list[Any] = []
    with pytest.raises(UpstreamUnavailable, match="in the middle of the answer"):
        async for event in p.stream(REQUEST):
            events.append(event)
    assert events == [TextDelta("Hi")]


async def test_closing_the_stream_closes_the_response() -> None:
    body = Body([b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}\r\n\r\n'],
                hang=True)
    p = provider(lambda r: httpx.Response(200, stream=body))
    stream = p.stream(REQUEST)
    assert await anext(stream) == TextDelta("Hi")
    await stream.aclose()  # type: ignore[attr-defined]
    assert body.closed.is_set()


def _transport_errors() -> list[type[httpx.TransportError]]:
    found: list[type[httpx.TransportError]] = []
    todo: list[type[httpx.TransportError]] = [httpx.TransportError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("exc_type", _transport_errors(), ids=lambda c: c.__name__)
def test_every_httpx_transport_error_is_mapped(exc_type: type[httpx.TransportError]) -> None:
    with pytest.raises(UpstreamError) as info, map_httpx_errors("https://gemini.test"):
        raise exc_type("boom")
    assert isinstance(info.value.__cause__, exc_type)
    assert str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError])
def test_credentials_in_the_base_url_never_reach_a_message(
    exc_type: type[httpx.TransportError],
) -> None:
    with pytest.raises(UpstreamError) as info, map_httpx_errors(
        "https://proxyuser:s3cret@gemini.test:8443/v1beta"
    ):
        raise exc_type("boom")
    assert "gemini.test:8443" in str(info.value)
    assert "s3cret" not in str(info.value) and "proxyuser" not in str(info.value)


def test_transport_error_list_is_not_trivial() -> None:
    names = {c.__name__ for c in _transport_errors()}
    assert {"ConnectError", "ReadTimeout", "RemoteProtocolError", "ProxyError"} <= names


async def test_an_upstream_that_never_sends_headers_times_out() -> None:
    import asyncio as _asyncio

    async def never(reader: _asyncio.StreamReader, writer: _asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await _asyncio.sleep(30)

    server = await _asyncio.start_server(never, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = GeminiConfig(
        api_key="k", base_url=f"http://127.0.0.1:{port}",
        first_byte_timeout=0.2, chunk_timeout=0.2,
    )
    p = GeminiProvider(config)
    try:
        with pytest.raises(UpstreamUnavailable, match="stopped responding"):
            await _asyncio.wait_for(collect(p), 5)
    finally:
        await p.aclose()
        server.close()


@pytest.mark.parametrize(
    ("reason", "blocked", "normal", "note"),
    [
        ("STOP", False, True, None),
        ("MAX_TOKENS", False, False, "answer cut at the length limit"),
        ("SAFETY", False, False, "answer stopped by Gemini's safety filter"),
        ("NEW_REASON", False, False,
         "answer ended early, for a reason this server does not know (new reason)"),
        ("PROHIBITED_CONTENT", True, False,
         "question blocked by Gemini (prohibited content); rephrase it and try again"),
    ],
)  # fmt: skip
def test_gemini_words_its_own_finish_reasons(
    reason: str, blocked: bool, normal: bool, note: str | None
) -> None:
    finish = finish_event(reason, blocked=blocked)
    assert (finish.reason, finish.normal, finish.note, finish.blocked) == (
        reason, normal, note, blocked,
    )  # fmt: skip


def test_the_provider_names_itself() -> None:
    p = GeminiProvider(GeminiConfig(model="gemini-x"))
    assert (p.name, p.model) == ("Gemini", "gemini-x")
