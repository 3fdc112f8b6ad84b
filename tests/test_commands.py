"""The chat screen below SSH: keys through a prompt-toolkit pipe, a real hub over a real
store in tmp_path, and a scripted provider; every slash command, paging, and the paste
limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kindlessh._commands import COMMANDS, KEYS_HELP
from kindlessh._config import QuotaConfig
from kindlessh._provider import Finish, TextDelta, ThoughtDelta, Usage

from .chatscreen import USER, Screen, chat_screen
from .helpers import until

PAGE_UP, PAGE_DOWN = "\x1b[5~", "\x1b[6~"


async def stored(screen: Screen, title: str, turns: int = 1) -> int:
    """A finished conversation of the reader in the store, made without the screen."""
    number = await screen.store.new_conversation(USER, title)
    for i in range(turns):
        turn = await screen.store.add_turn(number, f"{title} {i}", "test-model")
        await screen.store.finish_turn(turn, answer=f"answer {i}", thoughts="", state="done",
                                       incomplete=False, finish_reason="STOP")
    return number


# ----- /help and unknown commands -------------------------------------------------------


async def test_help_lists_every_registered_command_in_order(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        text = await screen.command("/help", says="Commands:")
        lines = text.splitlines()
        assert lines[0] == "Commands:"
        listed = [c for c in COMMANDS if c.listed]
        body = lines[1 : 1 + len(listed)]
        for command, line in zip(listed, body, strict=True):
            assert line.split()[0] == command.shown.split()[0]
            assert line.endswith(command.help)
        for command in COMMANDS:  # every command shows, /down beside /up
            assert command.names[0] in text
        assert lines[1 + len(listed):] == [
            KEYS_HELP, "Model: test-model", "Screen: smooth (from the test)"
        ]
        assert await screen.command("/?", says="Commands:") == text
        assert await screen.command("/HELP", says="Commands:") == text  # any case


async def test_help_shows_the_same_commands_and_meanings_as_before(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        text = await screen.command("/help", says="Commands:")
    lines = text.splitlines()[1:]
    shown = [" ".join(line.split()) for line in lines[: lines.index(KEYS_HELP)]]
    assert shown == [
        "/new start a fresh conversation",
        "/history list your conversations (/history 2: older)",
        "/open N reopen conversation N and continue it",
        "/delete N delete conversation N (asks first)",
        '/search WORDS search your conversations ("a phrase", pre*)',
        "/export [FMT] save this conversation (md, txt, epub)",
        "/retry ask the last question again",
        "/usage your tokens today and what is left",
        "/eink e-ink screen: few repaints, pages",
        "/thoughts show or hide the model's thinking",
        "/web answers with web sources (on/off)",
        "/system this chat's instructions (TEXT, off)",
        "/model NAME list the models; /model NAME switches",
        "/smooth laptop screen: smooth streaming",
        "/glyphs M emoji as words (full, kindle, ascii)",
        "/up /down page back and forth (or PgUp/PgDn)",
        "/top first page of the latest answer (or Home)",
        "/quit leave (also Ctrl-D on an empty line)",
        "/help this list",
    ]


async def test_an_unknown_command_says_so_as_an_error(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        await screen.command("/frobnicate now", says="Unknown command")
        item = screen.ui.items[-1]
        assert item.notice is not None and item.notice.kind == "error"
        assert item.notice.text == "Unknown command /frobnicate; /help lists commands."
        assert screen.provider.requests == []  # never sent as a question


# ----- conversations --------------------------------------------------------------------


async def test_new_starts_a_conversation_without_the_earlier_turns(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        await screen.ask("first question")
        old = screen.ui.chat
        await screen.command("/new", says="New conversation.")
        assert screen.last() == "New conversation. Earlier turns are no longer sent to the model."
        assert screen.ui.chat is not old
        assert [i.turn for i in screen.ui.items if i.turn is not None] == []
        await screen.ask("second question")
        assert [m.text for m in screen.provider.requests[-1].messages] == ["second question"]


async def test_history_pages_through_the_conversations(tmp_path: Path) -> None:
    # 12 rows: five conversations a page (the rest of the screen is heading, footer,
    # status and input).
    async with chat_screen(tmp_path, rows=12) as screen:
        assert await screen.command("/history", says="No conversations") == (
            "No conversations yet."
        )
        for i in range(1, 7):
            await stored(screen, f"topic {i}", turns=i)
        await screen.ask("the newest")
        first = (await screen.command("/history", says="Your conversations")).splitlines()
        assert first[0] == "Your conversations (newest first):"
        assert len(first) == 1 + 5 + 1
        assert first[1].startswith("*  7 ") and first[1].endswith(" the newest (1)")
        assert [line.split()[-2] for line in first[2:6]] == ["6", "5", "4", "3"]
        assert first[-1] == (
            "/open N reopens one (* is this one; turns in brackets); "
            "/history 2 shows older ones."
        )
        second = (await screen.command("/history 2", says="Page 2:")).splitlines()
        assert second[1].startswith("   2 ") and second[1].endswith(" topic 2 (2)")
        assert second[2].endswith(" topic 1 (1)")
        assert second[-1] == "/open N reopens one (* is this one; turns in brackets)."
        assert await screen.command("/history 3", says="older") == "No older conversations."
        await screen.command("/history two", says="Give a number")
        assert screen.ui.items[-1].notice is not None
        assert screen.ui.items[-1].notice.kind == "error"


async def test_open_reopens_a_stored_conversation_and_continues_it(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        number = await stored(screen, "old topic", turns=2)
        await screen.ask("current question")
        current = screen.ui.chat.id
        said = await screen.command(f"/open {number}", says="reopened")
        assert said.startswith(f"Conversation {number} reopened:")
        assert [i.turn.question for i in screen.ui.items if i.turn is not None] == [
            "old topic 0", "old topic 1"
        ]
        await screen.ask("and more")
        assert [m.text for m in screen.provider.requests[-1].messages] == [
            "old topic 0", "answer 0", "old topic 1", "answer 1", "and more"
        ]
        await screen.command(f"/open #{current}", says="reopened")
        assert screen.ui.chat.id == current
        assert await screen.command(f"/open {current}", says="on the screen") == (
            f"Conversation {current} is the one on the screen."
        )
        assert await screen.command("/open 999", says="No conversation") == (
            "No conversation 999."
        )
        await screen.command("/open", says="Give a number, as shown by /history: /open 3")


async def test_delete_asks_first_and_only_y_deletes(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        number = await stored(screen, "doomed", turns=1)
        asked = await screen.command(f"/delete {number}", says="Delete conversation")
        assert asked == (
            f'Delete conversation {number}, "doomed" (1 turn)? '
            "Type y and Enter to delete it; anything else keeps it."
        )
        assert await screen.command("n", says="not deleted") == (
            f"Conversation {number} was not deleted."
        )
        assert screen.ui.input.text == ""  # the answer is not left in the input line
        assert len(await screen.store.list_conversations(USER)) == 1

        # Anything else keeps it, and is then handled as typed: here, a question.
        await screen.command(f"/delete {number}", says="Delete conversation")
        await screen.command("keep it and answer this", says="not deleted")
        await until(lambda: not screen.ui.conversation.answering
                    and screen.ui.conversation.current is not None)
        assert screen.provider.requests[-1].messages[-1].text == "keep it and answer this"
        assert len(await screen.store.list_conversations(USER)) == 2

        await screen.command(f"/delete {number}", says="Delete conversation")
        assert await screen.command("Y", says="deleted") == f"Conversation {number} deleted."
        assert [row.title for row in await screen.store.list_conversations(USER)] == [
            "keep it and answer this"
        ]
        assert await screen.command(f"/delete {number}", says="No conversation") == (
            f"No conversation {number}."
        )


async def test_deleting_the_conversation_on_the_screen_empties_it(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        await screen.ask("short-lived")
        number = screen.ui.chat.id
        await screen.command(f"/delete {number}", says="(1 turn)")
        await screen.command("yes", says="deleted")
        assert "This conversation was deleted; a new one starts here." in screen.notices()
        assert [i.turn for i in screen.ui.items if i.turn is not None] == []


async def test_export_saves_the_conversation_as_markdown(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        await screen.command("/export", says="Nothing to export yet: ask a question first.")
        await screen.ask("what is exported?")
        said = await screen.command("/export", says="Saved as Markdown on the server: ")
        path = Path(said.removeprefix("Saved as Markdown on the server: "))
        assert path.parent.parent == tmp_path / "exports"
        assert "> what is exported?\n\nFine." in path.read_text(encoding="utf-8")


async def test_usage_reports_tokens_and_limits_from_the_quota(tmp_path: Path) -> None:
    limits = QuotaConfig(prompts=3, refill_seconds=10.0, daily_tokens=1000)
    async with chat_screen(tmp_path, quota=limits) as screen:
        screen.provider.replies.append(
            [TextDelta("Hi."), Usage(input_tokens=100, output_tokens=20, thoughts_tokens=5),
             Finish("STOP")]
        )
        await screen.ask("hello")
        lines = (await screen.command("/usage", says="Tokens today")).splitlines()
        assert lines[0] == "Tokens today: 125 (input 100, output 20, thinking 5)."
        assert lines[1].startswith("Left today: 875 of 1,000; resets at 00:00 UTC, in ")
        assert lines[2] == "Questions you can ask now: 2 of 3 (one more every 10 s)."


async def test_usage_without_limits_says_so(tmp_path: Path) -> None:
    async with chat_screen(tmp_path, quota=QuotaConfig(prompts=0, daily_tokens=0)) as screen:
        lines = (await screen.command("/usage", says="Tokens today")).splitlines()
        assert lines[0] == "Tokens today: 0 (input 0, output 0, thinking 0)."
        assert lines[1].startswith("No daily limit; the count starts again at 00:00 UTC, in ")
        assert lines[2] == "Questions: no limit on how often you ask."


async def test_retry_asks_the_last_question_again(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        await screen.command("/retry", says="Nothing to retry yet: ask a question first.")
        screen.provider.replies.append([TextDelta("First try."), Finish("STOP")])
        await screen.ask("again?")
        gate = asyncio.Event()
        screen.provider.replies.append([TextDelta("Second "), gate, TextDelta("try."),
                                        Finish("STOP")])
        screen.send("/retry\r")
        await until(lambda: len(screen.provider.requests) == 2)
        turns = [i.turn for i in screen.ui.items if i.turn is not None]
        assert [t.question for t in turns] == ["again?"]  # replaced, not added
        assert screen.provider.requests[1].messages[-1].text == "again?"
        assert len(screen.provider.requests[1].messages) == 1  # the old answer is not sent
        await screen.command("/retry", says="An answer is still coming")
        gate.set()
        await until(lambda: not screen.ui.conversation.answering)
        await until(lambda: any("Second try." in line for line in screen.lines()))


async def test_thoughts_toggles_the_models_thinking(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        screen.provider.replies.append(
            [ThoughtDelta("Pondering the question."), TextDelta("Answer."), Finish("STOP")]
        )
        await screen.ask("think first")
        assert not any("Pondering" in line for line in screen.lines())
        await screen.command("/thoughts", says="Thinking is shown, marked with │")
        assert screen.ui.show_thoughts
        assert "│ Pondering the question." in screen.lines()
        await screen.command("/thoughts", says="Thinking is hidden; only answers are shown.")
        assert not screen.ui.show_thoughts
        assert not any("Pondering" in line for line in screen.lines())


async def test_eink_and_smooth_switch_the_profile_live(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        assert screen.ui.throttle.interval == 0.05
        await screen.command("/eink", says="Screen profile: eink.")
        assert screen.ui.profile.name == "eink" and screen.ui.scrollback.paged
        assert screen.ui.throttle.interval == 1.0
        assert not screen.ui.scrollback.look(80).color  # e-ink is 1-bit
        await screen.command("/smooth", says="Screen profile: smooth.")
        assert screen.ui.profile.name == "smooth" and not screen.ui.scrollback.paged
        assert screen.ui.throttle.interval == 0.05
        assert screen.ui.scrollback.look(80).color


async def test_up_and_down_scroll_a_smooth_screen(tmp_path: Path) -> None:
    async with chat_screen(tmp_path, rows=12) as screen:
        for i in range(30):
            screen.ui.say(f"line {i}")
        await until(lambda: screen.lines()[-1] == "· line 29")
        screen.send("/up\r")
        await until(lambda: screen.ui.scrollback.lines_up)
        assert screen.ui.scrollback.lines_up == 12 - 5  # a screen less the fixed rows
        assert screen.lines()[-1] == "· line 22"
        assert "scrolled up" in screen.ui._status()[0][1]
        screen.send(PAGE_UP)
        await until(lambda: screen.ui.scrollback.lines_up == 14)
        screen.send(PAGE_DOWN)
        await until(lambda: screen.ui.scrollback.lines_up == 7)
        screen.send("/down\r")
        await until(lambda: screen.ui.scrollback.lines_up == 0)
        assert screen.lines()[-1] == "· line 29"


async def test_up_and_down_page_an_eink_screen(tmp_path: Path) -> None:
    async with chat_screen(tmp_path, profile="eink", rows=12) as screen:
        screen.provider.replies.append(
            [TextDelta("\n".join(f"- item {i}" for i in range(1, 31))), Finish("STOP")]
        )
        await screen.ask("a long list")
        await until(lambda: " • item 30" in screen.lines())
        assert screen.lines()[0] == " • item 26"  # the question's page flipped 3 times
        screen.send("/up\r")
        await until(lambda: screen.ui.scrollback.page_back == 1)
        assert screen.lines()[0] == " • item 17"  # one page (9 new lines) back
        assert screen.ui._status()[0][1].startswith(" page 3/4 - PgDn reads on")
        screen.send(PAGE_DOWN)
        await until(lambda: screen.ui.scrollback.page_back == 0)
        assert screen.lines()[0] == " • item 26"


@pytest.mark.parametrize("line", ["/quit", "/exit", "/q", "/QUIT"])
async def test_quit_and_its_aliases_leave(tmp_path: Path, line: str) -> None:
    async with chat_screen(tmp_path) as screen:
        screen.send(line + "\r")
        await asyncio.wait_for(screen.task, 5.0)
        assert not screen.ui.app.is_running


async def test_ctrl_d_leaves_only_on_an_empty_line(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        screen.send("ab\x01\x04")  # Ctrl-A to the start, Ctrl-D deletes "a"
        await until(lambda: screen.ui.input.text == "b")
        assert not screen.task.done()
        screen.send("\x05\x15\x04")  # Ctrl-E, Ctrl-U clears the line; Ctrl-D now leaves
        await asyncio.wait_for(screen.task, 5.0)


# ----- questions and pastes -------------------------------------------------------------


async def test_a_refused_question_stays_in_the_input_line(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        long = "x" * 101  # the limit is 100 characters here
        await screen.command(long, says="That message has 101 characters; the limit is 100.")
        assert screen.ui.input.text == long
        assert screen.provider.requests == []


async def test_a_paste_far_over_the_limit_is_refused_once_whole(tmp_path: Path) -> None:
    async with chat_screen(tmp_path) as screen:
        screen.send("\x1b[200~" + "y" * 150 + "\x1b[201~")
        await until(lambda: screen.ui.input.text == "y" * 150)  # within twice the limit
        screen.send("\x1b[200~" + "z" * 300 + "\x1b[201~")
        await until(lambda: "That paste has 450 characters" in screen.last())
        assert screen.ui.input.text == ""
        count = len(screen.notices())
        screen.send("\x1b[200~" + "z" * 300 + "\x1b[201~")  # the same paste goes on
        await until(lambda: "That paste has 750 characters" in screen.last())
        assert len(screen.notices()) == count  # one notice, with the whole size
        assert screen.last() == (
            "That paste has 750 characters; a message may have at most 100. "
            "Nothing was pasted; the input line was cleared."
        )
