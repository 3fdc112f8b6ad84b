"""Conversations that survive: dropped connections, restarts, two screens, history."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import asyncssh
import pytest

from kindlessh import Server
from kindlessh._conversation import Turn
from kindlessh._hub import _safe_name, to_markdown
from kindlessh._sqlite_store import SqliteStore

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, open_chat, start_serve, stop_serve
from .sshterm import Terminal


def _gated(gate: asyncio.Event) -> Reply:
    """An answer that stops after its first words until ``gate`` is set."""
    return Reply.text(["First words arrive. ", "Then the middle. ", "And the end."]).gated(1, gate)


async def _settled(server: Server) -> None:
    """Wait until no chat is in memory, i.e. everything is stored."""
    for _ in range(250):
        if not server.ctx.session.hub.chats:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"chats still in memory: {server.ctx.session.hub.chats}")


async def _ask_and_drop(
    server: Server, key: asyncssh.SSHKey, fake_gemini: FakeGemini, gate: asyncio.Event
) -> None:
    """A screen asks for a gated answer, sees its first words, and drops (Wi-Fi sleeps)."""
    fake_gemini.enqueue(_gated(gate))
    first = await open_chat(server, key)
    await first.ask("tell me")
    await first.wait_for("First words arrive.")
    await first.close()


async def _serve_asking(
    tmp_path: Path, key: asyncssh.SSHKey, fake_gemini: FakeGemini, extra: str = ""
) -> tuple[asyncio.subprocess.Process, Terminal]:
    """``kindlessh serve`` in a subprocess, and a screen whose gated answer has begun."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "authorized_keys").write_bytes(key.export_public_key())
    config = tmp_path / "kindlessh.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n[gemini]\nbase_url = "{fake_gemini.base_url}"\n'
        + extra
    )
    fake_gemini.enqueue(_gated(asyncio.Event()))
    proc, lines = await start_serve(
        tmp_path, "--config", str(config), env={"GEMINI_API_KEY": "test-key"}
    )
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", "\n".join(lines))
    assert found is not None
    try:
        term = await open_chat(int(found.group(1)), key)
        await term.ask("tell me")
        await term.wait_for("First words arrive.")
    except BaseException:
        await stop_serve(proc)
        raise
    return proc, term


async def test_reconnecting_during_an_answer_shows_it_live(
    server: Server, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini
) -> None:
    gate = asyncio.Event()
    await _ask_and_drop(server, client_key, fake_gemini, gate)  # the Kindle's Wi-Fi sleeps

    async with connected(server) as second:
        await second.wait_for("answer is still coming")
        await second.wait_for("First words arrive.")
        gate.set()
        await second.wait_for("And the end.")
        await second.wait_for(lambda t: "ready" in t.text())
        assert "First words arrive. Then the middle. And the end." in second.joined()
        assert "[" not in second.joined().split("> tell me")[1]  # no note: it ended well
        # One upstream answer, never cut off or asked twice.
        assert len(fake_gemini.requests) == 1
        assert fake_gemini.responses[0].completed
        assert not fake_gemini.responses[0].client_closed.is_set()


async def test_reconnecting_after_the_answer_shows_it_whole(
    server: Server, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini
) -> None:
    gate = asyncio.Event()
    await _ask_and_drop(server, client_key, fake_gemini, gate)
    gate.set()
    await asyncio.wait_for(fake_gemini.responses[0].finished.wait(), 5)
    await _settled(server)

    async with connected(server) as second:
        await second.wait_for("And the end.")
        text = second.joined()
        assert "Conversation 1 reopened" in text
        assert "> tell me" in text
        assert "answer is still coming" not in text
        # The conversation goes on with its history.
        fake_gemini.enqueue(Reply.text(["Sure."]))
        await second.ask("and then?")
        await second.wait_for("Sure.")
        contents = fake_gemini.requests[1].json["contents"]
        assert contents[0]["parts"][0]["text"] == "tell me"
        assert contents[1]["parts"][0]["text"] == (
            "First words arrive. Then the middle. And the end."
        )


