"""OpenAI-compatible ``POST {base_url}/chat/completions`` with ``stream: true``, as a
:class:`Provider` (OpenAI, Ollama, llama-server, vLLM, LM Studio, OpenRouter...).

Contract:
- :meth:`OpenAIProvider.stream` sends the history as ``messages`` (``system``, ``user``,
  ``assistant``), asks for the usage chunk (``stream_options.include_usage``), sends the
  key as ``Authorization: Bearer`` only when one is set, and yields domain events
  decoded by our one SSE decoder (:mod:`kindlessh._sse`).
- The stream (:class:`ChunkReader`, sans-I/O): ``data:`` chunks, the ``[DONE]``
  sentinel, comment lines, usage taken from any chunk where it is not null (the last
  wins), ``finish_reason`` ``stop`` (normal), ``length``, ``content_filter`` and others
  (a note). Reasoning sent as ``reasoning_content`` / ``reasoning`` deltas, or inline as
  ``<think>...</think>`` at the start of the content (the tags may be split anywhere
  across chunks), becomes :class:`ThoughtDelta`, never answer text. A refusal
  (``delta.refusal``) is shown as the answer, with a note.
- Errors map to the tree of :mod:`kindlessh._errors` (:func:`error_from_body`): 401/403
  the key, 404 an unknown model (for Ollama: not pulled, and the command that pulls
  it), 429 with ``Retry-After``, a context overflow, 408/409/5xx (retried), connection
  refused naming the entry and its URL, and errors sent inside a 200 stream (an
  ``error`` member, ``finish_reason: "error"``). A stream that ends without a finish
  reason raises :class:`TruncatedStream` (the partial answer stays with the turn).
- Timeouts are the entry's own: a local model may spend a long time loading before its
  first byte (``first_byte_timeout``), then ``chunk_timeout`` between pieces, and
  ``answer_timeout`` in all.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from ._config import ModelConfig
from ._errors import (
    ApiKeyInvalid,
    BadRequest,
    ModelNotFound,
    RateLimited,
    StreamProtocolError,
    TruncatedStream,
    UpstreamError,
    UpstreamUnavailable,
)
from ._provider import (
    ChatRequest,
    Finish,
    Message,
    StreamEvent,
    TextDelta,
    ThoughtDelta,
    Usage,
)
from ._sanitize import sanitize_inline
from ._sse import SSEDecoder
from ._upstream import MAX_ERROR_BODY, error_body, make_client, timed_chunks

log = logging.getLogger("kindlessh.openai")

MAX_EVENT_BYTES = 1 << 20
_RETRYABLE_STATUS = {408, 409, 500, 502, 503, 504}
_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"

_FINISH_NOTES = {
    "length": "answer cut at the length limit",
    "content_filter": "answer stopped by the server's content filter",
    "tool_calls": "answer stopped: the model tried to call a tool",
    "function_call": "answer stopped: the model tried to call a tool",
}


def where(config: ModelConfig) -> str:
    """The entry as the reader knows it: its name and its URL (scheme, host, port and
    path; never a user:password part)."""
    parts = urlsplit(config.base_url)
    host = parts.hostname or "?"
    try:
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        pass
    return f"{config.name} ({parts.scheme}://{host}{parts.path.rstrip('/')})"


def is_ollama(config: ModelConfig) -> bool:
    """True when the entry looks like an Ollama server (its default port 11434)."""
    try:
        return urlsplit(config.base_url).port == 11434
    except ValueError:
        return False


def finish_event(reason: str) -> Finish:
    """The neutral :class:`Finish` for a chat-completions ``finish_reason``."""
    if reason == "stop":
        return Finish(reason)
    note = _FINISH_NOTES.get(reason)
    if note is None:
        shown = sanitize_inline(reason.replace("_", " "), 40)
        note = f"answer ended early, for a reason this server does not know ({shown})"
    return Finish(reason, normal=False, note=note)


def _retry_after(headers: httpx.Headers | None) -> float | None:
    """``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_parts(body: Any) -> tuple[str, str, str]:
    """(message, type, code) of an error body in any of the servers' shapes: the
    message is ``error.metadata.raw``, then ``error.message``, then a string ``error``,
    then a flat ``message``."""
    if not isinstance(body, dict):
        return "", "", ""
    err = body.get("error")
    if isinstance(err, str):
        return err, "", ""
    if not isinstance(err, dict):
        err = body  # the older vLLM flat shape {"object": "error", "message": ...}
    meta = err.get("metadata")
    raw = meta.get("raw") if isinstance(meta, dict) else None
    message = raw if isinstance(raw, str) and raw else err.get("message")
    kind = err.get("type")
    code = err.get("code")
    return (
        message if isinstance(message, str) else "",
        kind if isinstance(kind, str) else "",
        str(code) if isinstance(code, str | int) and not isinstance(code, bool) else "",
    )


