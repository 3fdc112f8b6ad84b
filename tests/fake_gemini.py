"""A fake Gemini API on 127.0.0.1 that speaks the real wire format, byte for byte.

Route: ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` with the key in the
``x-goog-api-key`` header (or ``?key=``); and ``GET /v1beta/models`` (ListModels, paged;
see :meth:`FakeGemini.model_entries`). Checks of the streaming route run in this order:

* other paths or methods: 404 ``text/plain``;
* no ``alt=sse``: 400 INVALID_ARGUMENT (JSON body; without ``alt=sse`` the real API speaks
  JSON, not SSE);
* no key: 403 ``err_403_unregistered_caller.json``; wrong key: 400
  ``err_400_api_key_invalid.json``;
* unknown model: 404 ``err_404_model_not_found.json`` naming the model;
* body that is not a JSON object: 400 INVALID_ARGUMENT;
* a body the real API would refuse (:mod:`tests.gemini_schema`: an unknown field, worded
  as the API words it; a thinking level and a budget together; a level on a 2.5 model):
  400 INVALID_ARGUMENT;
* otherwise the next scripted :class:`Reply` (``enqueue()``), or ``default_reply``. A
  reply built by :meth:`Reply.thinking` is made from the request (thoughts only when
  asked, thinking paid out of ``maxOutputTokens``); from any other 200 reply the events
  holding only thought parts are left out unless ``includeThoughts`` was asked, as the
  real API sends them only then.

Error responses carry ``Content-Type: text/event-stream`` and a ``Content-Length``, as the
real API sends them on the ``alt=sse`` route. A 200 response is chunked (no
``Content-Length``); each piece of ``Reply.body`` goes out as one HTTP chunk, flushed on its
own. The HTTP/1.1 side is hand-written on ``asyncio.start_server``: keep-alive, pipelining,
``Connection: close``, ``Content-Length`` or chunked request bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import http
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from .gemini_schema import check_request, max_output_tokens, thinking_config

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "MANIFEST.json").read_text())

SSE = "text/event-stream"
ROUTE_PREFIX = "/v1beta/models/"
ROUTE_SUFFIX = ":streamGenerateContent"
SERVER_HEADER = "scaffolding on HTTPServer2"  # what the real front end sends

Split = Literal["events", "bytes", "awkward", "whole"]
Ending = Literal["complete", "hang", "drop"]

# Fixture picked by ``Reply.error(status)`` for a bare status code.
ERROR_FOR_STATUS = {
    400: "err_400_unknown_field.json",
    403: "err_403_leaked_key.json",
    404: "err_404_model_not_found.json",
    429: "err_429_resource_exhausted.json",
    500: "err_500_internal.json",
    503: "err_503_unavailable.json",
}
# google.rpc canonical codes, for statuses without a fixture.
CANONICAL = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request is missing required authentication credential."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: ("INTERNAL", "Internal error encountered."),
    501: ("UNIMPLEMENTED", "Operation is not implemented, or supported, or enabled."),
    502: ("UNAVAILABLE", "The service is currently unavailable."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}


# ----- wire format helpers ----------------------------------------------------------------


def google_json(obj: Any) -> str:
    """Compact JSON as Google writes it in SSE events.

    ``"key": value`` (colon + space), members separated by ``,`` without a space, raw UTF-8,
    ``\\n`` escaped inside strings, ``<``/``>`` escaped as ``\\u003c``/``\\u003e``.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ": "))
    # "<" and ">" can only occur inside strings, so a plain replace is safe.
    return text.replace("<", "\\u003c").replace(">", "\\u003e")