async def test_without_finish_on_disconnect_the_answer_stops_and_is_kept(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini
) -> None:
    server = await make_server(chat={"finish_on_disconnect": False})
    gate = asyncio.Event()
    await _ask_and_drop(server, client_key, fake_gemini, gate)
    await asyncio.wait_for(fake_gemini.responses[0].client_closed.wait(), 2)
    await _settled(server)
    async with connected(server) as second:
        await second.wait_for("[stopped: the connection closed; the text above is what")
        assert "First words arrive." in second.joined()


async def test_two_screens_of_one_user_watch_the_same_answer(
    server: Server, fake_gemini: FakeGemini
) -> None:
    gate = asyncio.Event()
    fake_gemini.enqueue(_gated(gate))
    laptop = await open_chat(server, cols=80, rows=24)
    kindle = None
    try:
        await laptop.ask("tell me")
        await laptop.wait_for("First words arrive.")
        kindle = await open_chat(server, command="eink")
        await kindle.wait_for("First words arrive.")
        gate.set()
        for term in (laptop, kindle):
            await term.wait_for("And the end.")
        # Either screen may ask the next question; both see it.
        fake_gemini.enqueue(Reply.text(["Answer two."]))
        await kindle.ask("second question")
        await laptop.wait_for("Answer two.")
        await laptop.wait_for("> second question")
    finally:
        await laptop.close()
        if kindle is not None:
            await kindle.close()


