"""The store's token ledger by holder (migration m002, on both backends), and what a bad
SQLite database does at start: a damaged file is found by ``PRAGMA quick_check``, a file or
folder the server may not write is named, and ``kindlessh serve`` says either in one line
and exits 2."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kindlessh._config import StorageConfig
from kindlessh._errors import StoreError
from kindlessh._migrations import m001_initial, migrate
from kindlessh._provider import Usage
from kindlessh._sqlite_store import SqliteStore
from kindlessh._store import Store, open_store

SINCE = datetime(2000, 1, 1, tzinfo=UTC)


async def _turn(store: Store, user: str, usage: int, holder: str | None) -> None:
    conv = await store.new_conversation(user, "t")
    turn = await store.add_turn(conv, "q", "m")
    assert await store.finish_turn(
        turn, answer="a", thoughts="", state="done", incomplete=False,
        usage=Usage(usage), holder=holder,
    )


# ----- the ledger by holder -------------------------------------------------------------


async def test_tokens_are_summed_by_holder_whatever_the_name(any_storage: StorageConfig) -> None:
    store = await open_store(any_storage)
    try:
        key = "key:SHA256:abc"
        for name in ("one", "two", "three"):
            await _turn(store, name, 100, key)
        await _turn(store, "anna", 7, None)  # no holder given: the user's own name
        assert await store.tokens_used(key, SINCE) == 300
        assert await store.tokens_used("one", SINCE) == 0
        assert await store.tokens_used("anna", SINCE) == 7
    finally:
        await store.close()


async def test_an_old_ledger_is_migrated_by_name(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(conn, (m001_initial,)) == ["m001_initial"]
        conn.execute(
            "INSERT INTO token_usage (user, model, started_at, input_tokens, "
            "output_tokens, thoughts_tokens) VALUES ('anna', 'm', ?, 5, 6, 7)",
            (datetime.now(UTC).isoformat(timespec="microseconds"),),
        )
    finally:
        conn.close()
    store = await SqliteStore.open(path)
    try:
        assert await store.tokens_used("anna", SINCE) == 18
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
        assert names[:2] == ["m001_initial", "m002_token_holder"]
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "token_usage_holder_started" in indexes


# ----- a damaged or read-only database --------------------------------------------------


def _real_db(path: Path, turns: int = 300) -> None:
    """A database made by the store, with enough turns to span many pages."""

    async def fill() -> None:
        store = await SqliteStore.open(path)
        try:
            conv = await store.new_conversation("anna", "t")
            for i in range(turns):
                turn = await store.add_turn(conv, f"question {i} " * 20, "m")
                await store.finish_turn(turn, answer="answer " * 60, thoughts="",
                                        state="done", incomplete=False)
        finally:
            await store.close()

    asyncio.run(fill())


def _damage(path: Path) -> None:
    """Garbage over one page in the middle of the file (a page of turns)."""
    page = 4096
    size = path.stat().st_size
    assert size > 20 * page
    with path.open("r+b") as fh:
        fh.seek((size // page // 2) * page)
        fh.write(b"\xde\xad\xbe\xef" * (page // 4))


def _run_serve(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "kindlessh", "serve", "--config", "k.toml"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def serve_dir(tmp_path: Path) -> Path:
    (tmp_path / "k.toml").write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n[storage]\npath = "data/k.sqlite3"\n'
    )
    return tmp_path


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """``path`` (a file or folder) may not be written, even by root (who ignores modes):
    ``chattr +i`` when running as root, a read-only mode otherwise."""
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode != 0:
            pytest.skip("root, and chattr +i is not available here")
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(mode)


async def test_a_damaged_file_is_found_at_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await asyncio.to_thread(_real_db, path)
    _damage(path)
    with pytest.raises(StoreError, match="damaged") as caught:
        await SqliteStore.open(path)
    assert "\n" not in str(caught.value)


def test_serve_with_a_damaged_database_says_one_line_and_exits_2(serve_dir: Path) -> None:
    path = serve_dir / "data" / "k.sqlite3"
    _real_db(path)
    _damage(path)
    result = _run_serve(serve_dir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"kindlessh: Cannot open the conversation store {path}")
    assert "damaged" in result.stderr


def test_serve_with_a_read_only_database_says_one_line_and_exits_2(serve_dir: Path) -> None:
    path = serve_dir / "data" / "k.sqlite3"
    _real_db(path, turns=1)
    with _read_only(path):
        result = _run_serve(serve_dir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(path) in result.stderr
    assert "must be able to write it and its folder" in result.stderr


def test_serve_with_a_read_only_folder_says_one_line_and_exits_2(serve_dir: Path) -> None:
    folder = serve_dir / "data"
    folder.mkdir(mode=0o700)
    with _read_only(folder):
        result = _run_serve(serve_dir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "must be able to write it and its folder" in result.stderr