def pretty_json(obj: Any) -> bytes:
    """An error body as the real API sends it: 2-space indent, LF, trailing LF."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def error_body(status: int, message: str | None = None, code_name: str | None = None) -> bytes:
    name, default_message = CANONICAL.get(status, ("UNKNOWN", "Unknown error."))
    return pretty_json(
        {"error": {"code": status, "message": message or default_message,
                   "status": code_name or name}}
    )


def sse_event(obj: Any) -> bytes:
    """One SSE event: ``data: `` + compact JSON + CRLF CRLF."""
    return b"data: " + google_json(obj).encode() + b"\r\n\r\n"


_response_ids = itertools.count(1)


def new_response_id() -> str:
    return f"fakeResponseId{next(_response_ids):09d}"


def text_events(
    pieces: Sequence[str],
    *,
    finish_reason: str | None = "STOP",
    usage: bool = True,
    model_version: str | None = "gemini-2.5-flash",
    response_id: str | None = None,
    prompt_tokens: int = 8,
    candidate_tokens: Sequence[int] | None = None,
    thoughts_tokens: int | None = None,
) -> list[bytes]:
    """One event per text piece, in the real shape.

    Each event: ``candidates`` (one candidate, ``finishReason`` only on the last one),
    ``usageMetadata`` (a running snapshot: ``candidatesTokenCount`` grows), ``modelVersion``,
    ``responseId``. ``candidate_tokens`` gives the cumulative candidate count per event
    (default: about one token per 4 characters). ``finish_reason=None`` leaves the answer
    without an end, as a truncated stream. No pieces but a finish reason: one final event
    with empty text.
    """
    if candidate_tokens is not None and len(candidate_tokens) != len(pieces):
        raise ValueError("candidate_tokens needs one cumulative count per piece")
    if not pieces and finish_reason is not None:
        pieces = [""]
        candidate_tokens = [0] if candidate_tokens is not None else None
    if candidate_tokens is None:
        running = 0
        counts = []
        for piece in pieces:
            running += max(1, math.ceil(len(piece) / 4)) if piece else 0
            counts.append(running)
    else:
        counts = list(candidate_tokens)
    rid = response_id if response_id is not None else new_response_id()
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        cand: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}}
        if finish_reason is not None and i == len(pieces) - 1:
            cand["finishReason"] = finish_reason
        cand["index"] = 0
        chunk: dict[str, Any] = {"candidates": [cand]}
        if usage:
            meta: dict[str, Any] = {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": counts[i],
                "totalTokenCount": prompt_tokens + counts[i] + (thoughts_tokens or 0),
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
            }
            if thoughts_tokens is not None:
                meta["thoughtsTokenCount"] = thoughts_tokens
            chunk["usageMetadata"] = meta
        if model_version is not None:
            chunk["modelVersion"] = model_version
        if rid:
            chunk["responseId"] = rid
        out.append(sse_event(chunk))
    return out


# What a thinkingLevel lets the fake think at most, in tokens (not published by Google).
LEVEL_TOKENS = {"minimal": 128, "low": 1024, "medium": 4096, "high": 1 << 30}


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def thinking_events(
    body: Any,
    answer: Sequence[str],
    *,
    thoughts: Sequence[str],
    thinking_tokens: int,
    signature: str | None,
    model_version: str,
    prompt_tokens: int,
    grounding: dict[str, Any] | None = None,
) -> list[bytes]:
    """The events of :meth:`Reply.thinking` for one request body."""
    config = thinking_config(body)
    limit = max_output_tokens(body)
    want = thinking_tokens
    budget = config.get("thinkingBudget")
    if isinstance(budget, int) and budget >= 0:
        want = min(want, budget)
    level = config.get("thinkingLevel")
    if isinstance(level, str):
        want = min(want, LEVEL_TOKENS.get(level.lower(), want))
    spent = min(want, limit)
    include = config.get("includeThoughts") is True
    rid = new_response_id()
    searched = any(
        isinstance(tool, dict) and ("google_search" in tool or "googleSearch" in tool)
        for tool in (body.get("tools") or [] if isinstance(body, dict) else [])
    )

    def chunk(parts: list[dict[str, Any]] | None, out: int | None,
              finish: str | None) -> bytes:
        content: dict[str, Any] = {"role": "model"}
        if parts is not None:
            content = {"parts": parts, "role": "model"}
        cand: dict[str, Any] = {"content": content}
        if finish:
            cand["finishReason"] = finish
        cand["index"] = 0
        if finish and grounding is not None and searched:
            cand["groundingMetadata"] = grounding
        meta: dict[str, Any] = {"promptTokenCount": prompt_tokens}
        if out is not None:
            meta["candidatesTokenCount"] = out
        meta["totalTokenCount"] = prompt_tokens + (out or 0) + spent
        meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt_tokens}]
        if spent:
            meta["thoughtsTokenCount"] = spent
        return sse_event({"candidates": [cand], "usageMetadata": meta,
                          "modelVersion": model_version, "responseId": rid})

    events: list[bytes] = []
    if include and spent:
        events += [chunk([{"text": t, "thought": True}], None, None) for t in thoughts]
    if spent >= limit:
        events.append(chunk(None, None, "MAX_TOKENS"))
        return events
    room = limit - spent
    used = 0
    pieces = list(answer) or [""]
    for i, piece in enumerate(pieces):
        finish: str | None = "STOP" if i == len(pieces) - 1 else None
        if used + _tokens(piece) > room:
            piece = piece[: (room - used) * 4]
            finish = "MAX_TOKENS"
        used += _tokens(piece)
        part: dict[str, Any] = {"text": piece}
        if i == 0 and signature is not None and spent:
            part["thoughtSignature"] = signature
        events.append(chunk([part], used, finish))
        if finish:
            break
    return events


# ----- splitting a body into HTTP chunks ----------------------------------------------------


def split_events(data: bytes) -> list[bytes]:
    """One piece per SSE event (cut after each CRLF CRLF); any tail is the last piece."""
    parts = data.split(b"\r\n\r\n")
    pieces = [p + b"\r\n\r\n" for p in parts[:-1]]
    if parts[-1]:
        pieces.append(parts[-1])
    return pieces


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def _awkward_cuts(segment: bytes, index: int) -> dict[str, set[int]]:
    """Awkward cut offsets inside one event (or tail), by kind."""
    cuts: dict[str, set[int]] = {"prefix": set(), "crlf": set(), "utf8": set()}
    if segment.startswith(b"data: "):
        cuts["prefix"].add(2 + index % 3)  # "da|ta: ", "dat|a: " or "data|: "
    crlfs = [i for i in range(len(segment) - 1) if segment[i : i + 2] == b"\r\n"]
    if crlfs:
        cuts["crlf"].add((crlfs[0] if index % 2 == 0 else crlfs[-1]) + 1)  # \r|\n
    leads = [i for i, byte in enumerate(segment) if byte >= 0xC0]  # UTF-8 lead bytes
    if leads:
        cuts["utf8"].add(leads[0] + 1)  # right after the lead byte
    if len(leads) > 1 and segment[leads[1]] >= 0xE0:
        cuts["utf8"].add(leads[1] + 2)  # before the last byte of a 3- or 4-byte character
    return {kind: {c for c in found if 0 < c < len(segment)} for kind, found in cuts.items()}


def split_awkward(data: bytes) -> list[bytes]:
    """Cut at awkward places, deterministically.

    Every event is cut inside its ``data: `` prefix, between the CR and LF of one of its
    CRLFs and inside multi-byte UTF-8 characters, except two neighbouring events (when
    there are three or more) that travel together, uncut, in one chunk. The pair is chosen
    so that the other events keep as many kinds of awkward cut as possible.
    """
    segments = split_events(data)
    found = [_awkward_cuts(segment, i) for i, segment in enumerate(segments)]
    quiet: set[int] = set()
    if len(segments) >= 3:

        def cost(q: int) -> tuple[bool, int, int, int]:
            partial = not segments[q + 1].endswith(b"\r\n\r\n")  # a tail is no event
            rest = [f for i, f in enumerate(found) if i not in (q, q + 1)]
            kinds = {kind for f in rest for kind, cuts in f.items() if cuts}
            lost = sum(len(c) for i in (q, q + 1) for c in found[i].values())
            return (partial, -len(kinds), lost, q)

        best = min(range(len(segments) - 1), key=cost)
        quiet = {best, best + 1}
    cuts: set[int] = set()
    offset = 0
    for i, segment in enumerate(segments):
        if i not in quiet:
            for kind_cuts in found[i].values():
                cuts.update(offset + c for c in kind_cuts)
        offset += len(segment)
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def split_whole(data: bytes) -> list[bytes]:
    return [data] if data else []


SPLITTERS: dict[str, Callable[[bytes], list[bytes]]] = {
    "events": split_events,
    "bytes": split_bytes,
    "awkward": split_awkward,
    "whole": split_whole,
}


def split_body(data: bytes, split: Split) -> tuple[bytes, ...]:
    try:
        splitter = SPLITTERS[split]
    except KeyError:
        raise ValueError(f"split must be one of {sorted(SPLITTERS)}, not {split!r}") from None
    return tuple(splitter(data))


# ----- scripted replies --------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted response. Build it with the classmethods.

    ``body`` holds the pieces; with ``framing="chunked"`` each one is sent as one HTTP chunk
    (flushed, then ``chunk_delay``). ``ending`` says what happens after the last piece:
    ``complete`` (terminating 0-chunk, connection kept alive), ``hang`` (nothing more until
    the client leaves or the server closes) or ``drop`` (the TCP connection is closed with
    no terminating chunk).
    """

    status: int = 200
    body: tuple[bytes, ...] = ()
    headers: tuple[tuple[str, str], ...] = (("Content-Type", SSE),)
    framing: Literal["chunked", "length", "eof"] = "chunked"
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    ending: Ending = "complete"
    gate: asyncio.Event | None = None  # see gated()
    gate_after: int = 0
    split: Split = "events"  # how the body was cut (kept when the fake drops thoughts)
    respond: Callable[[Any], Reply] | None = None  # see thinking(): built from the request

    def gated(self, after: int, gate: asyncio.Event) -> Reply:
        """This reply, pausing after ``after`` body pieces until ``gate`` is set (an
        answer that is still coming for exactly as long as a test needs)."""
        return dataclasses.replace(self, gate=gate, gate_after=after)

    @property
    def data(self) -> bytes:
        return b"".join(self.body)

    @classmethod
    def fixture(
        cls,
        name: str,
        *,
        split: Split = "events",
        first_byte_delay: float = 0.0,
        chunk_delay: float = 0.0,
    ) -> Reply:
        """HTTP 200 with the exact bytes of ``fixtures/gemini/<name>`` (a ``*.sse`` file)."""
        status = MANIFEST.get(name, {}).get("http_status", 200)
        if status != 200:
            raise ValueError(f"{name} is an error body (HTTP {status}); use Reply.error()")
        data = (FIXTURES / name).read_bytes()
        return cls(body=split_body(data, split), first_byte_delay=first_byte_delay,
                   chunk_delay=chunk_delay, split=split)

    @classmethod
    def error(cls, name_or_status: str | int, *, first_byte_delay: float = 0.0) -> Reply:
        """An HTTP error with a fixture body (status from MANIFEST.json).

        A bare status code picks a fixture (``ERROR_FOR_STATUS``), or builds a canonical
        Google error body for codes without one (e.g. 504 DEADLINE_EXCEEDED).
        """
        if isinstance(name_or_status, int):
            status = name_or_status
            name = ERROR_FOR_STATUS.get(status)
            if name is None:
                return cls(status=status, body=(error_body(status),), framing="length",
                           first_byte_delay=first_byte_delay)
        else:
            name = name_or_status if name_or_status.endswith(".json") else name_or_status + ".json"
            status = MANIFEST[name]["http_status"]
        content_type = MANIFEST[name].get("content_type", SSE)
        return cls(status=status, body=((FIXTURES / name).read_bytes(),),
                   headers=(("Content-Type", content_type),), framing="length",
                   first_byte_delay=first_byte_delay)

    @classmethod
    def text(
        cls,
        chunks: Sequence[str],
        *,
        finish_reason: str | None = "STOP",
        chunk_delay: float = 0.0,
        first_byte_delay: float = 0.0,
        usage: bool = True,
        model_version: str | None = "gemini-2.5-flash",
        response_id: str | None = None,
        prompt_tokens: int = 8,
        candidate_tokens: Sequence[int] | None = None,
        thoughts_tokens: int | None = None,
        split: Split = "events",
    ) -> Reply:
        """HTTP 200 streaming one event per text piece (see :func:`text_events`)."""
        events = text_events(
            chunks, finish_reason=finish_reason, usage=usage, model_version=model_version,
            response_id=response_id, prompt_tokens=prompt_tokens,
            candidate_tokens=candidate_tokens, thoughts_tokens=thoughts_tokens,
        )
        return cls(body=split_body(b"".join(events), split), first_byte_delay=first_byte_delay,
                   chunk_delay=chunk_delay, split=split)

    @classmethod
    def thinking(
        cls,
        answer: Sequence[str],
        *,
        thoughts: Sequence[str] = ("**Thinking it over**\n\nWorking out the answer.\n\n",),
        thinking_tokens: int = 600,
        signature: str | None = None,
        model_version: str = "gemini-2.5-flash",
        prompt_tokens: int = 12,
        split: Split = "events",
        grounding: dict[str, Any] | None = None,
    ) -> Reply:
        """A thinking model's answer, built from the request as the real API builds it.

        * Thought parts (``"thought": true``) are sent only when the request's
          ``thinkingConfig.includeThoughts`` is true.
        * The model wants ``thinking_tokens`` of thinking; ``thinkingBudget`` (0 or more)
          caps it, ``thinkingLevel`` caps it at :data:`LEVEL_TOKENS` (the fake's own
          figures: the real service does not publish them).
        * Thinking is paid out of ``maxOutputTokens`` first: when it spends the whole
          limit the answer ends ``MAX_TOKENS`` with ``content: {"role": "model"}`` and no
          parts at all (fixture 05); when the rest is too short for the answer, the text
          is cut there and ends ``MAX_TOKENS``. About 4 characters are one token.
        * ``signature``: a ``thoughtSignature`` on the first answer part (Gemini 3 style).
        * ``grounding``: a ``groundingMetadata`` on the final candidate, sent only when
          the request carries the ``google_search`` tool.
        """

        def respond(body: Any) -> Reply:
            events = thinking_events(
                body, answer, thoughts=thoughts, thinking_tokens=thinking_tokens,
                signature=signature, model_version=model_version,
                prompt_tokens=prompt_tokens, grounding=grounding,
            )
            return cls(body=split_body(b"".join(events), split), split=split)

        return cls(respond=respond)

    @classmethod
    def hang(cls, after: Reply | Sequence[str] | None = None) -> Reply:
        """Send ``after`` (a reply's body, or text events without a finishReason, or
        nothing), then keep the response open until the client leaves or the server closes."""
        return dataclasses.replace(_as_reply(after), ending="hang")

    @classmethod
    def drop_after(cls, events: Reply | Sequence[str]) -> Reply:
        """Send ``events`` (text pieces without a finishReason, or a reply's body), then
        close the TCP connection with no terminating chunk: a network drop mid-answer."""
        return dataclasses.replace(_as_reply(events), ending="drop")

    @classmethod
    def raw(
        cls,
        status: int,
        headers: Mapping[str, str],
        body_chunks: Sequence[bytes],
        close_early: bool = False,
        *,
        first_byte_delay: float = 0.0,
        chunk_delay: float = 0.0,
    ) -> Reply:
        """Anything else. ``headers`` are sent as given; framing follows from them:
        ``Content-Length`` -> the pieces are written as they are (a short body is possible);
        ``Connection: close`` without length or ``Transfer-Encoding`` -> body until the
        connection closes; otherwise chunked (``Transfer-Encoding: chunked`` added when
        missing). ``close_early`` closes the connection after the pieces without the
        terminating 0-chunk."""
        lower = {k.lower(): v.lower() for k, v in headers.items()}
        framing: Literal["chunked", "length", "eof"]
        if "content-length" in lower:
            framing = "length"
        elif "transfer-encoding" in lower:
            framing = "chunked"
        elif lower.get("connection") == "close":
            framing = "eof"
        else:
            framing = "chunked"
        return cls(status=status, body=tuple(body_chunks), headers=tuple(headers.items()),
                   framing=framing, first_byte_delay=first_byte_delay, chunk_delay=chunk_delay,
                   ending="drop" if close_early or framing == "eof" else "complete")