async def test_restart_between_turns_keeps_the_conversation(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server()
    fake_gemini.enqueue(Reply.text(["Paris is the capital."]))
    term = await open_chat(server)
    await term.ask("capital of France?")
    await term.wait_for("Paris is the capital.")
    await term.close()
    await server.close()

    server = await make_server()
    async with connected(server) as term:
        await term.wait_for("Paris is the capital.")
        fake_gemini.enqueue(Reply.text(["About 2 million."]))
        await term.ask("population?")
        await term.wait_for("About 2 million.")
        assert [c["parts"][0]["text"] for c in fake_gemini.requests[1].json["contents"]] == [
            "capital of France?",
            "Paris is the capital.",
            "population?",
        ]


@pytest.mark.parametrize("finish_on_disconnect", [True, False])
async def test_stopping_the_server_mid_answer_keeps_the_text_marked(
    make_server: ServerFactory, fake_gemini: FakeGemini,
    finish_on_disconnect: bool,
) -> None:
    server = await make_server(chat={"finish_on_disconnect": finish_on_disconnect})
    fake_gemini.enqueue(_gated(asyncio.Event()))
    term = await open_chat(server)
    await term.ask("tell me")
    await term.wait_for("First words arrive.")
    await server.close()
    await term.wait_closed()
    assert "shutting down" in term.raw_text()

    server = await make_server()
    async with connected(server) as term:
        await term.wait_for("[interrupted: the server stopped; the text above is what")
        assert "First words arrive." in term.joined()
    store = server.ctx.session.hub.store
    (turn,) = await store.load_turns("reader", 1)
    assert turn.incomplete and turn.state == "stopped"
    assert turn.answer == "First words arrive. "


async def test_sigterm_mid_answer_saves_it_and_says_goodbye(
    tmp_path: Path, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini
) -> None:
    """The real command: SIGTERM ends sessions with a goodbye within 5 s and the
    partial answer is in the database, marked incomplete."""
    proc, term = await _serve_asking(tmp_path, client_key, fake_gemini)
    code = await stop_serve(proc)
    await term.wait_closed()
    assert code == 0
    assert "the server is shutting down" in term.raw_text()
    store = await SqliteStore.open(tmp_path / "data" / "kindlessh.sqlite3")
    try:
        (turn,) = await store.load_turns("reader", 1)
    finally:
        await store.close()
    assert turn.answer == "First words arrive. "
    assert turn.incomplete and turn.note and "the server stopped" in turn.note


async def test_users_see_only_their_own_conversations(
    server: Server, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.text(["Alice's answer."]))
    alice = await open_chat(server, username="alice")
    await alice.ask("alice's secret question")
    await alice.wait_for("Alice's answer.")
    await alice.close()
    await _settled(server)

    async with connected(server, username="bob") as bob:
        assert "secret" not in bob.joined()
        await bob.send("/history\r")
        await bob.wait_for("No conversations yet.")
        await bob.send("/open 1\r")
        await bob.wait_for("No conversation 1.")
        await bob.send("/delete 1\r")
        await bob.wait_for("No conversation 1.")
        assert "secret" not in bob.joined()
    assert len(await server.ctx.session.hub.store.load_turns("alice", 1)) == 1


async def test_history_open_delete_and_export(
    server: Server, fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    async with connected(server, cols=54, rows=20) as term:
        fake_gemini.enqueue(Reply.text(["Blue."]))
        await term.ask("colour of the sky?")
        await term.wait_for("Blue.")
        await term.send("/new\r")
        await term.wait_for("New conversation.")
        fake_gemini.enqueue(Reply.text(["Four."]))
        await term.ask("two plus two?")
        await term.wait_for("Four.")

        await term.send("/history\r")
        await term.wait_for("Your conversations")
        rows = [r for r in term.screen.display if re.match(r"[ *]\s*\d+ \w{3} \d\d", r[2:])]
        assert len(rows) == 2, term.text()
        assert "two plus two? (1)" in rows[0] and rows[0][2] == "*"  # newest first, shown
        assert "colour of the sky? (1)" in rows[1]

        await term.send("/open 1\r")
        await term.wait_for("Conversation 1 reopened")
        await term.wait_for("Blue.")
        assert "Four." not in term.text()
        fake_gemini.enqueue(Reply.text(["Because of Rayleigh scattering."]))
        await term.ask("why?")
        await term.wait_for("Rayleigh")
        assert len(fake_gemini.requests[2].json["contents"]) == 3  # its own history only

        await term.send("/export\r")
        await term.wait_for("Saved as Markdown")
        exported = list((tmp_path / "data" / "exports" / "reader").glob("*.md"))
        assert len(exported) == 1
        assert exported[0].name in "".join(row.strip() for row in term.screen.display)
        doc = exported[0].read_text()
        assert "> colour of the sky?" in doc and "Blue." in doc and "Rayleigh" in doc

        await term.send("/delete 1\r")
        await term.wait_for("Delete conversation 1,")
        await term.send("n\r")
        await term.wait_for("Conversation 1 was not deleted.")
        await term.send("/delete 2\r")
        await term.wait_for("Delete conversation 2,")
        await term.send("y\r")
        await term.wait_for("Conversation 2 deleted.")
        rows = await server.ctx.session.hub.store.list_conversations("reader")
        assert [r.id for r in rows] == [1]


async def test_deleting_the_conversation_on_screen_starts_a_new_one(
    term: Terminal, fake_gemini: FakeGemini, server: Server
) -> None:
    fake_gemini.enqueue(Reply.text(["Gone soon."]))
    await term.ask("temporary")
    await term.wait_for("Gone soon.")
    await term.send("/delete 1\r")
    await term.wait_for("Type y and Enter")
    await term.send("yes\r")
    await term.wait_for("Conversation 1 deleted.")
    assert "Gone soon." not in term.text()
    assert await server.ctx.session.hub.store.list_conversations("reader") == []


async def test_retry_replaces_the_stored_answer(
    term: Terminal, fake_gemini: FakeGemini, server: Server
) -> None:
    fake_gemini.enqueue(Reply.text(["Draft."]), Reply.text(["Better."]))
    await term.ask("write")
    await term.wait_for("Draft.")
    await term.send("/retry\r")
    await term.wait_for("Better.")
    await term.wait_for(lambda t: "ready" in t.text())
    await term.send("/history\r")
    await term.wait_for("write (1)")
    (turn,) = await server.ctx.session.hub.store.load_turns("reader", 1)
    assert turn.answer == "Better."


async def test_hostile_history_is_sanitised_when_replayed(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    hostile = "Copy \x1b]52;c;cm0gLXJmIH4=\x07 and \x9b2J title \x1b]0;pwned\x07 done."
    (tmp_path / "data").mkdir()
    store = await SqliteStore.open(tmp_path / "data" / "kindlessh.sqlite3")
    conversation = await store.new_conversation("reader", "evil \x1b[2J title")
    turn = await store.add_turn(conversation, "q \x1b]52;c;eA==\x07", "gemini-2.5-flash")
    await store.finish_turn(turn, answer=hostile, thoughts="", state="done", incomplete=False)
    await store.close()

    server = await make_server()
    async with connected(server) as term:
        await term.wait_for("done.")
        await term.send("/history\r")
        await term.wait_for("Your conversations")
        raw = term.raw_text()
        for bad in ("\x1b]52", "\x1b]0;", "\x9b", "\x07", "\x1b[2J title"):
            assert bad not in raw, repr(bad)
        assert "^[]52;c;cm0gLXJmIH4=^G" in term.joined()



async def test_sigkill_loses_at_most_the_last_commit_interval(
    tmp_path: Path, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini
) -> None:
    """Progress is committed while the answer streams: after a SIGKILL the database
    holds the text that arrived, and the next start marks the turn interrupted."""
    proc, term = await _serve_asking(
        tmp_path, client_key, fake_gemini, "[storage]\ncommit_interval_ms = 50\n"
    )
    database = tmp_path / "data" / "kindlessh.sqlite3"
    try:
        # Read the live database from outside (WAL allows a reader beside the writer).
        for _ in range(250):
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                row = db.execute("SELECT answer, state FROM turns").fetchone()
            if row == ("First words arrive. ", "streaming"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"the streaming answer was never committed: {row}")
    finally:
        proc.kill()
        await proc.wait()
    await term.wait_closed()
    store = await SqliteStore.open(database)
    try:
        assert await store.recover_interrupted() == 1
        (turn,) = await store.load_turns("reader", 1)
    finally:
        await store.close()
    assert turn.answer == "First words arrive. "
    assert turn.incomplete and turn.state == "stopped"


async def test_deleting_on_one_screen_empties_the_other_and_its_next_question_is_kept(
    server: Server, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.text(["First."]))
    laptop = await open_chat(server, cols=80, rows=24)
    kindle = None
    try:
        await laptop.ask("one")
        await laptop.wait_for("First.")
        kindle = await open_chat(server)
        await kindle.wait_for("First.")
        await laptop.send("/delete 1\r")
        await laptop.wait_for("Delete conversation 1,")
        await laptop.send("y\r")
        await laptop.wait_for("Conversation 1 deleted.")
        await kindle.wait_for("This conversation was deleted; a new one starts here.")
        assert "First." not in kindle.text()
        fake_gemini.enqueue(Reply.text(["Second."]))
        await kindle.ask("two")
        await kindle.wait_for("Second.")
        await laptop.wait_for("Second.")
        await kindle.send("/history\r")
        await kindle.wait_for("two (1)")
        rows = await server.ctx.session.hub.store.list_conversations("reader")
        assert [(r.title, r.turn_count) for r in rows] == [("two", 1)]
    finally:
        await laptop.close()
        if kindle is not None:
            await kindle.close()


async def test_an_export_that_cannot_be_written_says_so(
    make_server: ServerFactory, fake_gemini: FakeGemini,
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the export folder should be")
    server = await make_server(storage={"export_dir": str(blocker)})
    async with connected(server) as term:
        fake_gemini.enqueue(Reply.text(["Answer."]))
        await term.ask("q")
        await term.wait_for("Answer.")
        await term.send("/export\r")
        await term.wait_for("The export could not be written on the server")


def test_exports_are_sanitised_and_folders_never_shared() -> None:
    names = ["anna", "a b", "a_b", ".", "_", "ä", "ö"]
    folders = [_safe_name(n) for n in names]
    assert len(set(folders)) == len(names)
    assert folders[0] == "anna" and folders[2] == "a_b"
    assert all(f and not f.startswith(".") and "/" not in f for f in folders)

    turn = Turn("q \x1b]0;x\x07", answer="a \x1b]52;c;eA==\x07", note="n \x9b2J")
    chat = SimpleNamespace(conversation=SimpleNamespace(turns=[turn]))
    doc = to_markdown(chat, datetime(2026, 11, 29, tzinfo=UTC))  # type: ignore[arg-type]
    assert "\x1b" not in doc and "\x07" not in doc and "\x9b" not in doc
    assert "^[]52;c;eA==^G" in doc
