"""Live sharing across processes: an answer streams to every screen of its user, whichever
server each connection landed on, over one PostgreSQL store; a dead owner's answer is
marked interrupted."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import asyncssh

from kindlessh import Server

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, open_chat, start_serve, until

PIECES = ["First words arrive. ", "Then the middle. ", "More of it. ", "And the end."]
WHOLE = "".join(PIECES)


def _storage(url: str) -> dict[str, Any]:
    # Progress saved every 50 ms and an owner checked after 100 ms of silence: the
    # follower hears every piece, and a dead owner is found quickly.
    return {
        "url": url, "commit_interval_ms": 50, "follow_check_ms": 100, "owner_grace_ms": 200,
    }


def _slow(gate: asyncio.Event) -> Reply:
    """An answer that stops after its first words until ``gate`` is set, then comes
    piece by piece (each piece saved, so a follower sees it grow)."""
    return Reply.text(PIECES, chunk_delay=0.15).gated(1, gate)


def _only_chat(server: Server) -> Any:
    (chat,) = server.ctx.session.hub.chats
    return chat


def _lengths(server: Server) -> list[int]:
    """The answer lengths the server's one chat goes through from now on."""
    seen: list[int] = []
    conversation = _only_chat(server).conversation

    def note() -> None:
        turn = conversation.current
        if turn is not None and (not seen or seen[-1] != len(turn.answer)):
            seen.append(len(turn.answer))

    conversation.subscribe(note)
    return seen


async def _until_stored(server: Server, answer: str) -> None:
    """Wait until the store holds ``answer`` as the latest turn's text so far."""
    for _ in range(250):
        rows = await _stored(server)
        if rows and rows[-1].answer == answer:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never stored: {answer!r}")


async def _stored(server: Server, user: str = "reader") -> list[Any]:
    store = server.ctx.session.hub.store
    latest = await store.latest_conversation(user)
    assert latest is not None
    return list(await store.load_turns(user, latest))


async def _owner(
    tmp_path: Path, client_key: asyncssh.SSHKey, pg_url: str, gemini: FakeGemini,
    storage: str = "",
) -> tuple[asyncio.subprocess.Process, int]:
    """The owner as a process of its own (``kindlessh serve`` in a folder of its own, on
    the shared database, progress saved every 50 ms, ``storage`` adding TOML lines to
    its [storage]): the process and its port."""
    folder = tmp_path / "owner"
    (folder / "keys").mkdir(parents=True)
    (folder / "keys" / "authorized_keys").write_bytes(client_key.export_public_key())
    config = folder / "kindlessh.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n[gemini]\nbase_url = "{gemini.base_url}"\n'
        f'[storage]\nurl = "{pg_url}"\ncommit_interval_ms = 50\n{storage}'
    )
    proc, lines = await start_serve(
        folder, "--config", str(config), env={"GEMINI_API_KEY": "test-key"}
    )
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", "\n".join(lines))
    assert found is not None
    return proc, int(found.group(1))


async def _delete(term: Any, number: int | None) -> None:
    """``/delete number`` on ``term``'s screen, answered yes."""
    await term.send(f"/delete {number}\r")
    await term.wait_for("Delete conversation")
    await term.send("y\r")
    await term.wait_for(f"Conversation {number} deleted.")


async def _starts_anew(server: Server, term: Any, gemini: FakeGemini) -> None:
    """``server``'s one chat, whose conversation was deleted elsewhere, is emptied; the
    next question on ``term`` is stored as a new conversation, the only one."""
    await until(lambda: not _only_chat(server).conversation.turns
                and _only_chat(server).id is None)  # fmt: skip
    await term.wait_for(lambda t: "ready" in t.text())
    gemini.enqueue(Reply.text(["A fresh start."]))
    await term.ask("a new question")
    await term.wait_for("A fresh start.")
    await until(lambda: _only_chat(server).id is not None)  # saved in the background
    await _until_stored(server, "A fresh start.")
    rows = await _stored(server)
    assert [r.question for r in rows] == ["a new question"]
    assert len(await server.ctx.session.hub.store.list_conversations("reader")) == 1


