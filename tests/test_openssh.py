"""Smoke test with the OpenSSH ``ssh`` binary under a PTY at the Kindle's 54x20."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from kindlessh import Server

from .fake_gemini import FakeGemini, Reply
from .ptyclient import PtyClient, need_binary


def _key_file(tmp_path: Path, key: asyncssh.SSHKey) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return path


async def test_openssh_client_asks_and_reads_an_answer(
    server: Server, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    ssh = need_binary("ssh", "openssh-client")
    fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse", split="awkward"))
    client = PtyClient(
        [
            ssh, "-t", "-p", str(server.port),
            "-i", str(_key_file(tmp_path, client_key)),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "reader@127.0.0.1",
        ],
        cols=54, rows=20,
    )
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
