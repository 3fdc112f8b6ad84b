"""A real HAProxy, configured from ``deploy/haproxy.cfg``, in front of the real server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kindlessh import Server

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .haproxy import running_haproxy
from .helpers import connected, open_chat, until


@pytest.fixture
async def haproxy(tmp_path: Path, make_server: ServerFactory) -> AsyncIterator[tuple[Server, int]]:
    server = await make_server(server={"proxy_from": "127.0.0.1"})
    async with running_haproxy(tmp_path, [server.port]) as port:
        yield server, port


async def test_a_chat_through_haproxy_takes_the_proxy_path(
    haproxy: tuple[Server, int], fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kindlessh.server")
    server, port = haproxy
    # HAProxy's health checks arrive as PROXY LOCAL and are answered quietly.
    await until(lambda: caplog.text.count("PROXY LOCAL (health check)") >= 3)
    caplog.clear()
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


def _screens(server: Server) -> int:
    """How many chat screens are open on ``server`` now."""
    return sum(chat.viewers for chat in server.ctx.session.hub.chats)


async def test_a_reconnection_through_haproxy_to_the_other_server_sees_the_rest_live(
    pg_url: str, tmp_path: Path, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    # Two servers on one PostgreSQL database behind one HAProxy, as two machines would
    # be: progress saved every 50 ms, so the follower sees the answer grow.
    storage = {"url": pg_url, "commit_interval_ms": 50, "follow_check_ms": 200}
    servers = [
        await make_server(storage=storage, server={"proxy_from": "127.0.0.1"})
        for _ in range(2)
    ]
    pieces = ["First words arrive. ", "Then the middle. ", "More of it. ", "And the end."]
    gate = asyncio.Event()
    fake_gemini.enqueue(Reply.text(pieces, chunk_delay=0.15).gated(1, gate))
    async with running_haproxy(tmp_path, [s.port for s in servers], "roundrobin") as port:
        first = await open_chat(port)
        await first.ask("tell me")
        await first.wait_for("First words arrive.")
        (asked,) = [s for s in servers if _screens(s)]
        await first.close()  # the Kindle's Wi-Fi sleeps mid-answer
        # Round robin sends the next connection to the other server.
        async with connected(port) as second:
            (landed,) = [s for s in servers if _screens(s)]
            assert landed is not asked
            await second.wait_for("First words arrive.")
            (chat,) = landed.ctx.session.hub.chats
            assert chat.conversation.following  # the other server's answer, followed
            gate.set()  # the rest comes now, while this screen watches
            await second.wait_for("And the end.")
            await second.wait_for(lambda t: "ready" in t.text())
            assert "".join(pieces) in second.joined()
    store = landed.ctx.session.hub.store
    latest = await store.latest_conversation("reader")
    assert latest is not None
    rows = await store.load_turns("reader", latest)
    assert [(r.answer, r.state, r.incomplete) for r in rows] == [("".join(pieces), "done", False)]
    assert rows[0].owner == asked.ctx.session.hub.store.owner  # the first server answered
    assert len(fake_gemini.requests) == 1  # asked upstream once, whole
    assert fake_gemini.responses[0].completed
