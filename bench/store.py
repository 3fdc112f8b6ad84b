"""Benchmark the store: saving a streamed answer, and event-loop lag under writes.

Run from the repository root::

    python bench/store.py            # 20 answers, then 50 sessions at once
    python bench/store.py --dir DIR  # put the database in DIR (default: a temp directory)
    python bench/store.py --url postgresql://user:password@host/db
                                     # the same on PostgreSQL (the role creates and
                                     # drops a database per part beside ``db``)

Two parts, each on a fresh database (SQLite: WAL, ``synchronous=NORMAL``; PostgreSQL:
the server's settings, a pool of connections):

- one answer: a 2,000-token answer (about 8,000 characters) streamed the way a session
  saves it: ``add_turn``, then ``save_progress`` with the whole text so far after each of
  40 chunks (one commit per half second of a 20 s answer), then ``finish_turn``. Each answer
  is timed on its own (``time.perf_counter``), one after the other; reported are the
  total per answer and the time of each commit as the caller sees it (queue, thread hop
  and SQLite; or the pool and a round trip to PostgreSQL).
- 50 sessions at once: each saves one such answer (add, 40 progress saves, finish) as
  fast as it can, with no pause between chunks, so the store thread always has a queue;
  this is the worst case, not a realistic pace. When all 50 are done they start again
  (5 rounds, for more lag samples). Meanwhile a probe task sleeps 5 ms again
  and again and records how late it wakes (actual wake time minus the time it asked for):
  the event-loop lag. The same probe runs for one second with no writes first, as a
  baseline. Also reported: each call's latency as a session sees it, which includes
  waiting behind the other sessions' calls.

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._probe import loop_lag
from kindlessh._config import StorageConfig
from kindlessh._provider import Usage
from kindlessh._store import Store, open_store

PROBE_SLEEP = 0.005  # seconds; the lag probe's sleep
WORDS = (
    "the quick brown fox jumps over a lazy dog while seven kindles read "
    "answers streamed from gemini through ssh on slow e-ink screens"
).split()


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1-99), interpolated between samples."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def answer_chunks(chars: int, chunks: int) -> list[str]:
    """About ``chars`` characters of words, cut into ``chunks`` pieces of similar size."""
    words: list[str] = []
    length = 0
    i = 0
    while length < chars:
        word = WORDS[i % len(WORDS)]
        words.append(word)
        length += len(word) + 1
        i += 1
    text = " ".join(words)[:chars]
    step = -(-len(text) // chunks)
    return [text[k : k + step] for k in range(0, len(text), step)]


def summary(values: Sequence[float]) -> str:
    return (
        f"p50 {percentile(values, 50):7.3f}  p99 {percentile(values, 99):7.3f}  "
        f"max {max(values):7.3f}  (n={len(values)})"
    )


async def save_answer(
    store: Store, conversation: int, chunks: Sequence[str], calls: list[float]
) -> None:
    """One streamed answer: add, a progress save per chunk, finish; call times in ms."""
    started = time.perf_counter()
    turn = await store.add_turn(conversation, "Tell me a long story.", "gemini-bench")
    calls.append((time.perf_counter() - started) * 1000)
    answer = ""
    for chunk in chunks:
        answer += chunk
        started = time.perf_counter()
        await store.save_progress(turn, answer, "")
        calls.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    await store.finish_turn(
        turn,
        answer=answer,
        thoughts="",
        state="done",
        incomplete=False,
        finish_reason="STOP",
        usage=Usage(input_tokens=50, output_tokens=2000),
        duration_ms=20_000,
    )
    calls.append((time.perf_counter() - started) * 1000)


@contextlib.asynccontextmanager
async def fresh(directory: Path, name: str, url: str | None) -> AsyncIterator[StorageConfig]:
    """A fresh database: a file in ``directory``, or one made beside ``url``'s."""
    if url is None:
        yield StorageConfig(path=directory / f"{name}.sqlite3")
        return
    import psycopg

    database = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database} ENCODING 'UTF8' TEMPLATE template0")
        try:
            yield StorageConfig(url=urlunsplit(urlsplit(url)._replace(path="/" + database)))
        finally:
            admin.execute(f"DROP DATABASE {database}")  # the store closed its connections


def saved_figures(storage: StorageConfig) -> tuple[int, int, int]:
    """Answers saved, their characters, and the database's size in bytes."""
    query = "SELECT COUNT(*), SUM(LENGTH(answer)) FROM turns"
    if storage.url:
        import psycopg

        with psycopg.connect(storage.url) as pg:
            count, chars = pg.execute(query).fetchone() or (0, 0)
            size = pg.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(count), int(chars), int(size[0] if size else 0)
    with sqlite3.connect(storage.path) as conn:
        count, chars = conn.execute(query).fetchone()
    return int(count), int(chars), storage.path.stat().st_size


