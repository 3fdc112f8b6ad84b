"""A legitimate user beside an attack: typing, timed, and logging in, while the attack runs.

Contract:
- ``async with bystander(server) as person:`` opens a chat as ``bystander`` and, until the
  block ends, types a letter every ``interval`` seconds, times how long the letter takes
  to show in the input line (the echo, as the person sees it on a pyte screen) and erases
  it. ``person.worst`` is the slowest echo so far, in seconds; a letter that never shows
  counts as the whole ``give_up`` wait. ``person.echoes`` holds every sample.
- :func:`can_log_in` opens a fresh chat (a new connection, a new login) and closes it;
  it raises ``AssertionError`` when the chat does not come up within ``timeout``.
- :func:`elsewhere` runs an attack on a thread with an event loop of its own.
- :func:`rss_mib` is this process's resident memory (the server runs in the test's
  process), after a full collection, so that freed objects are not counted.

Attack tests check, as issue 18 asks: the bystander's worst echo stays under 250 ms while
the attack runs, logins still succeed, and memory comes back to within 50 MB of where it
was once the attacker has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from kindlessh import Server

from .helpers import connected
from .sshterm import Terminal

T = TypeVar("T")

ECHO_LIMIT = 0.25  # seconds: the worst echo a bystander may see during an attack
MEMORY_SLACK_MIB = 50.0  # how far memory may stay above its level before the attack


class Bystander:
    """The person typing beside the attack (see the module docstring)."""

    def __init__(self, term: Terminal, interval: float, give_up: float) -> None:
        self.term = term
        self.interval = interval
        self.give_up = give_up
        self.echoes: list[float] = []
        self._stop = asyncio.Event()

    @property
    def worst(self) -> float:
        """The slowest echo so far, in seconds (0 before the first)."""
        return max(self.echoes, default=0.0)

    def _input_line(self) -> str:
        return self.term.screen.display[-1]

    async def _type(self) -> None:
        letters = "abcdefghij"
        n = 0
        due = time.monotonic()
        while not self._stop.is_set():
            letter = letters[n % len(letters)]
            n += 1
            # Strategy: timed from when the key was due, not from when this loop got to
            # send it: a person's finger does not wait for the server, so a loop stalled
            # while the bystander was between keys still shows as a late echo.
            await self.term.send(letter)

            def shown(letter: str = letter) -> bool:
                return letter in self._input_line()

            try:
                await self.term.wait_until(shown, f"the echo of {letter!r}", self.give_up)
            except AssertionError:
                if self.term.closed.is_set():
                    raise
                self.echoes.append(self.give_up)
            else:
                self.echoes.append(time.monotonic() - due)
            await self.term.send("\x7f")  # Backspace: the line stays short
            due = time.monotonic() + self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)


@asynccontextmanager
async def bystander(
    server: Server, *, interval: float = 0.05, give_up: float = 5.0
) -> AsyncIterator[Bystander]:
    """A chat as ``bystander`` that keeps typing while the block runs."""
    async with connected(server, username="bystander") as term:
        person = Bystander(term, interval, give_up)
        task = asyncio.get_running_loop().create_task(person._type())
        try:
            # One echo before the attack starts: the chat is up and typing works.
            while not person.echoes and not task.done():
                await asyncio.sleep(0.01)
            yield person
        finally:
            person._stop.set()
            await task


async def can_log_in(server: Server, *, username: str = "latecomer", timeout: float = 5.0) -> None:
    """A new connection logs in and its chat comes up within ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        async with connected(server, username=username):
            pass


async def elsewhere(attack: Callable[[], Awaitable[T]]) -> T:
    """Run ``attack()`` to its end on a thread with its own event loop.

    Strategy: the attacker's own client work (forty key exchanges, say) would otherwise
    run on the test's loop, beside the server and the bystander, and show as the
    server's delay; on a thread of its own it shares only the CPU, as a remote attacker
    shares the machine's network.
    """
    return await asyncio.to_thread(lambda: asyncio.run(attack()))


def rss_mib() -> float:
    """This process's resident memory in MiB, after a full garbage collection."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
