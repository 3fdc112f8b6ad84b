"""Google Gemini over ``streamGenerateContent?alt=sse``, as a :class:`Provider`.

Contract:
- :meth:`GeminiProvider.stream` sends the whole history (roles ``user``/``model``) with
  the key in the ``x-goog-api-key`` header (never in the URL, never logged) and yields
  domain events parsed from the SSE stream (see ``_provider``).
- HTTP errors, errors inside a 200 stream (an ``{"error": ...}`` object as SSE data or as a
  raw JSON tail after the last event), timeouts and transport failures become
  :class:`~kindlessh._errors.UpstreamError` subclasses with a one-line message.
- An answer that ends without a ``finishReason`` raises :class:`TruncatedStream`; a
  malformed JSON event is skipped and logged, the rest still arrives.
- httpx exceptions are translated in one place only: :func:`map_httpx_errors`.
- Gemini's finish reasons are worded here (:func:`finish_event`): ``STOP`` is a normal
  end; any other reason, or a blocked question, carries a note for the reader; a
  ``MAX_TOKENS`` note says when thinking spent the limit and which setting to raise.
- Thinking is bounded (:func:`thinking_config`: a budget on 2.5 models, a level on
  Gemini 3) and thoughts are asked for only when a screen shows them.
- An answer whose parts carry thought signatures ends with a :class:`Replay` of its
  parts as received; a later request sends them back in place of the text. One SSE
  event may be up to :data:`MAX_EVENT_BYTES`.
- 429s are classed as gemini-cli does (:func:`_quota_error`); only 408, 429 that may
  free up, 500, 502, 503, 504 and network failures are retryable errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._config import GeminiConfig
from ._errors import (
    ApiKeyInvalid,
    ApiKeyMissing,
    BadRequest,
    ModelNotFound,
    QuotaExhausted,
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
    Replay,
    Source,
    Sources,
    StreamEvent,
    TextDelta,
    ThoughtDelta,
    Usage,
)
from ._sanitize import sanitize_inline
from ._sse import SSEDecoder
from ._upstream import MAX_ERROR_BODY, error_body, make_client, timed_chunks

log = logging.getLogger("kindlessh.gemini")

NAME = "Gemini"
# One SSE event may be this large: thought signatures make single events big, and
# python-genai reads with a 4 MiB buffer (READ_BUFFER_SIZE = 2**22).
MAX_EVENT_BYTES = 4 << 20
_RETRYABLE_STATUS = {408, 500, 502, 503, 504}

# What a finish reason means to a reader: every value of the SDK's FinishReason list
# (python-genai types.FinishReason). STOP is a normal end and needs no note; an unknown
# value gets the generic line of finish_note(), never an error.
_FINISH_NOTES = {
    "MAX_TOKENS": "answer cut at the length limit",
    "SAFETY": "answer stopped by Gemini's safety filter",
    "RECITATION": "answer stopped: it was reciting a source too closely",
    "LANGUAGE": "answer stopped: unsupported language",
    "OTHER": "answer stopped by Gemini without a reason given",
    "BLOCKLIST": "answer stopped: a blocked term came up",
    "PROHIBITED_CONTENT": "answer stopped: prohibited content",
    "SPII": "answer stopped: it contained sensitive personal information",
    "MALFORMED_FUNCTION_CALL": "answer stopped: the model produced a broken tool call",
    "IMAGE_SAFETY": "answer stopped: an image was blocked by the safety filter",
    "UNEXPECTED_TOOL_CALL": "answer stopped: the model tried to call a tool",
    "IMAGE_PROHIBITED_CONTENT": "answer stopped: an image had prohibited content",
    "NO_IMAGE": "answer stopped: the model made no image",
    "IMAGE_RECITATION": "answer stopped: an image was too close to a source",
    "IMAGE_OTHER": "answer stopped: making an image failed",
    "TOO_MANY_TOOL_CALLS": "answer stopped: too many tool calls",
    "MISSING_THOUGHT_SIGNATURE": (
        "answer stopped: Gemini missed its reasoning notes from earlier turns; "
        "/new starts a fresh conversation"
    ),
    "MALFORMED_RESPONSE": "answer stopped: Gemini produced a broken response",
    "FINISH_REASON_UNSPECIFIED": "answer ended without a reason given",
}


def finish_note(reason: str, *, blocked: bool = False) -> str | None:
    """The one-line note to show after an answer, or None for a normal end."""
    if blocked:
        why = reason.replace("_", " ").lower()
        return f"question blocked by Gemini ({why}); rephrase it and try again"
    if reason in ("STOP", ""):
        return None
    note = _FINISH_NOTES.get(reason)
    if note is None:
        shown = sanitize_inline(reason.replace("_", " ").lower(), 40)
        note = f"answer ended early, for a reason this server does not know ({shown})"
    return note


def finish_event(reason: str, *, blocked: bool = False, message: str = "") -> Finish:
    """The neutral :class:`Finish` for Gemini's ``finishReason`` or ``blockReason``."""
    note = finish_note(reason, blocked=blocked)
    return Finish(reason, normal=note is None, note=note, blocked=blocked, message=message)


