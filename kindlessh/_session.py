"""An SSH session: one chat screen per SSH session channel.

Contract:
- :class:`Session` runs the chat for a shell (``ssh -t host``) or an allowed command
  (``ssh -t host eink``), or hands a one-shot command (``ssh host ask "..."``, see
  :mod:`._oneshot`) to :class:`~kindlessh._oneshot.OneShot` on the channel switched to
  binary; anything else gets a one-line message listing the commands known and exit
  status 2. The chat without a PTY says to use ``ssh -t``. Its output goes through one
  :class:`~kindlessh._channel.ChannelOutput`, the only writer to the channel.
- When the client disconnects, the chat, its answer task and its upstream response are
  all closed; nothing keeps running for a gone session.
- A chat with no input for ``[server] idle_timeout`` seconds (0: never) is closed with a
  goodbye line; an answer streaming counts as activity, so it is never closed under one.
- Window size changes are laid out at most once per :data:`RESIZE_INTERVAL` (the first
  at once, so a Kindle's keyboard toggle re-wraps promptly; the last of a burst always
  lands). More than ``[server] max_resize_burst`` of them at once, refilled at
  ``max_resize_rate`` a second, close the chat with a one-line reason: no terminal
  sends that many (a window dragged by its corner sends one per frame).
- A session is given a :class:`SessionDeps` by its server and uses nothing else of it:
  the hub, the pace, the settings it reads and the registry of open sessions (so the
  server can end them all when it stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import asyncssh
from asyncssh.channel import SSHChannel
from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.output.vt100 import Vt100_Output

from ._channel import ChannelOutput
from ._config import UIConfig
from ._durations import duration
from ._environment import accept_only_used
from ._hub import Hub
from ._input import ChannelInput
from ._oneshot import COMMANDS as ONESHOT_COMMANDS
from ._oneshot import OneShot, is_oneshot
from ._pace import Pace
from ._profile import choose_profile, make_profile
from ._quota import Bucket
from ._sanitize import sanitize_inline
from ._screen import ChatScreen
from ._shared_limits import Seat
from ._throttle import CommitThrottle
from ._view import Notice

log = logging.getLogger("kindlessh.session")

# Commands accepted on the ssh line (``ssh -t host eink``); the profiles themselves
# are chosen by the screen-profile layer.
ALLOWED_COMMANDS = ("", "chat", "eink", "smooth")
MAX_COLUMNS, MAX_ROWS = 500, 200
# Seconds between two layouts for window size changes: a full layout of a long
# transcript costs milliseconds, and a client may send hundreds of changes a second.
RESIZE_INTERVAL = 0.1


@dataclass(frozen=True)
class SessionDeps:
    """What every chat session of one server is given.

    Attributes:
        hub: the conversations, shared between screens.
        pace: the server-wide pacing of screen updates.
        ui: ``[ui]``, for the screen profiles.
        idle_timeout: ``[server] idle_timeout`` (0: never).
        max_write_buffer: ``[server] max_write_buffer``, bytes.
        max_resize_rate: ``[server] max_resize_rate``, window size changes a second.
        max_resize_burst: ``[server] max_resize_burst``, window size changes at once.
        notices: error lines every chat shows first (an upstream that cannot work as
            configured, such as a missing API key).
        sessions: the open sessions; each adds itself and leaves when it ends.
        seat: counts a session against the per-holder cap of every worker before it
            starts (:meth:`Guard.seat`); None: the process's own count is all.
    """

    hub: Hub
    pace: Pace
    ui: UIConfig
    idle_timeout: float
    max_write_buffer: int
    max_resize_rate: float
    max_resize_burst: int
    notices: tuple[str, ...] = ()
    sessions: set[Session] = field(default_factory=set)
    seat: Callable[[str, str], Awaitable[Seat | str | None]] | None = None


class Session(asyncssh.SSHServerSession[str]):
    """One SSH session channel running the chat."""

    def __init__(
        self,
        deps: SessionDeps,
        username: str,
        key_env: dict[str, str] | None = None,
        greeting: str | None = None,
        holder: str | None = None,
    ) -> None:
        self.deps = deps
        self.username = username
        self.holder = holder or username  # whose limits the chat spends (._holders)
        self.key_env = key_env or {}
        self.greeting = greeting  # a line about the login itself (a key just registered)
        self._chan: asyncssh.SSHServerChannel[str] | None = None
        self._pty = False
        self._command = ""
        self._task: asyncio.Task[None] | None = None
        self._oneshot: OneShot | None = None
        self._input: ChannelInput | None = None
        self.screen: ChatScreen | None = None
        self.output: ChannelOutput | None = None
        self._last_input = 0.0  # monotonic time of the last input (or streaming answer)
        self._idle: asyncio.TimerHandle | None = None
        self._goodbye = "kindlessh: bye."
        self._resizes = Bucket(
            deps.max_resize_burst, 1 / deps.max_resize_rate, time.monotonic()
        )
        self._flooded = False
        self._layout = CommitThrottle(RESIZE_INTERVAL, self._lay_out)

    # ----- asyncssh callbacks --------------------------------------------------------

    def connection_made(self, chan: SSHChannel[str]) -> None:
        self._chan = cast("asyncssh.SSHServerChannel[str]", chan)
        accept_only_used(chan)  # before the client's env requests arrive

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self._pty = True
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command.strip()
        if is_oneshot(self._command) and self._chan is not None:
            # Binary: an EPUB export is bytes; the command decodes its input itself.
            self._chan.set_encoding(None)
            self._oneshot = OneShot(
                self.deps.hub, self._chan, self.username, self.holder, self._pty,
                self._command,
            )
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main())
        self.deps.sessions.add(self)
        self._task.add_done_callback(lambda _: self.deps.sessions.discard(self))

    def data_received(self, data: str, datatype: Any) -> None:
        # Strategy: only note the time; the idle timer checks it when it fires, rather
        # than being re-armed on every keystroke.
        self._last_input = time.monotonic()
        if self._oneshot is not None:
            self._oneshot.feed(data)
        elif self._input is not None:
            self._input.send_text(data)

    def eof_received(self) -> bool:
        if self._oneshot is not None:
            self._oneshot.end()
        if self.screen is not None:
            self.screen.quit()
        return True

    def terminal_size_changed(
        self, width: int, height: int, pixwidth: int, pixheight: int
    ) -> None:
        if self._flooded:
            return
        now = time.monotonic()
        if self._resizes.wait(now) > 0:
            self._resize_flood()
            return
        self._resizes.take(now)
        # Strategy: the size is read from the channel when the screen is drawn, so the
        # layout that lands uses the last size sent, whatever came in between.
        self._layout.poke()

    def _lay_out(self) -> None:
        screen = self.screen
        if screen is not None and screen.app.is_running and not self._flooded:
            # One erase + redraw, coalesced into one write by ChannelOutput.
            screen.app._on_resize()

    def _resize_flood(self) -> None:
        """Too many window size changes: end this chat with the reason."""
        self._flooded = True
        self._layout.cancel()
        deps = self.deps
        log.info(
            "%s: more than %d window size changes at %g a second; closing the session",
            self.username, deps.max_resize_burst, deps.max_resize_rate,
        )
        self._goodbye = (
            f"kindlessh: closed: too many window size changes (over {deps.max_resize_burst} "
            f"at more than {deps.max_resize_rate:g} a second); your conversations are saved."
        )
        if self.screen is not None:
            self.screen.quit()
        elif self._chan is not None:
            with contextlib.suppress(Exception):
                self._chan.write(self._goodbye + "\r\n")
                self._chan.exit(1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._layout.cancel()
        if self.output is not None:
            self.output.closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def shutdown(self) -> None:
        """The server is stopping: say goodbye and end this session."""
        chan = self._chan
        if chan is not None:
            with contextlib.suppress(Exception):
                # Leave the full-screen view first, so the line stays readable.
                chan.write(
                    self._finish()
                    + "\x1b[?1049l\r\nkindlessh: the server is shutting down; bye.\r\n"
                )
        self.connection_lost(None)

    # ----- the session ---------------------------------------------------------------

    def _size(self) -> Size:
        assert self._chan is not None
        width, height, _, _ = self._chan.get_terminal_size()
        # Clamp: a client claiming a 10000x10000 terminal would make every render cost
        # seconds of CPU for everyone on the server.
        rows = min(max(height, 1), MAX_ROWS) if height else 24
        columns = min(max(width, 1), MAX_COLUMNS) if width else 80
        return Size(rows=rows, columns=columns)

    def _check_idle(self) -> None:
        """The idle timer fired: close the chat if nothing happened for the timeout."""
        self._idle = None
        screen = self.screen
        timeout = self.deps.idle_timeout
        if screen is None or not timeout:
            return
        now = time.monotonic()
        if screen.conversation.answering:
            # Look again soon: the reader's time starts when the answer ends.
            self._last_input = now
            delay = min(timeout, 1.0)
        else:
            delay = self._last_input + timeout - now
        if delay > 0:
            self._idle = asyncio.get_running_loop().call_later(delay, self._check_idle)
            return
        log.info("%s: closing an idle session", self.username)
        self._goodbye = (
            f"kindlessh: closed after {duration(timeout)} without input; "
            "your conversations are saved."
        )
        screen.quit()

    def _finish(self) -> str:
        """The chat's last frame (the terminal's own cursor back), or ``""``."""
        return self.output.finish() if self.output is not None else ""

    def _drop(self) -> None:
        if self._chan is not None:
            self._chan.abort()

    async def _main(self) -> None:
        chan = self._chan
        assert chan is not None
        seat = await self.deps.seat(self.holder, self.username) if self.deps.seat else None
        if isinstance(seat, str):  # over the per-holder cap of every worker together
            chan.write(f"kindlessh: {seat}" + ("\r\n" if self._pty else "\n"))
            chan.exit(1)
            return
        try:
            if self._oneshot is not None:
                chan.exit(await self._oneshot.run())
                return
            if self._command.lower() not in ALLOWED_COMMANDS:
                shown = sanitize_inline(self._command, 40)
                chan.write(
                    f"kindlessh: unknown command '{shown}'. Commands: "
                    f"{', '.join(ONESHOT_COMMANDS)}; or connect with `ssh -t` and no "
                    "command for the chat (or the command eink or smooth)."
                    + ("\r\n" if self._pty else "\n")
                )
                chan.exit(2)
                return
            if not self._pty:
                chan.write(
                    "kindlessh: this is a full-screen chat and needs a terminal. "
                    "Connect with: ssh -t ...\r\n"
                )
                chan.exit(1)
                return
            await self._chat(chan)
            chan.write(self._finish() + self._goodbye + "\r\n")
            chan.exit(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session failed")
            with contextlib.suppress(Exception):
                if self._oneshot is not None:
                    said = b"kindlessh: the command failed on the server; sorry.\n"
                    cast(Any, chan).write_stderr(said)
                else:
                    chan.write(
                        self._finish()
                        + "\r\nkindlessh: the session failed on the server; sorry.\r\n"
                    )
                chan.exit(1)
        finally:
            if seat is not None:
                seat.release()

    async def _chat(self, chan: asyncssh.SSHServerChannel[str]) -> None:
        deps = self.deps
        env = dict(chan.get_environment())
        term = chan.get_terminal_type() or "xterm"
        # asyncssh merges the key's environment= option into the channel's environment;
        # what differs from it was sent by the client.
        client_env = {k: v for k, v in env.items() if self.key_env.get(k) != v}
        name, source = choose_profile(
            self._command, client_env, self.key_env, deps.ui.profile
        )
        profile = make_profile(name, deps.ui, term, env, source)
        self.output = ChannelOutput(chan, deps.max_write_buffer, self._drop)
        output = Vt100_Output(
            cast(TextIO, self.output),
            self._size,
            term=term,
            default_color_depth=profile.color_depth,
            enable_bell=False,
            enable_cpr=False,
        )
        notices = [Notice(self.greeting)] if self.greeting else []
        notices += [Notice(text, "error") for text in deps.notices]
        self._input = ChannelInput(pause=chan.pause_reading, resume=chan.resume_reading)
        chat = await deps.hub.resume(self.username, holder=self.holder)
        try:
            with create_app_session(input=self._input, output=output):
                self.screen = ChatScreen(
                    chat,
                    hub=deps.hub,
                    username=self.username,
                    quota=deps.hub.quota.of(self.holder),
                    profile=profile,
                    profiles={
                        n: make_profile(n, deps.ui, term, env, "a command")
                        for n in ("eink", "smooth")
                    },
                    notices=notices,
                    pace=deps.pace.stretch,
                    spread=deps.pace.spread,
                    cursor=self.output.steady_cursor,
                )
                # A bracketed paste longer than the input line holds is refused unread.
                self._input.max_paste = self.screen.max_line()
                if deps.idle_timeout:
                    self._last_input = time.monotonic()
                    self._idle = asyncio.get_running_loop().call_later(
                        deps.idle_timeout, self._check_idle
                    )
                await self.screen.run()
        finally:
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self._input.close()
            self._input = None
            # The chat may go on without this screen (an answer finishing on its own).
            deps.hub.release(self.screen.chat if self.screen is not None else chat)