async def test_a_screen_on_another_server_follows_the_answer_to_its_end(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a = await make_server(storage=_storage(pg_url))
    b = await make_server(storage=_storage(pg_url))
    gate = asyncio.Event()
    fake_gemini.enqueue(_slow(gate))
    async with connected(a) as one:
        await one.ask("tell me")
        await one.wait_for("First words arrive.")
        async with connected(b) as two:
            await two.wait_for("its answer is still coming")
            await two.wait_for("First words arrive.")
            chat = _only_chat(b)
            assert chat.conversation.following
            seen = _lengths(b)
            # Asking again while it comes is refused, as on the owner's screen.
            await two.ask("another?")
            await two.wait_for("An answer is still coming")
            gate.set()
            await two.wait_for("And the end.")
            await two.wait_for(lambda t: "ready" in t.text())
            assert WHOLE in two.joined()
            # It grew piece by piece on the follower, not in one jump at the end.
            assert len(seen) >= 3, seen
            assert seen == sorted(seen)
            assert not chat.conversation.following
            await one.wait_for("And the end.")
    rows = await _stored(b)
    assert [(r.question, r.answer, r.state) for r in rows] == [("tell me", WHOLE, "done")]
    assert rows[0].usage is not None
    # One upstream request: the follower never asked upstream.
    assert len(fake_gemini.requests) == 1


async def test_a_screen_that_reconnects_to_another_server_sees_the_rest_live(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a = await make_server(storage=_storage(pg_url))
    b = await make_server(storage=_storage(pg_url))
    gate = asyncio.Event()
    fake_gemini.enqueue(_slow(gate))
    first = await open_chat(a)
    await first.ask("tell me")
    await first.wait_for("First words arrive.")
    await first.close()  # the Kindle's Wi-Fi sleeps; A finishes the answer on its own
    async with connected(b) as second:
        await second.wait_for("its answer is still coming")
        await second.wait_for("First words arrive.")
        assert _only_chat(b).conversation.following
        gate.set()
        await second.wait_for("And the end.")
        await second.wait_for(lambda t: "ready" in t.text())
        assert WHOLE in second.joined()
        assert "[" not in second.joined().split("> tell me")[1]  # no note: it ended well
    rows = await _stored(b)
    assert [(r.answer, r.state, r.incomplete) for r in rows] == [(WHOLE, "done", False)]
    assert len(fake_gemini.requests) == 1
    assert fake_gemini.responses[0].completed


async def test_a_question_asked_on_one_server_streams_on_the_others_screen(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a = await make_server(storage=_storage(pg_url))
    b = await make_server(storage=_storage(pg_url))
    fake_gemini.enqueue(Reply.text(["An earlier answer."]))
    async with connected(a) as one:
        await one.ask("first question")
        await one.wait_for("An earlier answer.")
        await one.wait_for(lambda t: "ready" in t.text())
        async with connected(b) as two:
            await two.wait_for("An earlier answer.")  # the same conversation, on both
            gate = asyncio.Event()
            fake_gemini.enqueue(_slow(gate))
            await two.ask("second question")
            # Asked on B; A's screen, which had the conversation in memory, shows it.
            await one.wait_for("> second question")
            await one.wait_for("First words arrive.")
            assert _only_chat(a).conversation.following
            gate.set()
            await one.wait_for("And the end.")
            await one.wait_for(lambda t: "ready" in t.text())
            await two.wait_for("And the end.")
            # A asks next: its history holds B's answer, and B's screen shows A's.
            fake_gemini.enqueue(Reply.text(["A third answer."]))
            await two.wait_for(lambda t: "ready" in t.text())
            await one.ask("third question")
            await two.wait_for("A third answer.")
            contents = fake_gemini.requests[-1].json["contents"]
            assert [c["parts"][0]["text"] for c in contents] == [
                "first question", "An earlier answer.", "second question", WHOLE,
                "third question",
            ]
            # /retry on B replaces the last answer on A's screen too.
            fake_gemini.enqueue(Reply.text(["A retried answer."]))
            await two.wait_for(lambda t: "ready" in t.text())
            await two.send("/retry\r")
            await one.wait_for("A retried answer.")
            await until(lambda: "A third answer." not in one.joined())
    rows = await _stored(a)
    assert [r.question for r in rows] == ["first question", "second question", "third question"]
    assert rows[-1].answer == "A retried answer."


async def test_a_conversation_deleted_on_one_server_empties_on_the_others_screen(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a = await make_server(storage=_storage(pg_url))
    b = await make_server(storage=_storage(pg_url))
    fake_gemini.enqueue(Reply.text(["Soon gone."]))
    async with connected(a) as one:
        await one.ask("doomed question")
        await one.wait_for("Soon gone.")
        await one.wait_for(lambda t: "ready" in t.text())
        await _until_stored(a, "Soon gone.")
        number = _only_chat(a).id
        async with connected(b) as two:
            await two.wait_for("Soon gone.")  # the same conversation, on both
            await _delete(two, number)
            # A heard of it: its screen is emptied, and its next question starts anew.
            await _starts_anew(a, one, fake_gemini)


async def test_a_conversation_deleted_elsewhere_while_its_answer_comes_here_stops_it(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a = await make_server(storage=_storage(pg_url))
    b = await make_server(storage=_storage(pg_url))
    gate = asyncio.Event()
    fake_gemini.enqueue(_slow(gate))
    async with connected(a) as one:
        await one.ask("doomed question")
        await one.wait_for("First words arrive.")
        await _until_stored(a, "First words arrive. ")
        number = _only_chat(a).id
        # B, on a fresh conversation of its own, deletes A's while A is answering it.
        async with connected(b) as two:
            await two.send("/new\r")
            await two.wait_for("New conversation.")
            await _delete(two, number)
        # A stops the answer (nowhere to store it), empties, and starts anew.
        gate.set()
        await _starts_anew(a, one, fake_gemini)


async def test_an_answer_whose_owner_is_killed_is_shown_interrupted(
    pg_url: str,
    tmp_path: Path,
    make_server: ServerFactory,
    client_key: asyncssh.SSHKey,
    fake_gemini: FakeGemini,
) -> None:
    proc, owner_port = await _owner(
        tmp_path, client_key, pg_url, fake_gemini,
        "follow_check_ms = 100\nowner_grace_ms = 200\n",
    )
    try:
        fake_gemini.enqueue(Reply.text(["An earlier answer."]))
        gate = asyncio.Event()
        fake_gemini.enqueue(_slow(gate))
        follower = await make_server(storage=_storage(pg_url))
        async with connected(owner_port) as one:
            await one.ask("first question")
            await one.wait_for("An earlier answer.")
            await one.wait_for(lambda t: "ready" in t.text())
            await one.ask("tell me")
            await one.wait_for("First words arrive.")
            async with connected(follower) as two:
                await two.wait_for("First words arrive.")
                assert _only_chat(follower).conversation.following
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                # Within a few seconds, with what arrived kept.
                await two.wait_for("interrupted", timeout=5)
                await two.wait_for(lambda t: "ready" in t.text())
                assert "First words arrive." in two.joined()
                assert not _only_chat(follower).conversation.answering
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    rows = await _stored(follower)
    assert [(r.question, r.answer, r.state) for r in rows] == [
        ("first question", "An earlier answer.", "done"),
        ("tell me", "First words arrive. ", "stopped"),
    ]
    assert rows[1].incomplete and rows[1].note is not None and "interrupted" in rows[1].note


async def test_a_dead_owners_answer_opened_later_is_shown_interrupted(
    pg_url: str,
    tmp_path: Path,
    make_server: ServerFactory,
    client_key: asyncssh.SSHKey,
    fake_gemini: FakeGemini,
) -> None:
    follower = await make_server(storage=_storage(pg_url))
    proc, owner_port = await _owner(tmp_path, client_key, pg_url, fake_gemini)
    try:
        fake_gemini.enqueue(_slow(asyncio.Event()))
        async with connected(owner_port) as one:
            await one.ask("tell me")
            await one.wait_for("First words arrive.")
            await _until_stored(follower, "First words arrive. ")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    # The others have already seen it gone for longer than the grace (owner_grace_ms):
    # a worker just seen without its lock might be reconnecting, and is shown answering.
    store = follower.ctx.session.hub.store
    for _ in range(100):
        if len(await store.live_owners()) == 1:
            break
        await asyncio.sleep(0.05)
    async with connected(follower) as two:
        await two.wait_for("interrupted")
        assert "First words arrive." in two.joined()
        assert "still coming" not in two.joined()
        assert not _only_chat(follower).conversation.answering
    (row,) = await _stored(follower)
    assert row.state == "stopped" and row.answer == "First words arrive. "


async def test_ctrl_c_on_a_follower_stops_the_owners_answer(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    a = await make_server(storage=_storage(pg_url))
    b = await make_server(storage=_storage(pg_url))
    fake_gemini.enqueue(_slow(asyncio.Event()))
    async with connected(a) as one:
        await one.ask("tell me")
        await one.wait_for("First words arrive.")
        two = await open_chat(b)
        await two.wait_for("First words arrive.")
        await until(lambda: _only_chat(b).conversation.following)
        await two.send("\x03")  # Ctrl-C on the follower's screen
        await one.wait_for("stopped")
        await two.wait_for("stopped")
        await asyncio.wait_for(fake_gemini.responses[0].client_closed.wait(), 5)
        assert not _only_chat(b).conversation.answering
        await two.close()
    (row,) = await _stored(a)
    assert row.state == "stopped" and row.answer == "First words arrive. "


async def test_stopping_the_owner_cleanly_leaves_the_follower_a_whole_turn(
    pg_url: str, make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    """A server that stops (SIGTERM) marks its answer interrupted itself; the follower
    shows that, not a guess."""
    a = await make_server(storage=_storage(pg_url))
    b = await make_server(storage=_storage(pg_url))
    fake_gemini.enqueue(_slow(asyncio.Event()))
    async with connected(a) as one:
        await one.ask("tell me")
        await one.wait_for("First words arrive.")
        async with connected(b) as two:
            await two.wait_for("First words arrive.")
            await until(lambda: _only_chat(b).conversation.following)
            await a.close()
            await two.wait_for("interrupted")
        assert "First words arrive." in two.joined()
    (row,) = await _stored(b)
    assert row.state == "stopped" and row.answer == "First words arrive. "