def _context_overflow(message: str, kind: str, code: str) -> bool:
    text = message.lower()
    return (
        code == "context_length_exceeded"
        or kind == "exceed_context_size_error"
        or "context length" in text
        or "context size" in text
        or "context window" in text
    )


def error_from_body(
    status: int | None,
    body: Any,
    config: ModelConfig,
    headers: httpx.Headers | None = None,
) -> UpstreamError:
    """Turn an HTTP status and a parsed (or unparsed) error body into an UpstreamError."""
    message, kind, code = _error_parts(body)
    said = sanitize_inline(message, 200)
    why = f": {said}" if said else ""
    name = config.name
    model = sanitize_inline(config.model, 64)
    if status is None and code.isdigit():
        status = int(code)
    if _context_overflow(message, kind, code):
        return BadRequest(
            f"The conversation is too long for {model} on {name}{why}. "
            "/new starts a fresh conversation.",
            status=status,
        )
    if status in (401, 403):
        env = config.api_key_env
        fix = f" Check the key in {env}." if env else " Set api_key_env for this entry."
        return ApiKeyInvalid(f"{name} refused the API key{why}.{fix}", status=status)
    if status == 404:
        if is_ollama(config) or "try pulling it" in message:
            return ModelNotFound(
                f"{where(config)} has no model '{model}': it is not pulled. "
                f"On that machine run: ollama pull {model}",
                status=status,
            )
        return ModelNotFound(
            f"{where(config)} does not know the model '{model}'{why}. "
            "Check this entry's model (kindlessh models checks every entry).",
            status=status,
        )
    if status == 429:
        retry = _retry_after(headers)
        wait = f" Try again in {max(1, round(retry))} s." if retry is not None else ""
        return RateLimited(
            f"{name} refused for now (429{': ' + said if said else ''}).{wait}",
            retry_after=retry,
            waiting=f"{name} is rate-limited",
        )
    if status is not None and status in _RETRYABLE_STATUS:
        label = {503: "is busy or still loading the model", 504: "took too long",
                 408: "took too long"}.get(status, "had an internal error")
        return UpstreamUnavailable(
            f"{name} {label} ({status}){why}; try again in a moment.", status=status
        )
    if status is None:
        return UpstreamUnavailable(f"{name} reported an error{why or ': no reason given'}")
    if status >= 500:
        return UpstreamError(f"{name} failed ({status}){why}", status=status)
    return BadRequest(f"{name} rejected the request ({status}){why}", status=status)


def _parse_error_bytes(
    status: int, data: bytes, config: ModelConfig, headers: httpx.Headers
) -> UpstreamError:
    try:
        body: Any = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        body = {"error": data.decode("utf-8", "replace").strip()[:300]}
    return error_from_body(status, body, config, headers)


