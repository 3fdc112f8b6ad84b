"""Full-text search of the store on both backends (SQLite FTS5, PostgreSQL tsvector): kept
in step with every write, phrases, prefixes, newest first, snippets with the match marked,
one user's rows only."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kindlessh._config import StorageConfig
from kindlessh._errors import InputRejected
from kindlessh._migrations import MIGRATIONS, m005_search_index, migrate
from kindlessh._store import MARK_END, MARK_START, Store, open_store, search_query


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
async def store(any_storage: StorageConfig) -> AsyncIterator[Store]:
    s = await open_store(any_storage, clock=Clock())
    yield s
    await s.close()


async def _turn(store: Store, user: str, question: str, answer: str) -> tuple[int, int]:
    cid = await store.new_conversation(user, question[:20])
    tid = await store.add_turn(cid, question, "m")
    await store.finish_turn(tid, answer=answer, thoughts="", state="done", incomplete=False)
    return cid, tid


def test_search_query_quotes_words_and_keeps_phrases_and_prefixes() -> None:
    assert search_query("paris museum") == '"paris" "museum"'
    assert search_query('"eiffel tower" lou*') == '"eiffel tower" "lou"*'
    # FTS5 operators and punctuation are plain words, never syntax.
    assert search_query('NOT a OR (b) "') == '"NOT" "a" "OR" "(b)"'
    assert search_query(" * \"\" ") == ""


def test_the_migration_is_listed_once() -> None:
    names = [m.__name__ for m in MIGRATIONS]
    assert names.count(m005_search_index.__name__) == 1
    assert len(set(names)) == len(names)


async def test_hits_newest_first_with_marked_snippets(store: Store) -> None:
    old, _ = await _turn(store, "ann", "Where is the Louvre?", "The Louvre is in Paris.")
    new, _ = await _turn(store, "ann", "Tell me about Paris", "Paris is the capital.")
    await _turn(store, "bob", "Paris for bob", "bob's Paris")
    hits = await store.search("ann", "paris")
    assert [h.conversation_id for h in hits] == [new, old]
    assert hits[0].snippet.count(MARK_START + "Paris" + MARK_END) == 1
    assert hits[1].snippet == f"The Louvre is in {MARK_START}Paris{MARK_END}."
    assert hits[1].position == 1 and hits[1].title == "Where is the Louvre?"
    # Phrase and prefix queries.
    assert [h.conversation_id for h in await store.search("ann", '"louvre is"')] == [old]
    assert [h.conversation_id for h in await store.search("ann", '"is louvre"')] == []
    assert [h.conversation_id for h in await store.search("ann", "capit*")] == [new]
    assert await store.search("ann", "capit") == []
    # Paging.
    assert [h.conversation_id for h in await store.search("ann", "paris", 1, 1)] == [old]
    with pytest.raises(InputRejected):
        await store.search("ann", '  ""  ')


async def test_index_follows_streaming_progress_finish_and_delete(store: Store) -> None:
    cid = await store.new_conversation("ann", "q")
    tid = await store.add_turn(cid, "a question", "m")
    await store.save_progress(tid, "halfway through zanzibar", "")
    hits = await store.search("ann", "zanzibar")
    assert [h.conversation_id for h in hits] == [cid]
    await store.finish_turn(
        tid, answer="ended in tanganyika", thoughts="", state="done", incomplete=False
    )
    assert await store.search("ann", "zanzibar") == []
    assert len(await store.search("ann", "tanganyika")) == 1
    await store.delete_conversation("ann", cid)
    assert await store.search("ann", "tanganyika") == []
    assert await store.search("ann", "question") == []


def test_migration_indexes_turns_already_stored(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    index = MIGRATIONS.index(m005_search_index)
    migrate(conn, MIGRATIONS[:index])
    conn.execute(
        "INSERT INTO conversations (user, title, created_at, updated_at) "
        "VALUES ('ann', 't', 'x', 'x')"
    )
    conn.execute(
        "INSERT INTO turns (conversation_id, position, question, answer, model, state, "
        "started_at) VALUES (1, 1, 'old question', 'kilimanjaro', 'm', 'done', 'x')"
    )
    assert migrate(conn)[0] == "m005_search_index"
    found = conn.execute(
        "SELECT rowid FROM turns_search WHERE turns_search MATCH 'kilimanjaro'"
    ).fetchall()
    assert found == [(1,)]
    conn.close()