def _only_thoughts(event: bytes) -> bool:
    """True for an SSE event whose parts are all thought summaries."""
    if not event.startswith(b"data: "):
        return False
    try:
        obj = json.loads(event[6:])
        parts = obj["candidates"][0]["content"]["parts"]
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    return bool(parts) and all(isinstance(p, dict) and p.get("thought") is True for p in parts)


def without_thoughts(reply: Reply) -> Reply:
    """``reply`` as the API sends it to a request that did not ask for thoughts: the
    thought-only events left out (the usage still counts the thinking)."""
    data = reply.data
    events = split_events(data)
    kept = [e for e in events if not _only_thoughts(e)]
    if len(kept) == len(events):
        return reply
    return dataclasses.replace(reply, body=split_body(b"".join(kept), reply.split))


def _as_reply(value: Reply | Sequence[str] | None) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        value = [value]
    return Reply(body=tuple(text_events(list(value or []), finish_reason=None)))


# ----- records -----------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the server parsed it."""

    method: str
    target: str  # the raw request target, e.g. "/v1beta/models/m:streamGenerateContent?alt=sse"
    path: str  # percent-decoded
    query: dict[str, str]  # first value of each parameter
    model: str | None  # None when the path is not the streaming route
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    json: Any  # the parsed body, None when empty or not JSON
    body: bytes = b""
    connection: int = 0  # serial number of the TCP connection it came on

    @property
    def api_key(self) -> str | None:
        return self.headers.get("x-goog-api-key") or self.query.get("key") or None


