"""The store on both backends (``any_storage``: SQLite, PostgreSQL): isolation between
users, ordering, recovery, the token ledger, raw text, an event loop that keeps running
while it writes; and SQLite's own schema, migrations, file modes and locking."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from kindlessh import _migrations
from kindlessh._config import StorageConfig
from kindlessh._errors import ConversationNotFound, KindleSSHError, StoreError
from kindlessh._migrations import migrate
from kindlessh._provider import Usage
from kindlessh._sqlite_store import SqliteStore
from kindlessh._store import DEAD_OWNER_NOTE, INTERRUPTED_NOTE, Store, TurnRow, open_store

from .schema import EXPECTED

SHIPPED = [m.__name__ for m in _migrations.MIGRATIONS]

HOSTILE = [
    "\x1b]52;c;SGVsbG8=\x07",  # OSC 52: write the reader's clipboard
    "\x1b[2J\x1b[H\x1b[31mred\x1b[0m",  # clear screen, colour
    "\x9b31m C1 CSI \x9d0;title\x9c",  # 8-bit controls
    "nul\x00byte",
    "\u202eevil\u202c bidi, \u200b zero width, \ufeff BOM",
    "crlf\r\nbare cr\r tab\t bell\x07 del\x7f",
    "emoji \U0001f600 and CJK \u4e2d\u6587",
    "'; DROP TABLE turns; --",
]


class FakeClock:
    """An aware UTC clock that moves only when told (one microsecond per reading)."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "kindlessh.sqlite3"


