"""The fake Gemini server against the wire contract, with a real httpx client."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .fake_gemini import (
    FIXTURES,
    MANIFEST,
    FakeGemini,
    Reply,
    google_json,
    split_awkward,
)

MODEL = "gemini-2.5-flash"
# Asks for thoughts, so that fixtures with thought parts come back byte for byte.
BODY = {
    "contents": [{"role": "user", "parts": [{"text": "Hi <there> & café"}]}],
    "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
}
SSE_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.sse"))
ERR_FIXTURES = sorted(p.name for p in FIXTURES.glob("err_*.json"))


# One TLS context for every client (building one per client is slow); no proxies from the
# environment: every request goes straight to 127.0.0.1.
TLS = ssl.create_default_context()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, verify=TLS, trust_env=False) as c:
        yield c


async def post(
    client: httpx.AsyncClient,
    fg: FakeGemini,
    *,
    model: str = MODEL,
    key: str | None = "test-key",
    params: dict[str, str] | None = None,
    body: Any = BODY,
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, bytes]:
    """POST to the streaming route; return the response and its raw body bytes."""
    hdrs = {"x-goog-api-key": key} if key is not None else {}
    hdrs.update(headers or {})
    url = f"{fg.base_url}/v1beta/models/{model}:streamGenerateContent"
    async with client.stream("POST", url, params=params if params is not None else
                             {"alt": "sse"}, json=body, headers=hdrs) as response:
        data = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, data


async def raw_exchange(fg: FakeGemini, request: bytes) -> tuple[bytes, list[bytes]]:
    """Send raw bytes; return the response head and the HTTP chunks as framed on the wire."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fg.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                assert await reader.readexactly(2) == b"\r\n"
                return head, chunks
            chunks.append(await reader.readexactly(size))
            assert await reader.readexactly(2) == b"\r\n"
    finally:
        writer.close()
        await writer.wait_closed()


