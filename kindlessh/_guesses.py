"""The server-wide guess budget: how many scrypt checks (passwords, invite codes) may run.

Contract:
- One :class:`GuessBudget` serves a whole server. :meth:`GuessBudget.run` runs one check
  in a worker thread when the budget allows it: at most ``rate`` a second (a bucket
  holding ``max(1, rate)`` checks, refilled continuously) and at most
  :data:`MAX_AT_ONCE` at the same time. Over the budget it returns None at once, without
  hashing anything: the caller refuses the guess as a failed login.
- :attr:`GuessBudget.checks` and :attr:`GuessBudget.refused` count both outcomes.
- ``clock`` (monotonic seconds) is a plain attribute so tests can replace it.
- The checks run on the budget's own ``at_once`` threads; :meth:`GuessBudget.close`
  lets them go (the server's stop).

Strategy: scrypt costs about 50 ms of CPU and 16 MiB, by design. Taken off the event
loop it no longer stalls echo, but forty addresses guessing at once still kept both
cores busy; a fixed budget bounds the CPU whatever the number of addresses. The price is
that password logins may fail while someone floods the server with guesses; keys never
depend on it. The checks get threads of their own rather than the loop's shared pool:
each thread that ran scrypt keeps its 16 MiB in the C allocator's arena for that
thread, so six pool threads held about 200 MiB after a guessing flood (bench/abuse.py);
two threads hold at most two such arenas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

MAX_AT_ONCE = 2  # checks running at the same time: one per core of a small server


class GuessBudget:
    """Checks allowed per second and at once over the whole server (see the contract)."""

    def __init__(self, rate: float, at_once: int = MAX_AT_ONCE) -> None:
        self.rate = rate
        self.at_once = at_once
        self.capacity = max(1.0, rate)
        self.clock: Callable[[], float] = time.monotonic
        self._tokens = self.capacity
        self._at = self.clock()
        self.running = 0
        self.checks = 0
        self.refused = 0
        self._threads = ThreadPoolExecutor(at_once, thread_name_prefix="kindlessh-check")

    def _take(self) -> bool:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self.running >= self.at_once or self._tokens < 1:
            self.refused += 1
            return False
        self._tokens -= 1
        self.checks += 1
        return True

    async def run(self, check: Callable[[], T]) -> T | None:
        """``check()`` in a worker thread, or None at once when over the budget."""
        if not self._take():
            return None
        self.running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, check)
        finally:
            self.running -= 1

    def close(self) -> None:
        """Let the check threads go once the checks running now end."""
        self._threads.shutdown(wait=False)