@contextlib.contextmanager
def map_httpx_errors(base_url: str) -> Iterator[None]:
    """Translate any httpx exception raised inside the block into an UpstreamError.

    Strategy: one boundary, like httpx's own ``map_httpcore_exceptions``, so that no
    other module needs to know httpx's exception tree.
    """
    # Host and port only: a base URL may carry credentials (user:password@), which
    # must not reach the screen or the log.
    parts = urlsplit(base_url)
    host = parts.hostname or "the Gemini host"
    try:
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # a port that is not a number
        pass
    try:
        yield
    except httpx.TimeoutException as exc:
        if isinstance(exc, httpx.ConnectTimeout):
            msg = f"Gemini could not be reached: connecting to {host} timed out."
        elif isinstance(exc, httpx.PoolTimeout):
            msg = "Too many answers are in progress on this server; try again shortly."
        else:
            msg = f"Gemini stopped responding ({type(exc).__name__} talking to {host})."
        raise UpstreamUnavailable(msg) from exc
    except httpx.ConnectError as exc:
        raise UpstreamUnavailable(
            f"Gemini could not be reached: cannot connect to {host} (network down?)."
        ) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
        raise UpstreamUnavailable("The connection to Gemini broke off.") from exc
    except httpx.TransportError as exc:
        # ProxyError, UnsupportedProtocol, LocalProtocolError and any future subclass.
        raise UpstreamUnavailable(
            f"Gemini could not be reached ({type(exc).__name__} talking to {host})."
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"Talking to Gemini failed ({type(exc).__name__}).") from exc


def _parse_duration(value: Any) -> float | None:
    """A protobuf Duration string such as ``"37s"`` or ``"45.837906927s"`` in seconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return max(0.0, float(value[:-1]))
        except ValueError:
            return None
    return None


def _error_object(body: Any) -> dict[str, Any] | None:
    """The ``error`` member of an error body (object or one-element list form)."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return err
    return None


def error_from_body(status: int | None, body: Any, model: str) -> UpstreamError:
    """Turn an HTTP status and a parsed (or unparsed) error body into an UpstreamError."""
    err = _error_object(body) or {}
    if status is None and isinstance(err.get("code"), int):
        status = err["code"]
    raw_message = err.get("message") if isinstance(err.get("message"), str) else ""
    upstream = sanitize_inline(str(raw_message or ""), max_len=160)
    found = err.get("details")
    details: list[Any] = found if isinstance(found, list) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    if status == 400 and "API_KEY_INVALID" in reasons:
        # Expired keys carry the same reason as invalid ones: the API's own words tell
        # them apart.
        said = upstream or "API key not valid."
        return ApiKeyInvalid(
            f"Gemini rejected the API key: {said} Check GEMINI_API_KEY or [gemini] api_key.",
            status=status,
        )
    if status in (401, 403):
        why = f": {upstream}" if upstream else ""
        return ApiKeyInvalid(f"Gemini refused the API key{why}", status=status)
    if status == 404:
        return ModelNotFound(
            f"Gemini does not know the model '{sanitize_inline(model, 64)}'. "
            "Set [gemini] model to a current one, such as gemini-2.5-flash "
            "(kindlessh models lists them).",
            status=status,
        )
    if status == 429:
        return _quota_error(err, details, model)
    if status is not None and status in _RETRYABLE_STATUS:
        label = {503: "is overloaded", 504: "took too long", 408: "took too long"}.get(
            status, "had an internal error"
        )
        return UpstreamUnavailable(
            f"Gemini {label} ({status}); try again in a moment.", status=status
        )
    why = f": {upstream}" if upstream else ""
    if status is None:
        return UpstreamUnavailable(f"Gemini reported an error{why}")
    if status >= 500:
        # 501, 505 and the like do not go away by themselves: not retried (the SDKs
        # retry only 408, 429, 500, 502, 503 and 504).
        return UpstreamError(f"Gemini failed ({status}){why}", status=status)
    return BadRequest(f"Gemini rejected the request ({status}){why}", status=status)


