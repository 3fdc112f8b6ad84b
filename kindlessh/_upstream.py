"""What every provider does alike with its HTTP stream: the client, and the answer's timers.

Contract:
- :func:`make_client` is the ``httpx.AsyncClient`` of one provider: the connect timeout,
  a read timeout that is only a backstop for response headers and error bodies (the
  answer's own timers are :func:`timed_chunks`'), and the pool limits.
- :func:`error_body` reads at most :data:`MAX_ERROR_BODY` bytes of a refused request's
  body: enough for any API's error object, never a whole stream.
- :func:`timed_chunks` yields a streaming response's body as it arrives, holding it to
  three clocks: the first chunk within ``first_byte`` seconds, each next one within
  ``chunk`` seconds, the whole answer by ``deadline`` (monotonic). A clock that runs out
  raises :class:`~kindlessh._errors.UpstreamUnavailable` saying which, naming the
  upstream as ``name``; the caller's response is then closed by its own context.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import httpx

from ._errors import UpstreamUnavailable

MAX_ERROR_BODY = 64 * 1024  # bytes of an error body read; error objects are far smaller


def make_client(
    *,
    connect: float,
    first_byte: float,
    chunk: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One provider's HTTP client (see the module contract)."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(connect=connect, read=max(first_byte, chunk), write=30, pool=30),
        # No cap on connections of the pool's own: [quota] max_upstream is the cap on
        # requests in flight; one of 100 here held every answer past the 100th in a
        # queue (and failed it after the pool timeout) whatever max_upstream said.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        headers={"user-agent": "kindlessh"},
    )


async def timed_chunks(
    response: httpx.Response,
    *,
    name: str,
    first_byte: float,
    chunk: float,
    answer: float,
    deadline: float,
) -> AsyncGenerator[bytes, None]:
    """The body of ``response``, chunk by chunk, within the three clocks.

    Raises:
        UpstreamUnavailable: the first byte, a next chunk or the whole answer came late.
    """
    chunks = response.aiter_bytes().__aiter__()
    first = True
    while True:
        limit = first_byte if first else chunk
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(min(limit, remaining), 0.0)):
                data = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if remaining <= limit:
                raise UpstreamUnavailable(
                    f"The answer took longer than {answer:g} s and was stopped."
                ) from None
            what = "before answering" if first else "in the middle of the answer"
            raise UpstreamUnavailable(f"{name} went silent for {limit:g} s {what}.") from None
        first = False
        yield data


async def error_body(response: httpx.Response) -> bytes:
    """The start of ``response``'s body, at most about :data:`MAX_ERROR_BODY` bytes."""
    data = bytearray()
    async for piece in response.aiter_bytes():
        data += piece
        if len(data) > MAX_ERROR_BODY:
            break
    return bytes(data)
