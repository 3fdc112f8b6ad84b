"""What only the PostgreSQL store does: its schema and migrations (once, with workers
starting at once), the one-line reasons it cannot open, a worker's liveness (a killed
process leaves ``live_owners``), recovery of dead workers' answers only, and the turn
notifications another store hears."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from kindlessh import load_config
from kindlessh._config import StorageConfig
from kindlessh._errors import ConfigError, StoreError
from kindlessh._migrations import MIGRATIONS, migrate_postgres
from kindlessh._pg_store import PostgresStore
from kindlessh._store import DEAD_OWNER_NOTE, open_store

from .pgcut import cut_liveness
from .schema import EXPECTED

SHIPPED = [m.__name__ for m in MIGRATIONS]


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    # A short grace: a killed worker counts as dead within the tests' bounds.
    opened = await PostgresStore.open(pg_url, grace=0.2)
    try:
        yield opened
    finally:
        await opened.close()


def _columns(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def _replace(url: str, **parts: str) -> str:
    split = urlsplit(url)
    netloc = parts.get("netloc", split.netloc)
    return urlunsplit(split._replace(netloc=netloc, path=parts.get("path", split.path)))


# ----- schema and migrations --------------------------------------------------------------


async def test_same_schema_as_sqlite_and_rerunning_is_a_no_op(pg_url: str) -> None:
    await (await PostgresStore.open(pg_url)).close()
    expected = {k: v for k, v in EXPECTED.items() if not k.startswith("turns_search")}
    expected["turns"] = [*EXPECTED["turns"][:-1], "search", "owner"]  # the tsvector
    assert _columns(pg_url) == expected
    with psycopg.connect(pg_url) as conn:
        before = conn.execute("SELECT name, applied_at FROM _migrations ORDER BY name").fetchall()
    assert [name for name, _ in before] == sorted(SHIPPED)
    await (await PostgresStore.open(pg_url)).close()
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        assert await migrate_postgres(conn) == []
        cursor = await conn.execute("SELECT name, applied_at FROM _migrations ORDER BY name")
        assert await cursor.fetchall() == before


async def test_workers_starting_at_once_apply_each_migration_once(pg_url: str) -> None:
    conns = [
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) for _ in range(4)
    ]
    try:
        results = await asyncio.gather(*(migrate_postgres(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    applied = sorted(name for names in results for name in names)
    assert applied == sorted(SHIPPED)  # each once, by whichever got there first
    stores = await asyncio.gather(*(PostgresStore.open(pg_url) for _ in range(3)))
    for s in stores:
        await s.close()


# ----- cannot open -----------------------------------------------------------------------


async def test_refused_connections_say_what_to_do(pg_url: str) -> None:
    split = urlsplit(pg_url)
    host = split.hostname or "127.0.0.1"
    cases = [
        (_replace(pg_url, netloc=f"{split.username}:{split.password}@{host}:1"),
         "start PostgreSQL there, or fix the host and port in [storage] url"),
        (_replace(pg_url, netloc=f"{split.username}:wrong-secret@{host}:{split.port}"),
         "check the user name and password in [storage] url"),
        (_replace(pg_url, path="/kt_no_such_database"),
         "create the database (createdb -O <user> <name>) or fix its name in [storage] url"),
    ]  # fmt: skip
    for url, hint in cases:
        with pytest.raises(StoreError) as caught:
            await open_store(StorageConfig(url=url))
        message = str(caught.value)
        assert message.startswith("Cannot open the conversation store PostgreSQL ")
        assert message.endswith(hint + "."), message
        assert "\n" not in message
        assert "wrong-secret" not in message and f":{split.password}@" not in message
    # A URL the driver cannot read: its complaint would quote the password.
    for secret in ("s3cr%zzet", "with space"):
        url = f"postgresql://{split.username}:{secret}@{host}:{split.port}/x"
        with pytest.raises(StoreError) as caught:
            await open_store(StorageConfig(url=url))
        message = str(caught.value)
        assert secret not in message and "zz" not in message, message
        assert "cannot be read" in message and "\n" not in message


# ----- liveness ----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from kindlessh._pg_store import PostgresStore

    async def main():
        store = await PostgresStore.open(sys.argv[1])
        conversation = await store.new_conversation("ann", "t")
        turn = await store.add_turn(conversation, "a question", "m")
        await store.save_progress(turn, "half an answer", "")
        print(store.owner, conversation, turn, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_a_killed_worker_leaves_the_live_owners(store: PostgresStore, pg_url: str) -> None:
    assert await store.live_owners() == {store.owner}
    other = await PostgresStore.open(pg_url, owner="worker-b")
    assert await store.live_owners() == {store.owner, "worker-b"}
    with pytest.raises(StoreError, match="in use by a running process"):
        await PostgresStore.open(pg_url, owner="worker-b")
    await other.close()
    assert await store.live_owners() == {store.owner}

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, pg_url], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        owner, conversation, turn = line.split()
        assert await store.live_owners() == {store.owner, owner}
        # A live worker's answer in flight is not cut by another worker's start.
        assert await store.recover_interrupted() == 0
        assert (await store.get_turn("ann", int(turn))).state == "streaming"
        child.send_signal(signal.SIGKILL)
        child.wait()
        for _ in range(40):  # 2 s: the server sees the socket close and ends the session
            if owner not in await store.live_owners():
                break
            await asyncio.sleep(0.05)
        assert await store.live_owners() == {store.owner}
    finally:
        child.kill()
        child.wait()
    assert await store.recover_interrupted() == 1
    row = await store.get_turn("ann", int(turn))
    assert (row.state, row.note, row.incomplete) == ("stopped", DEAD_OWNER_NOTE, True)
    assert (row.answer, row.owner) == ("half an answer", owner)
    with psycopg.connect(pg_url) as conn:  # the dead worker's row is forgotten
        assert conn.execute("SELECT owner FROM workers").fetchall() == [(store.owner,)]


async def test_recovery_cuts_only_the_answers_of_dead_owners(pg_url: str) -> None:
    live = await PostgresStore.open(pg_url, owner="live")
    dead = await PostgresStore.open(pg_url, owner="dead")
    conversation = await live.new_conversation("ann", "t")
    mine = await live.add_turn(conversation, "q1", "m")
    await live.finish_turn(mine, answer="a", thoughts="", state="done", incomplete=False)
    streaming = await live.add_turn(conversation, "q2", "m")
    cut = await dead.add_turn(await dead.new_conversation("bob", "t"), "q", "m")
    await dead.close()
    starting = await PostgresStore.open(pg_url)
    try:
        assert await starting.recover_interrupted() == 1
        assert (await live.get_turn("ann", streaming)).state == "streaming"
        assert (await live.get_turn("bob", cut)).note == DEAD_OWNER_NOTE
        assert await live.save_progress(streaming, "still going", "")
    finally:
        await starting.close()
        await live.close()


async def test_a_worker_briefly_without_its_lock_stays_live_for_the_grace(
    pg_url: str,
) -> None:
    watcher = await PostgresStore.open(pg_url, grace=1.0)
    cut = await PostgresStore.open(pg_url, owner="cut", grace=1.0)
    try:
        conversation = await cut.new_conversation("ann", "t")
        turn = await cut.add_turn(conversation, "q", "m")
        await cut_liveness(pg_url, cut)
        # Its lock is gone, but for less than the grace: still live, its answer uncut.
        assert "cut" in await watcher.live_owners()
        assert await watcher.recover_interrupted() == 0
        assert await cut._reconnect()  # back, as its listener would make it
        await asyncio.sleep(1.1)  # past the grace: seen back, so never counted dead
        assert "cut" in await watcher.live_owners()
        assert await watcher.recover_interrupted() == 0
        assert await cut.save_progress(turn, "going on", "")
        assert (await watcher.get_turn("ann", turn)).state == "streaming"
    finally:
        await cut.close()
        await watcher.close()


async def test_a_worker_without_its_lock_past_the_grace_is_dead_yet_keeps_its_answer(
    pg_url: str,
) -> None:
    watcher = await PostgresStore.open(pg_url, grace=0.2)
    cut = await PostgresStore.open(pg_url, owner="cut")
    try:
        conversation = await cut.new_conversation("ann", "t")
        turn = await cut.add_turn(conversation, "q", "m")
        assert await cut.save_progress(turn, "the first half", "")
        await cut_liveness(pg_url, cut)
        assert await watcher.recover_interrupted() == 0  # seen lost: the grace starts
        await asyncio.sleep(0.3)
        assert "cut" not in await watcher.live_owners()
        await watcher.recover_interrupted()  # (or its own second look did already)
        row = await watcher.get_turn("ann", turn)
        assert (row.state, row.note, row.answer) == ("stopped", DEAD_OWNER_NOTE, "the first half")
        # It was alive all along: it comes back, keeps saving, and stores it whole.
        assert await cut._reconnect()
        assert "cut" in await watcher.live_owners()
        assert await cut.save_progress(turn, "the first half, the second", "")
        row = await watcher.get_turn("ann", turn)
        assert (row.state, row.note) == ("streaming", None)
        assert await cut.finish_turn(
            turn, answer="the first half, the second half.", thoughts="", state="done",
            incomplete=False,
        )  # fmt: skip
        row = await watcher.get_turn("ann", turn)
        assert (row.state, row.answer, row.incomplete) == (
            "done", "the first half, the second half.", False
        )
        # Nobody else's progress save revives a turn recovery cut.
        other = await watcher.add_turn(conversation, "q2", "m")
        await watcher.close()
        assert await cut.recover_interrupted() == 1
        assert not await cut.save_progress(other, "not mine", "")
    finally:
        await cut.close()
        await watcher.close()


async def test_a_starting_worker_cuts_a_dead_workers_answer_once_the_grace_is_over(
    pg_url: str,
) -> None:
    cut = await PostgresStore.open(pg_url, owner="cut")
    conversation = await cut.new_conversation("ann", "t")
    turn = await cut.add_turn(conversation, "q", "m")
    await cut_liveness(pg_url, cut)  # and it never comes back
    starting = await PostgresStore.open(pg_url, grace=0.2)
    try:
        assert await starting.recover_interrupted() == 0  # within the grace
        for _ in range(100):  # then it looks again by itself
            if (await starting.get_turn("ann", turn)).state != "streaming":
                break
            await asyncio.sleep(0.02)
        assert (await starting.get_turn("ann", turn)).note == DEAD_OWNER_NOTE
    finally:
        await starting.close()
        with contextlib.suppress(psycopg.Error):
            await cut.close()


# ----- notifications ------------------------------------------------------------------------


async def test_turn_writes_reach_another_stores_listener(
    store: PostgresStore, pg_url: str
) -> None:
    heard: list[tuple[str, int, int]] = []
    arrived = asyncio.Event()

    def hear(user: str, conversation: int, turn: int) -> None:
        heard.append((user, conversation, turn))
        arrived.set()

    async def expect(count: int) -> None:
        while len(heard) < count:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)

    await store.listen(hear)
    writer = await PostgresStore.open(pg_url)
    try:
        user = "ann o'neil"  # spaces reach the listener intact (names are the first field)
        conversation = await writer.new_conversation(user, "t")
        turn = await writer.add_turn(conversation, "q", "m")
        await expect(1)
        assert await writer.save_progress(turn, "so far", "")
        assert await writer.finish_turn(
            turn, answer="all", thoughts="", state="done", incomplete=False
        )
        assert await writer.delete_turn(turn)
        cut = await writer.add_turn(conversation, "q", "m")
        await expect(5)
        assert heard == [(user, conversation, turn)] * 4 + [(user, conversation, cut)]
        # What the listener is told, it can read at once (the write was committed).
        assert (await store.get_turn(user, cut)).state == "streaming"
        assert not await writer.save_progress(turn, "gone", "")  # no write, no notice
        await writer.close()
        assert await store.recover_interrupted() == 1
        await expect(6)
        assert heard[-1] == (user, conversation, cut)
    finally:
        await writer.close()


async def test_a_lost_listening_connection_comes_back_with_its_lock_and_channels(
    store: PostgresStore, pg_url: str
) -> None:
    heard: list[int] = []
    await store.listen(lambda user, conversation, turn: heard.append(turn))
    writer = await PostgresStore.open(pg_url)
    try:
        # The listening connection is cut from the server's side, as a restart of
        # PostgreSQL or a dropped link would: the worker's liveness lock goes with it.
        pid = store._conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # Back within a few tries: live again under the same name, hearing again.
        for _ in range(250):
            if store._conn.info.backend_pid != pid and store.owner in await writer.live_owners():
                break
            await asyncio.sleep(0.02)
        assert store._conn.info.backend_pid != pid
        assert store.owner in await writer.live_owners()
        # Notifications that are not the store's, from anyone who may log in, are
        # ignored; hearing goes on.
        with psycopg.connect(pg_url, autocommit=True) as other:
            for channel in ("kindlessh_turns", "kindlessh_stop"):
                for payload in ("x", "a b c", "ann 1 x", ""):
                    other.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        conversation = await writer.new_conversation("ann", "t")
        turn = await writer.add_turn(conversation, "q", "m")
        for _ in range(250):
            if turn in heard:
                break
            await asyncio.sleep(0.02)
        assert heard == [turn]
        assert store._conn.info.backend_pid != pid  # heard on the new connection
        # The server probes the store's connections every few seconds, so a machine that
        # vanished loses its lock in seconds (the listening one is busy hearing: the
        # pool's are set up by the same function).
        async with store.pool.connection() as conn:
            cursor = await conn.execute("SHOW tcp_keepalives_idle")
            assert await cursor.fetchone() == ("5",)
    finally:
        await writer.close()


def test_config_takes_only_a_postgresql_url(tmp_path: Path) -> None:
    path = tmp_path / "kindlessh.toml"
    for url in ("postgresql://u:p@h/db", "postgres://u@h:5433/db", ""):
        path.write_text(f'[storage]\nurl = "{url}"\n')
        assert load_config(path, env={}).storage.url == url
    path.write_text('[storage]\nurl = "mysql://root:hunter2@h/db"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert "[storage] url" in message and "postgresql://" in message
    assert "\n" not in message and "hunter2" not in message
