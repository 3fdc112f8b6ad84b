"""The chat screen: a transcript, one status line and an input line (prompt-toolkit).

Contract:
- :class:`ChatUI` renders what its :class:`Conversation` holds and never talks to the
  model API itself. Enter sends; ``/help``, ``/new``, ``/quit`` are commands; Ctrl-C
  stops an answer (keeping what arrived) or clears the input; Ctrl-D on an empty line
  quits; PgUp/PgDn scroll; Ctrl-L repaints the whole screen.
- Streamed text reaches the screen through a :class:`CommitThrottle`; typed keys are
  never throttled.
- Input that cannot be sent (too long, an answer still coming, over a quota) stays in
  the input line and a notice says why: nothing the person typed is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from ._conversation import Conversation, Turn
from ._errors import BudgetExceeded, InputRejected, KindleSSHError
from ._hub import Chat, Hub
from ._paint import Transcript
from ._profile import Profile
from ._quota import span
from ._sanitize import sanitize_inline
from ._throttle import CommitThrottle
from ._view import Item, Line, Look, Notice, Shown

log = logging.getLogger("kindlessh.ui")

HELP = """Commands:
  /new     start a fresh conversation
  /history   list your conversations (/history 2: older)
  /open N    reopen conversation N and continue it
  /delete N  delete conversation N (asks first)
  /export    save this conversation as a Markdown file
  /retry   ask the last question again
  /usage   your tokens today and what is left
  /eink    e-ink screen: few repaints, pages
  /thoughts  show or hide the model's thinking
  /smooth  laptop screen: smooth streaming
  /up /down  page back and forth (or PgUp/PgDn)
  /quit    leave (also Ctrl-D on an empty line)
  /help    this list
