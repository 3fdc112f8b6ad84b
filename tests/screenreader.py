"""What a person sees on a terminal: output fed through a terminal emulator (pyte).

Contract:
- :class:`ScreenReader` keeps one pyte screen of ``cols`` x ``rows``. A client feeds it
  the bytes or text its server sent (:meth:`ScreenReader._show`; bytes are decoded as
  UTF-8, a character split across two reads included) and calls
  :meth:`ScreenReader._ended` when the far end is gone.
- ``text()`` is the screen one line per row, ``joined()`` its rows joined with spaces
  (for text that wraps across rows); ``screen`` is the pyte screen itself, for cells,
  single rows and the cursor.
- ``wait_for(what)`` waits until text is on the screen or a predicate of the reader
  holds; ``wait_until(check, what)`` waits for any condition. Both fail with the screen
  in the message when the time is up or the far end has gone while it does not hold.

The two clients built on it: ``sshterm.Terminal`` (asyncssh, in this process) and
``ptyclient.PtyClient`` (a real client binary under a pseudo-terminal).
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Callable
from typing import Self

import pyte


class ScreenReader:
    """A pyte screen fed by a client, and waiting for what appears on it."""

    wait_timeout = 5.0
    """Seconds ``wait_for`` and ``wait_until`` wait unless told."""

    def __init__(self, cols: int, rows: int) -> None:
        self.screen = pyte.Screen(cols, rows)
        self._stream = pyte.Stream(self.screen)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._changed = asyncio.Event()
        self.closed = asyncio.Event()
        """Set when the far end has gone (the connection or the client process)."""

    def _show(self, data: str | bytes) -> str:
        """Put what the server sent on the screen; returns it as text."""
        text = self._decoder.decode(data) if isinstance(data, bytes) else data
        self._stream.feed(text)
        self._changed.set()
        return text

    def _ended(self) -> None:
        self.closed.set()
        self._changed.set()

    def _resize_screen(self, cols: int, rows: int) -> None:
        self.screen.resize(rows, cols)

    def text(self) -> str:
        """The whole screen, one line per row, trailing spaces removed."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def joined(self) -> str:
        """The screen's rows joined with spaces (for text that wraps across rows)."""
        return " ".join(line.strip() for line in self.screen.display if line.strip())

    async def wait_for(
        self, what: str | Callable[[Self], bool], timeout: float | None = None
    ) -> None:
        """Wait until ``what`` (text on the screen, or a predicate of this reader) holds.

        Raises:
            AssertionError: it did not hold in time (the message shows the screen).
        """
        if callable(what):
            check = what
            await self.wait_until(lambda: check(self), repr(what), timeout)
        else:
            await self.wait_until(
                lambda: what in self.text() or what in self.joined(), repr(what), timeout
            )

    async def wait_until(
        self, check: Callable[[], bool], what: str, timeout: float | None = None
    ) -> None:
        """Wait until ``check()`` holds; ``what`` describes it when it never does.

        Raises:
            AssertionError: it did not hold within ``timeout`` seconds, or the far end
                went away while it did not (the message shows the screen).
        """
        deadline = time.monotonic() + (self.wait_timeout if timeout is None else timeout)
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed.is_set():
                if check():
                    return
                raise AssertionError(f"waited for {what}; the screen shows:\n{self.text()}")
            # Strategy: wake on every change, and at least every 0.2 s for conditions
            # that do not depend on the screen (a server-side count, say).
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass
