"""Screen profiles: how a connection chooses one, and what e-ink changes on the wire."""

from __future__ import annotations

import re

import pytest

from kindlessh import Server
from kindlessh._profile import choose_profile

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import connected, only_session
from .sshterm import Terminal

COLOUR_256_OR_24 = re.compile(r"\x1b\[[0-9;]*(38|48);[25];")


@pytest.mark.parametrize(
    ("command", "client", "key", "default", "expected"),
    [
        ("eink", {"KINDLESSH_PROFILE": "smooth"}, {}, "smooth", ("eink", "the ssh command")),
        ("", {"KINDLESSH_PROFILE": "eink"}, {"KINDLESSH_PROFILE": "smooth"}, "smooth",
         ("eink", "KINDLESSH_PROFILE from the client")),
        ("", {}, {"KINDLESSH_PROFILE": "eink"}, "smooth",
         ("eink", "the key's environment= option")),
        ("", {"KINDLESSH_PROFILE": "blink"}, {}, "eink", ("eink", "[ui] profile in the config")),
        ("chat", {"OTHER": "eink"}, {}, "smooth", ("smooth", "[ui] profile in the config")),
        ("", {}, {}, "nonsense", ("smooth", "the default")),
    ],
)
def test_profile_choice_first_match_wins(
    command: str, client: dict[str, str], key: dict[str, str], default: str,
    expected: tuple[str, str],
) -> None:
    assert choose_profile(command, client, key, default) == expected


async def test_eink_from_the_ssh_command_is_one_bit(
    server: Server, fake_gemini: FakeGemini
) -> None:
    async with connected(server, command="eink", term_type="xterm") as term:
        fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse"))
        await term.ask("colours?")
        await term.wait_for("green and blue.)")
        await term.send("/help\r")
        await term.wait_for("Screen: eink (from the ssh command)")
        assert not COLOUR_256_OR_24.search(term.raw_text())
        assert "\x1b[6n" not in term.raw_text()  # no cursor position requests
        assert "\x1b[?1000h" not in term.raw_text()  # no mouse


async def test_smooth_uses_colour(term: Terminal, fake_gemini: FakeGemini) -> None:
    await term.ask("colours?")
    await term.wait_for("green and blue.)")
    assert re.search(r"\x1b\[[0-9;]*3[0-7]", term.raw_text())  # the question's colour
    assert not re.search(r"\x1b\[[0-9;]*38;2;", term.raw_text())  # never truecolor


async def test_profile_from_the_client_environment(server: Server) -> None:
    async with connected(server, env={"KINDLESSH_PROFILE": "eink"}) as term:
        await term.send("/help\r")
        await term.wait_for("Screen: eink (from KINDLESSH_PROFILE from the client)")


async def test_profile_from_the_key_option(server: Server) -> None:
    path = server.ctx.keys.authorized.path
    path.write_text('environment="KINDLESSH_PROFILE=eink" ' + path.read_text())
    async with connected(server) as term:
        await term.send("/help\r")
        await term.wait_for("Screen: eink (from the key's environment= option)")


async def test_switching_profiles_live(term: Terminal) -> None:
    await term.send("/eink\r")
    await term.wait_for("Screen profile: eink.")
    await term.send("/help\r")
    await term.wait_for("Screen: eink")
    await term.send("/smooth\r")
    await term.wait_for("Screen profile: smooth.")


