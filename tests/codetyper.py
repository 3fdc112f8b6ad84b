"""Keyboard-interactive logins for the invite tests: a client that types invite codes.

Contract:
- :class:`CodeTyper` answers each keyboard-interactive prompt with the next of its
  ``answers`` (none left: it gives up) and keeps the instructions, prompts and banners
  the server sent.
- :func:`try_code` logs in as ``name`` offering ``keys`` and typing ``answers``; it
  returns the typer and the error that ended the login, or None once it got in.
"""

from __future__ import annotations

from typing import Any

import asyncssh

from kindlessh import Server


class CodeTyper(asyncssh.SSHClient):
    """An asyncssh client that answers keyboard-interactive prompts with ``answers``."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.instructions: list[str] = []
        self.prompts: list[str] = []
        self.banners: list[str] = []

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banners.append(msg)

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Any
    ) -> list[str] | None:
        self.instructions.append(instructions)
        self.prompts += [p for p, _ in prompts]
        if not prompts:
            return []
        return [self.answers.pop(0)] if self.answers else None


async def try_code(server: Server, name: str, keys: list[asyncssh.SSHKey], answers: list[str]
               ) -> tuple[CodeTyper, BaseException | None]:
    typer = CodeTyper(list(answers))
    try:
        conn = await asyncssh.connect(
            "127.0.0.1", server.port, username=name, client_keys=keys or None,
            known_hosts=None, agent_path=None, password=None, kbdint_auth=True,
            client_factory=lambda: typer, preferred_auth="publickey,keyboard-interactive",
        )
    except (asyncssh.Error, OSError) as exc:
        return typer, exc
    conn.close()
    await conn.wait_closed()
    return typer, None