async def one_answer(
    directory: Path, chunks: Sequence[str], answers: int, url: str | None
) -> None:
    async with fresh(directory, "one", url) as storage:
        await _one_answer(storage, chunks, answers)


async def _one_answer(storage: StorageConfig, chunks: Sequence[str], answers: int) -> None:
    store = await open_store(storage)
    try:
        conversation = await store.new_conversation("reader", "bench")
        await save_answer(store, conversation, chunks, [])  # warm-up, not counted
        totals: list[float] = []
        commits: list[float] = []
        for _ in range(answers):
            calls: list[float] = []
            started = time.perf_counter()
            await save_answer(store, conversation, chunks, calls)
            totals.append((time.perf_counter() - started) * 1000)
            commits.extend(calls)
    finally:
        await store.close()
    size = sum(len(c) for c in chunks)
    print(
        f"one answer: {size:,} characters, {len(chunks)} progress commits + add + finish, "
        f"{answers} answers one after another"
    )
    print(f"  total per answer, ms   {summary(totals)}  mean {statistics.fmean(totals):.2f}")
    print(f"  per commit, ms         {summary(commits)}  mean {statistics.fmean(commits):.3f}")


async def baseline_lag(seconds: float) -> list[float]:
    lags: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(loop_lag(lags, stop, PROBE_SLEEP))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return lags


async def many_sessions(
    directory: Path, chunks: Sequence[str], sessions: int, rounds: int, url: str | None
) -> None:
    async with fresh(directory, "many", url) as storage:
        await _many_sessions(storage, chunks, sessions, rounds)


async def _many_sessions(
    storage: StorageConfig, chunks: Sequence[str], sessions: int, rounds: int
) -> None:
    store = await open_store(storage)
    try:
        conversations = [
            await store.new_conversation(f"reader{i}", "bench") for i in range(sessions)
        ]
        idle = await baseline_lag(1.0)
        lags: list[float] = []
        calls: list[float] = []
        stop = asyncio.Event()
        probe_task = asyncio.create_task(loop_lag(lags, stop, PROBE_SLEEP))
        await asyncio.sleep(PROBE_SLEEP * 2)  # let the probe start its first sleep
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(save_answer(store, c, chunks, calls) for c in conversations))
        elapsed = time.perf_counter() - started
        stop.set()
        await probe_task
    finally:
        await store.close()
    saved = saved_figures(storage)
    print(
        f"\n{sessions} sessions at once, each add + {len(chunks)} progress saves + finish, "
        f"no pause between chunks; {rounds} rounds"
    )
    print(
        f"  {len(calls):,} calls in {elapsed:.2f} s ({len(calls) / elapsed:,.0f} calls/s); "
        f"{saved[0]} answers saved, {saved[1]:,} characters; db {saved[2]:,} bytes"
    )
    print(f"  loop lag idle, ms      {summary(idle)}")
    print(f"  loop lag writing, ms   {summary(lags)}")
    print(f"  call latency, ms       {summary(calls)}  (includes queueing behind others)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=20, help="answers timed in part one")
    parser.add_argument("--sessions", type=int, default=50, help="sessions in part two")
    parser.add_argument(
        "--rounds", type=int, default=5, help="answers per session in part two, in turn"
    )
    parser.add_argument("--chunks", type=int, default=40, help="progress commits per answer")
    parser.add_argument("--chars", type=int, default=8000, help="characters per answer")
    parser.add_argument("--dir", type=Path, help="directory for the databases")
    parser.add_argument("--url", help="a postgresql:// URL: run on PostgreSQL instead")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, directory: Path) -> None:
    chunks = answer_chunks(args.chars, args.chunks)
    if args.url:
        import psycopg

        with psycopg.connect(args.url) as pg:
            version = pg.info.server_version
            where = f"PostgreSQL {version // 10000}.{version % 10000}, beside {pg.info.dbname}"
    else:
        where = f"SQLite {sqlite3.sqlite_version}, databases in {directory}"
    print(f"Python {platform.python_version()}, {where}, {platform.machine()}\n")
    await one_answer(directory, chunks, args.answers, args.url)
    await many_sessions(directory, chunks, args.sessions, args.rounds, args.url)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            asyncio.run(run(args, Path(directory)))
    else:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(run(args, Path(directory)))


if __name__ == "__main__":
    main()