Keys: Enter sends, Ctrl-C stops an answer, Ctrl-L repaints."""

# Colours only add to 1-bit attributes; at 1-bit depth prompt-toolkit drops them.
STYLE = Style.from_dict(
    {
        "status": "reverse",
        "question": "bold ansicyan",
        "note": "underline ansiyellow",
        "error": "bold ansired",
        "prompt": "bold",
        "thought-head": "bold",
        "thought": "ansibrightblack",
    }
)


class ChatUI:
    """One person's chat screen.

    Args:
        chat: the conversation to show first (where questions go).
        hub: where the person's other conversations are (/new, /history, /open...).
        username: the account name, shown in the welcome line.
        profile: the screen profile to start with.
        profiles: the profiles ``/eink`` and ``/smooth`` switch to.
        notices: lines to show first (e.g. a missing API key).
    """

    def __init__(
        self,
        chat: Chat,
        *,
        hub: Hub,
        username: str,
        profile: Profile,
        profiles: dict[str, Profile] | None = None,
        notices: list[Notice] | None = None,
        pace: Callable[[float], float] | None = None,
        spread: Callable[[object, Callable[[], None]], None] | None = None,
    ) -> None:
        self.chat = chat
        self.hub = hub
        self.username = username
        self._unsubscribe: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._confirm: tuple[int, str] | None = None  # a delete waiting for "y"
        self.profile = profile
        self.profiles = profiles or {profile.name: profile}
        self.items: list[Item] = []
        self._shown: dict[int, tuple[int, int]] = {}  # turn id -> committed answer, thoughts
        self.show_thoughts = False
        self._scroll = 0  # smooth: lines scrolled up from the bottom
        self._page_back = 0  # eink: pages back from the current one
        self._pinned: int | None = None  # eink: first line of the page being read
        self._last_total = 0
        self._refused = 0
        self._paste_notice: Notice | None = None
        self.throttle = CommitThrottle(profile.interval, self._commit, pace=pace, spread=spread)
        self.say(
            f"Hello {sanitize_inline(username, 32)}. Type a question and press Enter; "
            "/help lists commands."
        )
        for notice in notices or []:
            self.items.append(Item(notice=notice))
        self._show_turns()
        self.input = Buffer(multiline=False, name="input")
        self.transcript = Transcript(self.visible_lines)
        self.app: Application[None] = Application(
            layout=Layout(
                HSplit(
                    [
                        self.transcript,
                        Window(
                            FormattedTextControl(self._status),
                            height=1,
                            style="class:status",
                            always_hide_cursor=True,
                        ),
                        Window(
                            BufferControl(
                                self.input, input_processors=[BeforeInput("> ", "class:prompt")]
                            ),
                            height=self._input_height,
                            wrap_lines=True,
                        ),
                    ]
                ),
                focused_element=self.input,
            ),
            key_bindings=self._bindings(),
            style=STYLE,
            full_screen=True,
            mouse_support=False,
            color_depth=lambda: self.profile.color_depth,
            # Resizes arrive from the SSH channel; polling as well would paint twice.
            terminal_size_polling_interval=None,
            min_redraw_interval=None,
            refresh_interval=None,
            # Repaint in the next turn of the loop, never postponed "until the loop is
            # idle": on a busy server every screen's postponed repaint would fall due at
            # once, one long burst (see _pace's spread, which takes turns instead).
            max_render_postpone_time=None,
            enable_page_navigation_bindings=False,
        )

    # ----- the conversation shown ------------------------------------------------------

    @property
    def conversation(self) -> Conversation:
        """The conversation on the screen."""
        return self.chat.conversation

    def _show_turns(self) -> None:
        """Put the chat's turns on the screen, as far as they have arrived."""
        turns = self.conversation.turns
        for turn in turns:
            self.items.append(Item(turn=turn))
            # Attached mid-answer: what has arrived shows at once, then it streams on.
            self._shown[turn.id] = (len(turn.answer), len(turn.thoughts))
        if turns and self.chat.id is not None:
            live = " (its answer is still coming)" if self.conversation.answering else ""
            self.say(
                f"Conversation {self.chat.id} reopened{live}: /history lists the others, "
                "/new starts a fresh one."
            )

    def switch(self, chat: Chat) -> None:
        """Show ``chat`` instead of the current one (``/new``, ``/open``)."""
        old = self.chat
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.chat = chat
        self.hub.release(old)
        if self._unsubscribe is not None:
            self._unsubscribe = chat.conversation.subscribe(self._on_change)
        self.items = []
        self._shown.clear()
        self._scroll = self._page_back = 0
        self._pinned = None
        self._show_turns()
        self.app_invalidate()

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run a command that needs the store; its failure becomes an error line."""

        async def run() -> None:
            try:
                await job
            except KindleSSHError as exc:
                self.say(str(exc), "error")
            except Exception:
                log.exception("a command failed")
                self.say("That command failed on the server; see its log.", "error")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- transcript -----------------------------------------------------------------

    def say(self, text: str, kind: str = "info") -> None:
        """Add a notice from the server to the transcript."""
        self.items.append(Item(notice=Notice(text, kind)))
        self._scroll = self._page_back = 0
        self._pinned = None
        self.app_invalidate()

    def shown(self, turn: Turn) -> Shown:
        """The part of a turn that has been committed to the screen."""
        if turn.active:
            answer, thoughts = self._shown.get(turn.id, (0, 0))
            return Shown(turn.answer[:answer], turn.thoughts[:thoughts])
        return Shown(turn.answer, turn.thoughts)

    def look(self, width: int) -> Look:
        """How the transcript is drawn at ``width`` with the current profile."""
        color = self.profile.color_depth != ColorDepth.DEPTH_1_BIT
        return Look(width, color, self.show_thoughts)

    def visible_lines(self, width: int, height: int) -> list[Line]:
        """The lines of the transcript that fit in ``height`` rows at the scroll position."""
        lines: list[Line] = []
        anchor = 0
        look = self.look(width)
        for item in self.items:
            if item.turn is not None:
                anchor = len(lines)
            lines.extend(item.lines(look, self.shown))
        if self.profile.paged:
            return self._page(lines, anchor, height)
        total = len(lines)
        if self._scroll and total > self._last_total:
            # Keep the page the reader is looking at still while the answer grows.
            self._scroll += total - self._last_total
        self._last_total = total
        self._scroll = max(0, min(self._scroll, total - height))
        end = total - self._scroll
        return lines[max(0, end - height) : end]

    def _page(self, lines: list[Line], anchor: int, height: int) -> list[Line]:
        """E-ink paging: the last question starts a page at the top of the screen; its
        answer fills down and flips to a new page (one line of overlap) when full.

        Strategy: a flip repaints the screen once; scrolling would repaint every row on
        every commit, and e-ink pays for each changed pixel.
        """
        step = max(1, height - 1)
        end = len(lines)
        while end > anchor and not "".join(text for _, text, *_ in lines[end - 1]).strip():
            end -= 1  # trailing blank lines never cause a flip
        rest = end - anchor
        flips = 0 if rest <= height else -(-(rest - height) // step)
        current = anchor + flips * step
        if self._page_back:
            if self._pinned is None:
                self._pinned = max(0, current - self._page_back * step)
            current = self._pinned
        return lines[current : current + height]

    def _commit(self) -> None:
        turn = self.conversation.current
        if turn is not None:
            self._shown[turn.id] = (len(turn.answer), len(turn.thoughts))
        self.app_invalidate()

    def _sync_items(self) -> None:
        """Follow the conversation's turns, whichever screen changed them (a question
        asked, or an answer replaced by /retry, on another connection of the user)."""
        turns = self.conversation.turns
        shown = [item.turn for item in self.items if item.turn is not None]
        if shown == turns:
            return
        if shown and not turns:
            # Every turn gone at once: the conversation was deleted (here or elsewhere).
            self.items = []
            self._shown.clear()
            self.say("This conversation was deleted; a new one starts here.")
            return
        present = set(turns)
        self.items = [item for item in self.items if item.turn is None or item.turn in present]
        kept = {item.turn for item in self.items if item.turn is not None}
        for turn in turns:
            if turn not in kept:
                self.items.append(Item(turn=turn))
        # A new question is where the reader looks next.
        self._scroll = self._page_back = 0
        self._pinned = None
        self.app_invalidate()

    def _on_change(self) -> None:
        self._sync_items()
        turn = self.conversation.current
        if turn is None or not turn.active:
            self.throttle.flush()  # the final state, at once
            return
        answer, thoughts = self._shown.get(turn.id, (0, 0))
        if turn.answer and not answer:
            self.throttle.flush()  # leading edge: the first words at once
        elif self.show_thoughts and turn.thoughts and not thoughts and not turn.answer:
            self.throttle.flush()  # the first thoughts, likewise
        elif turn.answer or (self.show_thoughts and len(turn.thoughts) > thoughts):
            self.throttle.poke()
        elif turn.thoughts and not thoughts:
            # Hidden thinking: one repaint says so; later thoughts repaint nothing.
            self._shown[turn.id] = (answer, len(turn.thoughts))
            self.app_invalidate()
        elif not turn.thoughts:
            self.app_invalidate()  # a state change (waiting, retrying), no text yet

    def app_invalidate(self) -> None:
        """Ask for a repaint, if the screen is up."""
        app = getattr(self, "app", None)
        if app is not None and app.is_running:
            app.invalidate()

    def _status(self) -> StyleAndTextTuples:
        width = self.app.output.get_size().columns
        turn = self.conversation.current
        texts: tuple[str, ...]
        if self.profile.paged and self._page_back:
            texts = (f"page {self._page_back} back - PgDn or /down", f"page -{self._page_back}")
        elif self.conversation.answering and turn is not None and turn.status:
            texts = (turn.status,)
        elif self.conversation.answering:
            texts = ("answering - Ctrl-C stops", "answering")
        elif self._scroll:
            texts = ("scrolled up - PgDn for more", "scrolled up")
        else:
            model = sanitize_inline(self.conversation.provider.model, 40)
            texts = (f"{model} - ready", "ready")
        return self._status_line(texts, width)

    @staticmethod
    def _status_line(texts: tuple[str, ...], width: int) -> StyleAndTextTuples:
        """The first of ``texts`` (longest first) that fits, with ``/help`` at the right
        when there is room; on a very narrow screen the shortest, cut to fit."""
        right = "/help "
        for text in texts:
            left = " " + text
            if get_cwidth(left) + 1 + len(right) <= width:
                return [("", left + " " * (width - get_cwidth(left) - len(right)) + right)]
        for text in texts:
            left = " " + text
            if get_cwidth(left) <= width:
                return [("", left)]
        left = " " + texts[-1]
        while left and get_cwidth(left + "…") > width:
            left = left[:-1]
        return [("", left + "…" if left else "")]

    # ----- input ----------------------------------------------------------------------

    def _input_height(self) -> Dimension:
        """Exactly the rows the question needs, 1 to 3: it never takes spare rows from the
        transcript (a weight of 0 would, in prompt-toolkit, never be sized at all)."""
        width = max(1, self.app.output.get_size().columns)
        cells = get_cwidth(self.input.text) + 2 + 1  # prompt and cursor
        return Dimension.exact(min(3, max(1, -(-cells // width))))

    def submit(self) -> None:
        """Handle the input line: a command or a question."""
        text = self.input.text
        if not text.strip():
            return
        if self._confirm is not None:
            number, _ = self._confirm
            self._confirm = None
            if text.strip().lower() in ("y", "yes", "n", "no"):
                self.input.reset()
                if text.strip().lower().startswith("y"):
                    self._spawn(self._delete(number))
                else:
                    self.say(f"Conversation {number} was not deleted.")
                return
            self.say(f"Conversation {number} was not deleted.")
        if text.startswith("/"):
            self.input.reset()
            self.command(text.strip())
            return
        try:
            self.conversation.ask(text)
        except (InputRejected, BudgetExceeded) as exc:
            self.say(str(exc), "error")
            return
        self.input.reset(append_to_history=True)
        self._sync_items()

    def command(self, line: str) -> None:
        """Run a slash command."""
        name, *args = line.split()
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            self.quit()
        elif name == "/new":
            self.switch(self.hub.new(self.chat.user))
            self.say("New conversation. Earlier turns are no longer sent to Gemini.")
        elif name == "/history":
            page = self._number(args, default=1)
            if page is not None:
                self._spawn(self._history(page))
        elif name in ("/open", "/delete"):
            number = self._number(args)
            if number is not None:
                job = self._open(number) if name == "/open" else self._ask_delete(number)
                self._spawn(job)
        elif name == "/export":
            self._spawn(self._export())
        elif name == "/usage":
            self._spawn(self._usage())
        elif name == "/retry":
            try:
                self.conversation.retry()
            except (InputRejected, BudgetExceeded) as exc:
                self.say(str(exc), "error")
                return
            self._sync_items()
        elif name in ("/eink", "/smooth"):
            self.set_profile(name[1:])
        elif name == "/thoughts":
            self.show_thoughts = not self.show_thoughts
            self.say(
                "Thinking is shown, marked with │, before each answer."
                if self.show_thoughts
                else "Thinking is hidden; only answers are shown."
            )
        elif name == "/up":
            self.scroll(1)
        elif name == "/down":
            self.scroll(-1)
        elif name in ("/help", "/?"):
            self.say(
                HELP
                + f"\nModel: {self.conversation.provider.model}"
                + f"\nScreen: {self.profile.name} (from {self.profile.source})"
            )
        else:
            self.say(f"Unknown command {sanitize_inline(name, 20)}; /help lists commands.", "error")

    def _number(self, args: list[str], default: int | None = None) -> int | None:
        """The command's number argument; says what is wrong and gives None if bad."""
        if not args and default is not None:
            return default
        if len(args) == 1 and args[0].lstrip("#").isdigit() and len(args[0]) < 10:
            return int(args[0].lstrip("#"))
        self.say("Give a number, as shown by /history: /open 3", "error")
        return None

    async def _history(self, page: int) -> None:
        size = max(3, self.app.output.get_size().rows - 7)
        rows = await self.hub.history(self.chat.user, limit=size + 1, offset=(page - 1) * size)
        if not rows:
            self.say("No conversations yet." if page == 1 else "No older conversations.")
            return
        width = self.app.output.get_size().columns - 2
        lines = ["Your conversations (newest first):" if page == 1 else f"Page {page}:"]
        for row in rows[:size]:
            when = row.updated_at.astimezone().strftime("%b %d %H:%M")
            mark = "*" if row.id == self.chat.id else " "
            head = f"{mark}{row.id:>3} {when} "
            tail = f" ({row.turn_count})"
            room = max(4, width - get_cwidth(head) - get_cwidth(tail))
            title = sanitize_inline(row.title, room)
            lines.append(head + title + tail)
        more = f"; /history {page + 1} shows older ones" if len(rows) > size else ""
        lines.append(f"/open N reopens one (* is this one; turns in brackets){more}.")
        self.say("\n".join(lines))

    async def _open(self, number: int) -> None:
        if number == self.chat.id:
            self.say(f"Conversation {number} is the one on the screen.")
            return
        chat = await self.hub.open(self.chat.user, number)
        self.switch(chat)

    async def _ask_delete(self, number: int) -> None:
        row = await self.hub.title(self.chat.user, number)
        self._confirm = (number, row.title)
        self.say(
            f'Delete conversation {number}, "{sanitize_inline(row.title, 40)}" '
            f"({row.turn_count} turn{'' if row.turn_count == 1 else 's'})? "
            "Type y and Enter to delete it; anything else keeps it."
        )

    async def _delete(self, number: int) -> None:
        if not await self.hub.delete(self.chat.user, number):
            self.say(f"No conversation {number}.", "error")
            return
        # A conversation on the screen (this one's or another's) is emptied in place.
        self.say(f"Conversation {number} deleted.")

    async def _export(self) -> None:
        if not self.conversation.turns:
            self.say("Nothing to export yet: ask a question first.", "error")
            return
        path = await self.hub.export(self.chat, datetime.now(UTC))
        self.say(f"Saved as Markdown on the server: {path}")

    async def _usage(self) -> None:
        user = self.chat.user
        counts = await self.hub.usage(user)
        status = self.hub.quota.status(user)
        when = f"{status.resets_at:%H:%M} UTC, in {span(status.resets_in)}"
        lines = [
            f"Tokens today: {counts.total:,} (input {counts.input:,}, output "
            f"{counts.output:,}, thinking {counts.thoughts:,})."
        ]
        if status.daily_tokens:
            left = max(0, status.daily_tokens - counts.total)
            lines.append(f"Left today: {left:,} of {status.daily_tokens:,}; resets at {when}.")
        else:
            lines.append(f"No daily limit; the count starts again at {when}.")
        prompts = self.hub.quota.config.prompts
        if status.prompts_now is None:
            lines.append("Questions: no limit on how often you ask.")
        else:
            refill = self.hub.quota.config.refill_seconds
            lines.append(
                f"Questions you can ask now: {status.prompts_now} of {prompts} "
                f"(one more every {refill:g} s)."
            )
        self.say("\n".join(lines))

    def quit(self) -> None:
        """Leave the chat."""
        if self.app.is_running and not self.app.is_done:
            self.app.exit()

    def set_profile(self, name: str) -> None:
        """Switch the screen profile live (``/eink``, ``/smooth``)."""
        profile = self.profiles.get(name)
        if profile is None:
            return
        self.profile = profile
        self.throttle.interval = profile.interval
        self._scroll = self._page_back = 0
        self._pinned = None
        self.say(f"Screen profile: {name}.")

    def scroll(self, pages: int) -> None:
        """Scroll the transcript by ``pages`` screens (positive = back in time)."""
        if self.profile.paged:
            self._page_back = max(0, self._page_back + pages)
            self._pinned = None
            self.app_invalidate()
            return
        rows = self.app.output.get_size().rows
        step = max(1, rows - 5)
        self._scroll = max(0, self._scroll + pages * step)
        self.app_invalidate()

    def _bindings(self) -> KeyBindings:
        kb = KeyBindings()

        @kb.add("enter")
        def _enter(event: KeyPressEvent) -> None:
            self.submit()

        @kb.add("c-c")
        def _stop(event: KeyPressEvent) -> None:
            if self.conversation.stop():
                return
            if self.input.text:
                self.input.reset()
            else:
                self.say("Nothing to stop. /quit or Ctrl-D leaves.")

        @kb.add("c-d")
        def _eof(event: KeyPressEvent) -> None:
            if self.input.text:
                self.input.delete()
            else:
                self.quit()

        @kb.add("pageup")
        def _up(event: KeyPressEvent) -> None:
            self.scroll(1)

        @kb.add("pagedown")
        def _down(event: KeyPressEvent) -> None:
            self.scroll(-1)

        @kb.add("c-l")
        def _repaint(event: KeyPressEvent) -> None:
            event.app.renderer.clear()

        @kb.add(Keys.BracketedPaste)
        def _paste(event: KeyPressEvent) -> None:
            text = event.data.replace("\r\n", "\n").replace("\r", "\n")
            limit = self.conversation.settings.max_prompt_chars
            if len(self.input.text) + len(text) <= 2 * limit:
                # Within reach of the limit: keep it; Enter says if it is too long, and
                # the text stays to be shortened. (A paste from a terminal without
                # bracketed paste arrives in several bursts; each lands here.)
                self.input.insert_text(text)
                return
            # Strategy: refuse a paste far over the limit as a whole rather than cut it:
            # a silently cut question gets a confidently wrong answer. A paste that
            # arrives in several bursts is reported once, with its whole size.
            last = self.items[-1].notice if self.items else None
            if last is not None and last is self._paste_notice:
                self.items.pop()
                self._refused += len(text)
            else:
                self._refused = len(text)
            if self.input.text:
                self._refused += len(self.input.text)
                self.input.reset()  # earlier bursts of the same paste go too
            self.say(
                f"That paste has {self._refused:,} characters; a message may have at "
                f"most {limit:,}. Nothing was pasted; the input line was cleared.",
                "error",
            )
            self._paste_notice = self.items[-1].notice

        return kb

    async def run(self) -> None:
        """Show the chat until the person leaves."""
        self._unsubscribe = self.conversation.subscribe(self._on_change)
        try:
            await self.app.run_async(handle_sigint=False, set_exception_handler=False)
        finally:
            self._unsubscribe()
            self._unsubscribe = None
            self.throttle.cancel()
            for task in list(self._tasks):
                task.cancel()

