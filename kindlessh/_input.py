"""Keyboard input from an SSH channel for prompt-toolkit, parsed in memory.

Contract: :meth:`ChannelInput.send_text` never blocks, whatever the amount of data; keys
reach the application on the next loop iteration. A large burst of plain text with no
escape sequence (a paste from a terminal without bracketed paste) arrives as one paste,
not as thousands of single key presses.

Strategy: prompt-toolkit's pipe input writes to an OS pipe that the same event loop
reads; a paste larger than the pipe's 64 KiB buffer would block that write forever and
freeze every session on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from prompt_toolkit.input import Input
from prompt_toolkit.input.vt100_parser import Vt100Parser
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys

# A run of plain text this long in one read is a paste rather than typing.
PASTE_BURST = 256
_TEXT_RUN = re.compile("[^\x00-\x1f\x7f]{" + str(PASTE_BURST) + ",}")


class ChannelInput(Input):
    """An in-memory prompt-toolkit Input fed by ``send_text``."""

    def __init__(self) -> None:
        self._keys: list[KeyPress] = []
        self._parser = Vt100Parser(lambda key: self._keys.append(key))
        self._callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._scheduled = False

    def send_text(self, data: str) -> None:
        """Queue text from the client (key presses, escape sequences, pastes)."""
        in_paste = getattr(self._parser, "_in_bracketed_paste", False)
        if in_paste or "\x1b" in data:
            self._parser.feed(data)
        else:
            # Strategy: long runs of plain text become one paste each, so a flood of
            # text mixed with control keys costs one insert per run, not one key press
            # per character (which would hold the event loop for seconds).
            start = 0
            for run in _TEXT_RUN.finditer(data):
                if run.start() > start:
                    self._parser.feed(data[start : run.start()])
                self._parser.flush()
                self._keys.append(KeyPress(Keys.BracketedPaste, run.group()))
                start = run.end()
            if start < len(data):
                self._parser.feed(data[start:])
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
        keys, self._keys = self._keys, []
        return keys

    def flush_keys(self) -> list[KeyPress]:
        self._parser.flush()
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
        """The client went away: the application sees a closed input."""
        self._closed = True
        self._wake()