def stream_request(body: bytes = b"{}", extra: str = "") -> bytes:
    return (
        f"POST /v1beta/models/{MODEL}:streamGenerateContent?alt=sse HTTP/1.1\r\n"
        f"Host: x\r\nx-goog-api-key: test-key\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# ----- 200 bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["events", "bytes", "awkward", "whole"])
@pytest.mark.parametrize(
    "name",
    ["01_text_multichunk.sse", "09_midstream_error_503.sse", "14_truncated_no_terminator.sse"],
)
async def test_split_modes_deliver_the_fixture_bytes(
    fake_gemini: FakeGemini, client: httpx.AsyncClient, name: str, split: Any
) -> None:
    fake_gemini.enqueue(Reply.fixture(name, split=split))
    response, data = await post(client, fake_gemini)
    assert data == (FIXTURES / name).read_bytes()
    assert response.status_code == 200
    assert response.reason_phrase == "OK"
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert fake_gemini.responses[0].completed
    assert fake_gemini.responses[0].bytes_sent == len(data)


@pytest.mark.parametrize("name", SSE_FIXTURES)
async def test_every_fixture_round_trips_awkwardly(
    fake_gemini: FakeGemini, client: httpx.AsyncClient, name: str
) -> None:
    assert MANIFEST[name]["http_status"] == 200
    fake_gemini.enqueue(Reply.fixture(name, split="awkward"))
    _, data = await post(client, fake_gemini)
    assert data == (FIXTURES / name).read_bytes()
    assert len(data) == MANIFEST[name]["bytes"]


async def test_http_chunks_on_the_wire_match_the_split(fake_gemini: FakeGemini) -> None:
    reply = Reply.fixture("01_text_multichunk.sse", split="awkward")
    fake_gemini.enqueue(reply)
    head, chunks = await raw_exchange(fake_gemini, stream_request())
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert chunks == list(reply.body)


def test_awkward_split_cuts_where_parsers_trip() -> None:
    data = (FIXTURES / "01_text_multichunk.sse").read_bytes()
    chunks = split_awkward(data)
    assert b"".join(chunks) == data
    ends = list(zip(chunks, chunks[1:], strict=False))
    assert any(a.endswith(b"\r") and b.startswith(b"\n") for a, b in ends)  # CR | LF
    assert any(b and 0x80 <= b[0] < 0xC0 for _, b in ends)  # inside a UTF-8 character
    assert any(re.search(rb"(^|\n)(d|da|dat|data)$", a) for a, _ in ends)  # inside "data: "
    assert any(c.count(b"\r\n\r\n") >= 2 for c in chunks)  # several events in one chunk
    for split in ("events", "bytes", "whole"):
        assert Reply.fixture("01_text_multichunk.sse", split=split).data == data
    assert Reply.fixture("01_text_multichunk.sse", split="events").body == tuple(
        e + b"\r\n\r\n" for e in data.split(b"\r\n\r\n")[:-1]
    )
    with pytest.raises(ValueError):
        Reply.fixture("01_text_multichunk.sse", split="lines")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Reply.fixture("err_500_internal.json")


# ----- Reply.text ---------------------------------------------------------------------------


def fixture_events(name: str) -> list[dict[str, Any]]:
    data = (FIXTURES / name).read_bytes()
    return [json.loads(e[len(b"data: ") :]) for e in data.split(b"\r\n\r\n") if e]


def test_text_reproduces_the_multichunk_fixture_byte_for_byte() -> None:
    events = fixture_events("01_text_multichunk.sse")
    reply = Reply.text(
        [e["candidates"][0]["content"]["parts"][0]["text"] for e in events],
        prompt_tokens=12,
        candidate_tokens=[e["usageMetadata"]["candidatesTokenCount"] for e in events],
        thoughts_tokens=412,
        response_id=events[0]["responseId"],
    )
    assert reply.data == (FIXTURES / "01_text_multichunk.sse").read_bytes()


def test_text_style_and_usage() -> None:
    reply = Reply.text(["a <b> & ü\n", "\"quoted\"", "end"], finish_reason=None)
    assert len(reply.body) == 3
    objs = []
    for event in reply.body:
        assert re.fullmatch(rb'data: \{"candidates": \[\{"content": \{"parts": \[\{"text": '
                            rb'.*\}\],"role": "model"\},"index": 0\}\],"usageMetadata": \{.*\},'
                            rb'"modelVersion": "gemini-2.5-flash","responseId": "[^"]+"\}\r\n\r\n',
                            event, re.DOTALL)
        assert b"\n" not in event[:-4].replace(b"\r\n", b"")
        objs.append(json.loads(event[6:]))
    assert b"\\u003cb\\u003e & \xc3\xbc\\n" in reply.body[0]
    assert objs[0]["candidates"][0]["content"]["parts"][0]["text"] == "a <b> & ü\n"
    assert all("finishReason" not in o["candidates"][0] for o in objs)
    counts = [o["usageMetadata"]["candidatesTokenCount"] for o in objs]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    for o in objs:
        usage = o["usageMetadata"]
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert len({o["responseId"] for o in objs}) == 1

    final = json.loads(Reply.text(["x", "y"], finish_reason="MAX_TOKENS").body[-1][6:])
    assert list(final["candidates"][0]) == ["content", "finishReason", "index"]
    assert final["candidates"][0]["finishReason"] == "MAX_TOKENS"
    bare = json.loads(Reply.text(["x"], usage=False, model_version=None).body[0][6:])
    assert list(bare) == ["candidates", "responseId"]
    assert google_json({"a": [1, {"b": "<>"}]}) == '{"a": [1,{"b": "\\u003c\\u003e"}]}'


async def test_text_reply_parses_as_sse(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(Reply.text(["Hello, ", "wörld."], split="awkward"))
    _, data = await post(client, fake_gemini)
    texts = [
        json.loads(e[6:])["candidates"][0]["content"]["parts"][0]["text"]
        for e in data.split(b"\r\n\r\n")
        if e
    ]
    assert texts == ["Hello, ", "wörld."]


# ----- errors and routing -------------------------------------------------------------------


@pytest.mark.parametrize("name", ERR_FIXTURES)
async def test_error_replies(fake_gemini: FakeGemini, client: httpx.AsyncClient, name: str) -> None:
    fake_gemini.enqueue(Reply.error(name))
    response, data = await post(client, fake_gemini)
    expected = (FIXTURES / name).read_bytes()
    assert data == expected
    assert response.status_code == MANIFEST[name]["http_status"]
    assert response.reason_phrase == {
        400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
        500: "Internal Server Error", 503: "Service Unavailable",
    }[response.status_code]
    assert response.headers["content-type"] == MANIFEST[name]["content_type"]
    assert response.headers["content-length"] == str(len(expected))
    assert "transfer-encoding" not in response.headers
    assert fake_gemini.responses == []


async def test_error_by_status(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(Reply.error(429), Reply.error(504), Reply.error("err_500_internal"))
    response, data = await post(client, fake_gemini)
    assert response.status_code == 429
    assert data == (FIXTURES / "err_429_resource_exhausted.json").read_bytes()
    response, data = await post(client, fake_gemini)
    assert (response.status_code, response.reason_phrase) == (504, "Gateway Timeout")
    assert response.headers["content-type"] == "text/event-stream"
    assert data.endswith(b"}\n") and b'\n  "error": {\n' in data
    assert json.loads(data)["error"] == {
        "code": 504, "message": "The request timed out. Please try again.",
        "status": "DEADLINE_EXCEEDED",
    }
    response, _ = await post(client, fake_gemini)
    assert response.status_code == 500


async def test_key_in_header_or_query(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(Reply.text(["one"]), Reply.text(["two"]))
    response, data = await post(client, fake_gemini)
    assert response.status_code == 200 and b'"one"' in data
    response, data = await post(client, fake_gemini, key=None,
                                params={"alt": "sse", "key": "test-key"})
    assert response.status_code == 200 and b'"two"' in data
    assert fake_gemini.requests[1].api_key == "test-key"
    assert fake_gemini.requests[1].query == {"alt": "sse", "key": "test-key"}


async def test_missing_and_wrong_key(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(Reply.text(["kept for later"]))
    response, data = await post(client, fake_gemini, key=None)
    assert response.status_code == 403
    assert response.headers["content-type"] == "text/event-stream"
    assert data == (FIXTURES / "err_403_unregistered_caller.json").read_bytes()
    response, data = await post(client, fake_gemini, key="not-the-key")
    assert (response.status_code, response.reason_phrase) == (400, "Bad Request")
    assert data == (FIXTURES / "err_400_api_key_invalid.json").read_bytes()
    response, data = await post(client, fake_gemini, key=None,
                                params={"alt": "sse", "key": "wrong"})
    assert response.status_code == 400
    assert json.loads(data)["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert fake_gemini.queued == 1  # refused requests leave the script alone
    _, data = await post(client, fake_gemini)
    assert b"kept for later" in data


async def test_unknown_model(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    response, data = await post(client, fake_gemini, model="gemini-0.1-nano")
    assert (response.status_code, response.reason_phrase) == (404, "Not Found")
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["content-length"] == str(len(data))
    error = json.loads(data)["error"]
    assert error["status"] == "NOT_FOUND"
    assert error["message"].startswith(
        "models/gemini-0.1-nano is not found for API version v1beta, "
    )
    assert data.endswith(b"}\n")
    assert fake_gemini.requests[0].model == "gemini-0.1-nano"


async def test_routing(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    response, data = await post(client, fake_gemini, params={})
    assert response.status_code == 400
    assert json.loads(data)["error"]["status"] == "INVALID_ARGUMENT"
    response = await client.get(f"{fake_gemini.base_url}/v1beta/models/{MODEL}"
                                ":streamGenerateContent?alt=sse")
    assert (response.status_code, response.headers["content-type"]) == (
        404, "text/plain; charset=utf-8")
    response = await client.post(f"{fake_gemini.base_url}/v1beta/models/{MODEL}"
                                 ":generateContent", json=BODY)
    assert response.status_code == 404
    response = await client.post(fake_gemini.url(), content=b"{nope",
                                 headers={"x-goog-api-key": "test-key"})
    assert response.status_code == 400
    assert json.loads(response.content)["error"]["status"] == "INVALID_ARGUMENT"
    assert [r.method for r in fake_gemini.requests] == ["POST", "GET", "POST", "POST"]
    assert fake_gemini.requests[2].model is None
    assert fake_gemini.responses == []


# ----- recording, keep-alive, scripting -----------------------------------------------------


async def test_requests_are_recorded(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    waiter = asyncio.create_task(fake_gemini.wait_requests(1, timeout=2))
    await post(client, fake_gemini, headers={"X-Extra": "yes"})
    request = await waiter
    assert request is fake_gemini.requests[0]
    assert request.method == "POST"
    assert request.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert request.target == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    assert request.query == {"alt": "sse"}
    assert request.model == MODEL
    assert request.json == BODY
    assert request.headers["x-goog-api-key"] == "test-key"
    assert request.headers["x-extra"] == "yes"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == BODY
    with pytest.raises(TimeoutError):
        await fake_gemini.wait_requests(2, timeout=0.05)


async def test_default_reply_and_queue_order(
    fake_gemini: FakeGemini, client: httpx.AsyncClient
) -> None:
    fixture = (FIXTURES / "01_text_multichunk.sse").read_bytes()
    _, data = await post(client, fake_gemini)
    assert data == fixture
    fake_gemini.enqueue(Reply.text(["first"]), Reply.text(["second"]))
    fake_gemini.default_reply = Reply.text(["default"])
    results = [(await post(client, fake_gemini))[1] for _ in range(4)]
    assert [b'"first"' in results[0], b'"second"' in results[1]] == [True, True]
    assert b'"default"' in results[2] and b'"default"' in results[3]


async def test_keep_alive(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    for _ in range(3):
        response, _ = await post(client, fake_gemini)
        assert response.status_code == 200
    await post(client, fake_gemini, key=None)  # an error keeps the connection too
    await post(client, fake_gemini)
    assert len({r.connection for r in fake_gemini.requests}) == 1


async def test_connection_close_is_honoured(
    fake_gemini: FakeGemini, client: httpx.AsyncClient
) -> None:
    response, _ = await post(client, fake_gemini, headers={"Connection": "close"})
    assert response.headers["connection"] == "close"
    await post(client, fake_gemini)
    assert fake_gemini.requests[0].connection != fake_gemini.requests[1].connection


async def test_pipelined_requests(fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.text(["one"]), Reply.text(["two"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", fake_gemini.port)
    writer.write(stream_request() + stream_request(extra="Connection: close\r\n"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 2)  # the server closes after the second
    writer.close()
    await writer.wait_closed()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert data.index(b'"one"') < data.index(b'"two"')
    assert data.endswith(b"0\r\n\r\n")


async def test_chunked_request_body(fake_gemini: FakeGemini) -> None:
    body = json.dumps(BODY).encode()
    request = (
        f"POST /v1beta/models/{MODEL}:streamGenerateContent?alt=sse HTTP/1.1\r\n"
        "Host: x\r\nx-goog-api-key: test-key\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n3\r\n   \r\n0\r\n\r\n" % (len(body), body)
    head, _ = await raw_exchange(fake_gemini, request)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert fake_gemini.requests[0].json == BODY


# ----- timing, hangs, drops -----------------------------------------------------------------


async def test_delays(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(Reply.text(["a", "b", "c"], first_byte_delay=0.1, chunk_delay=0.05))
    start = time.monotonic()
    await post(client, fake_gemini)
    log = fake_gemini.responses[0]
    assert log.finished_at is not None
    assert 0.2 <= log.finished_at - log.started_at < 1.0
    assert time.monotonic() - start >= 0.2


async def test_hang_then_client_closes(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(Reply.hang(after=["Partial ", "answer"]), Reply.text(["after"]))
    received = b""
    async with client.stream("POST", fake_gemini.url(), json=BODY,
                             headers={"x-goog-api-key": "test-key"}) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += chunk
            if received.count(b"\r\n\r\n") == 2:
                break
    # Leaving the block closes the half-read response (and its connection).
    log = fake_gemini.responses[0]
    await asyncio.wait_for(log.client_closed.wait(), 1.0)
    assert b"finishReason" not in received
    assert log.bytes_sent == len(received)
    assert not log.completed
    await asyncio.wait_for(log.finished.wait(), 1.0)
    assert log.finished_at is not None and log.finished_at >= log.started_at
    _, data = await post(client, fake_gemini)  # the server carries on
    assert b'"after"' in data


async def test_hang_without_events_notices_a_cancelled_client(
    fake_gemini: FakeGemini, client: httpx.AsyncClient
) -> None:
    fake_gemini.enqueue(Reply.hang())
    task = asyncio.create_task(post(client, fake_gemini))
    log = await fake_gemini.wait_responses(1, timeout=2)
    await asyncio.sleep(0.05)
    assert not log.client_closed.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(log.client_closed.wait(), 1.0)
    assert log.bytes_sent == 0


async def test_hang_after_a_fixture_ends_when_the_server_closes(client: httpx.AsyncClient) -> None:
    fg = FakeGemini()
    await fg.start()
    fg.enqueue(Reply.hang(Reply.fixture("04_max_tokens.sse", split="bytes")))
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", fg.url(), json=BODY,
                                 headers={"x-goog-api-key": "test-key"}) as response:
            async for chunk in response.aiter_raw():
                received += chunk
                if received == (FIXTURES / "04_max_tokens.sse").read_bytes():
                    await fg.close()
    assert received == (FIXTURES / "04_max_tokens.sse").read_bytes()
    assert not fg.responses[0].client_closed.is_set()


async def test_drop_after(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(Reply.drop_after(["Half of ", "an answer"]))
    received = b""
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        async with client.stream("POST", fake_gemini.url(), json=BODY,
                                 headers={"x-goog-api-key": "test-key"}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += chunk
    events = [json.loads(e[6:]) for e in received.split(b"\r\n\r\n") if e]
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in events] == [
        "Half of ", "an answer"
    ]
    assert all("finishReason" not in e["candidates"][0] for e in events)
    assert not fake_gemini.responses[0].completed
    response, _ = await post(client, fake_gemini)  # a new connection works
    assert response.status_code == 200


async def test_raw_replies(fake_gemini: FakeGemini, client: httpx.AsyncClient) -> None:
    fake_gemini.enqueue(
        Reply.raw(200, {"Content-Type": "text/event-stream"}, [b"data: {}\r\n", b"\r\n"]),
        Reply.raw(200, {"Content-Type": "text/event-stream"}, [b"data: {"], close_early=True),
        Reply.raw(502, {"Content-Type": "text/html", "Content-Length": "99"}, [b"<html>"],
                  close_early=True),
        Reply.raw(200, {"Content-Type": "text/plain", "Connection": "close"}, [b"a", b"b"]),
    )
    response, data = await post(client, fake_gemini)
    assert (response.status_code, data) == (200, b"data: {}\r\n\r\n")
    assert response.headers["transfer-encoding"] == "chunked"
    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, fake_gemini)
    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, fake_gemini)
    response, data = await post(client, fake_gemini)
    assert (response.status_code, data) == (200, b"ab")
    assert "transfer-encoding" not in response.headers


async def test_close_with_open_connections_is_clean(client: httpx.AsyncClient) -> None:
    async with FakeGemini() as fg:
        fg.enqueue(Reply.hang(["waiting"]), Reply.hang())
        first = asyncio.create_task(post(client, fg))
        second = asyncio.create_task(post(client, fg))
        await fg.wait_responses(2, timeout=2)
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(r, httpx.RemoteProtocolError) for r in results)
    assert all(log.finished_at is not None for log in fg.responses)
    with pytest.raises(httpx.ConnectError):
        await client.post(fg.url(), json=BODY)
