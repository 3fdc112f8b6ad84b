"""The one writer to an SSH channel: prompt-toolkit's output, one write per frame.

Contract:
- :class:`ChannelOutput` is the *only* writer to the channel. Everything prompt-toolkit
  flushes within one event-loop iteration goes out as one ``chan.write`` (one frame, one
  SSH packet), byte for byte (no ``\\n`` rewriting). When the client stops reading and
  the channel's write buffer passes the cap, the session is dropped instead of growing
  server memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncssh

log = logging.getLogger("kindlessh.session")


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