async def test_eink_commits_at_most_once_per_interval_and_loses_nothing(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(ui={"eink_interval_ms": 250})
    words = [f"w{i:02d} " for i in range(40)]
    fake_gemini.enqueue(Reply.text(words, chunk_delay=0.025))
    async with connected(server, command="eink", cols=80, rows=30) as term:
        await term.ask("count")
        await term.wait_for("w39")
        await term.wait_for(lambda t: "ready" in t.text())
        session = only_session(server)
        turn = session.screen.conversation.current
        commits = session.screen.throttle.commits
        # Leading edge, then one per 250 ms while streaming, then the final state.
        assert commits <= turn.duration / 0.25 + 2, (commits, turn.duration)
        assert commits >= 2
        assert "".join(words).strip() in term.joined()


async def test_typing_echoes_at_once_while_an_eink_answer_streams(
    make_server: ServerFactory, fake_gemini: FakeGemini
) -> None:
    server = await make_server(ui={"eink_interval_ms": 5000})
    fake_gemini.enqueue(Reply.hang(["Slow words"]))
    async with connected(server, command="eink") as term:
        await term.ask("go")
        await term.wait_for("Slow words")  # leading edge: the first words at once
        await term.send("typed")
        await term.wait_for("> typed", timeout=1.0)  # far less than the 5 s interval


async def test_eink_pages_instead_of_scrolling(server: Server, fake_gemini: FakeGemini) -> None:
    lines = [f"Line {i:02d} of a long answer.\n" for i in range(45)]
    fake_gemini.enqueue(Reply.text(lines))
    async with connected(server, command="eink", cols=54, rows=20) as term:
        await term.ask("a long answer please")
        await term.wait_for("Line 44")
        await term.wait_for(lambda t: "ready" in t.text())
        rows = [row.rstrip() for row in term.screen.display]
        # 18 transcript rows; the question starts page 0, and each flip keeps one line.
        assert rows[0].startswith("Line "), rows[0]
        assert "Line 44 of a long answer." in rows
        await term.send("\x1b[5~")  # PgUp
        await term.wait_for("page 2/3")
        earlier = [row.rstrip() for row in term.screen.display]
        assert "Line 44 of a long answer." not in earlier
        await term.send("/up\r")
        await term.wait_for("page 1/3")
        assert "> a long answer please" in term.text()
        await term.send("/down\r/down\r")
        await term.wait_for("Line 44 of a long answer.")


async def test_eink_resize_is_one_repaint_with_nothing_lost(
    server: Server, fake_gemini: FakeGemini
) -> None:
    lines = [f"Row {i:02d} of the answer.\n" for i in range(25)]
    fake_gemini.enqueue(Reply.text(lines))
    async with connected(server, command="eink", cols=54, rows=20) as term:
        await term.ask("rows")
        await term.wait_for("Row 24")
        await term.wait_for(lambda t: "ready" in t.text())
        session = only_session(server)
        writes = session.output.writes
        term.resize(54, 30)  # the keyboard hides
        await term.wait_for(lambda t: "ready" in t.screen.display[-2])
        await term.wait_for("> rows")  # the whole answer fits again: page 0
        assert session.output.writes - writes == 1
        text = term.text()
        for i in range(25):
            assert text.count(f"Row {i:02d} of the answer.") == 1


async def test_a_very_large_terminal_works(server: Server, fake_gemini: FakeGemini) -> None:
    async with connected(server, cols=300, rows=100) as term:
        fake_gemini.enqueue(Reply.fixture("01_text_multichunk.sse"))
        await term.ask("colours?")
        await term.wait_for("green and blue.)")
        assert "ready" in term.screen.display[98]


@pytest.mark.parametrize(("profile", "interval_ms"), [("eink", 250), ("smooth", 100)])
async def test_writes_while_streaming_follow_the_profile_interval(
    make_server: ServerFactory,
    fake_gemini: FakeGemini,
    profile: str,
    interval_ms: int,
) -> None:
    """Channel writes, not only commits: 40 chunks at 40/s arrive; the client gets at
    most one write per interval while they stream, plus the question's own repaint,
    the leading edge and the final state."""
    server = await make_server(ui={f"{profile}_interval_ms": interval_ms})
    words = [f"w{i:02d} " for i in range(40)]
    fake_gemini.enqueue(Reply.text(words, chunk_delay=0.025))
    async with connected(server, command=profile, cols=80, rows=30) as term:
        await term.send("count")
        await term.wait_for("> count")
        session = only_session(server)
        before = session.output.writes
        await term.send("\r")
        await term.wait_for("w39")
        await term.wait_for(lambda t: "ready" in t.text())
        writes = session.output.writes - before
        turn = session.screen.conversation.current
        allowed = turn.duration / (interval_ms / 1000) + 3
        assert writes <= allowed, (writes, allowed, turn.duration)
        assert writes < len(words) / 2  # far fewer than one per chunk
        assert term.packets == session.output.writes
        assert "".join(words).strip() in term.joined()
