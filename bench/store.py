"""Benchmark the SQLite store: saving a streamed answer, and event-loop lag under writes.

Run from the repository root::

    python bench/store.py            # 20 answers, then 50 sessions at once
    python bench/store.py --dir DIR  # put the database in DIR (default: a temp directory)

Two parts, each on a fresh database (WAL, ``synchronous=NORMAL``):

- one answer: a 2,000-token answer (about 8,000 characters) streamed the way a session
  saves it: ``add_turn``, then ``save_progress`` with the whole text so far after each of
  40 chunks (one commit per half second of a 20 s answer), then ``finish_turn``. Each answer
  is timed on its own (``time.perf_counter``), one after the other; reported are the
  total per answer and the time of each commit as the caller sees it (queue, thread hop
  and SQLite).
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
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._probe import loop_lag
from kindlessh._provider import Usage
from kindlessh._sqlite_store import SqliteStore

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
    store: SqliteStore, conversation: int, chunks: Sequence[str], calls: list[float]
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


async def one_answer(directory: Path, chunks: Sequence[str], answers: int) -> None:
    store = await SqliteStore.open(directory / "one.sqlite3")
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


async def many_sessions(directory: Path, chunks: Sequence[str], sessions: int, rounds: int) -> None:
    path = directory / "many.sqlite3"
    store = await SqliteStore.open(path)
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
    with sqlite3.connect(path) as conn:
        saved = conn.execute("SELECT COUNT(*), SUM(LENGTH(answer)) FROM turns").fetchone()
    print(
        f"\n{sessions} sessions at once, each add + {len(chunks)} progress saves + finish, "
        f"no pause between chunks; {rounds} rounds"
    )
    print(
        f"  {len(calls):,} calls in {elapsed:.2f} s ({len(calls) / elapsed:,.0f} calls/s); "
        f"{saved[0]} answers saved, {saved[1]:,} characters; db {path.stat().st_size:,} bytes"
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
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, directory: Path) -> None:
    chunks = answer_chunks(args.chars, args.chunks)
    print(
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.machine()}; databases in {directory}\n"
    )
    await one_answer(directory, chunks, args.answers)
    await many_sessions(directory, chunks, args.sessions, args.rounds)


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
