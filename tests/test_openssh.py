"""Smoke test with the OpenSSH ``ssh`` binary under a PTY at the Kindle's 54x20."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from kindlessh import Server

from .fake_gemini import FakeGemini, Reply
from .ptyclient import PtyClient, openssh_argv


@pytest.mark.slow
async def test_openssh_client_asks_and_reads_an_answer(
    server: Server, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse", split="awkward"))
    client = PtyClient(openssh_argv(server, client_key, tmp_path), cols=54, rows=20)
    try:
        await client.wait_for("/help")
        await client.send(b"What are the primary colours?\r")
        await client.wait_for("green and blue.)")
        assert "> What are the primary colours?" in client.joined()
        await client.send(b"/quit\r")
        assert await client.wait_exit() == 0
        assert b"kindlessh: bye." in client.raw
    finally:
        client.close()
