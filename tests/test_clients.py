"""Real SSH clients against the real server: OpenSSH ``ssh``, Dropbear ``dbclient``, PuTTY
``plink``, each under a PTY, each with an Ed25519 key in its own key format.

Each one logs in, asks a question and must show the whole streamed answer: at the Kindle's
54x20 with the default profile (``ssh -t host``) and at 60x30 with ``eink`` on the ssh
line. Host keys: Ed25519 plus an RSA key offered as rsa-sha2-256/512 only, never SHA-1
``ssh-rsa``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kindlessh import Server
from kindlessh._cli import describe
from kindlessh._errors import ConfigError
from kindlessh._glyphs import fold
from kindlessh._keys import RSA_KEY_BITS, load_or_create_rsa_host_key, rsa_host_key_path

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import only_session
from .ptyclient import CLIENTS, PtyClient, dropbear_argv

# Streamed in pieces cut inside words, and by the fake server inside "data: ", CRLFs and
# the UTF-8 of the dash, so the client sees the answer arrive bit by bit.
ANSWER = (
    "Kindle panels show sixteen grey levels and refresh slowly.",
    "So the e-ink screen — unlike a laptop — paints the reply in a few large steps.",
)
CHUNKS = ("Kindle panels sh", "ow sixteen grey le", "vels and refresh slowly.\n\n",
          "So the e-ink screen — unl", "ike a laptop — paints the re", "ply in a few large steps.")
QUESTION = "How does a Kindle show text?"
FAST = {"ui": {"eink_interval_ms": 250, "smooth_interval_ms": 20}}


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("command", "cols", "rows"), [("", 54, 20), ("eink", 60, 30)], ids=["54x20", "eink-60x30"]
)
async def test_client_asks_and_sees_the_whole_streamed_answer(
    client: str, command: str, cols: int, rows: int, make_server: ServerFactory,
    client_key: asyncssh.SSHKey, fake_gemini: FakeGemini, tmp_path: Path,
) -> None:
    server = await make_server(**FAST)
    argv = CLIENTS[client](server, client_key, tmp_path) + ([command] if command else [])
    fake_gemini.enqueue(Reply.text(CHUNKS, split="awkward"))
    term = PtyClient(argv, cols=cols, rows=rows)
    try:
        await term.wait_for("/help")
        await term.send(QUESTION.encode() + b"\r")
        await term.wait_for("large steps.")
        screen = _words(term.joined())
        assert f"> {QUESTION}" in screen
        for paragraph in ANSWER:
            # E-ink draws in the kindle glyph mode: the dashes are ASCII there.
            shown = fold(paragraph, "kindle") if command == "eink" else paragraph
            assert _words(shown) in screen, term.text()
        assert len(fake_gemini.responses) == 1
        await term.send(b"/quit\r")
        assert await term.wait_exit() == 0
        assert b"kindlessh: bye." in term.raw
    finally:
        term.close()


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
async def test_keyboard_toggle_mid_answer_repaints_once_each_way(
    client: str, make_server: ServerFactory, client_key: asyncssh.SSHKey,
    fake_gemini: FakeGemini, tmp_path: Path,
) -> None:
    """kterm's keyboard toggle while an e-ink answer streams: 54x20 -> 54x30 -> 54x20.
    Each resize is one write; the whole answer ends up on the screen exactly once."""
    server = await make_server(**FAST)
    gate = asyncio.Event()
    lines = [f"Line {i:02d} of the answer.\n" for i in range(12)]
    fake_gemini.enqueue(Reply.text(lines).gated(6, gate))
    term = PtyClient(CLIENTS[client](server, client_key, tmp_path) + ["eink"], cols=54, rows=20)
    try:
        await term.wait_for("/help")
        await term.send(b"lines\r")
        await term.wait_for("Line 05")
        session = only_session(server)
        for cols, rows in ((54, 30), (54, 20)):
            before = session.output.writes
            term.resize(cols, rows)
            await term.wait_until(
                lambda r=rows: "answering" in term.screen.display[r - 2], f"status on {rows - 1}"
            )
            await asyncio.sleep(0.3)  # any second repaint would have come by now
            assert session.output.writes - before == 1, (cols, rows)
        gate.set()
        await term.wait_for("Line 11")
        await term.wait_until(lambda: "ready" in term.screen.display[18], "ready")
        text = term.text()
        for i in range(12):
            assert text.count(f"Line {i:02d} of the answer.") == 1, text
        assert all(len(row.rstrip()) <= 54 for row in term.screen.display)
    finally:
        term.close()


@pytest.mark.slow
@pytest.mark.parametrize(("cols", "rows"), [(66, 20), (54, 30)], ids=["touch-66x20", "54x30"])
async def test_kindle_screen_sizes_read_well(
    cols: int, rows: int, make_server: ServerFactory, client_key: asyncssh.SSHKey,
    fake_gemini: FakeGemini, tmp_path: Path,
) -> None:
    """The Kindle Touch (66x20) and a Paperwhite with its keyboard down (54x30)."""
    server = await make_server(**FAST)
    fake_gemini.enqueue(Reply.text(CHUNKS, split="awkward"))
    term = PtyClient(dropbear_argv(server, client_key, tmp_path) + ["eink"], cols=cols, rows=rows)
    try:
        await term.wait_for("/help")
        await term.send(QUESTION.encode() + b"\r")
        await term.wait_for("large steps.")
        await term.wait_until(lambda: "ready" in term.screen.display[rows - 2], "ready")
        screen = _words(term.joined())
        for paragraph in ANSWER:
            assert _words(fold(paragraph, "kindle")) in screen  # e-ink's glyph mode
        assert all(len(row.rstrip()) <= cols for row in term.screen.display)
        assert term.screen.display[rows - 1].startswith(">")  # the input line at the bottom
    finally:
        term.close()


@pytest.mark.slow
async def test_dropbear_resize_repaints_at_the_new_size(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    """kterm's keyboard toggle (54x20 -> 54x30) reaches the server as dbclient's
    window-change, and the status line moves down to the new bottom."""
    server = await make_server(**FAST)
    term = PtyClient(dropbear_argv(server, client_key, tmp_path) + ["eink"], cols=54, rows=20)
    try:
        await term.wait_until(lambda: "ready" in term.screen.display[18], "the status line")
        term.resize(54, 30)
        await term.wait_until(
            lambda: "ready" in term.screen.display[28], "the status line on row 29 of 30"
        )
        assert "Hello reader" in term.screen.display[0]
    finally:
        term.close()


# ----- host keys ----------------------------------------------------------------------------


async def _host_key_seen(server: Server, algorithm: str) -> asyncssh.SSHKey:
    """The host key a client allowing only ``algorithm`` gets (key exchange, no login)."""
    key = await asyncssh.get_server_host_key(
        "127.0.0.1", server.port, server_host_key_algs=[algorithm]
    )
    assert key is not None
    return key


@pytest.mark.parametrize("algorithm", ["rsa-sha2-256", "rsa-sha2-512", "ssh-ed25519"])
async def test_host_key_algorithms_offered(server: Server, algorithm: str) -> None:
    key = await _host_key_seen(server, algorithm)
    expected = server.host_key if algorithm == "ssh-ed25519" else server.rsa_host_key
    assert expected is not None
    assert key.get_fingerprint() == expected.fingerprint


@pytest.mark.parametrize("algorithm", ["ssh-rsa", "ssh-rsa-sha256@ssh.com"])
async def test_rsa_host_key_never_signs_with_sha1_or_ssh_com(
    server: Server, algorithm: str
) -> None:
    with pytest.raises(asyncssh.KeyExchangeFailed):
        await _host_key_seen(server, algorithm)


def test_rsa_host_key_sits_next_to_the_ed25519_one(tmp_path: Path) -> None:
    assert rsa_host_key_path(tmp_path / "ssh_host_ed25519_key") == tmp_path / "ssh_host_rsa_key"
    assert rsa_host_key_path(tmp_path / "host_key") == tmp_path / "host_key_rsa"
    host_key = tmp_path / "keys" / "ssh_host_ed25519_key"
    first = load_or_create_rsa_host_key(host_key)
    assert first.created and first.label == "RSA"
    assert first.path.stat().st_mode & 0o777 == 0o600
    pyca = first.key.pyca_key
    assert isinstance(pyca, rsa.RSAPrivateKey) and pyca.key_size == RSA_KEY_BITS
    again = load_or_create_rsa_host_key(host_key)
    assert not again.created and again.fingerprint == first.fingerprint
    first.path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_rsa_host_key(host_key)
    first.path.unlink()
    first.path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    first.path.chmod(0o600)
    with pytest.raises(ConfigError, match="not an RSA key"):
        load_or_create_rsa_host_key(host_key)


async def test_both_fingerprints_are_printed_at_start(server: Server) -> None:
    text = "\n".join(describe(server))
    assert server.rsa_host_key is not None
    assert f"ED25519 {server.host_key.fingerprint}" in text
    assert f"RSA {server.rsa_host_key.fingerprint}" in text
