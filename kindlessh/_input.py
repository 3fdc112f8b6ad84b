"""Keyboard input from an SSH channel for prompt-toolkit, read in memory.

Contract: :meth:`ChannelInput.send_text` never blocks, whatever the amount of data; keys
reach the application on the next loop iteration, at most :data:`KEYS_PER_TURN` at a time
(the rest in later turns, after every other connection's work). While more than
:data:`HIGH_WATER` keys wait, the channel stops reading (``pause``) until they are down to
:data:`LOW_WATER` (``resume``): one client's flood is held in the SSH window, not in
memory, and costs every other session no more than one turn at a time. The keys
themselves come from a :class:`~._keyreader.KeyReader` (bounded escape sequences and
pastes).

Strategy: prompt-toolkit's pipe input writes to an OS pipe that the same event loop
reads; a paste larger than the pipe's 64 KiB buffer would block that write forever and
freeze every session on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyPress

from ._keyreader import PASTE_BURST, KeyReader

__all__ = ["HIGH_WATER", "KEYS_PER_TURN", "LOW_WATER", "PASTE_BURST", "ChannelInput"]

# Strategy: a key costs prompt-toolkit some tens of microseconds (bindings, the undo
# state, the buffer) and each turn with keys repaints; 50 keys a turn kept a bystander's
# echo under 150 ms beside a 50 KB flood of typing (200 a turn: about 200 ms). A person
# types a few keys a second, so this never delays typing.
KEYS_PER_TURN = 50
HIGH_WATER = 4 * KEYS_PER_TURN
LOW_WATER = KEYS_PER_TURN


def _nothing() -> None:
    pass


class ChannelInput(Input):
    """An in-memory prompt-toolkit Input fed by ``send_text``.

    Args:
        max_paste: the longest bracketed paste kept whole, in characters.
        pause: stops the channel's reading (``SSHChannel.pause_reading``).
        resume: starts it again.
    """

    def __init__(
        self,
        max_paste: int = 1 << 20,
        pause: Callable[[], None] = _nothing,
        resume: Callable[[], None] = _nothing,
    ) -> None:
        self._reader = KeyReader(max_paste)
        self._keys: deque[KeyPress] = deque()
        self._pause, self._resume = pause, resume
        self._paused = False
        self._callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._scheduled = False

    @property
    def max_paste(self) -> int:
        """The longest bracketed paste kept whole, in characters."""
        return self._reader.max_paste

    @max_paste.setter
    def max_paste(self, value: int) -> None:
        self._reader.max_paste = value

    @property
    def waiting(self) -> int:
        """How many keys wait for the application."""
        return len(self._keys)

    def send_text(self, data: str) -> None:
        """Queue text from the client (key presses, escape sequences, pastes)."""
        self._reader.feed(data)
        self._take()

    def _take(self) -> None:
        keys = self._reader.keys
        if keys:
            self._keys.extend(keys)
            keys.clear()
            if len(self._keys) > HIGH_WATER and not self._paused:
                self._paused = True
                self._pause()
        self._wake()

    def _wake(self) -> None:
        if self._callbacks and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._ready)

    def _ready(self) -> None:
        self._scheduled = False
        if self._callbacks:
            self._callbacks[-1]()

    def read_keys(self) -> list[KeyPress]:
        count = min(len(self._keys), KEYS_PER_TURN)
        keys = [self._keys.popleft() for _ in range(count)]
        if self._keys:
            self._wake()  # the rest in the next turn, after everyone else's
        if self._paused and len(self._keys) <= LOW_WATER:
            self._paused = False
            self._resume()
        return keys

    def flush_keys(self) -> list[KeyPress]:
        self._reader.flush()
        self._take()
        return self.read_keys()

    def fileno(self) -> int:
        raise NotImplementedError("ChannelInput has no file descriptor")

    def typeahead_hash(self) -> str:
        return f"kindlessh-input-{id(self)}"

    @property
    def closed(self) -> bool:
        return self._closed

    def raw_mode(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def cooked_mode(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _attached(self, callback: Callable[[], None]) -> Iterator[None]:
        self._callbacks.append(callback)
        if self._keys:
            self._wake()
        try:
            yield
        finally:
            self._callbacks.remove(callback)

    def attach(self, input_ready_callback: Callable[[], None]) -> AbstractContextManager[None]:
        return self._attached(input_ready_callback)

    @contextlib.contextmanager
    def _detached(self) -> Iterator[None]:
        saved, self._callbacks = self._callbacks, []
        try:
            yield
        finally:
            self._callbacks = saved

    def detach(self) -> AbstractContextManager[None]:
        return self._detached()

    def close(self) -> None:
        """The client went away: the application sees a closed input; keys still
        waiting (a flood, a paste) are let go at once."""
        self._closed = True
        self._keys.clear()
        self._reader = KeyReader(0)
        self._wake()
