"""Retries before the first token: backoff with jitter, RetryInfo honoured, a time budget.

Contract: :func:`stream_with_retries` yields the events of one answer. A retryable failure
(:class:`UpstreamUnavailable`: 408, 500, 502, 503, 504, transport errors and timeouts, as
the official SDKs retry; and :class:`RateLimited`: a 429 the provider classed as one that
may free up soon, never a daily or a zero quota) that happens *before* any text or thought
arrived is retried up to ``max_retries`` times, waiting ``base_delay * 2**n`` seconds
(plus jitter, capped at ``max_delay``) or the server's ``retryDelay`` when it gave one, as
long as the waits fit in ``budget`` seconds. ``on_wait(seconds, error)`` is called before
each wait so the screen can say what is happening. Every other error, and any error after
the first token, is raised as it is.

Strategy: never retry after the first token. The reader already saw that text; a second
attempt would produce a different answer and splice two answers into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from ._errors import RateLimited, UpstreamError, UpstreamUnavailable
from ._provider import ChatRequest, Provider, StreamEvent, TextDelta, ThoughtDelta


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before the first token."""

    max_retries: int = 4
    base_delay: float = 1.0
    max_delay: float = 60.0
    budget: float = 30.0
    jitter: float = 1.0

    def delay(self, attempt: int, error: UpstreamError, rand: Callable[[], float]) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(error.retry_after, self.max_delay)
        wait = self.base_delay * float(1 << attempt) + self.jitter * (2 * rand() - 1)
        return max(0.0, min(wait, self.max_delay))


def retryable(error: UpstreamError) -> bool:
    """True for failures that may go away by themselves."""
    return isinstance(error, UpstreamUnavailable | RateLimited)


async def stream_with_retries(
    provider: Provider,
    request: ChatRequest,
    policy: RetryPolicy,
    *,
    on_wait: Callable[[float, UpstreamError], None] = lambda s, e: None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[StreamEvent, None]:
    """Stream one answer, retrying as the module docstring says."""
    started = clock()
    attempt = 0
    while True:
        got_token = False
        try:
            async with contextlib.aclosing(provider.stream(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta | ThoughtDelta):
                        got_token = True
                    yield event
            return
        except UpstreamError as error:
            if got_token or not retryable(error) or attempt >= policy.max_retries:
                raise
            wait = policy.delay(attempt, error, rand)
            if clock() - started + wait > policy.budget:
                raise
            on_wait(wait, error)
            await sleep(wait)
            attempt += 1