def _quota_error(err: dict[str, Any], details: list[Any], model: str) -> UpstreamError:
    """A 429, classified as gemini-cli does: ``limit: 0`` first (no quota at all), then a
    daily quota (a quotaId with ``PerDay`` or ``Daily``), then a per-minute one; a 429
    without details has no known cause."""
    message = err.get("message") if isinstance(err.get("message"), str) else ""
    retry: float | None = None
    quota_ids: list[str] = []
    values: list[str] = []
    for d in details:
        if not isinstance(d, dict):
            continue
        if str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            retry = _parse_duration(d.get("retryDelay"))
        for v in d.get("violations") or []:
            if isinstance(v, dict):
                quota_ids.append(str(v.get("quotaId", "")))
                values.append(str(v.get("quotaValue", "")))
    name = sanitize_inline(model.removeprefix("models/"), 64)
    if re.search(r"\blimit: 0\b", str(message)) or "0" in values:
        return QuotaExhausted(
            f"Gemini has no quota for {name} in this API key's Google Cloud project "
            "(limit 0). Enable billing for the project, or set [gemini] model to another "
            "model (kindlessh models lists them).",
            resets_at="",
        )
    if any("PerDay" in q or "Daily" in q for q in quota_ids):
        return QuotaExhausted(
            f"Gemini's daily quota for {name} is used up for this Google Cloud project "
            "(limits are per project, not per key); it resets at midnight Pacific time.",
            resets_at="00:00 America/Los_Angeles",
        )
    wait = f" Try again in {max(1, round(retry))} s." if retry is not None else ""
    if quota_ids:
        return RateLimited(
            f"Gemini's per-minute quota for {name} is used up for this Google Cloud "
            f"project.{wait}",
            retry_after=retry,
            waiting="Gemini's per-minute quota is used up",
        )
    said = sanitize_inline(str(message), 120) or "no reason given"
    return RateLimited(
        f"Gemini refused for now (429: {said}); the cause is not known.{wait}",
        retry_after=retry,
        waiting="Gemini refused for now (429, cause unknown)",
    )


def _parse_error_bytes(status: int | None, data: bytes, model: str) -> UpstreamError:
    try:
        body: Any = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        body = None
    return error_from_body(status, body, model)


def _events_from_chunk(obj: Any, model: str) -> list[StreamEvent]:
    """Domain events from one decoded JSON chunk, in order: text, usage, finish."""
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict):
        raise StreamProtocolError("Gemini sent a message this server does not understand.")
    if "error" in obj:
        raise error_from_body(None, obj, model)
    events: list[StreamEvent] = []
    finish: Finish | None = None
    candidates = obj.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        cand = candidates[0]
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str) and text:
                thought = part.get("thought") is True
                events.append(ThoughtDelta(text) if thought else TextDelta(text))
            elif "functionCall" in part:
                log.info("ignoring a function call part (no tools are declared)")
        sources = grounding_sources(cand.get("groundingMetadata"))
        if sources:
            events.append(Sources(sources))
        reason = cand.get("finishReason")
        if isinstance(reason, str) and reason:
            message = cand.get("finishMessage")
            finish = finish_event(reason, message=message if isinstance(message, str) else "")
    else:
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            finish = finish_event(str(feedback["blockReason"]), blocked=True)
    usage = obj.get("usageMetadata")
    if isinstance(usage, dict):

        def count(name: str) -> int:
            value = usage.get(name)
            return value if isinstance(value, int) else 0

        events.append(
            Usage(
                input_tokens=count("promptTokenCount"),
                output_tokens=count("candidatesTokenCount"),
                thoughts_tokens=count("thoughtsTokenCount"),
                total_tokens=count("totalTokenCount"),
            )
        )
    if finish is not None:
        events.append(finish)
    return events


