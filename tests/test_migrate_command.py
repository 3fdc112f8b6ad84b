"""``kindlessh migrate``: a SQLite store made through the store is copied into a real
PostgreSQL database through the command line, every column kept and the counts printed;
a target that holds conversations is refused; a failed copy leaves the target empty."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from kindlessh._cli import main
from kindlessh._pg_store import PostgresStore
from kindlessh._provider import Source, Usage
from kindlessh._sqlite_store import SqliteStore
from kindlessh._store import Options


async def _main(*argv: str) -> int:
    """The command line, as run from a shell (its own event loop, off the test's)."""
    return await asyncio.to_thread(main, list(argv))


SINCE = datetime(2000, 1, 1, tzinfo=UTC)
USERS = ("ann", "bob", "nul\x00name")


async def _fill(path: Path) -> None:
    store = await SqliteStore.open(path)
    try:
        for user in USERS:
            first = await store.new_conversation(user, f"{user}'s first")
            turn = await store.add_turn(first, "Where is the Louvre?", "gemini-a")
            await store.finish_turn(
                turn, answer="In Paris \x00 \x1b[31m.", thoughts="hmm", state="done",
                incomplete=False, usage=Usage(10, 20, 5), duration_ms=1200,
                replay='{"parts": []}', sources=(Source("Louvre", "louvre.fr", "https://l"),),
                finish_reason="STOP", holder="key:SHA256:x",
            )  # fmt: skip
            cut = await store.add_turn(first, "and then?", "gemini-b")
            await store.save_progress(cut, "half", "")
            await store.set_conversation_options(first, Options("be brief", True, "local"))
            gone = await store.new_conversation(user, "deleted later")
            await store.finish_turn(
                await store.add_turn(gone, "q", "m"), answer="a", thoughts="",
                state="done", incomplete=False, usage=Usage(7),
            )  # fmt: skip
            await store.delete_conversation(user, gone)  # its ledger row stays
            await store.new_conversation(user, "empty")
    finally:
        await store.close()


async def _snapshot(store: SqliteStore | PostgresStore) -> list[object]:
    seen: list[object] = []
    for user in USERS:
        conversations = await store.list_conversations(user)
        seen.append(conversations)
        for c in conversations:
            turns = await store.load_turns(user, c.id)
            seen.append(turns)
            seen.append(await store.conversation_options(user, c.id))
        seen.append(await store.token_counts(user, SINCE))
    seen.append(await store.token_counts("key:SHA256:x", SINCE))
    return seen


async def test_migrate_copies_everything_and_counts(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "data" / "kindlessh.sqlite3"
    await _fill(source)
    sqlite = await SqliteStore.open(source)
    before = await _snapshot(sqlite)
    await sqlite.close()

    assert await _main("migrate", "--from", str(source), "--to", pg_url) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "conversations: 6 rows copied, 6 counted in the target",
        "turns: 6 rows copied, 6 counted in the target",
        "token_usage: 6 rows copied, 6 counted in the target",
    ]
    store = await PostgresStore.open(pg_url)
    try:
        assert await _snapshot(store) == before  # ids, positions, times, text, options
        assert [h.position for h in await store.search("ann", "louvre")] == [1]
        newer = await store.new_conversation("ann", "after the copy")
        assert newer > max(c.id for c in await store.list_conversations("bob"))
        # The answer that was streaming when the home server stopped is cut at start.
        assert await store.recover_interrupted() == 3
    finally:
        await store.close()

    # A second copy would double the history: refused, the target unchanged.
    assert await _main("migrate", "--from", str(source), "--to", pg_url) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds 7 conversations rows" in err
    assert "copy into an empty database" in err


async def test_a_failed_copy_leaves_the_target_untouched(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "kindlessh.sqlite3"
    await _fill(source)
    with sqlite3.connect(source) as conn:  # a turn whose conversation is gone (no FK here)
        conn.execute(
            "INSERT INTO turns (conversation_id, position, question, answer, thoughts, "
            "model, state, started_at, incomplete) "
            "VALUES (999, 1, 'q', '', '', 'm', 'done', '2025-01-01T00:00:00+00:00', 0)"
        )
    assert await _main("migrate", "--from", str(source), "--to", pg_url) == 1
    err = capsys.readouterr().err
    assert err.startswith("kindlessh: Copy into PostgreSQL ") and "rolled back" in err
    assert err.count("\n") == 1
    with psycopg.connect(pg_url) as conn:
        for table in ("conversations", "turns", "token_usage"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)


def test_migrate_refuses_what_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--from", str(tmp_path / "x.sqlite3"), "--to", "mysql://h/db"]) == 2
    assert capsys.readouterr().err == "kindlessh: --to: expected a postgresql:// URL\n"
    missing = tmp_path / "missing.sqlite3"
    assert main(["migrate", "--from", str(missing), "--to", "postgresql://u@127.0.0.1:1/db"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not missing.exists()
