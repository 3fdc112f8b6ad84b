"""A fake OpenAI-compatible server on 127.0.0.1 that replays recorded wire bytes.

Routes: ``POST {prefix}/chat/completions`` and ``GET {prefix}/models`` (``prefix`` is
``/v1``). Each request gets the next scripted :class:`Reply` (``enqueue()``) or, when
none is queued, ``default_reply``. A 200 reply is chunked, one HTTP chunk per piece of
its body, flushed on its own; an error reply carries ``Content-Length`` and the exact
bytes of an ``err_*.json`` fixture. ``key`` set: a request without
``Authorization: Bearer <key>`` gets llama-server's 401 body. As OpenAI, Ollama and vLLM
do, a scripted answer's usage chunk is sent only to a request that asks for it with
``stream_options.include_usage``. ``first_byte_delay``: the
server sends nothing, not even headers, for that long (a local model loading). The HTTP
side is minimal: one request per connection, ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
SSE = "text/event-stream"

Split = Literal["events", "bytes", "whole"]

# Each error fixture's status (the bodies are exact, the statuses from the wire notes).
ERROR_STATUS = {
    "err_openai_400_context_length.json": 400,
    "err_ollama_404_model_not_found.json": 404,
    "err_llamacpp_400_exceed_context.json": 400,
    "err_lmstudio_404_model_not_found.json": 404,
    "err_openrouter_429_upstream.json": 429,
}
BAD_KEY = b'{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}'


def split_body(data: bytes, split: Split) -> tuple[bytes, ...]:
    """The body cut at event ends, at every byte, or not at all."""
    if split == "whole":
        return (data,)
    if split == "bytes":
        return tuple(data[i:i + 1] for i in range(len(data)))
    pieces = data.split(b"\n\n")
    out = [p + b"\n\n" for p in pieces[:-1]]
    if pieces[-1]:
        out.append(pieces[-1])
    return tuple(out)


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """One ``data:`` event in the OpenAI shape."""
    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
           "model": "fake", "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class Reply:
    """One scripted response."""

    status: int = 200
    body: tuple[bytes, ...] = ()
    headers: tuple[tuple[str, str], ...] = (("Content-Type", SSE),)
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    hang: bool = False  # after the body, send nothing more until the client leaves
    usage_piece: int | None = None  # the body's usage chunk, sent only when asked for

    @classmethod
    def fixture(cls, name: str, *, split: Split = "events", first_byte_delay: float = 0.0,
                chunk_delay: float = 0.0) -> Reply:
        """HTTP 200 with the exact bytes of ``fixtures/openai/<name>``."""
        data = (FIXTURES / name).read_bytes()
        return cls(body=split_body(data, split), first_byte_delay=first_byte_delay,
                   chunk_delay=chunk_delay)

    @classmethod
    def error(cls, name: str, *, headers: Sequence[tuple[str, str]] = ()) -> Reply:
        """An HTTP error with the exact bytes of an ``err_*.json`` fixture."""
        return cls(status=ERROR_STATUS[name], body=((FIXTURES / name).read_bytes(),),
                   headers=(("Content-Type", "application/json"), *headers))

    @classmethod
    def status_only(cls, status: int, body: bytes = b"",
                    headers: Sequence[tuple[str, str]] = ()) -> Reply:
        """An HTTP error with a body of our own."""
        return cls(status=status, body=(body,),
                   headers=(("Content-Type", "application/json"), *headers))

    @classmethod
    def text(cls, pieces: Sequence[str], *, finish: str = "stop", think: str = "",
             reasoning_field: str = "reasoning_content", usage: tuple[int, int] = (10, 5),
             chunk_delay: float = 0.0, hang_after: int | None = None) -> Reply:
        """An answer in ``pieces``, its reasoning (``think``) first, then the finish
        chunk, the usage chunk and ``[DONE]``; ``hang_after``: only that many pieces,
        then silence."""
        events = [chunk({"role": "assistant", "content": ""})]
        if think:
            events.append(chunk({reasoning_field: think}))
        events += [chunk({"content": p}) for p in pieces]
        if hang_after is not None:
            return cls(body=tuple(events[: 1 + bool(think) + hang_after]),
                       chunk_delay=chunk_delay, hang=True)
        events.append(chunk({}, finish))
        usage_obj = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                     "total_tokens": sum(usage)}
        events.append(b"data: " + json.dumps(
            {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
             "usage": usage_obj}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return cls(body=tuple(events), chunk_delay=chunk_delay, usage_piece=len(events) - 2)


@dataclass
class Recorded:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeOpenAI:
    """The server. ``models``: the ids ``GET /v1/models`` lists."""

    key: str = ""
    models: tuple[str, ...] = ("llama3.2:latest",)
    default_reply: Reply = field(default_factory=lambda: Reply.text(["Hello", " there."]))
    requests: list[Recorded] = field(default_factory=list)
    _queue: list[Reply] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(BaseException):
                    await task
            await self._server.wait_closed()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else None
        self.requests.append(Recorded(method, target, headers, body))
        if self.key and headers.get("authorization") != f"Bearer {self.key}":
            reply = Reply.status_only(401, BAD_KEY)
        elif method == "GET" and target == "/v1/models":
            listing = {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1, "owned_by": "library"}
                for m in self.models]}
            reply = Reply.status_only(200, json.dumps(listing).encode())
        elif method == "POST" and target == "/v1/chat/completions":
            reply = self._queue.pop(0) if self._queue else self.default_reply
            options = (body or {}).get("stream_options") or {}
            if reply.usage_piece is not None and options.get("include_usage") is not True:
                kept = [p for i, p in enumerate(reply.body) if i != reply.usage_piece]
                reply = dataclasses.replace(reply, body=tuple(kept), usage_piece=None)
        else:
            reply = Reply.status_only(404, b"404 page not found")
        await self._send(reply, writer)

    async def _send(self, reply: Reply, writer: asyncio.StreamWriter) -> None:
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        head = [f"HTTP/1.1 {reply.status} X", "Connection: close",
                *(f"{k}: {v}" for k, v in reply.headers)]
        if reply.status != 200 or not reply.headers[0][1].startswith(SSE):
            data = b"".join(reply.body)
            head.append(f"Content-Length: {len(data)}")
            writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + data)
            await writer.drain()
            return
        head.append("Transfer-Encoding: chunked")
        writer.write("\r\n".join(head).encode() + b"\r\n\r\n")
        await writer.drain()
        for piece in reply.body:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        if reply.hang:
            await asyncio.sleep(3600)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