def resource_name(model: str) -> str:
    """``gemini-2.5-flash`` or ``models/gemini-2.5-flash`` -> ``models/gemini-2.5-flash``
    (as the SDKs' ``t_model`` does; ``tunedModels/...`` stays as it is)."""
    return model if "/" in model else f"models/{model}"


def thinking_kind(model: str) -> str | None:
    """How a model's thinking is bounded: ``"budget"`` (Gemini 2.5), ``"level"``
    (Gemini 3 and later), or None (a model that does not think, or a name such as
    ``gemini-flash-latest`` that does not say which it is)."""
    found = re.match(r"gemini-(\d+)(?:\.(\d+))?-", model.rpartition("/")[2] + "-")
    if found is None:
        return None
    version = (int(found.group(1)), int(found.group(2) or 0))
    if version >= (3, 0):
        return "level"
    if version >= (2, 5):
        return "budget"
    return None


def thinking_config(config: GeminiConfig, *, include_thoughts: bool) -> dict[str, Any]:
    """``generationConfig.thinkingConfig`` for the configured model (empty: none)."""
    kind = thinking_kind(config.model)
    out: dict[str, Any] = {}
    if kind == "budget":
        out["thinkingBudget"] = config.thinking_budget
    elif kind == "level" and config.thinking_level:
        out["thinkingLevel"] = config.thinking_level
    # A budget of 0 turns thinking off on 2.5 models (no thoughts to ask for); Gemini 3
    # always thinks at its level, whatever the budget says.
    thinking = kind == "level" or (kind == "budget" and config.thinking_budget != 0)
    if thinking and include_thoughts:
        out["includeThoughts"] = True
    return out


def max_tokens_note(config: GeminiConfig, usage: Usage | None, wrote: bool) -> str:
    """The note for an answer that hit ``maxOutputTokens``, saying when thinking spent
    the limit and which setting to change."""
    limit = config.max_output_tokens
    thought = usage.thoughts_tokens if usage is not None else 0
    kind = thinking_kind(config.model)
    lower = {
        "budget": " or lower [gemini] thinking_budget",
        "level": " or lower [gemini] thinking_level",
    }.get(kind or "", "")
    if not wrote and thought:
        return (
            f"no answer: the length limit was spent on thinking ({thought:,} tokens); "
            f"raise [gemini] max_output_tokens (now {limit:,}){lower}"
        )
    if thought * 2 >= limit:
        return (
            f"answer cut at the length limit: thinking took {thought:,} of its "
            f"{limit:,} tokens; raise [gemini] max_output_tokens{lower}"
        )
    return f"answer cut at the length limit; raise [gemini] max_output_tokens (now {limit:,})"


@dataclass(frozen=True)
class ModelInfo:
    """One model the key may use, as ListModels describes it."""

    name: str  # without "models/"
    display_name: str
    input_tokens: int
    output_tokens: int
    thinking: bool


