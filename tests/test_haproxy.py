"""A real HAProxy, configured from ``deploy/haproxy.cfg``, in front of the real server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kindlessh import Server

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_config(listen: int, backend: int) -> str:
    """deploy/haproxy.cfg on loopback: one server, checks every 100 ms, log to stdout."""
    text = DEPLOY.read_text()
    text = text.replace("log /dev/log local0", "log stdout format raw local0")
    text = text.replace("bind :22", f"bind 127.0.0.1:{listen}")
    text = re.sub(r"^    server .*\n", "", text, flags=re.M)
    text += f"    server kindlessh1 127.0.0.1:{backend}\n"
    return text.replace("inter 5s", "inter 100ms")


test_config.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
async def haproxy(tmp_path: Path, make_server: ServerFactory) -> AsyncIterator[tuple[Server, int]]:
    binary = shutil.which("haproxy")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed (.ci/postgres installs it)")
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    server = await make_server(server={"proxy_from": "127.0.0.1"})
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(test_config(port, server.port))
    proc = await asyncio.create_subprocess_exec(
        binary, "-f", str(cfg), "-db",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        yield server, port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_a_chat_through_haproxy_takes_the_proxy_path(
    haproxy: tuple[Server, int], fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kindlessh.server")
    server, port = haproxy
    # HAProxy's health checks arrive as PROXY LOCAL and are answered quietly.
    await until(lambda: caplog.text.count("PROXY LOCAL (health check)") >= 3)
    caplog.clear()  # the fixture's probe that HAProxy was listening is not the chat
    fake_gemini.enqueue(Reply.text(["Through ", "HAProxy."]))
    async with connected(port) as term:
        await term.ask("hello")
        await term.wait_for("Through HAProxy.")
        client_port = term.conn.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    # The address and port HAProxy saw, carried by its PROXY v2 header.
    assert f"connection from 127.0.0.1 port {client_port} via proxy 127.0.0.1" in caplog.text
    await asyncio.sleep(0.3)  # a few more health checks
    assert caplog.text.count("PROXY LOCAL (health check)") >= 2
    assert "refus" not in caplog.text
    assert server.ctx.guard.refused_for("127.0.0.1") == 0  # checks are no failed logins
    assert server.ctx.guard.logging_in == 0
    connections = [r for r in caplog.records if "connection from" in r.getMessage()]
    assert len(connections) == 1  # the chat only: no health check counted as one
