"""A session that says in one line why the chat cannot start, then ends.

Contract: :class:`RefusedSession` accepts the PTY and the shell or command (so the
client's terminal is ready to show the line), writes ``kindlessh: <message>`` once the
session starts, and exits with status 1. It reads nothing and starts no chat. The
message must already be safe to show (built by the server from sanitised parts).
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh.channel import SSHChannel


class RefusedSession(asyncssh.SSHServerSession[str]):
    """The session given instead of a chat when the server is full."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._chan: SSHChannel[str] | None = None

    def connection_made(self, chan: SSHChannel[str]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        chan = self._chan
        assert isinstance(chan, asyncssh.SSHServerChannel)
        # \r\n: with a PTY the client's terminal is raw, and a bare \n would not return.
        chan.write(f"kindlessh: {self.message}\r\n")
        chan.exit(1)