async def list_models(
    config: GeminiConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[ModelInfo]:
    """The models the key can call ``generateContent`` on (``GET /v1beta/models``, every
    page), sorted by name.

    Raises:
        ApiKeyMissing: no key is configured.
        UpstreamError: the API refused or could not be reached.
    """
    if not config.api_key:
        raise ApiKeyMissing("No Gemini API key is set: set GEMINI_API_KEY or [gemini] api_key.")
    url = f"{config.base_url.rstrip('/')}/v1beta/models"
    found: list[ModelInfo] = []
    token = ""
    timeout = httpx.Timeout(config.connect_timeout, read=config.first_byte_timeout)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        with map_httpx_errors(config.base_url):
            for _ in range(100):  # a bound on pages, against a server that loops
                params = {"pageSize": "1000", **({"pageToken": token} if token else {})}
                response = await client.get(
                    url, params=params, headers={"x-goog-api-key": config.api_key}
                )
                if response.status_code != 200:
                    raise _parse_error_bytes(
                        response.status_code, response.content[:MAX_ERROR_BODY], config.model
                    )
                try:
                    page = response.json()
                except ValueError:
                    raise StreamProtocolError("Gemini sent a model list that is not JSON.") \
                        from None
                models = page.get("models") if isinstance(page, dict) else None
                for m in models if isinstance(models, list) else []:
                    if not isinstance(m, dict):
                        continue
                    methods = m.get("supportedGenerationMethods") or []
                    if "generateContent" not in methods:
                        continue

                    def number(key: str, m: dict[str, Any] = m) -> int:
                        value = m.get(key)
                        return value if isinstance(value, int) else 0

                    found.append(ModelInfo(
                        name=sanitize_inline(str(m.get("name", "")), 80).removeprefix("models/"),
                        display_name=sanitize_inline(str(m.get("displayName", "")), 60),
                        input_tokens=number("inputTokenLimit"),
                        output_tokens=number("outputTokenLimit"),
                        thinking=m.get("thinking") is True,
                    ))
                token = page.get("nextPageToken", "") if isinstance(page, dict) else ""
                if not isinstance(token, str) or not token:
                    break
    return sorted(found, key=lambda info: info.name)


def grounding_sources(metadata: Any) -> tuple[Source, ...]:
    """The web sources of a ``groundingMetadata``, numbered as ``groundingChunks`` are
    (the answer's supports point at them by index); the rendered search entry point is
    HTML for browsers and is left out."""
    if not isinstance(metadata, dict):
        return ()
    chunks = metadata.get("groundingChunks")
    found: list[Source] = []
    for chunk in chunks if isinstance(chunks, list) else []:
        web = chunk.get("web") if isinstance(chunk, dict) else None
        if not isinstance(web, dict):
            continue
        url = web.get("uri") if isinstance(web.get("uri"), str) else ""
        title = web.get("title") if isinstance(web.get("title"), str) else ""
        site = web.get("domain") if isinstance(web.get("domain"), str) else ""
        host = urlsplit(str(url)).hostname or ""
        if not site and host and not host.endswith("vertexaisearch.cloud.google.com"):
            site = host.removeprefix("www.")
        if title or site:
            found.append(Source(title=str(title or site), site=str(site), url=str(url)))
    return tuple(found)


def _content(message: Message) -> dict[str, Any]:
    """One turn of ``contents``: a model turn with a replay goes back as received."""
    if message.role == "model" and message.replay:
        try:
            parts = json.loads(message.replay)
        except ValueError:
            parts = None
        if isinstance(parts, list) and parts:
            return {"role": "model", "parts": parts}
    return {"role": message.role, "parts": [{"text": message.text}]}


# The fields of a Part the API takes back (a stored part may come from an older API).
_PART_FIELDS = ("text", "thought", "thoughtSignature", "functionCall", "inlineData",
                "fileData", "executableCode", "codeExecutionResult")


def _model_parts(obj: Any) -> list[dict[str, Any]]:
    """The parts of one chunk's answer, kept as received to send back later.

    Strategy: thought summaries are left out (they are for the reader, and cost input
    tokens) unless they carry a signature; the signatures, wherever they sit, are kept
    with the parts they came on, exactly as sent.
    """
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    try:
        found = obj["candidates"][0]["content"]["parts"]
    except (KeyError, IndexError, TypeError):
        return []
    kept: list[dict[str, Any]] = []
    for part in found if isinstance(found, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("thought") is True and "thoughtSignature" not in part:
            continue
        kept.append({k: v for k, v in part.items() if k in _PART_FIELDS})
    return kept


def setup_notice(config: GeminiConfig) -> str | None:
    """What every chat should say at its start when Gemini cannot work as configured
    (no API key), or None when it can."""
    if config.api_key:
        return None
    return (
        "No Gemini API key is set on the server: set GEMINI_API_KEY (or "
        "[gemini] api_key in the config) and restart kindlessh."
    )


class GeminiProvider:
    """The Gemini Developer API. One instance serves every session of the server.

    Args:
        config: the ``[gemini]`` settings.
        transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self, config: GeminiConfig, *, transport: httpx.AsyncBaseTransport | None = None
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
        """The API's name in messages: Gemini."""
        return NAME

    @property
    def model(self) -> str:
        """The configured model name, without the ``models/`` of ListModels."""
        return self.config.model.removeprefix("models/")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": [_content(m) for m in request.messages]}
        if request.system_instruction:
            body["systemInstruction"] = {"parts": [{"text": request.system_instruction}]}
        gen: dict[str, Any] = {}
        if request.temperature is not None:
            gen["temperature"] = request.temperature
        if request.max_output_tokens is not None:
            gen["maxOutputTokens"] = request.max_output_tokens
        if request.search:
            body["tools"] = [{"google_search": {}}]
        thinking = thinking_config(self.config, include_thoughts=request.include_thoughts)
        if thinking:
            gen["thinkingConfig"] = thinking
        if gen:
            body["generationConfig"] = gen
        return body

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream one answer. See the module docstring for the contract.

        Raises:
            ApiKeyMissing: no key is configured (no request is made).
            UpstreamError: any failure, with a message for the reader.
        """
        cfg = self.config
        if not cfg.api_key:
            raise ApiKeyMissing(
                "No Gemini API key is set. On the server, set GEMINI_API_KEY or "
                "[gemini] api_key in the config file, then restart kindlessh."
            )
        url = f"{cfg.base_url.rstrip('/')}/v1beta/{resource_name(cfg.model)}:streamGenerateContent"
        headers = {"x-goog-api-key": cfg.api_key, "accept": "text/event-stream"}
        deadline = time.monotonic() + cfg.answer_timeout
        with map_httpx_errors(cfg.base_url):
            async with self._client.stream(
                "POST", url, params={"alt": "sse"}, headers=headers, json=self._body(request)
            ) as response:
                if response.status_code != 200:
                    data = await error_body(response)
                    raise _parse_error_bytes(response.status_code, data, cfg.model)
                async for event in self._read(response, deadline):
                    yield event

    async def _read(
        self, response: httpx.Response, deadline: float
    ) -> AsyncGenerator[StreamEvent, None]:
        cfg = self.config
        decoder = SSEDecoder(max_event_size=MAX_EVENT_BYTES)
        parts: list[dict[str, Any]] = []  # the answer's parts as received, for Replay
        finished = False
        wrote = False
        usage: Usage | None = None
        async for chunk in timed_chunks(
            response, name=NAME, first_byte=cfg.first_byte_timeout, chunk=cfg.chunk_timeout,
            answer=cfg.answer_timeout, deadline=deadline,
        ):
            for sse in decoder.feed(chunk):
                try:
                    obj = json.loads(sse.data)
                except ValueError:
                    log.warning("skipping a malformed JSON event (%d bytes)", len(sse.data))
                    continue
                parts += _model_parts(obj)
                for event in _events_from_chunk(obj, cfg.model):
                    if isinstance(event, TextDelta):
                        wrote = True
                    elif isinstance(event, Usage):
                        usage = event
                    elif isinstance(event, Finish):
                        finished = True
                        if any("thoughtSignature" in p for p in parts):
                            yield Replay(json.dumps(parts, ensure_ascii=False))
                        if event.reason == "MAX_TOKENS":
                            note = max_tokens_note(cfg, usage, wrote)
                            event = dataclasses.replace(event, note=note)
                    yield event
            tail = decoder.pending_unparsed.strip()
            if tail.startswith(("{", "[")):
                # A raw JSON error tail (no ``data:``) on a 200 stream: raise as soon as
                # it parses, so the reader learns why without waiting for EOF.
                try:
                    obj = json.loads(tail)
                except ValueError:
                    pass
                else:
                    decoder.take_unparsed()
                    if _error_object(obj) is not None:
                        if finished:
                            shown = sanitize_inline(tail, 200)
                            log.warning("error after the answer finished: %s", shown)
                            continue
                        raise error_from_body(None, obj, cfg.model)
        decoder.close()
        tail = decoder.take_unparsed().strip()
        if not finished:
            try:
                obj = json.loads(tail) if tail else None
            except ValueError:
                obj = None
            if _error_object(obj) is not None:
                raise error_from_body(None, obj, cfg.model)
            raise TruncatedStream(
                "Gemini's answer stopped before it was finished (the connection closed early)."
            )
