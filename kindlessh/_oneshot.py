"""Commands run from any SSH client without the chat screen: ``ssh host ask "question"``.

Contract:
- :data:`COMMANDS` are the one-shot commands: ``ask [--new] [QUESTION]``, ``history``,
  ``export N [md|txt|epub]`` and ``search WORDS``. :func:`is_oneshot` tells a command
  line that names one.
- :class:`OneShot` runs one on a session channel in binary mode (no encoding): it writes
  its result to standard output and returns the exit status; on failure it writes one
  line, ``kindlessh: ...``, to standard error and returns non-zero (1: refused or
  failed, 2: the command was mistyped).
- ``ask`` takes the question from the command line, or reads standard input to its end
  when there is none (at most :data:`STDIN_LIMIT` bytes). It
  continues the user's latest conversation (the one a chat would open), or starts one
  with ``--new``, and asks it exactly as the chat does: the same conversation, recorder,
  store, and limits of the login's holder (question burst, daily tokens). The answer
  streams to standard output as it comes, sanitised, as plain text; its web sources
  follow it. Without a PTY nothing but text and ``\\n`` is written; with one, ``\\n`` is
  written ``\\r\\n`` (the client's terminal is in raw mode). A client that leaves mid-answer
  leaves it as a chat screen would (``finish_on_disconnect``).
- ``history`` prints one line per conversation (number, date in UTC, turns, first
  question) separated by tabs, newest first; ``search`` one line per hit (number, date,
  snippet with each match between ``**``); ``export`` writes the document's bytes as
  they are (an EPUB is binary).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from ._commands import marked_snippet
from ._conversation import Turn, source_line
from ._errors import InputRejected, KindleSSHError
from ._export import FORMATS
from ._hub import Hub
from ._sanitize import sanitize, sanitize_inline

COMMANDS = ("ask", "history", "export", "search")
USAGE = {
    "ask": 'ask [--new] "QUESTION" (or the question on standard input)',
    "history": "history",
    "export": f"export N [{'|'.join(FORMATS)}]",
    "search": 'search WORDS ("a phrase", prefix*)',
}
# Read no more than this of standard input: the question's own limit ([chat]
# max_prompt_chars) is then checked as in the chat, with its message.
STDIN_LIMIT = 1 << 20
HISTORY_LIMIT = 10_000
SEARCH_LIMIT = 200


def split(command: str) -> tuple[str, str]:
    """A command line as its first word (lower case) and the rest."""
    name, _, rest = command.strip().partition(" ")
    return name.lower(), rest.strip()


def is_oneshot(command: str) -> bool:
    """Whether the command line names a one-shot command."""
    return split(command)[0] in COMMANDS


class OneShot:
    """One one-shot command on a session channel in binary mode.

    Args:
        hub: the conversations.
        chan: the session channel (asyncssh), with no encoding.
        user: the name logged in (whose conversations).
        holder: whose limits a question spends.
        pty: whether the client asked for a terminal.
        command: the command line.
    """

    def __init__(
        self, hub: Hub, chan: Any, user: str, holder: str, pty: bool, command: str
    ) -> None:
        self.hub = hub
        self.chan = chan
        self.user = user
        self.holder = holder
        self.pty = pty
        self.name, self.rest = split(command)
        self._stdin = bytearray()
        self._eof = asyncio.Event()
        self._too_long = False

    # ----- the channel --------------------------------------------------------------

    def feed(self, data: bytes | str) -> None:
        """Bytes from the client's standard input."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        if self._too_long or len(self._stdin) + len(data) > STDIN_LIMIT:
            self._too_long = True
            self._eof.set()
            return
        self._stdin += data

    def end(self) -> None:
        """The client's standard input ended."""
        self._eof.set()

    def _out(self, text: str) -> None:
        if self.pty:
            text = text.replace("\n", "\r\n")
        self.chan.write(text.encode("utf-8"))

    def _err(self, line: str) -> None:
        end = "\r\n" if self.pty else "\n"
        self.chan.write_stderr(f"kindlessh: {sanitize_inline(line, 300)}{end}".encode())

    def _mistyped(self, why: str) -> int:
        """The command's arguments are wrong: say so with its usage; exit status 2."""
        self._err(f"{why} Usage: ssh HOST {USAGE[self.name]}")
        return 2

    # ----- running --------------------------------------------------------------------

    async def run(self) -> int:
        """Run the command; returns its exit status."""
        try:
            if self.name == "ask":
                return await self._ask()
            if self.name == "history":
                return await self._history()
            if self.name == "export":
                return await self._export()
            return await self._search()
        except KindleSSHError as exc:
            self._err(str(exc))
            return 1

    async def _ask(self) -> int:
        words = self.rest
        new = False
        if words == "--new" or words.startswith("--new "):
            new, words = True, words[5:].strip()
        if not words:
            await self._eof.wait()
            if self._too_long:
                raise InputRejected(
                    "The question on standard input is too long; nothing was sent."
                )
            words = self._stdin.decode("utf-8", "replace")
        if not words.strip():
            return self._mistyped("No question.")
        if new:
            await self.hub.quota.load(self.holder)
            chat = self.hub.new(self.user)
        else:
            chat = await self.hub.resume(self.user, holder=self.holder)
        try:
            return await self._answer(chat.conversation, words)
        finally:
            self.hub.release(chat)

    async def _answer(self, conversation: Any, question: str) -> int:
        turn: Turn = conversation.ask(question, quota=self.hub.quota.of(self.holder))
        written = 0

        def follow() -> None:
            nonlocal written
            answer = turn.answer
            end = len(answer)
            if turn.active and answer.endswith("\r"):
                end -= 1  # a CR is read with what follows it (sanitize: CR LF is LF)
            if end > written:
                self._out(sanitize(answer[written:end]))
                written = end

        unsubscribe = conversation.subscribe(follow)
        try:
            follow()
            await conversation.wait()
            follow()
        finally:
            unsubscribe()
        if turn.answer and not turn.answer.endswith("\n"):
            self._out("\n")
        if turn.sources:
            lines = [f"{i}. {source_line(s, links=True)}" for i, s in enumerate(turn.sources, 1)]
            self._out("\nSources:\n" + "\n".join(lines) + "\n")
        if turn.state == "done" and not turn.cut and turn.answer:
            return 0
        self._err(turn.note or "the answer did not end normally")
        return 1

    async def _history(self) -> int:
        if self.rest:
            return self._mistyped("history takes no arguments.")
        rows = await self.hub.history(self.user, limit=HISTORY_LIMIT)
        lines = [
            f"{row.id}\t{row.updated_at.astimezone(UTC):%Y-%m-%d %H:%M}\t{row.turn_count}\t"
            f"{sanitize_inline(row.title, 200)}\n"
            for row in rows
        ]
        self._out("".join(lines))
        return 0

    async def _export(self) -> int:
        args = self.rest.split()
        if not 1 <= len(args) <= 2 or not args[0].lstrip("#").isdigit() or len(args[0]) > 9:
            return self._mistyped("Give a conversation number, as history shows it.")
        fmt = args[1].lower().lstrip(".") if len(args) == 2 else "md"
        if fmt not in FORMATS:
            return self._mistyped(f"No export format {sanitize_inline(fmt, 10)!r}.")
        number = int(args[0].lstrip("#"))
        chat = await self.hub.open(self.user, number)
        try:
            data = await self.hub.render(chat, fmt, datetime.now(UTC))
        finally:
            self.hub.release(chat)
        self.chan.write(data)  # as it is: binary-safe, whatever the terminal
        return 0

    async def _search(self) -> int:
        if not self.rest:
            return self._mistyped("Give words to search for.")
        try:
            hits = await self.hub.search(self.user, self.rest, limit=SEARCH_LIMIT)
        except InputRejected as exc:
            return self._mistyped(str(exc))
        if not hits:
            self._err(f"nothing found for {sanitize_inline(self.rest, 60)}")
            return 1
        self._out("".join(
            f"{hit.conversation_id}\t{hit.started_at.astimezone(UTC):%Y-%m-%d %H:%M}\t"
            f"{marked_snippet(hit.snippet, '**')}\n"
            for hit in hits
        ))
        return 0

