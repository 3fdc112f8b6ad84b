"""What goes over the wire: frames, bytes, hostile text, resizes and odd input."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import pytest

from kindlessh import Server

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, only_session
from .sshterm import Terminal

HOSTILE = [
    "Copy this: \x1b]52;c;cm0gLXJmIH4=\x07 done.",
    " Title \x1b]0;pwned\x07 and link \x1b]8;;http://evil\x1b\\here\x1b]8;;\x1b\\.",
    " Clear \x1b[2J\x1b[H and C1 \x9b2J \x9d0;t\x9c and DCS \x1bP+q\x1b\\ \x90x\x9c.",
    " APC \x1b_x\x1b\\ PM \x1b^x\x1b\\ bell\x07\x07 back\x08\x08 cr\rover \x01zw\x02.",
]
FORBIDDEN = ["\x1b]", "\x07", "\x9b", "\x9d", "\x90", "\x1bP", "\x1b_", "\x1b^", "\x01", "\x02"]


async def test_one_channel_write_per_rendered_frame(
    server: Server, fake_gemini: FakeGemini
) -> None:
    async with connected(server) as term:
        fake_gemini.enqueue(
            Reply.text([f"word{i} " for i in range(60)], chunk_delay=0.005)
        )
        await term.ask("count")
        await term.wait_for("word59")
        await term.wait_for(lambda t: "ready" in t.text())
        session = only_session(server)
        renders = session.screen.app.render_counter
        assert session.output.writes <= renders
        # The client received exactly as many data messages as the server wrote.
        assert term.packets == session.output.writes
        assert session.output.bytes_sent == len(term.raw_text().encode())


async def test_newlines_are_not_rewritten(term: Terminal, fake_gemini: FakeGemini) -> None:
    fake_gemini.enqueue(Reply.text(["line one\n\nline two\nline three"]))
    await term.ask("lines")
    await term.wait_for("line three")
    assert "\r\r\n" not in term.raw_text()


async def test_hostile_model_output_never_reaches_the_terminal_raw(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    fake_gemini.enqueue(Reply.text(HOSTILE, chunk_delay=0.001))
    await term.ask("say something nasty")
    await term.wait_for("zw")
    await term.wait_for(lambda t: "ready" in t.text())
    raw = term.raw_text()
    for seq in FORBIDDEN:
        assert seq not in raw, repr(seq)
    screen = term.joined()
    assert "^[]52;c;cm0gLXJmIH4=^G done." in screen
    assert "<9b>2J" in screen


async def test_the_longest_username_is_shown_whole(server: Server) -> None:
    # Longer names are refused at login (tests/test_abuse_accounts.py), never cut.
    async with connected(server, username="u" * 32) as term:
        assert "Hello " + "u" * 32 + "." in term.joined()


async def _typed(term: Terminal, session: Any, marker: str) -> int:
    """Type ``marker`` and wait for its echo; returns the writes the echo took.

    Strategy: the keystroke goes in after everything the server had to do before it; a
    repaint still pending then goes out before the echo (or with it), so it is counted
    here instead of being missed because it came late.
    """
    writes = session.output.writes
    await term.send(marker)
    await term.wait_for(lambda t: t.screen.display[-1].rstrip().endswith(marker))
    return int(session.output.writes - writes)


async def test_resize_repaints_once_and_rewraps(server: Server, fake_gemini: FakeGemini) -> None:
    async with connected(server, cols=54, rows=20) as term:
        fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse"))
        await term.ask("What are the primary colours?")
        await term.wait_for("green and blue.)")
        await term.wait_for(lambda t: "ready" in t.text())
        session = only_session(server)
        assert await _typed(term, session, "a") == 1  # the answer's last frames are out
        before_writes, before_renders = session.output.writes, session.screen.app.render_counter
        term.resize(54, 30)  # the Kindle keyboard hides: 20 -> 30 rows
        await term.wait_for(lambda t: "ready" in t.screen.display[-2])
        assert session.output.writes - before_writes == 1
        assert session.screen.app.render_counter - before_renders == 1
        # The next keystroke's echo is the next frame: no second repaint came first, and
        # the echo is a few bytes, not a repaint sent with it.
        sent = session.output.bytes_sent
        assert await _typed(term, session, "b") == 1
        assert session.output.bytes_sent - sent < 100
        assert session.screen.app.render_counter - before_renders == 2
        assert "the longest visible wavelength" in term.joined()
        writes = session.output.writes
        term.resize(30, 20)
        await term.wait_for(
            lambda t: session.output.writes > writes and "green and blue.)" in t.joined()
        )
        assert all(len(line.rstrip()) <= 30 for line in term.screen.display)


async def test_tiny_terminal_still_works(server: Server, fake_gemini: FakeGemini) -> None:
    async with connected(server, cols=20, rows=8) as term:
        fake_gemini.enqueue(Reply.text(["Tiny but whole."]))
        await term.ask("hi")
        await term.wait_for("Tiny but whole.")


async def test_invalid_utf8_from_the_client_is_replaced(
    server: Server, fake_gemini: FakeGemini
) -> None:
    async with connected(server, encoding=None) as term:
        assert term.chan is not None
        term.chan.write(b"caf\xe9 \xff\r")  # bytes that are not UTF-8
        fake_gemini.enqueue(Reply.text(["Still alive."]))
        await term.wait_for("Still alive.")
        question = fake_gemini.requests[0].json["contents"][0]["parts"][0]["text"]
        assert question == "caf\ufffd \ufffd"


async def test_long_question_is_refused_and_kept(term: Terminal, fake_gemini: FakeGemini) -> None:
    await term.send("\x1b[200~" + "x" * 3990 + "\x1b[201~")  # a paste within the limit
    await term.send("x" * 11 + "\r")  # then typing takes it over
    await term.wait_for("the limit is 4,000")
    assert "4,001 characters" in term.joined()
    assert fake_gemini.requests == []
    # Still in the input line, not lost.
    assert term.screen.display[-1].strip() == "x" * 7
    await term.send("\x03" + "x" * 11 + "\r")  # Ctrl-C clears it; a short one goes
    fake_gemini.enqueue(Reply.text(["Short enough."]))
    await term.wait_for("Short enough.")
    assert fake_gemini.requests[0].json["contents"][0]["parts"][0]["text"] == "x" * 11


async def test_megabyte_paste_is_refused_and_the_session_lives(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    await term.send("\x1b[200~" + "A" * (1 << 20) + "\x1b[201~")
    await term.wait_for("1,048,576 characters", timeout=30)
    await term.send("/new\r")
    # A client without bracketed paste: the same megabyte as raw bursts.
    await term.send("B" * (1 << 20))
    await term.wait_for("1,048,576 characters", timeout=30)
    assert "BBBB" not in term.text()
    await term.send("/help\r")
    await term.wait_for("this list")
    fake_gemini.enqueue(Reply.text(["Fine."]))
    await term.ask("ok?")
    await term.wait_for("Fine.")


async def test_no_pty_gets_a_message(server: Server, client_key: asyncssh.SSHKey) -> None:
    async with asyncssh.connect(
        "127.0.0.1", server.port, username="reader", client_keys=[client_key],
        known_hosts=None, agent_path=None,
    ) as conn:
        result = await conn.run(term_type=None)
        assert result.exit_status == 1
        assert "needs a terminal" in str(result.stdout)


async def test_unknown_command_gets_a_message(
    server: Server, client_key: asyncssh.SSHKey
) -> None:
    async with asyncssh.connect(
        "127.0.0.1", server.port, username="reader", client_keys=[client_key],
        known_hosts=None, agent_path=None,
    ) as conn:
        result = await conn.run("rm -rf /", term_type="xterm")
        assert result.exit_status == 2
        assert "unknown command 'rm -rf /'" in str(result.stdout)


async def test_eink_command_opens_the_chat(server: Server) -> None:
    async with connected(server, command="eink"):
        pass


async def test_unknown_key_is_refused(server: Server) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    try:
        await asyncssh.connect(
            "127.0.0.1", server.port, username="reader", client_keys=[stranger],
            known_hosts=None, agent_path=None,
        )
    except asyncssh.PermissionDenied:
        return
    raise AssertionError("a key that is not authorized logged in")


async def test_a_key_added_while_running_works(server: Server) -> None:
    newcomer = asyncssh.generate_private_key("ssh-ed25519")
    path = server.ctx.keys.authorized.path
    path.write_text(path.read_text() + "\n" + newcomer.export_public_key().decode())
    async with connected(server, newcomer):
        pass


async def test_second_session_on_one_connection_is_refused(
    server: Server, client_key: asyncssh.SSHKey
) -> None:
    async with asyncssh.connect(
        "127.0.0.1", server.port, username="reader", client_keys=[client_key],
        known_hosts=None, agent_path=None,
    ) as conn:
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, term_type="xterm")
        try:
            await conn.create_session(asyncssh.SSHClientSession, term_type="xterm")
        except asyncssh.ChannelOpenError:
            pass
        else:
            raise AssertionError("a second session was opened")
        chan.close()


@pytest.mark.slow
async def test_hostile_sequences_split_at_every_byte_never_reach_the_channel(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    # One event per character, and the HTTP body one byte per chunk: every payload is
    # split at every boundary on the way in, UTF-8 sequences (C1 controls) included.
    text = "".join(HOSTILE) + " end-of-hostile."
    fake_gemini.enqueue(Reply.text(list(text), split="bytes"))
    await term.ask("again, one byte at a time")
    # Thousands of one-byte chunks: slow on a busy machine; the test counts, never times.
    await term.wait_for("end-of-hostile.", timeout=60)
    await term.wait_for(lambda t: "ready" in t.text())
    raw = term.raw_text()
    for seq in FORBIDDEN:
        assert seq not in raw, repr(seq)


async def test_a_flood_of_typed_text_does_not_freeze_the_server(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    # 50,000 characters in short writes, each with a control key: no bracketed paste.
    for _ in range(250):
        await term.send("y" * 299 + "\x07")
    await term.wait_for("Nothing was pasted; the input line was cleared.", timeout=20)
    await term.send("\x03/help\r")  # Ctrl-C clears what is left in the input line
    await term.wait_for("this list")


async def test_a_paste_in_bursts_over_the_limit_is_not_cut(
    term: Terminal, fake_gemini: FakeGemini
) -> None:
    await term.send("z" * 3000)
    await term.send("z" * 1500)  # one paste, two bursts, 4,500 characters in all
    await term.send("\r")
    await term.wait_for("That message has 4,500 characters; the limit is 4,000.")
    assert fake_gemini.requests == []


class _StopsReading(asyncssh.SSHClientSession[str]):
    def __init__(self) -> None:
        self.text = ""

    def data_received(self, data: str, datatype: object) -> None:
        self.text += data


async def test_a_client_that_stops_reading_is_dropped_not_buffered(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client's window closes (it reads nothing more); the server's buffer for it
    stays under the cap and the session is dropped, while others carry on."""
    server = await make_server(server={"max_write_buffer": 8192})
    fake_gemini.enqueue(Reply.text([f"line {i} " + "x" * 60 + "\n" for i in range(400)],
                                   chunk_delay=0.002))
    async with asyncssh.connect(
        "127.0.0.1", server.port, username="reader", client_keys=[client_key],
        known_hosts=None, agent_path=None,
    ) as conn:
        chan, session = await conn.create_session(
            _StopsReading, term_type="xterm", term_size=(80, 24), window=4096,
        )
        for _ in range(250):
            if "/help" in session.text:
                break
            await asyncio.sleep(0.02)
        chan.pause_reading()  # from now on nothing is read: the window stays shut
        with caplog.at_level("WARNING", logger="kindlessh.session"):
            chan.write("tell me everything\r")
            for _ in range(500):
                if not server.ctx.session.sessions:
                    break
                if chan.is_closing():
                    # The server has closed the channel; its session record goes next.
                    await asyncio.sleep(0.02)
                    continue
                # Whole-screen repaints (Ctrl-L) as well as the answer: the output keeps
                # coming however the server paces the answer's repaints.
                chan.write("\x0c")
                await asyncio.sleep(0.02)
        assert not server.ctx.session.sessions
        assert "client stopped reading" in caplog.text
    # The server is fine for everyone else.
    async with connected(server):
        pass
