"""The chat screen: a transcript, one status line and an input line (prompt-toolkit).

Contract:
- :class:`ChatScreen` renders what its :class:`Conversation` holds and never talks to the
  model API itself. Enter sends; a line starting with ``/`` is a command (run by
  :mod:`._commands`, for which ChatScreen is the :class:`~._commands.Screen`); Ctrl-C stops
  an answer (keeping what arrived) or clears the input; Ctrl-D on an empty line quits;
  PgUp/PgDn scroll; on an empty input line Home goes to the first page of the latest
  answer and End to the newest; Ctrl-L repaints the whole screen.
- ChatScreen holds the layout, the key bindings and :meth:`ChatScreen.run`. What the transcript
  holds and where the reader is lives in a :class:`~._scrollback.Scrollback`; the status
  line's wording in :mod:`._statusline`.
- Streamed text reaches the screen through a :class:`CommitThrottle`, as the commit
  policy (:func:`~._throttle.commit_action`) says for each change; typed keys are never
  throttled.
- Input that cannot be sent (too long, an answer still coming, over a quota) stays in
  the input line and a notice says why: nothing the person typed is lost.
- The input line holds at most twice ``max_prompt_chars`` (room to shorten a question
  that is a little long). Input that would take it further, typed or pasted, is refused
  as a whole, never cut: the line is cleared and one notice gives the whole size (a
  flood arriving in many pieces keeps one notice, its count growing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import EditReadOnlyBuffer
from prompt_toolkit.data_structures import Size
from prompt_toolkit.filters import Condition
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

from . import _commands
from ._conversation import Conversation
from ._errors import BudgetExceeded, InputRejected, KindleSSHError
from ._glyphs import GlyphMode
from ._hub import Hub, LiveConversation
from ._inputline import InputLine
from ._keyreader import RefusedPaste
from ._paint import Transcript
from ._profile import Profile
from ._quota import UserQuota
from ._sanitize import sanitize_inline
from ._scrollback import Scrollback
from ._statusline import fit, status_texts
from ._throttle import CommitAction, CommitThrottle, commit_action
from ._view import Item, Line, Notice

log = logging.getLogger("kindlessh.ui")

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


class ChatScreen:
    """One person's chat screen.

    Args:
        chat: the conversation to show first (where questions go).
        hub: where the person's other conversations are (/new, /history, /open...).
        username: the account name, shown in the welcome line.
        quota: the limits of whoever holds this login (:mod:`._holders`); questions
            asked here spend them, whichever conversation is shown.
        profile: the screen profile to start with.
        profiles: the profiles ``/eink`` and ``/smooth`` switch to.
        notices: lines to show first (e.g. a missing API key).
        pace: stretches the commit interval while the server is overloaded.
        spread: runs commits in turn with other screens' commits.
        cursor: asks the terminal for a steady cursor (True) or its own (False).
    """

    def __init__(
        self,
        chat: LiveConversation,
        *,
        hub: Hub,
        username: str,
        profile: Profile,
        quota: UserQuota | None = None,
        profiles: dict[str, Profile] | None = None,
        notices: list[Notice] | None = None,
        pace: Callable[[float], float] | None = None,
        spread: Callable[[object, Callable[[], None]], None] | None = None,
        cursor: Callable[[bool], None] | None = None,
    ) -> None:
        self.chat = chat
        self.hub = hub
        self.username = username
        self.quota = quota
        self._unsubscribe: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: Callable[[str], bool] | None = None  # takes the next line typed
        self.profile = profile
        self.profiles = profiles or {profile.name: profile}
        self._cursor = cursor or (lambda steady: None)
        self.scrollback = Scrollback(
            self.app_invalidate, paged=profile.paged, color=_color(profile)
        )
        self.scrollback.glyphs = profile.glyphs
        self._refused = 0
        self._paste_notice: Notice | None = None
        self._pasting = False
        self.throttle = CommitThrottle(profile.interval, self._commit, pace=pace, spread=spread)
        self.say(
            f"Hello {sanitize_inline(username, 32)}. Type a question and press Enter; "
            "/help lists commands."
        )
        for notice in notices or []:
            self.scrollback.say(notice.text, notice.kind)
        self._show_turns()
        self.input = InputLine(self.max_line, self._overflow, multiline=False, name="input")
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

    @property
    def items(self) -> list[Item]:
        """The transcript's entries."""
        return self.scrollback.items

    @property
    def show_thoughts(self) -> bool:
        """Whether the model's thinking is shown before each answer (``/thoughts``)."""
        return self.scrollback.show_thoughts

    @show_thoughts.setter
    def show_thoughts(self, value: bool) -> None:
        self.scrollback.show_thoughts = value

    def _show_turns(self) -> None:
        """Put the chat's turns on the screen, as far as they have arrived."""
        turns = self.conversation.turns
        self.scrollback.show_turns(turns)
        if turns and self.chat.id is not None:
            live = " (its answer is still coming)" if self.conversation.answering else ""
            self.say(
                f"Conversation {self.chat.id} reopened{live}: /history lists the others, "
                "/new starts a fresh one."
            )
        if turns and self.chat.finished_away:
            # The answer finished while the reader was away: read it from its start.
            self.chat.finished_away = False
            self.scrollback.top(away=True)

    def switch(self, chat: LiveConversation) -> None:
        """Show ``chat`` instead of the current one (``/new``, ``/open``)."""
        old = self.chat
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.chat = chat
        self.hub.release(old)
        if self._unsubscribe is not None:
            self._unsubscribe = chat.conversation.subscribe(self._on_change)
        self.scrollback.clear()
        self._show_turns()

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
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

    def say(self, text: str, kind: str = "info", bold: tuple[str, ...] = ()) -> None:
        """Add a notice from the server to the transcript (``bold``: words shown bold)."""
        self.scrollback.say(text, kind, bold)

    def visible_lines(self, width: int, height: int) -> list[Line]:
        """The lines of the transcript that fit in ``height`` rows at the scroll position."""
        return self.scrollback.lines(width, height)

    def sync(self) -> None:
        """Follow the conversation's turns, whichever screen changed them."""
        self.scrollback.sync(self.conversation.turns)

    def _commit(self) -> None:
        turn = self.conversation.current
        if turn is not None:
            self.scrollback.commit(turn)
        else:
            self.app_invalidate()

    def _on_change(self) -> None:
        self.sync()
        turn = self.conversation.current
        shown_answer, shown_thoughts = (0, 0) if turn is None else self.scrollback.committed(turn)
        action = commit_action(
            active=turn is not None and turn.active,
            answer=0 if turn is None else len(turn.answer),
            thoughts=0 if turn is None else len(turn.thoughts),
            shown_answer=shown_answer,
            shown_thoughts=shown_thoughts,
            show_thoughts=self.show_thoughts,
        )
        if action is CommitAction.FLUSH:
            self.throttle.flush()
        elif action is CommitAction.POKE:
            self.throttle.poke()
        elif action is CommitAction.MARK_THOUGHTS and turn is not None:
            self.scrollback.mark_thoughts(turn)
        elif action is CommitAction.REPAINT:
            self.app_invalidate()

    def app_invalidate(self) -> None:
        """Ask for a repaint, if the screen is up."""
        app = getattr(self, "app", None)
        if app is not None and app.is_running:
            app.invalidate()

    def _status(self) -> StyleAndTextTuples:
        turn = self.conversation.current
        texts = status_texts(
            page_back=self.scrollback.page_back if self.profile.paged else 0,
            answering=self.conversation.answering,
            turn_status=turn.status if turn is not None else None,
            lines_up=self.scrollback.lines_up,
            model=self.conversation.provider.model,
            page=_page_pair(self.scrollback) if self.profile.paged else None,
            away=self.scrollback.away,
        )
        away = self.scrollback.away and self.profile.paged
        return fit(texts, self.app.output.get_size().columns, hint=not away)

    # ----- input ----------------------------------------------------------------------

    def _input_height(self) -> Dimension:
        """Exactly the rows the question needs, 1 to 3: it never takes spare rows from the
        transcript (a weight of 0 would, in prompt-toolkit, never be sized at all)."""
        width = max(1, self.app.output.get_size().columns)
        cells = get_cwidth(self.input.text) + 2 + 1  # prompt and cursor
        return Dimension.exact(min(3, max(1, -(-cells // width))))

    def submit(self) -> None:
        """Handle the input line: an answer to a question asked, a command or a question."""
        text = self.input.text
        if not text.strip():
            return
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if pending(text):
                self.input.reset()
                return
        if text.startswith("/"):
            self.input.reset()
            self.command(text.strip())
            return
        try:
            self.conversation.ask(text, quota=self.quota, thoughts=self.show_thoughts)
        except (InputRejected, BudgetExceeded) as exc:
            self.say(str(exc), "error")
            return
        self.input.reset(append_to_history=True)
        self.sync()

    def command(self, line: str) -> None:
        """Run a slash command (see :mod:`._commands`)."""
        _commands.run(self, line)

    def ask_first(self, answer: Callable[[str], bool]) -> None:
        """Hand the next line typed to ``answer`` (a confirmation); if it returns False,
        the line is then handled as usual."""
        self._pending = answer

    def size(self) -> Size:
        """The terminal's size."""
        return self.app.output.get_size()

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
        self.scrollback.restyle(paged=profile.paged, color=_color(profile))
        self._cursor(profile.steady_cursor)
        self.scrollback.glyphs = profile.glyphs
        self.say(f"Screen profile: {name}.")

    @property
    def glyphs(self) -> GlyphMode:
        """What the screen draws (``/glyphs``)."""
        return self.scrollback.glyphs

    @glyphs.setter
    def glyphs(self, mode: GlyphMode) -> None:
        self.scrollback.glyphs = mode
        self.app_invalidate()

    def top(self) -> None:
        """To the first page of the latest answer (``/top``, Home)."""
        self.scrollback.top()

    def bottom(self) -> None:
        """To the newest lines (End)."""
        self.scrollback.bottom()

    def scroll(self, pages: int) -> None:
        """Scroll the transcript by ``pages`` screens (positive = back in time)."""
        self.scrollback.scroll(pages, self.size().rows)

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

        empty = Condition(lambda: not self.input.text)

        @kb.add("home", filter=empty)
        def _top(event: KeyPressEvent) -> None:
            self.top()

        @kb.add("end", filter=empty)
        def _newest(event: KeyPressEvent) -> None:
            self.bottom()

        @kb.add("c-l")
        def _repaint(event: KeyPressEvent) -> None:
            event.app.renderer.clear()

        @kb.add(Keys.BracketedPaste)
        def _paste(event: KeyPressEvent) -> None:
            data = event.data
            if isinstance(data, RefusedPaste):  # too long to be kept at all
                self._refuse(data.size, pasted=True)
            else:
                self._paste(data.replace("\r\n", "\n").replace("\r", "\n"))

        return kb

    def max_line(self) -> int:
        """The most characters the input line holds: twice the message limit, room to
        shorten a question a little over it (Enter says by how much)."""
        return 2 * self.conversation.settings.max_prompt_chars

    def _paste(self, text: str) -> None:
        # (A paste from a terminal without bracketed paste arrives in several bursts;
        # each lands here, and the input line's bound refuses the lot once it is over.)
        self._pasting = True
        try:
            self.input.insert_text(text)
        except EditReadOnlyBuffer:  # over the bound: _overflow has refused it
            pass
        finally:
            self._pasting = False

    def _overflow(self, extra: int) -> None:
        """The input line would have gone over :meth:`max_line` by adding ``extra``."""
        self._refuse(extra, pasted=self._pasting)

    def _refuse(self, chars: int, *, pasted: bool) -> None:
        """Refuse ``chars`` characters of input, and the input line with them."""
        limit = self.conversation.settings.max_prompt_chars
        # Strategy: refuse input far over the limit as a whole rather than cut it: a
        # silently cut question gets a confidently wrong answer. Input that arrives in
        # several bursts (a paste, a flood of keys) is reported once, with its whole size.
        if self._paste_notice is not None and self.scrollback.retract(self._paste_notice):
            self._refused += chars
        else:
            self._refused = chars
        if self.input.text:
            self._refused += len(self.input.text)
            self.input.reset()  # earlier bursts of the same input go too
        what, done = ("paste", "pasted") if pasted else ("input", "kept")
        self._paste_notice = self.scrollback.say(
            f"That {what} has {self._refused:,} characters; a message may have at "
            f"most {limit:,}. Nothing was {done}; the input line was cleared.",
            "error",
        )

    async def run(self) -> None:
        """Show the chat until the person leaves."""
        self._unsubscribe = self.conversation.subscribe(self._on_change)
        # On e-ink every blink of the cursor is a panel update.
        self._cursor(self.profile.steady_cursor)
        try:
            await self.app.run_async(handle_sigint=False, set_exception_handler=False)
        finally:
            self._unsubscribe()
            self._unsubscribe = None
            self.throttle.cancel()
            for task in list(self._tasks):
                task.cancel()


def _page_pair(scrollback: Scrollback) -> tuple[int, int] | None:
    page = scrollback.page
    return None if page is None else (page.number, page.total)


def _color(profile: Profile) -> bool:
    """Whether ``profile`` draws in colour (1-bit screens get attributes only)."""
    return profile.color_depth != ColorDepth.DEPTH_1_BIT
