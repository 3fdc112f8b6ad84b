"""The limits every worker shares, in a real PostgreSQL (unit level: two SharedLimits on
one database stand for two workers; the SSH level is in test_workers_limits.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import psycopg
import psycopg_pool
import pytest

from kindlessh._errors import ServerBusy
from kindlessh._migrations import migrate_postgres
from kindlessh._shared_limits import SharedLimits


class Workers:
    """Owners on one database: ``live`` is the set a test says is alive."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.live: set[str] = set()
        self.pools: list[psycopg_pool.AsyncConnectionPool] = []
        self.limits: list[SharedLimits] = []

    async def live_owners(self) -> set[str]:
        return set(self.live)

    async def worker(self, owner: str) -> SharedLimits:
        pool = psycopg_pool.AsyncConnectionPool(
            self.url, min_size=1, max_size=4, open=False,
            kwargs={"autocommit": True, "application_name": owner},
        )
        await pool.open()
        self.pools.append(pool)
        self.live.add(owner)
        limits = SharedLimits(pool, owner, self.live_owners, poll=0.05, live_for=0)
        self.limits.append(limits)
        return limits

    async def close(self) -> None:
        for limits in self.limits:
            await limits.close()
        for pool in self.pools:
            await pool.close()


@pytest.fixture
async def workers(pg_url: str) -> AsyncIterator[Workers]:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await migrate_postgres(conn)
    ws = Workers(pg_url)
    yield ws
    await ws.close()