class _ThinkSplitter:
    """Splits ``<think>...</think>`` at the start of the content off as thought text.

    Strategy: only a leading think block counts (local reasoning models put it first);
    text that may still become a tag is held back until the next piece decides it.
    """

    def __init__(self) -> None:
        self._state = "start"  # start -> think -> answer
        self._held = ""

    def feed(self, text: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        self._held += text
        while self._held:
            if self._state == "start":
                stripped = self._held.lstrip()
                if not stripped:
                    return out
                if stripped.startswith(_THINK_OPEN):
                    self._held = stripped[len(_THINK_OPEN):]
                    self._state = "think"
                    continue
                if _THINK_OPEN.startswith(stripped):
                    return out  # may still become the tag
                self._state = "answer"
                continue
            if self._state == "think":
                end = self._held.find(_THINK_CLOSE)
                if end >= 0:
                    if end:
                        out.append(ThoughtDelta(self._held[:end]))
                    self._held = self._held[end + len(_THINK_CLOSE):].lstrip()
                    self._state = "answer"
                    continue
                keep = _partial_suffix(self._held, _THINK_CLOSE)
                ready = self._held[: len(self._held) - keep]
                if ready:
                    out.append(ThoughtDelta(ready))
                self._held = self._held[len(ready):]
                return out
            out.append(TextDelta(self._held))
            self._held = ""
        return out

    def close(self) -> list[StreamEvent]:
        """The stream ended: whatever is held back is what it is."""
        held, self._held = self._held, ""
        if not held:
            return []
        return [ThoughtDelta(held)] if self._state == "think" else [TextDelta(held)]


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ChunkReader:
    """Sans-I/O: the bytes of a 200 response in, domain events out (see the contract)."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.decoder = SSEDecoder(max_event_size=MAX_EVENT_BYTES)
        self.think = _ThinkSplitter()
        self.usage: Usage | None = None
        self.finish: Finish | None = None
        self.done = False
        self.refused = False

    def feed(self, data: bytes) -> Iterator[StreamEvent]:
        """Events completed by ``data``, one at a time, so that the text before an
        error a chunk carries is out before the error is raised."""
        for sse in self.decoder.feed(data):
            yield from self._chunk(sse.data, error=sse.event == "error")
        self._old_error_field()

    def _old_error_field(self) -> None:
        """Old llama-server sent ``error: {...}`` (a field no SSE parser keeps)."""
        for line in self.decoder.take_unparsed().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "error":
                try:
                    obj = json.loads(value)
                except ValueError:
                    obj = value.strip()
                raise error_from_body(None, {"error": obj}, self.config)

    def _chunk(self, data: str, *, error: bool = False) -> list[StreamEvent]:
        if self.done:
            return []
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            obj = json.loads(data)
        except ValueError:
            log.warning("skipping a malformed JSON chunk (%d bytes)", len(data))
            return []
        if not isinstance(obj, dict):
            raise StreamProtocolError(
                f"{self.config.name} sent a message this server does not understand."
            )
        if error or obj.get("error"):
            raise error_from_body(None, obj, self.config)
        out: list[StreamEvent] = []
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("reasoning_content", "reasoning"):
                    value = delta.get(key)
                    if isinstance(value, str) and value:
                        out.append(ThoughtDelta(value))
                        break
                content = delta.get("content")
                if isinstance(content, str) and content:
                    out += self.think.feed(content)
                refusal = delta.get("refusal")
                if isinstance(refusal, str) and refusal:
                    self.refused = True
                    out.append(TextDelta(refusal))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                if reason == "error":
                    raise error_from_body(None, obj, self.config)
                self.finish = finish_event(reason)
        usage = obj.get("usage")
        groq = obj.get("x_groq")
        if not isinstance(usage, dict) and isinstance(groq, dict):
            usage = groq.get("usage")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
            out.append(self.usage)
        return out

    def close(self) -> list[StreamEvent]:
        """The body ended: the held-back text, then the finish (raises when there was
        none)."""
        out = self.think.close()
        if not self.done:
            self.decoder.close()
            self._old_error_field()
        if self.finish is None:
            raise TruncatedStream(
                f"{self.config.name}'s answer stopped before it was finished "
                "(the connection closed early)."
            )
        finish = self.finish
        if self.refused and finish.normal:
            finish = Finish(finish.reason, normal=False, note="the model refused to answer")
        out.append(finish)
        return out


def _usage(raw: dict[str, Any]) -> Usage:
    def count(obj: Any, name: str) -> int:
        value = obj.get(name) if isinstance(obj, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    thoughts = count(raw.get("completion_tokens_details"), "reasoning_tokens")
    output = count(raw, "completion_tokens")
    return Usage(
        input_tokens=count(raw, "prompt_tokens"),
        # completion_tokens includes the reasoning tokens: counted once, as thoughts.
        output_tokens=max(0, output - thoughts),
        thoughts_tokens=thoughts,
        total_tokens=count(raw, "total_tokens"),
    )


def messages(request: ChatRequest) -> list[dict[str, str]]:
    """The request's history as chat-completions ``messages``."""
    out: list[dict[str, str]] = []
    if request.system_instruction:
        out.append({"role": "system", "content": request.system_instruction})
    for message in request.messages:
        out.append(_message(message))
    return out


def _message(message: Message) -> dict[str, str]:
    role = "assistant" if message.role == "model" else "user"
    return {"role": role, "content": message.text}


def _headers(config: ModelConfig) -> dict[str, str]:
    headers = {"accept": "text/event-stream"}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    return headers


class OpenAIProvider:
    """One ``[models.NAME]`` entry with ``provider = "openai"``.

    Args:
        config: the entry.
        transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self, config: ModelConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._client = make_client(
            connect=config.connect_timeout,
            first_byte=config.first_byte_timeout,
            chunk=config.chunk_timeout,
            transport=transport,
        )

    @property
    def name(self) -> str:
        """The model and the entry, as the "(waiting for ...)" line and retry notes say
        them: a local model may load for a minute before its first word."""
        cfg = self.config
        return cfg.name if cfg.model == cfg.name else f"{cfg.model} on {cfg.name}"

    @property
    def model(self) -> str:
        """The model id the entry asks for."""
        return self.config.model

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one request."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        limit = self.config.max_output_tokens or request.max_output_tokens
        if limit:
            # OpenAI wants max_completion_tokens; Ollama reads only max_tokens.
            host = urlsplit(self.config.base_url).hostname or ""
            key = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"
            body[key] = limit
        return body

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream one answer. See the module docstring for the contract."""
        cfg = self.config
        url = f"{cfg.base_url.rstrip('/')}/chat/completions"
        deadline = time.monotonic() + cfg.answer_timeout
        with map_errors(cfg):
            async with asyncio.timeout(cfg.first_byte_timeout):
                response = await self._client.send(
                    self._client.build_request(
                        "POST", url, headers=_headers(cfg), json=self.body(request)
                    ),
                    stream=True,
                )
            try:
                if response.status_code != 200:
                    data = await error_body(response)
                    raise _parse_error_bytes(response.status_code, data, cfg, response.headers)
                async for event in self._read(response, deadline):
                    yield event
            finally:
                await response.aclose()

    async def _read(
        self, response: httpx.Response, deadline: float
    ) -> AsyncGenerator[StreamEvent, None]:
        cfg = self.config
        reader = ChunkReader(cfg)
        async for chunk in timed_chunks(
            response, name=cfg.name, first_byte=cfg.first_byte_timeout,
            chunk=cfg.chunk_timeout, answer=cfg.answer_timeout, deadline=deadline,
        ):
            for event in reader.feed(chunk):
                yield event
            if reader.done:
                break
        for event in reader.close():
            yield event


class map_errors:  # noqa: N801 - used as a context manager, like contextlib's
    """Translate httpx exceptions and the first-byte timer into UpstreamErrors that
    name the entry and its URL."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> Literal[False]:
        if exc is None or isinstance(exc, UpstreamError):
            return False
        cfg = self.config
        at = where(cfg)
        if isinstance(exc, httpx.ConnectTimeout):
            raise UpstreamUnavailable(f"{at} could not be reached: connecting timed out.") \
                from exc
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            raise UpstreamUnavailable(
                f"{cfg.name} sent nothing for {cfg.first_byte_timeout:g} s "
                f"(is {cfg.model} still loading?)."
            ) from exc
        if isinstance(exc, httpx.ConnectError):
            raise UpstreamUnavailable(
                f"{at} could not be reached: the connection was refused. "
                "Is that server running?"
            ) from exc
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            raise UpstreamUnavailable(f"The connection to {cfg.name} broke off.") from exc
        if isinstance(exc, httpx.HTTPError):
            raise UpstreamUnavailable(
                f"{at} could not be reached ({type(exc).__name__})."
            ) from exc
        return False


async def check_entry(
    config: ModelConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> str:
    """One line on whether the entry works: reachable, key accepted, model present
    (``GET {base_url}/models``).

    Raises:
        UpstreamError: it does not, with the reason.
    """
    url = f"{config.base_url.rstrip('/')}/models"
    timeout = httpx.Timeout(config.connect_timeout, read=config.first_byte_timeout)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        with map_errors(config):
            response = await client.get(url, headers=_headers(config))
    if response.status_code != 200:
        raise _parse_error_bytes(
            response.status_code, response.content[:MAX_ERROR_BODY], config, response.headers
        )
    try:
        listing = response.json()
    except ValueError:
        raise StreamProtocolError(f"{config.name} sent a model list that is not JSON.") \
            from None
    data = listing.get("data") if isinstance(listing, dict) else None
    ids = [str(m.get("id")) for m in data if isinstance(m, dict)] if isinstance(data, list) \
        else []
    if config.model in ids or f"{config.model}:latest" in ids:
        return f"model {config.model} present"
    raise error_from_body(404, {}, config)
