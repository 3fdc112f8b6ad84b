"""The per-holder limits across workers, end to end: two servers (two workers) on one
PostgreSQL database, real SSH clients, the fake Gemini counting what reaches it.

``pg_url`` comes first in every test's arguments: fixtures end in reverse order, so the
database is dropped only after the servers on it have closed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncssh
import psycopg
import psycopg_pool
import pytest

from kindlessh import Server
from kindlessh._shared_limits import SharedLimits

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, shared_key
from .sshterm import Terminal


def _gated(gate: asyncio.Event, end: str = "And the end.") -> Reply:
    """An answer that stops after its first words until ``gate`` is set."""
    return Reply.text(["First words arrive. ", end]).gated(1, gate)


async def _workers(make_server: ServerFactory, url: str, **quota: Any) -> tuple[Server, Server]:
    """Two workers on one database (as ``serve --workers 2`` runs them)."""
    sections: dict[str, dict[str, Any]] = {"storage": {"url": url}}
    if quota:
        sections["quota"] = quota
    return await make_server(**sections), await make_server(**sections)


async def _ready(term: Terminal) -> None:
    await term.wait_for(lambda t: "ready" in t.text())


async def test_a_holders_second_answer_on_another_worker_is_refused(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a, b = await _workers(make_server, pg_url)
    gate = asyncio.Event()
    fake_gemini.enqueue(_gated(gate))
    async with connected(b, cols=100) as on_b, connected(a, cols=100) as on_a:
        await on_b.ask("a long one")
        await on_b.wait_for("First words arrive.")
        await on_a.send("/new\r")
        await on_a.wait_for("New conversation")
        await on_a.ask("meanwhile")
        await on_a.wait_for("An answer to another of your questions is still coming")
        await _ready(on_a)
        assert "meanwhile" in on_a.text()  # the question stays, for /retry
        assert len(fake_gemini.requests) == 1  # nothing went upstream
        gate.set()
        await on_b.wait_for("And the end.")
        await _ready(on_b)
        fake_gemini.enqueue(Reply.text(["Now it is your turn."]))
        await on_a.send("/retry\r")
        await on_a.wait_for("Now it is your turn.")
        assert len(fake_gemini.requests) == 2


async def test_the_question_burst_counts_over_every_worker(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a, b = await _workers(make_server, pg_url, prompts=2, refill_seconds=3600.0)
    async with connected(a, cols=100) as on_a, connected(b, cols=100) as on_b:
        fake_gemini.enqueue(Reply.text(["Answer on A."]), Reply.text(["Answer on B."]))
        await on_a.ask("one")
        await on_a.wait_for("Answer on A.")
        await _ready(on_a)
        await on_b.send("/new\r")
        await on_b.wait_for("New conversation")
        await on_b.ask("two")
        await on_b.wait_for("Answer on B.")
        await _ready(on_b)
        await on_a.ask("three")
        await on_a.wait_for("Slow down: you can ask again in 1 h")
        assert len(fake_gemini.requests) == 2


async def test_one_upstream_slot_is_shared_by_both_workers(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a, b = await _workers(make_server, pg_url, max_upstream=1)
    gate = asyncio.Event()
    fake_gemini.enqueue(_gated(gate), Reply.text(["Bob's answer."]))
    bob_key = shared_key(a)  # one authorized_keys file for both workers
    async with (
        connected(a, username="alice", cols=100) as alice,
        connected(b, bob_key, username="bob", cols=100) as bob,
    ):
        await alice.ask("first")
        await alice.wait_for("First words arrive.")
        await bob.ask("second")
        await bob.wait_for("Waiting for a free slot (next in line)")
        assert len(fake_gemini.requests) == 1
        gate.set()
        await alice.wait_for("And the end.")
        await bob.wait_for("Bob's answer.")
        await _ready(bob)
        assert len(fake_gemini.requests) == 2


async def test_sessions_per_holder_count_over_every_worker(
    pg_url: str, make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    sections = {"storage": {"url": pg_url}, "server": {"max_sessions_per_user": 2}}
    a, b = await make_server(**sections), await make_server(**sections)
    async with connected(a), connected(b):
        third = await Terminal.connect(a.port, client_key)
        await third.wait_for("server full for reader")
        await third.wait_closed()
        assert "2 chats are open under this name or key" in third.raw_text()
    # Both closed: their seats were given back.
    async with connected(b), connected(a):
        pass


async def test_rows_of_a_dead_worker_block_nobody(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    sections = {
        "storage": {"url": pg_url},
        "server": {"max_sessions_per_user": 2},
        "quota": {"max_upstream": 1},
    }
    server = await make_server(**sections)
    async with connected(server, cols=100) as term:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            cur = await conn.execute("SELECT holder FROM limit_seats")
            (holder,) = await cur.fetchone()  # type: ignore[misc]
            # A worker that died holding the holder's answer, the one upstream slot and
            # a session: its owner's lock is gone, so its rows count for nothing.
            old = "clock_timestamp() - interval '1 minute'"
            await conn.execute(
                f"INSERT INTO limit_answers VALUES (%s, 'ghost', 'x', {old})", (holder,)
            )
            await conn.execute(f"INSERT INTO limit_slots VALUES (DEFAULT, 'ghost', TRUE, {old})")
            await conn.execute(
                f"INSERT INTO limit_seats VALUES (DEFAULT, %s, 'session', 'ghost', {old})",
                (holder,),
            )
        fake_gemini.enqueue(Reply.text(["Not blocked."]))
        await term.ask("anyone there?")
        await term.wait_for("Not blocked.")
        async with connected(server):  # the second of two sessions
            pass
    assert len(fake_gemini.requests) == 1


async def test_connections_per_holder_count_over_every_worker(
    pg_url: str, make_server: ServerFactory, client_key: asyncssh.SSHKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    sections = {"storage": {"url": pg_url}, "server": {"max_connections_per_user": 1}}
    a, b = await make_server(**sections), await make_server(**sections)
    options: dict[str, Any] = {
        "username": "reader", "client_keys": [client_key], "known_hosts": None,
    }
    first = await asyncssh.connect("127.0.0.1", a.port, **options)
    try:
        second = await asyncssh.connect("127.0.0.1", b.port, **options)
        await asyncio.wait_for(second.wait_closed(), 5)  # closed by b: a has the one
        assert any(
            "server full for reader: 1 connections are logged in" in r.getMessage()
            for r in caplog.records
        )
    finally:
        first.close()
        await first.wait_closed()
    # a's connection gave its seat back: b lets the holder in now.
    for _ in range(100):
        third = await asyncssh.connect("127.0.0.1", b.port, **options)
        try:
            await asyncio.wait_for(third.wait_closed(), 0.3)
        except TimeoutError:
            break  # still open: let in
        await asyncio.sleep(0.05)  # a's release had not landed yet
    else:
        raise AssertionError("the holder was never let in again")
    third.close()
    await third.wait_closed()


async def test_the_days_tokens_count_over_every_worker(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a, b = await _workers(make_server, pg_url, daily_tokens=100)
    async with connected(a, cols=100) as on_a, connected(b, cols=100) as on_b:
        # Both have loaded today's usage (none); then A's answer crosses the budget.
        fake_gemini.enqueue(
            Reply.text(["A long answer."], prompt_tokens=60, candidate_tokens=[45])
        )
        await on_a.ask("spend it")
        await on_a.wait_for("A long answer.")
        await _ready(on_a)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            for _ in range(100):  # the recorder writes the ledger as the answer ends
                cur = await conn.execute("SELECT count(*) FROM token_usage")
                if (await cur.fetchone()) == (1,):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the ledger never got the answer")
        await on_b.send("/new\r")
        await on_b.wait_for("New conversation")
        await on_b.ask("one more")
        await on_b.wait_for("You have used today's 100 tokens.")
        assert len(fake_gemini.requests) == 1


async def test_a_stopped_answer_lets_the_holder_ask_on_another_worker(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a, b = await _workers(make_server, pg_url, max_upstream=1)
    fake_gemini.enqueue(Reply.hang(["Words before the stop. "]), Reply.text(["Asked on A."]))
    async with connected(b, cols=100) as on_b, connected(a, cols=100) as on_a:
        await on_b.ask("a long one")
        await on_b.wait_for("Words before the stop.")
        await on_b.send("\x03")  # Ctrl-C: the answer, its slot and its claim end
        await _ready(on_b)
        assert "stopped" in on_b.text()
        await on_a.send("/new\r")
        await on_a.wait_for("New conversation")
        await on_a.ask("now")  # B gave its claim back before its screen was ready
        await on_a.wait_for("Asked on A.")
        assert len(fake_gemini.requests) == 2


async def test_a_session_opens_when_its_seat_cannot_be_counted(
    pg_url: str, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(storage={"url": pg_url})
    # The shared limits' database is unreachable (nothing listens there): every claim
    # fails after the pool's wait, as it would with PostgreSQL down.
    away = psycopg_pool.AsyncConnectionPool(
        "postgresql://kindlessh@127.0.0.1:1/none", min_size=1, open=False, timeout=0.5,
        kwargs={"connect_timeout": 1},
    )  # fmt: skip
    await away.open(wait=False)
    guard = server.ctx.guard
    working, guard.shared = guard.shared, SharedLimits(away, "away", _nobody)
    try:
        async with connected(server) as term:  # the process's own count stands
            await _ready(term)
        assert "could not count a session over every worker" in caplog.text
    finally:
        guard.shared = working
        await away.close()


async def _nobody() -> set[str]:
    return set()