async def test_one_answer_per_holder_across_workers(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    claim = await a.claim_answer("ann")
    assert claim is not None
    assert await b.claim_answer("ann") is None
    assert await b.claim_answer("bob") is not None  # another holder is not held up
    a.release_answer("ann", claim)
    await asyncio.sleep(0)
    await a.close()  # waits for the release
    assert await b.claim_answer("ann") is not None


async def test_a_dead_owners_answer_is_taken_over(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    assert await a.claim_answer("ann") is not None
    workers.live.discard("a")  # a was killed: its lock went with it
    assert await b.claim_answer("ann") is not None
    assert await a.claim_answer("ann") is None  # b's claim is live


async def test_the_bucket_is_shared(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    assert (await a.take_prompt("ann", 2, 3600))[0] == 0
    wait, left = await b.take_prompt("ann", 2, 3600)
    assert wait == 0 and left == pytest.approx(0, abs=0.01)
    wait, _ = await a.take_prompt("ann", 2, 3600)
    assert 3500 < wait <= 3600  # about one refill away
    assert (await b.take_prompt("bob", 2, 3600))[0] == 0


async def test_the_bucket_refills(workers: Workers) -> None:
    a = await workers.worker("a")
    assert (await a.take_prompt("ann", 1, 0.2))[0] == 0
    assert (await a.take_prompt("ann", 1, 0.2))[0] > 0
    await asyncio.sleep(0.25)
    assert (await a.take_prompt("ann", 1, 0.2))[0] == 0


async def test_upstream_slots_are_shared_first_come_first_served(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    order: list[str] = []
    told: dict[str, list[int]] = {"b": [], "c": []}
    first_in = asyncio.Event()
    let_go = asyncio.Event()

    async def first() -> None:
        async with a.hold(1, 0, lambda n: None):
            order.append("a")
            first_in.set()
            await let_go.wait()

    async def queued(limits: SharedLimits, name: str) -> None:
        async with limits.hold(1, 0, told[name].append):
            order.append(name)

    holding = asyncio.create_task(first())
    await first_in.wait()
    second = asyncio.create_task(queued(b, "b"))
    while not told["b"]:
        await asyncio.sleep(0.01)
    third = asyncio.create_task(queued(a, "c"))
    while not told["c"]:
        await asyncio.sleep(0.01)
    assert order == ["a"]
    assert told == {"b": [0], "c": [1]}  # next in line, one ahead
    let_go.set()
    await asyncio.gather(holding, second, third)
    assert order == ["a", "b", "c"]


async def test_a_slot_waiter_gives_up_with_server_busy(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    async with a.hold(1, 0, lambda n: None):
        with pytest.raises(ServerBusy, match="none ended within 0.2 s"):
            async with b.hold(1, 0.2, lambda n: None):
                pass
    async with b.hold(1, 0.2, lambda n: None):  # the given-up waiter left the queue
        pass


async def test_a_dead_owners_slot_frees(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    gone = a.hold(1, 0, lambda n: None)
    await gone.__aenter__()  # held, then a is killed without giving it back
    told: list[int] = []

    async def ask() -> None:
        async with b.hold(1, 0, told.append):
            pass

    waiting = asyncio.create_task(ask())
    while not told:
        await asyncio.sleep(0.01)
    workers.live.discard("a")
    await asyncio.wait_for(waiting, 5)
    assert told == [0]


async def test_seats_count_across_workers(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    one = await a.claim_seat("ann", "session", 2)
    two = await b.claim_seat("ann", "session", 2)
    assert one is not None and two is not None
    assert await a.claim_seat("ann", "session", 2) is None
    assert await b.claim_seat("bob", "session", 2) is not None
    two.release()
    await b.close()
    assert await a.claim_seat("ann", "session", 2) is not None


async def test_a_dead_owners_seats_do_not_count(workers: Workers) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    assert await a.claim_seat("ann", "session", 1) is not None
    assert await b.claim_seat("ann", "session", 1) is None
    workers.live.discard("a")
    assert await b.claim_seat("ann", "session", 1) is not None


# A worker that claims everything a holder can hold, says so, and waits to be killed.
_DOOMED = """
import asyncio, sys
from kindlessh._config import StorageConfig
from kindlessh._shared_limits import SharedLimits
from kindlessh._store import open_store

async def main():
    store = await open_store(StorageConfig(url=sys.argv[1], owner_grace_ms=200), owner="doomed")
    limits = SharedLimits(store.pool, store.owner, store.live_owners, live_for=0)
    assert await limits.claim_answer("ann")
    await limits.hold(1, 0, lambda ahead: None).__aenter__()
    assert await limits.claim_seat("ann", "session", 1)
    print("holding", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_worker_killed_with_sigkill_blocks_nobody(pg_url: str) -> None:
    from kindlessh._config import StorageConfig
    from kindlessh._pg_store import PostgresStore
    from kindlessh._store import open_store

    # A short grace: the killed worker counts as dead within the test's bounds.
    store = await open_store(StorageConfig(url=pg_url, owner_grace_ms=200), owner="survivor")
    assert isinstance(store, PostgresStore)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DOOMED, pg_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"holding\n"
        limits = SharedLimits(store.pool, store.owner, store.live_owners, poll=0.05, live_for=0)
        # While it lives, its claims hold.
        assert await limits.claim_answer("ann") is None
        assert await limits.claim_seat("ann", "session", 1) is None
        proc.kill()
        await proc.wait()
        for _ in range(100):  # the database sees the socket close at once, nearly
            if "doomed" not in await store.live_owners():
                break
            await asyncio.sleep(0.05)
        assert await limits.claim_answer("ann") is not None
        assert await limits.claim_seat("ann", "session", 1) is not None
        async with asyncio.timeout(5):
            async with limits.hold(1, 0, lambda ahead: None):
                pass
        await limits.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await store.close()


def _cut_connections(url: str, owner: str) -> None:
    """End ``owner``'s sessions on the test database from the server's side (as a
    PostgreSQL restart would): its pool's idle connections fail at their next use."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (owner,),
        )


async def _rows(url: str, table: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(f"SELECT count(*) FROM {table}")
        (count,) = await cur.fetchone()  # type: ignore[misc]
    return int(count)


async def test_a_release_that_fails_is_tried_again_until_it_lands(
    workers: Workers, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await workers.worker("a"), await workers.worker("b")
    for what in ("seat", "slot"):
        caplog.clear()
        if what == "seat":
            seat = await a.claim_seat("ann", "session", 1)
            assert seat is not None
            _cut_connections(pg_url, "a")
            seat.release()  # its first try meets a dead connection
        else:
            async with a.hold(1, 0, lambda ahead: None):
                _cut_connections(pg_url, "a")
        for _ in range(100):
            if not await _rows(pg_url, f"limit_{what}s"):
                break
            await asyncio.sleep(0.05)
        assert "could not be given back" in caplog.text  # it did fail once
        assert await _rows(pg_url, f"limit_{what}s") == 0
    # Nothing is left to block anyone: max_upstream 1 and one session still go.
    assert await b.claim_seat("ann", "session", 1) is not None
    async with asyncio.timeout(5), b.hold(1, 0, lambda ahead: None):
        pass


async def test_a_worker_briefly_cut_off_keeps_what_it_holds(pg_url: str) -> None:
    from kindlessh._pg_store import PostgresStore

    from .pgcut import cut_liveness

    watcher = await PostgresStore.open(pg_url, grace=2.0)
    cut = await PostgresStore.open(pg_url, owner="cut")
    mine = SharedLimits(cut.pool, cut.owner, cut.live_owners, poll=0.05, live_for=0)
    others = SharedLimits(watcher.pool, watcher.owner, watcher.live_owners, poll=0.05, live_for=0)
    held = mine.hold(1, 0, lambda ahead: None)
    try:
        assert await mine.claim_answer("ann") is not None
        assert await mine.claim_seat("ann", "session", 1) is not None
        await held.__aenter__()
        await cut_liveness(pg_url, cut)  # its lock gone, for less than the grace
        # Nothing of what it holds is taken: one answer, one session, one upstream slot.
        assert await others.claim_answer("ann") is None
        assert await others.claim_seat("ann", "session", 1) is None
        with pytest.raises(ServerBusy):
            async with others.hold(1, 0.3, lambda ahead: None):
                pass
    finally:
        await held.__aexit__(None, None, None)
        await mine.close()
        await others.close()
        await cut.close()
        await watcher.close()
