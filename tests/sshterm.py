"""A real SSH client with a PTY whose output is read through a terminal emulator (pyte).

Tests see what a person would see: ``term.text()`` is the screen, ``term.raw`` the exact
bytes the server wrote, ``term.packets`` how many separate data messages arrived.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Callable
from typing import Any

import asyncssh
import pyte


class _Client(asyncssh.SSHClientSession[str]):
    def __init__(self, term: Terminal) -> None:
        self.term = term

    def data_received(self, data: str | bytes, datatype: Any) -> None:
        if isinstance(data, bytes):
            data = self.term._decoder.decode(data)
        self.term._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.term.closed.set()


class Terminal:
    """One SSH connection showing the chat on a pyte screen of ``cols`` x ``rows``."""

    def __init__(self, cols: int, rows: int) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.Stream(self.screen)
        self.raw: list[str] = []
        self.packets = 0
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.conn: asyncssh.SSHClientConnection | None = None
        self.chan: asyncssh.SSHClientChannel[str] | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        key: asyncssh.SSHKey | None,
        *,
        username: str = "reader",
        cols: int = 54,
        rows: int = 20,
        command: str | None = None,
        term_type: str = "xterm",
        pty: bool = True,
        encoding: str | None = "utf-8",
        password: str | None = None,
    ) -> Terminal:
        term = cls(cols, rows)
        term.conn = await asyncssh.connect(
            "127.0.0.1",
            port,
            username=username,
            client_keys=[key] if key is not None else None,
            password=password,
            known_hosts=None,
            agent_path=None,
        )
        kwargs: dict[str, Any] = {"encoding": encoding}
        if pty:
            kwargs.update(term_type=term_type, term_size=(cols, rows))
        term.chan, _ = await term.conn.create_session(
            lambda: _Client(term), command=command, **kwargs
        )
        return term

    def _feed(self, data: str) -> None:
        self.raw.append(data)
        self.packets += 1
        self.stream.feed(data)
        self._changed.set()

    def text(self) -> str:
        """The whole screen, one line per row, trailing spaces removed."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def joined(self) -> str:
        """The screen's rows joined with spaces (for text that wraps across rows)."""
        return " ".join(line.strip() for line in self.screen.display if line.strip())

    def raw_text(self) -> str:
        """Everything the server wrote, as one string."""
        return "".join(self.raw)

    async def wait_for(
        self, what: str | Callable[[Terminal], bool], timeout: float = 5.0
    ) -> None:
        """Wait until ``what`` (text on screen, or a predicate) holds.

        Raises:
            AssertionError: it did not hold within ``timeout`` seconds (shows the screen).
        """

        def ok() -> bool:
            if callable(what):
                return what(self)
            return what in self.text() or what in self.joined()

        deadline = time.monotonic() + timeout
        while not ok():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed.is_set():
                if ok():
                    return
                raise AssertionError(f"waited for {what!r}; the screen shows:\n{self.text()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    async def send(self, text: str) -> None:
        """Type ``text`` (escape sequences allowed: ``\\r`` is Enter, ``\\x03`` Ctrl-C)."""
        assert self.chan is not None
        binary = self.chan.get_encoding()[0] is None
        self.chan.write(text.encode() if binary else text)  # type: ignore[arg-type]
        await asyncio.sleep(0)

    async def ask(self, question: str) -> None:
        """Type a question and press Enter."""
        await self.send(question)
        await self.send("\r")

    def resize(self, cols: int, rows: int) -> None:
        """Resize the terminal, as a window change."""
        assert self.chan is not None
        self.screen.resize(rows, cols)
        self.chan.change_terminal_size(cols, rows)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the server closes the session."""
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        """Disconnect."""
        if self.conn is not None:
            self.conn.close()
            await self.conn.wait_closed()
