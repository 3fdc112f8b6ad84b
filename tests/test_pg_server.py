"""The real server on a PostgreSQL store: a chat asked over SSH is stored there (and no
SQLite file is made), and a restarted server reopens it from there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from kindlessh import Server

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected


async def _settled(server: Server) -> None:
    """Wait until no chat is in memory, i.e. everything is stored."""
    for _ in range(250):
        if not server.ctx.session.hub.chats:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("chats still in memory")


async def test_a_chat_is_kept_in_postgresql_across_a_restart(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    # pg_url first: its database is dropped after the servers have closed.
    server = await make_server(storage={"url": pg_url})
    fake_gemini.enqueue(Reply.text(["Kept in ", "PostgreSQL."]))
    async with connected(server) as term:
        await term.ask("where is it kept?")
        await term.wait_for("Kept in PostgreSQL.")
    await _settled(server)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT t.question, t.answer, t.state, t.owner IS NOT NULL FROM turns t"
        ).fetchall()
    assert rows == [("where is it kept?", "Kept in PostgreSQL.", "done", True)]
    assert not (tmp_path / "data" / "kindlessh.sqlite3").exists()
    await server.close()

    restarted = await make_server(storage={"url": pg_url})
    async with connected(restarted) as term:
        await term.wait_for("Kept in PostgreSQL.")
        assert "> where is it kept?" in term.joined()
    assert len(fake_gemini.requests) == 1