@dataclass
class ResponseLog:
    """What happened to one HTTP 200 response (times are ``time.monotonic()``)."""

    request: RecordedRequest
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    bytes_sent: int = 0  # body bytes handed to the socket, without chunk framing
    completed: bool = False  # the whole reply went out (with its terminating 0-chunk)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # set with finished_at

    def finish(self) -> None:
        if self.finished_at is None:
            self.finished_at = time.monotonic()
        self.finished.set()


class _BadRequest(Exception):
    pass


class _ClientGone(Exception):
    pass


class _Connection:
    """One TCP connection with its own read buffer (so bytes that arrive while a response
    streams are kept for the next request)."""

    def __init__(self, serial: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.serial = serial
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        self.buf += data
        return bool(data)

    async def read_until(self, marker: bytes, limit: int = 65536) -> bytes | None:
        """Up to and without ``marker``; None on a clean EOF before any byte."""
        start = 0
        while True:
            i = self.buf.find(marker, start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(marker)]
                return out
            if len(self.buf) > limit:
                raise _BadRequest("head too long")
            start = max(0, len(self.buf) - len(marker) + 1)
            if not await self._fill():
                if self.buf:
                    raise _ClientGone
                return None

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise _ClientGone
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def watch(self) -> None:
        """Return when the client closes its side; keep any bytes it sends meanwhile."""
        with contextlib.suppress(ConnectionError, OSError):
            while await self._fill():
                pass

    async def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise _ClientGone
        self.writer.write(data)
        await self.writer.drain()

    async def flush_and_abort(self) -> None:
        """Close the TCP connection at once, after what was written has left."""
        transport = self.writer.transport
        for _ in range(200):
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        transport.abort()


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# ----- the server --------------------------------------------------------------------------


class FakeGemini:
    """The fake server. ``enqueue()`` scripts replies; ``default_reply`` serves the rest.

    ``requests`` lists every request received (any path, any outcome); ``responses`` has a
    :class:`ResponseLog` for each HTTP 200 response, in order.
    """

    def __init__(
        self, *, api_key: str = "test-key", models: Iterable[str] = ("gemini-2.5-flash",)
    ) -> None:
        self.api_key = api_key
        self.models = set(models)
        self.requests: list[RecordedRequest] = []
        self.responses: list[ResponseLog] = []
        self.default_reply: Reply = Reply.fixture("01_text_multichunk.sse")
        self.list_page_size = 1000  # the most models one ListModels page holds
        self._queue: list[Reply] = []
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._closing = False
        self._handlers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self._serials = itertools.count(1)

    # ----- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> FakeGemini:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeGemini is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, model: str = "gemini-2.5-flash", *, alt_sse: bool = True) -> str:
        """Full URL of the streaming route for ``model``."""
        return f"{self.base_url}{ROUTE_PREFIX}{model}{ROUTE_SUFFIX}" + (
            "?alt=sse" if alt_sse else ""
        )

    async def close(self) -> None:
        """Stop listening and end every connection (hanging responses included)."""
        self._closing = True
        server = self._server
        if server is not None:
            server.close()
        await asyncio.sleep(0)  # let handlers of just-accepted connections register
        while self._handlers:
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # ----- scripting and waiting ----------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Queue replies, served first in first out to authorised streaming requests."""
        self._queue.extend(replies)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def wait_requests(self, n: int, timeout: float = 5.0) -> RecordedRequest:
        """Wait until ``n`` requests have arrived; return the n-th."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= n)
        return self.requests[n - 1]

    async def wait_responses(self, n: int, timeout: float = 5.0) -> ResponseLog:
        """Wait until ``n`` HTTP 200 responses have started; return the n-th log."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.responses) >= n)
        return self.responses[n - 1]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ----- HTTP ---------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            writer.transport.abort()
            return
        self._handlers.add(task)
        conn = _Connection(next(self._serials), reader, writer)
        try:
            while await self._one_request(conn):
                pass
        except _BadRequest:
            with contextlib.suppress(ConnectionError, OSError, _ClientGone):
                await self._send_fixed(conn, 400, b"Bad Request\n", "text/plain", close=True)
        except (_ClientGone, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # close(): end quietly (asyncio logs an error for a handler that ends cancelled)
            # and at once, whatever the client has not read yet.
            writer.transport.abort()
        finally:
            self._handlers.discard(task)
            writer.close()
            try:
                # A client that stops reading would keep a graceful close waiting forever.
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (Exception, asyncio.CancelledError):
                writer.transport.abort()

    async def _one_request(self, conn: _Connection) -> bool:
        """Read and answer one request; False when the connection should close."""
        head = await conn.read_until(b"\r\n\r\n")
        while head == b"":  # tolerate stray CRLFs between requests
            head = await conn.read_until(b"\r\n\r\n")
        if head is None:
            return False
        lines = head.lstrip(b"\r\n").decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(lines[0]) from None
        if not version.startswith("HTTP/1."):
            raise _BadRequest(version)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(line)
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(conn, headers)
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        return await self._route(conn, method, target, headers, body, keep_alive)

    @staticmethod
    async def _read_body(conn: _Connection, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = await conn.read_until(b"\r\n")
                if size_line is None:
                    raise _ClientGone
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _BadRequest("chunk size") from None
                if size == 0:
                    while await conn.read_until(b"\r\n"):  # trailers up to the blank line
                        pass
                    return b"".join(parts)
                parts.append(await conn.read_exactly(size))
                if await conn.read_exactly(2) != b"\r\n":
                    raise _BadRequest("chunk end")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest("content-length") from None
        if length < 0:
            raise _BadRequest("content-length")
        return await conn.read_exactly(length)

    async def _route(self, conn: _Connection, method: str, target: str,
                     headers: dict[str, str], body: bytes, keep_alive: bool) -> bool:
        url = urlsplit(target)
        path = unquote(url.path)
        query: dict[str, str] = {}
        for k, v in parse_qsl(url.query, keep_blank_values=True):
            query.setdefault(k, v)
        model: str | None = None
        if path.startswith(ROUTE_PREFIX) and path.endswith(ROUTE_SUFFIX):
            model = path[len(ROUTE_PREFIX) : -len(ROUTE_SUFFIX)] or None
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = RecordedRequest(method, target, path, query, model, headers, parsed, body,
                                  conn.serial)
        self.requests.append(request)
        await self._notify()

        if method == "GET" and path == "/v1beta/models":
            return await self._list_models(conn, headers, query, keep_alive)
        if method != "POST" or model is None:
            return await self._send_fixed(conn, 404, b"Not Found\n", "text/plain; charset=utf-8",
                                          close=not keep_alive)
        if query.get("alt") != "sse":
            err = error_body(400, "This server streams only with alt=sse; add alt=sse to the "
                                  "query.")
            return await self._send_fixed(conn, 400, err, "application/json; charset=UTF-8",
                                          close=not keep_alive)
        key = headers.get("x-goog-api-key") or query.get("key")
        if not key:
            reply = Reply.error("err_403_unregistered_caller.json")
        elif key != self.api_key:
            reply = Reply.error("err_400_api_key_invalid.json")
        elif model not in self.models:
            data = (FIXTURES / "err_404_model_not_found.json").read_bytes()
            name = json.dumps(model, ensure_ascii=False)[1:-1].encode()
            reply = Reply.error(404)
            reply = dataclasses.replace(
                reply, body=(data.replace(b"models/gemini-9.9-ultra", b"models/" + name),)
            )
        elif not isinstance(parsed, dict):
            reply = Reply(status=400, body=(error_body(
                400, "Invalid JSON payload received. Expected an object as the request body."
            ),), framing="length")
        elif (invalid := check_request(parsed, model)) is not None:
            reply = Reply(status=400, body=(pretty_json({"error": {
                "code": 400, "message": invalid, "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                             "fieldViolations": [{"description": invalid}]}],
            }}),), framing="length")
        else:
            reply = self._queue.pop(0) if self._queue else self.default_reply
            if reply.respond is not None:
                reply = reply.respond(parsed)
            elif reply.status == 200 and thinking_config(parsed).get("includeThoughts") is not True:
                reply = without_thoughts(reply)
        return await self._send_reply(conn, reply, request, keep_alive)

    def model_entries(self) -> list[dict[str, Any]]:
        """What ListModels says about the served models (plus one that cannot chat), in
        the real shape (GEMINI-WIRE.md section 4)."""
        entries = [{
            "name": f"models/{name}", "version": "001",
            "displayName": name.replace("-", " ").title(),
            "description": f"The fake {name}.", "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens",
                                           "createCachedContent", "batchGenerateContent"],
            "temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2,
            "thinking": not name.startswith("gemini-2.0"),
        } for name in sorted(self.models)]
        entries.append({
            "name": "models/gemini-embedding-001", "version": "001",
            "displayName": "Gemini Embedding 001", "inputTokenLimit": 2048,
            "outputTokenLimit": 1, "supportedGenerationMethods": ["embedContent"],
        })
        return entries

    async def _list_models(self, conn: _Connection, headers: dict[str, str],
                           query: dict[str, str], keep_alive: bool) -> bool:
        """``GET /v1beta/models``: pages of ``list_page_size`` at most (``pageSize``
        may ask for fewer), ``nextPageToken`` between them."""
        key = headers.get("x-goog-api-key") or query.get("key")
        if not key or key != self.api_key:
            name = "err_403_unregistered_caller.json" if not key else "err_400_api_key_invalid.json"
            status = MANIFEST[name]["http_status"]
            return await self._send_fixed(conn, status, (FIXTURES / name).read_bytes(),
                                          "application/json; charset=UTF-8",
                                          close=not keep_alive)
        entries = self.model_entries()
        size = min(int(query.get("pageSize", "50") or 50), self.list_page_size)
        start = int(query.get("pageToken", "0") or 0)
        page: dict[str, Any] = {"models": entries[start:start + size]}
        if start + size < len(entries):
            page["nextPageToken"] = str(start + size)
        return await self._send_fixed(conn, 200, pretty_json(page),
                                      "application/json; charset=UTF-8", close=not keep_alive)

    async def _send_fixed(self, conn: _Connection, status: int, body: bytes,
                          content_type: str, *, close: bool) -> bool:
        head = self._head(status, [("Content-Type", content_type),
                                   ("Content-Length", str(len(body)))], close)
        await conn.send(head + body)
        return not close

    @staticmethod
    def _head(status: int, headers: Iterable[tuple[str, str]], close: bool) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        names = {k.lower() for k, _ in headers}
        if "date" not in names:
            lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        if "server" not in names:
            lines.append(f"Server: {SERVER_HEADER}")
        if close and "connection" not in names:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_reply(self, conn: _Connection, reply: Reply, request: RecordedRequest,
                          keep_alive: bool) -> bool:
        announce_close = not keep_alive or reply.framing == "eof"
        close = announce_close or reply.ending != "complete"
        headers = list(reply.headers)
        names = {k.lower() for k, _ in headers}
        if reply.framing == "length" and "content-length" not in names:
            headers.append(("Content-Length", str(len(reply.data))))
        if reply.framing == "chunked" and "transfer-encoding" not in names:
            headers.append(("Transfer-Encoding", "chunked"))
        head = self._head(reply.status, headers, announce_close)

        log: ResponseLog | None = None
        if reply.status == 200:
            log = ResponseLog(request)
            self.responses.append(log)
            await self._notify()

        sender = asyncio.create_task(self._stream(conn, reply, head, log))
        watcher = asyncio.create_task(conn.watch())
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done():
                sender.result()  # raises _ClientGone / ConnectionError on a write failure
                if reply.ending == "drop":
                    await conn.flush_and_abort()
                    if log is not None:
                        log.finish()
                return not close
            # The client went away mid-response.
            if log is not None:
                log.client_closed.set()
            return False
        except (_ClientGone, ConnectionError, OSError):
            if log is not None:
                log.client_closed.set()
            return False
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            if log is not None:
                log.finish()

    @staticmethod
    async def _stream(conn: _Connection, reply: Reply, head: bytes,
                      log: ResponseLog | None) -> None:
        """Write head and body as ``reply`` says; a 200 sends its head at once and then
        waits ``first_byte_delay``, other statuses wait before the status line."""
        chunked = reply.framing == "chunked"
        pieces = [p for p in reply.body if p] if chunked else list(reply.body)
        if log is None and not chunked and len(pieces) <= 1 and not reply.chunk_delay:
            await asyncio.sleep(reply.first_byte_delay)
            await conn.send(head + reply.data)  # a plain error: one write
        else:
            if log is None:
                await asyncio.sleep(reply.first_byte_delay)
            await conn.send(head)
            if log is not None and reply.first_byte_delay:
                await asyncio.sleep(reply.first_byte_delay)
            for i, piece in enumerate(pieces):
                if reply.gate is not None and i == reply.gate_after:
                    await reply.gate.wait()
                if i:
                    await asyncio.sleep(reply.chunk_delay)
                await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if log is not None:
                    log.bytes_sent += len(piece)
            if reply.ending == "complete" and chunked:
                await conn.send(b"0\r\n\r\n")
        if reply.ending == "complete" and log is not None:
            log.completed = True
            log.finish()
        if reply.ending == "hang":
            await asyncio.get_running_loop().create_future()  # until cancelled
