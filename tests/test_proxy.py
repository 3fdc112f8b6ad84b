"""The PROXY protocol at the real server: trusted from ``[server] proxy_from``, refused
from anyone else; the header's address is the one penalties and logs see."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import asyncssh
import pytest

from kindlessh import Server
from kindlessh._proxyproto import SIGNATURE_V2

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, until

CLAIMED = "203.0.113.7"


def v2_header(source: str, port: int, *, command: int = 0x21) -> bytes:
    """A PROXY v2 header for a TCP/IPv4 client ``source:port`` (LOCAL with 0x20)."""
    block = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack(
        "!HH", port, 2222
    )
    return SIGNATURE_V2 + struct.pack("!BBH", command, 0x11, len(block)) + block


def sent_first(port: int, data: bytes) -> socket.socket:
    """A TCP connection to the server that has sent ``data`` before anything else."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(data)
    return sock


async def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes the connection."""
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


@pytest.fixture
async def proxied(make_server: ServerFactory) -> Server:
    return await make_server(
        server={
            "proxy_from": "127.0.0.1",
            "proxy_timeout": 0.5,
            "penalty_authfail": 15.0,  # one failed connection makes its address wait
        }
    )


async def test_the_header_address_logs_in_chats_and_is_logged(
    proxied: Server, fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    fake_gemini.enqueue(Reply.text(["Hello ", "through the proxy."]))
    sock = sent_first(proxied.port, v2_header(CLAIMED, 4242))
    async with connected(proxied, sock=sock) as term:
        await term.ask("hi")
        await term.wait_for("Hello through the proxy.")
    assert f"connection from {CLAIMED} port 4242 via proxy 127.0.0.1" in caplog.text
    assert f"reader logged in from {CLAIMED}" in caplog.text


async def test_failed_logins_charge_the_header_address_not_the_proxy(
    proxied: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    sock = sent_first(proxied.port, v2_header(CLAIMED, 5000))
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            sock=sock, username="reader", client_keys=[stranger],
            known_hosts=None, agent_path=None,
        )
    guard = proxied.ctx.guard
    await until(lambda: guard.refused_for(CLAIMED) > 0)
    assert guard.refused_for("127.0.0.1") == 0
    # The claimed address is now dropped before the banner...
    sock = sent_first(proxied.port, v2_header(CLAIMED, 5001))
    with pytest.raises((asyncssh.Error, OSError)):
        await asyncssh.connect(sock=sock, known_hosts=None, agent_path=None)
    # ...and every other client of the same proxy still logs in.
    sock = sent_first(proxied.port, v2_header("198.51.100.9", 5002))
    async with connected(proxied, sock=sock):
        pass
    assert "connection from 198.51.100.9 port 5002 via proxy 127.0.0.1" in caplog.text


async def test_v1_header_is_understood(
    proxied: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    line = f"PROXY TCP4 {CLAIMED} 127.0.0.1 6000 2222\r\n".encode()
    async with connected(proxied, sock=sent_first(proxied.port, line)):
        pass
    assert f"connection from {CLAIMED} port 6000 via proxy 127.0.0.1" in caplog.text


async def test_local_is_a_quiet_health_check(
    proxied: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    for _ in range(5):
        answer = await read_all(sent_first(proxied.port, v2_header("0.0.0.0", 0, command=0x20)))
        assert answer == b"SSH-2.0-kindlessh\r\n"
    assert proxied.ctx.guard.refused_for("127.0.0.1") == 0
    assert proxied.ctx.guard.logging_in == 0
    assert "connection from" not in caplog.text
    assert "refused" not in caplog.text


@pytest.mark.parametrize(
    ("first", "logged"),
    [
        (SIGNATURE_V2 + b"\x11\x11\x00\x0c" + bytes(12), "PROXY header version 1"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not a PROXY protocol header"),
        (
            SIGNATURE_V2 + b"\x21\x11\xff\xff",
            "PROXY header of 65535 bytes after its first 16, above 1024",
        ),
        (b"", "no PROXY header within 0.5 s"),
    ],
)
async def test_a_trusted_address_without_a_valid_header_is_refused(
    proxied: Server, caplog: pytest.LogCaptureFixture, first: bytes, logged: str
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    answer = await read_all(sent_first(proxied.port, first))
    assert answer == b""  # not even the SSH version line: SSH never started
    assert f"127.0.0.1 (proxy): refused: {logged}" in caplog.text
    assert proxied.ctx.guard.refused_for("127.0.0.1") == 0


@pytest.mark.parametrize(
    "first",
    [v2_header(CLAIMED, 4242), f"PROXY TCP4 {CLAIMED} 127.0.0.1 1 2\r\n".encode(), b"PROX"],
)
async def test_without_proxy_from_a_header_is_refused(
    server: Server, caplog: pytest.LogCaptureFixture, first: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    sock = sent_first(server.port, first)
    if first == b"PROX":  # too short to tell: the rest decides
        await asyncio.sleep(0.05)
        sock.sendall(b"Y TCP4 ")
    answer = await read_all(sock)
    # SSH had begun (its version line goes out at once), then the header ended it.
    assert answer.startswith(b"SSH-2.0-kindlessh")
    assert (
        "127.0.0.1: refused: a PROXY header from an address not in [server] proxy_from"
        in caplog.text
    )
    assert CLAIMED not in caplog.text
    await until(lambda: server.ctx.guard.logging_in == 0)
    async with connected(server) as term:  # an ordinary client is served as ever
        assert "/help" in term.joined()
