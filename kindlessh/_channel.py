"""The one writer to an SSH channel: prompt-toolkit's output, one write per frame.

Contract:
- :class:`ChannelOutput` is the *only* writer to the channel. Everything prompt-toolkit
  flushes within one event-loop iteration goes out as one ``chan.write`` (one frame, one
  SSH packet), byte for byte (no ``\\n`` rewriting). When the client stops reading and
  the channel's write buffer passes the cap, the session is dropped instead of growing
  server memory.
- The cursor: :meth:`ChannelOutput.steady_cursor` asks the terminal for a steady block
  cursor (e-ink pays a panel update for every blink) or gives the terminal its own
  cursor back; :meth:`ChannelOutput.finish` is the last frame of a chat, which always
  gives the cursor back, whatever way the chat ends (quit, idle close, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncssh

log = logging.getLogger("kindlessh.session")

# DECSCUSR steady block, and blink mode off (kterm's VTE ignores both; harmless there).
STEADY_CURSOR = "\x1b[2 q\x1b[?12l"
# DECSCUSR 0: the terminal's own cursor shape and blink.
DEFAULT_CURSOR = "\x1b[0 q"


class ChannelOutput:
    """A TextIO-like sink for prompt-toolkit that coalesces each frame into one write.

    Attributes:
        writes: channel writes made so far.
        bytes_sent: UTF-8 bytes written so far.
    """

    encoding = "utf-8"

    def __init__(
        self, chan: asyncssh.SSHServerChannel[str], max_buffer: int, on_overflow: Callable[[], None]
    ) -> None:
        self._chan = chan
        self._max_buffer = max_buffer
        self._on_overflow = on_overflow
        self._parts: list[str] = []
        self._scheduled = False
        self.closed = False
        self.writes = 0
        self.bytes_sent = 0
        self.steady = False  # a steady cursor was asked for and not yet given back

    def steady_cursor(self, steady: bool) -> None:
        """Ask for a steady cursor, or give the terminal's own cursor back."""
        if steady == self.steady:
            return
        self.steady = steady
        self.write(STEADY_CURSOR if steady else DEFAULT_CURSOR)
        self.flush()

    def finish(self) -> str:
        """Close this writer and return what is still to be sent, ending with the
        terminal's own cursor if it was changed: the caller writes it before its
        goodbye, so nothing lands after the channel has closed."""
        data = "".join(self._parts) if not self.closed else ""
        self._parts.clear()
        if self.steady:
            self.steady = False
            data += DEFAULT_CURSOR
        self.closed = True
        return data

    def write(self, data: str) -> int:
        """Queue ``data`` for the current frame."""
        if not self.closed:
            self._parts.append(data)
        return len(data)

    def flush(self) -> None:
        """End of a prompt-toolkit flush: send the frame once this loop iteration ends.

        Strategy: a resize is an erase plus a redraw, two flushes in one call; deferring
        with ``call_soon`` makes them one packet, so the terminal never shows the blank.
        """
        if self._parts and not self._scheduled and not self.closed:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        if self.closed or not self._parts:
            self._parts.clear()
            return
        data = "".join(self._parts)
        self._parts.clear()
        size = len(data.encode("utf-8", "replace"))  # the channel buffers bytes
        try:
            if self._chan.get_write_buffer_size() + size > self._max_buffer:
                log.warning("client stopped reading; dropping the session")
                self.closed = True
                self._on_overflow()
                return
            self._chan.write(data)
        except (BrokenPipeError, asyncssh.Error, OSError):
            self.closed = True
            return
        self.writes += 1
        self.bytes_sent += size

    def isatty(self) -> bool:
        """The far end is a terminal (the PTY the client asked for)."""
        return True
