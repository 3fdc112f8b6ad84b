"""Protecting the Gemini quota (DESIGN §4 D1-D5) and closing idle sessions, end to end:
the real server, real SSH clients with a PTY, the fake Gemini, limits shrunk by config."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kindlessh import ConfigError, Server, ServerBusy, load_config
from kindlessh._durations import span
from kindlessh._quota import Bucket, Slots, day_start

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import FakeClock, connected, open_chat, shared_key
from .sshterm import Terminal


async def _answered(term: Terminal, question: str, answer: str) -> None:
    await term.ask(question)
    await term.wait_for(answer)
    await term.wait_for(lambda t: "ready" in t.text())


def _gated(gate: asyncio.Event, end: str = "And the end.") -> Reply:
    """An answer that stops after its first words until ``gate`` is set."""
    return Reply.text(["First words arrive. ", end]).gated(1, gate)


# ----- the arithmetic ---------------------------------------------------------------------


def test_bucket_allows_a_burst_then_one_per_refill() -> None:
    bucket = Bucket(3, 10.0, now=0.0)
    for _ in range(3):
        assert bucket.wait(0.0) == 0
        bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(10.0)
    assert bucket.wait(3.0) == pytest.approx(7.0)
    assert bucket.available(9.9) == 0
    assert bucket.wait(10.0) == 0
    bucket.take(10.0)
    # Never more than the capacity, however long it rests; a clock going back is no gift.
    assert bucket.available(10_000.0) == 3
    assert bucket.available(5.0) == 3
    assert bucket.full(10_000.0)


def test_waits_in_words_round_up() -> None:
    assert [span(s) for s in (0.2, 6.1, 59.5, 61, 3600, 5 * 3600 + 180.5)] == [
        "1 s", "7 s", "1 min", "2 min", "1 h", "5 h 4 min",
    ]  # fmt: skip
    assert day_start(datetime(2025, 3, 1, 23, 59, tzinfo=UTC)) == datetime(
        2025, 3, 1, tzinfo=UTC
    )


async def test_slots_queue_in_order_and_a_cancelled_waiter_leaves() -> None:
    slots = Slots(1, timeout=0)
    told: dict[str, list[int]] = {"b": [], "c": [], "d": []}
    order: list[str] = []
    release = asyncio.Event()

    async def user(name: str) -> None:
        async with slots.hold(told.setdefault(name, []).append):
            order.append(name)
            if name == "a":
                await release.wait()

    tasks = {name: asyncio.create_task(user(name)) for name in "abcd"}
    await asyncio.sleep(0.01)
    assert order == ["a"] and slots.waiting == 3
    tasks["c"].cancel()  # Ctrl-C while queued
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert order == ["a", "b", "d"]
    assert told["b"] == [0] and told["c"] == [1] and told["d"] == [2, 1, 0]
    assert slots.busy == 0 and slots.waiting == 0


async def test_a_waiter_gives_up_after_the_queue_timeout() -> None:
    slots = Slots(1, timeout=0.05)
    async with slots.hold(lambda ahead: None):
        with pytest.raises(ServerBusy, match="Nothing was sent"):
            async with slots.hold(lambda ahead: None):
                pass
    assert slots.busy == 0 and slots.waiting == 0


def test_quota_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[quota]\nmax_upstream = 0\n")
    with pytest.raises(ConfigError, match=r"\[quota\] max_upstream: 0 is out of range"):
        load_config(path, env={})
    path.write_text("[server]\nidle_timeout = -1\n")
    with pytest.raises(ConfigError, match=r"\[server\] idle_timeout"):
        load_config(path, env={})


# ----- per user: the bucket, the budget, one answer at a time ---------------------------


async def test_the_fourth_quick_question_is_refused_until_the_bucket_refills(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(quota={"prompts": 3, "refill_seconds": 10.0})
    clock = FakeClock()
    server.ctx.quota.clock = clock
    async with connected(server, cols=80) as term:
        for i in range(3):
            fake_gemini.enqueue(Reply.text([f"Answer {i}."]))
            await _answered(term, f"question {i}", f"Answer {i}.")
        await term.ask("question 3")
        await term.wait_for("Slow down: you can ask again in 10 s.")
        assert "> question 3" in term.text()  # still in the input line, not sent
        clock.advance(3)
        await term.send("\r")
        await term.wait_for("Slow down: you can ask again in 7 s.")
        assert len(fake_gemini.requests) == 3
        clock.advance(7)
        fake_gemini.enqueue(Reply.text(["Answer 3."]))
        await term.send("\r")
        await term.wait_for("Answer 3.")
        assert len(fake_gemini.requests) == 4


async def test_a_refused_retry_keeps_the_last_answer(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(quota={"prompts": 1, "refill_seconds": 10.0})
    server.ctx.quota.clock = FakeClock()
    async with connected(server, cols=80) as term:
        fake_gemini.enqueue(Reply.text(["The only answer."]))
        await _answered(term, "question", "The only answer.")
        await term.send("/retry\r")
        await term.wait_for("Slow down: you can ask again in 10 s.")
        assert "The only answer." in term.text()
        await term.send("/history\r")
        await term.wait_for("question (1)")  # still stored, after the recorder's flush
        (turn,) = await server.ctx.session.hub.store.load_turns("reader", 1)
        assert turn.answer == "The only answer."


async def test_a_spent_daily_budget_survives_a_restart(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    quota = {"daily_tokens": 100}
    server = await make_server(quota=quota)
    # 60 in, 45 out: the answer that crosses the budget is finished.
    fake_gemini.enqueue(Reply.text(["A long answer."], prompt_tokens=60, candidate_tokens=[45]))
    async with connected(server, cols=100) as term:
        await _answered(term, "spend it", "A long answer.")
        await term.ask("one more")
        await term.wait_for("You have used today's 100 tokens.")
    await server.close()

    again = await make_server(quota=quota)
    async with connected(again, cols=100) as term:
        await term.send("/new\r")
        await term.wait_for("New conversation")
        await term.ask("after the restart")
        await term.wait_for("You have used today's 100 tokens.")
        await term.wait_for("The budget resets at 00:00 UTC, in ")
        assert len(fake_gemini.requests) == 1


async def test_one_answer_at_a_time_per_user_across_connections(
    server: Server, fake_gemini: FakeGemini
) -> None:
    gate = asyncio.Event()
    fake_gemini.enqueue(_gated(gate))
    first = await open_chat(server, cols=80)
    second = await open_chat(server, cols=80)
    try:
        await first.ask("a long one")
        await first.wait_for("First words arrive.")
        await second.send("/new\r")
        await second.wait_for("New conversation")
        await second.ask("meanwhile")
        await second.wait_for("An answer to another of your questions is still coming")
        assert len(fake_gemini.requests) == 1
        gate.set()
        await first.wait_for("And the end.")
        await first.wait_for(lambda t: "ready" in t.text())
        fake_gemini.enqueue(Reply.text(["Now it is your turn."]))
        await second.send("\r")  # the question stayed in the input line
        await second.wait_for("Now it is your turn.")
        assert len(fake_gemini.requests) == 2
    finally:
        await first.close()
        await second.close()


async def test_usage_shows_tokens_today_and_what_is_left(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(
        quota={"daily_tokens": 1000, "prompts": 3, "refill_seconds": 10.0}
    )
    fake_gemini.enqueue(
        Reply.text(["Hi."], prompt_tokens=100, candidate_tokens=[20], thoughts_tokens=5)
    )
    async with connected(server, cols=100, rows=30) as term:
        await _answered(term, "hello", "Hi.")
        await term.send("/usage\r")
        await term.wait_for("Tokens today: 125 (input 100, output 20, thinking 5).")
        await term.wait_for("Left today: 875 of 1,000; resets at 00:00 UTC, in ")
        await term.wait_for("Questions you can ask now: 2 of 3 (one more every 10 s).")
        await term.send("/help\r")
        # The help line's columns follow the longest command; the words are fixed.
        await term.wait_for(
            lambda t: re.search(r"/usage +your tokens today and what is left", t.text()) is not None
        )


# ----- everyone: the upstream slots ---------------------------------------------------------


async def test_over_the_global_cap_a_question_waits_its_turn(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(quota={"max_upstream": 1})
    gate = asyncio.Event()
    fake_gemini.enqueue(_gated(gate), Reply.text(["Bob's answer."]))
    # Three keys: three holders, each with their own one-answer-at-a-time.
    alice = await open_chat(server, username="alice", cols=80)
    bob = await open_chat(server, shared_key(server), username="bob", cols=80)
    carol = await open_chat(server, shared_key(server), username="carol", cols=80)
    try:
        await alice.ask("first")
        await alice.wait_for("First words arrive.")
        await bob.ask("second")
        await bob.wait_for("Waiting for a free slot (next in line)")
        await carol.ask("third")
        await carol.wait_for("Waiting for a free slot (1 ahead)")
        await carol.send("\x03")  # Ctrl-C leaves the queue
        await carol.wait_for(lambda t: "ready" in t.text())
        await carol.wait_for("[stopped]")
        assert len(fake_gemini.requests) == 1
        gate.set()
        await alice.wait_for("And the end.")
        await bob.wait_for("Bob's answer.")
        await bob.wait_for(lambda t: "ready" in t.text())
        assert len(fake_gemini.requests) == 2  # carol's question was never sent
    finally:
        for term in (alice, bob, carol):
            await term.close()


async def test_a_question_that_waits_too_long_fails_with_a_message(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(quota={"max_upstream": 1, "queue_timeout": 0.3})
    gate = asyncio.Event()
    fake_gemini.enqueue(_gated(gate))
    alice = await open_chat(server, username="alice", cols=100)
    bob = await open_chat(server, shared_key(server), username="bob", cols=100)
    try:
        await alice.ask("first")
        await alice.wait_for("First words arrive.")
        await bob.ask("second")
        await bob.wait_for("The server is busy: Gemini is already answering 1 question")
        await bob.wait_for(lambda t: "ready" in t.text())
        gate.set()
        await alice.wait_for("And the end.")
        assert len(fake_gemini.requests) == 1
    finally:
        await alice.close()
        await bob.close()


# ----- idle sessions --------------------------------------------------------------------------

GOODBYE = "kindlessh: closed after 0.3 seconds without input; your conversations are saved."


async def test_an_idle_session_is_closed_with_a_goodbye(make_server: ServerFactory) -> None:
    server = await make_server(server={"idle_timeout": 0.3})
    term = await open_chat(server)
    for _ in range(6):  # typing keeps it open
        await term.send("x")
        await asyncio.sleep(0.1)
    assert not term.closed.is_set()
    await term.wait_closed(timeout=3)
    assert GOODBYE in term.raw_text()
    assert "kindlessh: bye." not in term.raw_text()


async def test_an_idle_session_is_not_closed_while_an_answer_streams(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(server={"idle_timeout": 0.3})
    gate = asyncio.Event()
    fake_gemini.enqueue(_gated(gate))
    term = await open_chat(server)
    await term.ask("take your time")
    await term.wait_for("First words arrive.")
    await asyncio.sleep(0.9)
    assert not term.closed.is_set()
    gate.set()
    await term.wait_for("And the end.")
    await term.wait_closed(timeout=3)
    assert GOODBYE in term.raw_text()
    assert fake_gemini.responses[0].completed