@pytest.fixture
async def store(any_storage: StorageConfig, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await open_store(any_storage, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def sqlite_store(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(db_path, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


def raw_rows(storage: StorageConfig, sql: str) -> list[tuple[object, ...]]:
    """What ``sql`` reads from the store's database, past the store."""
    if storage.url:
        with psycopg.connect(storage.url) as pg:
            return pg.execute(sql).fetchall()
    with sqlite3.connect(storage.path) as conn:
        return conn.execute(sql).fetchall()


def columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {
        table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")] for table in tables
    }


def migration_rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()


async def finish(store: Store, turn_id: int, answer: str = "an answer", **kwargs: object) -> None:
    fields: dict[str, object] = {"thoughts": "", "state": "done", "incomplete": False}
    fields.update(kwargs)
    assert await store.finish_turn(turn_id, answer=answer, **fields)  # type: ignore[arg-type]


# ----- schema and migrations -----------------------------------------------------------------


async def test_migrate_blank(db_path: Path) -> None:
    store = await SqliteStore.open(db_path)
    await store.close()
    with sqlite3.connect(db_path) as conn:
        assert columns(conn) == EXPECTED
    assert [name for name, _ in migration_rows(db_path)] == SHIPPED


async def test_rerunning_migrations_is_a_no_op(db_path: Path) -> None:
    await (await SqliteStore.open(db_path)).close()
    before = migration_rows(db_path)
    await (await SqliteStore.open(db_path)).close()
    assert migration_rows(db_path) == before
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        assert migrate(conn) == []
        assert columns(conn) == EXPECTED
    finally:
        conn.close()
    assert migration_rows(db_path) == before


def test_new_migration_applies_once_in_order(tmp_path: Path) -> None:
    def m002_extra(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    try:
        assert migrate(conn) == SHIPPED
        conn.execute(
            "INSERT INTO conversations (user, title, created_at, updated_at) "
            "VALUES ('a', 't', 'x', 'x')"
        )
        both = (*_migrations.MIGRATIONS, m002_extra)
        assert migrate(conn, both) == ["m002_extra"]
        assert migrate(conn, both) == []
        assert conn.execute("SELECT title, pinned FROM conversations").fetchall() == [("t", 0)]
        names = [name for (name,) in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
        assert names == [*SHIPPED, "m002_extra"]
    finally:
        conn.close()


def test_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    def m002_broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("THIS IS NOT SQL")

    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, (*_migrations.MIGRATIONS, m002_broken))
        assert columns(conn) == EXPECTED  # m001 committed; m002 rolled back whole
        assert not conn.in_transaction
    finally:
        conn.close()


async def test_pragmas_and_private_files(sqlite_store: SqliteStore, db_path: Path) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[object, ...]:
        return tuple(
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
        )

    assert await sqlite_store._call(pragmas) == ("wal", 5000, 1, 1)  # synchronous 1 = NORMAL
    with sqlite3.connect(db_path) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


async def test_open_failure_is_a_store_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(StoreError, match="Cannot open the conversation store"):
        await SqliteStore.open(not_a_db)


# ----- users, ordering, turns -----------------------------------------------------------------


async def test_users_only_see_their_own_conversations(store: Store) -> None:
    mine = await store.new_conversation("alice", "alice's secret")
    turn = await store.add_turn(mine, "question", "gemini-test")
    await finish(store, turn, usage=Usage(5))

    with pytest.raises(ConversationNotFound) as caught:
        await store.load_turns("bob", mine)
    assert str(caught.value) == f"No conversation {mine}."
    assert isinstance(caught.value, KindleSSHError)
    assert not await store.delete_conversation("bob", mine)
    assert await store.list_conversations("bob") == []
    assert await store.latest_conversation("bob") is None
    assert await store.tokens_used("bob", datetime(2000, 1, 1, tzinfo=UTC)) == 0

    assert [t.id for t in await store.load_turns("alice", mine)] == [turn]
    assert [c.title for c in await store.list_conversations("alice")] == ["alice's secret"]
    with pytest.raises(ConversationNotFound, match="No conversation 999."):
        await store.load_turns("alice", 999)


async def test_conversations_most_recently_updated_first(store: Store, clock: FakeClock) -> None:
    first = await store.new_conversation("u", "first")
    second = await store.new_conversation("u", "second")
    third = await store.new_conversation("u", "third")
    assert [c.id for c in await store.list_conversations("u")] == [third, second, first]

    clock.advance(minutes=1)
    turn = await store.add_turn(first, "q", "m")  # activity moves it to the top
    listed = await store.list_conversations("u")
    assert [c.id for c in listed] == [first, third, second]
    assert [c.turn_count for c in listed] == [1, 0, 0]
    assert listed[0].updated_at > listed[0].created_at
    assert listed[0].updated_at.tzinfo is not None
    assert await store.latest_conversation("u") == first

    clock.advance(minutes=1)
    assert await store.save_progress(turn, "partial", "")
    clock.advance(minutes=1)
    await store.add_turn(second, "q", "m")
    assert await store.latest_conversation("u") == second
    clock.advance(minutes=1)
    await finish(store, turn)
    assert await store.latest_conversation("u") == first

    assert [c.id for c in await store.list_conversations("u", limit=2)] == [first, second]
    assert [c.id for c in await store.list_conversations("u", limit=2, offset=2)] == [third]


async def test_turn_lifecycle_and_positions(store: Store, clock: FakeClock) -> None:
    conv = await store.new_conversation("u", "t")
    one = await store.add_turn(conv, "first?", "gemini-a")
    [row] = await store.load_turns("u", conv)
    assert (row.state, row.answer, row.incomplete, row.position) == ("streaming", "", True, 1)

    assert await store.save_progress(one, "Hel", "thinking")
    assert await store.save_progress(one, "Hello", "thinking more")
    assert (await store.load_turns("u", conv))[0].answer == "Hello"
    await finish(
        store,
        one,
        answer="Hello, world",
        thoughts="done thinking",
        state="stopped",
        incomplete=True,
        note="stopped by you",
        finish_reason="MAX_TOKENS",
        usage=Usage(10, 20, 30),
        duration_ms=1234,
    )
    # A late progress save must not overwrite the finished answer.
    assert not await store.save_progress(one, "Hel", "")
    [row] = await store.load_turns("u", conv)
    assert row == TurnRow(
        id=one,
        conversation_id=conv,
        position=1,
        question="first?",
        answer="Hello, world",
        thoughts="done thinking",
        model="gemini-a",
        state="stopped",
        note="stopped by you",
        finish_reason="MAX_TOKENS",
        usage=Usage(input_tokens=10, output_tokens=20, thoughts_tokens=30, total_tokens=60),
        started_at=row.started_at,
        duration_ms=1234,
        incomplete=True,
        owner=store.owner,
    )
    assert row.started_at.tzinfo is not None

    two = await store.add_turn(conv, "second?", "gemini-a")
    assert await store.delete_turn(two)  # /retry replaces the last answer
    assert not await store.delete_turn(two)
    again = await store.add_turn(conv, "second again?", "gemini-b")
    turns = await store.load_turns("u", conv)
    assert [(t.id, t.position, t.question) for t in turns] == [
        (one, 1, "first?"),
        (again, 2, "second again?"),
    ]

    with pytest.raises(ConversationNotFound):
        await store.add_turn(12345, "q", "m")
    with pytest.raises(ValueError):
        await store.finish_turn(again, answer="", thoughts="", state="streaming", incomplete=True)  # type: ignore[arg-type]
    assert not await store.save_progress(99999, "x", "")


async def test_recover_interrupted(any_storage: StorageConfig, clock: FakeClock) -> None:
    store = await open_store(any_storage, clock=clock)
    conv = await store.new_conversation("u", "t")
    done = await store.add_turn(conv, "q1", "m")
    await finish(store, done)
    cut = await store.add_turn(conv, "q2", "m")
    await store.save_progress(cut, "half an ans", "some thoughts")
    elsewhere = await store.new_conversation("v", "t")
    await store.add_turn(elsewhere, "q", "m")
    before = await store.list_conversations("u")
    await store.close()  # the server "stops" with two answers streaming

    clock.advance(hours=1)
    store = await open_store(any_storage, clock=clock)
    # SQLite: one process, so every streaming answer was cut by the stop. PostgreSQL:
    # the closed store's owner is no longer live, so its answers were.
    note = DEAD_OWNER_NOTE if any_storage.url else INTERRUPTED_NOTE
    try:
        assert await store.recover_interrupted() == 2
        assert await store.recover_interrupted() == 0
        first, second = await store.load_turns("u", conv)
        assert (first.state, first.note, first.incomplete) == ("done", None, False)
        assert (second.state, second.note, second.incomplete) == ("stopped", note, True)
        assert (second.answer, second.thoughts) == ("half an ans", "some thoughts")
        assert (await store.load_turns("v", elsewhere))[0].state == "stopped"
        assert await store.list_conversations("u") == before  # a restart reorders nothing
    finally:
        await store.close()


async def test_delete_cascades_to_turns_but_not_to_usage(
    store: Store, any_storage: StorageConfig
) -> None:
    keep = await store.new_conversation("u", "keep")
    kept_turn = await store.add_turn(keep, "q", "m")
    gone = await store.new_conversation("u", "gone")
    for _ in range(3):
        await finish(store, await store.add_turn(gone, "q", "m"), usage=Usage(100))

    assert await store.delete_conversation("u", gone)
    assert not await store.delete_conversation("u", gone)
    with pytest.raises(ConversationNotFound):
        await store.load_turns("u", gone)
    assert raw_rows(any_storage, "SELECT conversation_id FROM turns") == [(keep,)]
    assert raw_rows(any_storage, "SELECT turn_id FROM token_usage") == [(None,)] * 3
    assert [t.id for t in await store.load_turns("u", keep)] == [kept_turn]
    # Deleting conversations must not give a user their daily budget back.
    assert await store.tokens_used("u", datetime(2000, 1, 1, tzinfo=UTC)) == 300


async def test_tokens_used(store: Store, clock: FakeClock) -> None:
    conv = await store.new_conversation("u", "t")
    other = await store.new_conversation("someone else", "t")
    await finish(store, await store.add_turn(conv, "yesterday", "m"), usage=Usage(1000))
    clock.advance(days=1)
    midnight = clock.now
    clock.advance(hours=1)
    await finish(
        store,
        await store.add_turn(conv, "q", "m"),
        usage=Usage(10, 20, 30),
    )
    await finish(store, await store.add_turn(conv, "no usage reported", "m"))
    retried = await store.add_turn(conv, "q", "m")
    await finish(store, retried, usage=Usage(1, 2))
    await store.delete_turn(retried)  # /retry: the spent tokens still count
    await finish(store, await store.add_turn(other, "q", "m"), usage=Usage(5000))
    await store.add_turn(conv, "still streaming", "m")

    assert await store.tokens_used("u", midnight) == 63
    assert await store.token_counts("u", midnight) == Usage(11, 22, 30, total_tokens=63)
    assert await store.tokens_used("u", midnight - timedelta(days=2)) == 1063
    assert await store.tokens_used("u", clock.now + timedelta(seconds=1)) == 0
    # The same instant in another time zone gives the same answer.
    tz = datetime.now().astimezone().tzinfo
    assert await store.tokens_used("u", midnight.astimezone(tz)) == 63
    with pytest.raises(ValueError):
        await store.tokens_used("u", datetime(2025, 1, 1))


@pytest.mark.parametrize("text", HOSTILE)
async def test_raw_text_round_trips_exactly(store: Store, text: str) -> None:
    conv = await store.new_conversation(text, text)
    turn = await store.add_turn(conv, text, "m")
    await store.save_progress(turn, text, text)
    [row] = await store.load_turns(text, conv)
    assert (row.question, row.answer, row.thoughts) == (text, text, text)
    await finish(store, turn, answer=text + "!", thoughts=text, note=text, finish_reason=text)
    [row] = await store.load_turns(text, conv)
    assert (row.answer, row.thoughts, row.note, row.finish_reason) == (text + "!", text, text, text)
    assert row.answer.encode() == (text + "!").encode()
    [listed] = await store.list_conversations(text)
    assert listed.title == text


# ----- concurrency -------------------------------------------------------------------------


async def test_event_loop_runs_during_writes(store: Store) -> None:
    """Each write is awaited off the loop, so a probe task gets turns during 200 writes.

    If the writes ran on the loop thread (plain sqlite3 calls in a coroutine), the probe
    would not tick until they were all done.
    """
    conv = await store.new_conversation("u", "t")
    turn = await store.add_turn(conv, "q", "m")
    ticks = 0
    stop = False

    async def probe() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    start = ticks
    answer = ""
    for i in range(200):
        answer += f"chunk {i} "
        assert await store.save_progress(turn, answer, "")
    during = ticks - start
    stop = True
    await task
    assert during >= 200
    assert (await store.load_turns("u", conv))[0].answer == answer


async def test_waiting_for_the_lock_does_not_block_the_loop(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    """Another connection holds the write lock; our write waits (busy_timeout) on the store
    thread while the loop keeps working, then succeeds once the lock is released.

    The loop's work is 20 rows written through the lock holder while the store's write
    waits: if the store blocked the loop, the holder could not write them, nor commit
    before busy_timeout ran out, and the store's write would fail.
    """
    other = sqlite3.connect(db_path, isolation_level=None)
    now = datetime.now(UTC).isoformat()
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(sqlite_store.new_conversation("u", "waited"))
        for i in range(20):
            await asyncio.sleep(0.005)
            assert not write.done()
            other.execute(
                "INSERT INTO conversations (user, title, created_at, updated_at) "
                "VALUES ('u', ?, ?, ?)", (f"meanwhile {i}", now, now),
            )
        other.execute("COMMIT")
        conv = await write
    finally:
        other.close()
    rows = {c.id: c.title for c in await sqlite_store.list_conversations("u")}
    # The store's row came after the 20 the loop wrote while it waited.
    assert len(rows) == 21 and conv == max(rows) and rows[conv] == "waited"
    assert sorted(title for id_, title in rows.items() if id_ != conv) == sorted(
        f"meanwhile {i}" for i in range(20)
    )


async def test_calls_run_in_order_and_survive_cancellation(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    """A write queued behind a slow one still lands when its awaiting task is cancelled,
    and after the one queued before it."""
    store = sqlite_store
    conv = await store.new_conversation("u", "t")
    turn = await store.add_turn(conv, "q", "m")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the progress save below waits for this lock
        progress = asyncio.create_task(store.save_progress(turn, "partial", ""))
        final = asyncio.create_task(store.finish_turn(
            turn, answer="final", thoughts="", state="stopped", incomplete=True
        ))  # fmt: skip
        await asyncio.sleep(0.02)
        assert not progress.done()
        final.cancel()  # the session is torn down while its final write is queued
        with pytest.raises(asyncio.CancelledError):
            await final
        other.execute("COMMIT")
        assert await progress
    finally:
        other.close()
    [row] = await store.load_turns("u", conv)
    assert (row.answer, row.state) == ("final", "stopped")


async def test_close(any_storage: StorageConfig, db_path: Path) -> None:
    store = await open_store(any_storage)
    conv = await store.new_conversation("u", "t")
    pending = asyncio.create_task(store.add_turn(conv, "q", "m"))
    await asyncio.sleep(0)
    await store.close()  # finishes the call already made
    assert pending.done() and pending.result() > 0
    await store.close()
    assert store.closed
    with pytest.raises(RuntimeError, match="closed"):
        await store.new_conversation("u", "t")
    assert not (db_path.parent / (db_path.name + "-wal")).exists()


async def test_a_turn_keeps_its_usage_or_none(store: Store) -> None:
    conv = await store.new_conversation("u", "t")
    counted = await store.add_turn(conv, "counted", "m")
    await finish(store, counted, usage=Usage(4, 5, 6, total_tokens=99))
    await finish(store, await store.add_turn(conv, "not counted", "m"))
    rows = await store.load_turns("u", conv)
    # The store keeps the three kinds; read back, the total is their sum.
    assert [row.usage for row in rows] == [Usage(4, 5, 6), None]
    assert rows[0].usage is not None and rows[0].usage.total_tokens == 15


async def test_a_turn_by_id_and_its_owner(any_storage: StorageConfig) -> None:
    store = await open_store(any_storage, owner="worker-a")
    try:
        assert store.owner == "worker-a"
        conv = await store.new_conversation("u", "t")
        turn = await store.add_turn(conv, "q", "m")
        assert await store.save_progress(turn, "so far", "")
        row = await store.get_turn("u", turn)
        assert (row.id, row.conversation_id, row.answer) == (turn, conv, "so far")
        assert row.owner == "worker-a"
        assert row == (await store.load_turns("u", conv))[0]
        with pytest.raises(ConversationNotFound):
            await store.get_turn("someone else", turn)  # only the user's own turns
        assert await store.delete_turn(turn)
        with pytest.raises(ConversationNotFound):
            await store.get_turn("u", turn)
    finally:
        await store.close()
