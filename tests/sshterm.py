"""A real SSH client with a PTY whose output is read through a terminal emulator (pyte).

Tests see what a person would see: ``term.text()`` is the screen, ``term.raw`` the exact
text the server wrote, ``term.packets`` how many separate data messages arrived. Waiting
and reading the screen come from :class:`~tests.screenreader.ScreenReader`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncssh

from .screenreader import ScreenReader


class _Client(asyncssh.SSHClientSession[str]):
    def __init__(self, term: Terminal) -> None:
        self.term = term

    def data_received(self, data: str | bytes, datatype: Any) -> None:
        self.term._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.term._ended()


class Terminal(ScreenReader):
    """One SSH connection showing the chat on a pyte screen of ``cols`` x ``rows``."""

    def __init__(self, cols: int, rows: int) -> None:
        super().__init__(cols, rows)
        self.raw: list[str] = []
        self.packets = 0
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
        env: dict[str, str] | None = None,
        sock: socket.socket | None = None,
    ) -> Terminal:
        """Log in and open the session; the chat may not be on the screen yet
        (``tests.helpers.connected`` waits for it)."""
        term = cls(cols, rows)
        term.conn = await asyncssh.connect(
            "127.0.0.1",
            port,
            username=username,
            client_keys=[key] if key is not None else None,
            password=password,
            known_hosts=None,
            agent_path=None,
            sock=sock,  # already connected (after a PROXY header, say): port unused
        )
        kwargs: dict[str, Any] = {"encoding": encoding}
        if pty:
            kwargs.update(term_type=term_type, term_size=(cols, rows))
        if env is not None:
            kwargs.update(env=env)
        term.chan, _ = await term.conn.create_session(
            lambda: _Client(term), command=command, **kwargs
        )
        return term

    def _feed(self, data: str | bytes) -> None:
        self.raw.append(self._show(data))
        self.packets += 1

    def raw_text(self) -> str:
        """Everything the server wrote, as one string."""
        return "".join(self.raw)

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
        self._resize_screen(cols, rows)
        self.chan.change_terminal_size(cols, rows)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until the server closes the session."""
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        """Disconnect."""
        if self.conn is not None:
            self.conn.close()
            await self.conn.wait_closed()
