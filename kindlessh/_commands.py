"""Slash commands: one registry of small handlers, and ``/help`` made from it.

Contract:
- :data:`COMMANDS` lists every command in the order ``/help`` shows them. A command is
  one :class:`Command` entry: the names it answers to (the first is its name, the rest
  aliases), the label and the line ``/help`` shows, and a handler. A new command is one
  entry; ``/help`` lists it by itself (two commands may share one line: ``/up /down``).
- :func:`run` runs one typed line (it starts with ``/``) on a :class:`Screen`; names are
  matched without regard to case; an unknown command says so, as an error line.
- Handlers only use the :class:`Screen` protocol (the chat screen implements it). Work
  that needs the store runs through :meth:`Screen.spawn`, which turns its failure into
  an error line; a refused question (too soon, budget spent, an answer still coming)
  becomes an error line too.
- ``/delete N`` asks first: the next line typed answers it (:meth:`Screen.ask_first`);
  ``y`` or ``yes`` deletes, ``n`` or ``no`` keeps; anything else keeps the conversation
  and is then handled as typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prompt_toolkit.data_structures import Size
from prompt_toolkit.utils import get_cwidth

from ._conversation import Conversation
from ._durations import span
from ._errors import BudgetExceeded, InputRejected
from ._export import FORMATS
from ._glyphs import GLYPH_MODES, GlyphMode
from ._hub import Hub, LiveConversation
from ._profile import Profile
from ._quota import UserQuota
from ._sanitize import sanitize, sanitize_inline
from ._store import MARK_END, MARK_START

KEYS_HELP = "Keys: Enter sends, Ctrl-C stops an answer, Ctrl-L repaints."


class Screen(Protocol):
    """What a command may do to the chat screen it was typed on."""

    chat: LiveConversation
    hub: Hub
    profile: Profile
    quota: UserQuota | None  # the limits of whoever holds the login
    show_thoughts: bool
    glyphs: GlyphMode

    @property
    def conversation(self) -> Conversation:
        """The conversation on the screen."""
        ...

    def say(self, text: str, kind: str = "info", bold: tuple[str, ...] = ()) -> None:
        """Add a notice to the transcript (``kind``: ``info`` or ``error``; ``bold``:
        words shown bold in it)."""

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run ``job`` in the background; its failure becomes an error line."""

    def ask_first(self, answer: Callable[[str], bool]) -> None:
        """Hand the next line typed to ``answer``; it returns True if it took the line."""

    def switch(self, chat: LiveConversation) -> None:
        """Show ``chat`` instead of the current one."""

    def sync(self) -> None:
        """Follow the conversation's turns (after a question was asked)."""

    def set_profile(self, name: str) -> None:
        """Switch the screen profile."""

    def scroll(self, pages: int) -> None:
        """Scroll the transcript by ``pages`` screens (positive: back in time)."""

    def top(self) -> None:
        """To the first page of the latest answer."""

    def size(self) -> Size:
        """The terminal's size."""
        ...

    def quit(self) -> None:
        """Leave the chat."""


Handler = Callable[[Screen, list[str]], None]


@dataclass(frozen=True)
class Command:
    """One slash command: what it answers to, what ``/help`` says, what it does."""

    names: tuple[str, ...]  # the first is its name; the others are aliases
    help: str
    run: Handler
    label: str = ""  # what /help shows on the left; default: the name
    listed: bool = True  # False: another entry's help line covers it (/up /down)

    @property
    def shown(self) -> str:
        """The left column of its line in ``/help``."""
        return self.label or self.names[0]


def run(screen: Screen, line: str) -> None:
    """Run the slash command typed as ``line``."""
    name, *args = line.split()
    command = _BY_NAME.get(name.lower())
    if command is None:
        screen.say(
            f"Unknown command {sanitize_inline(name.lower(), 20)}; /help lists commands.",
            "error",
        )
        return
    command.run(screen, args)


def help_text(commands: tuple[Command, ...] | None = None) -> str:
    """The list ``/help`` shows, made from ``commands`` (default: every command)."""
    commands = tuple(c for c in (COMMANDS if commands is None else commands) if c.listed)
    width = max(get_cwidth(c.shown) for c in commands)
    lines = ["Commands:"]
    lines += [f"  {c.shown}{' ' * (width - get_cwidth(c.shown))}  {c.help}" for c in commands]
    lines.append(KEYS_HELP)
    return "\n".join(lines)


def _number(screen: Screen, args: list[str], default: int | None = None) -> int | None:
    """The command's number argument; says what is wrong and gives None if bad."""
    if not args and default is not None:
        return default
    if len(args) == 1 and args[0].lstrip("#").isdigit() and len(args[0]) < 10:
        return int(args[0].lstrip("#"))
    screen.say("Give a number, as shown by /history: /open 3", "error")
    return None


# ----- the commands -------------------------------------------------------------------


def _new(screen: Screen, args: list[str]) -> None:
    screen.switch(screen.hub.new(screen.chat.user))
    screen.say("New conversation. Earlier turns are no longer sent to the model.")


def _history(screen: Screen, args: list[str]) -> None:
    page = _number(screen, args, default=1)
    if page is not None:
        screen.spawn(_list_page(screen, page))


async def _list_page(screen: Screen, page: int) -> None:
    rows_on_screen, columns = screen.size()
    size = max(3, rows_on_screen - 7)  # the page fits under its heading and footer
    rows = await screen.hub.history(screen.chat.user, limit=size + 1, offset=(page - 1) * size)
    if not rows:
        screen.say("No conversations yet." if page == 1 else "No older conversations.")
        return
    width = columns - 2
    # With more than one model entry, each line names the model of its last answer.
    models = screen.hub.models is not None and len(screen.hub.models.names) > 1
    lines = ["Your conversations (newest first):" if page == 1 else f"Page {page}:"]
    for row in rows[:size]:
        when = row.updated_at.astimezone().strftime("%b %d %H:%M")
        mark = "*" if row.id == screen.chat.id else " "
        head = f"{mark}{row.id:>3} {when} "
        model = f", {sanitize_inline(row.model, 20)}" if models and row.model else ""
        tail = f" ({row.turn_count}{model})"
        room = max(4, width - get_cwidth(head) - get_cwidth(tail))
        lines.append(head + sanitize_inline(row.title, room) + tail)
    more = f"; /history {page + 1} shows older ones" if len(rows) > size else ""
    lines.append(f"/open N reopens one (* is this one; turns in brackets){more}.")
    screen.say("\n".join(lines))


def _open(screen: Screen, args: list[str]) -> None:
    number = _number(screen, args)
    if number is not None:
        screen.spawn(_reopen(screen, number))


async def _reopen(screen: Screen, number: int) -> None:
    if number == screen.chat.id:
        screen.say(f"Conversation {number} is the one on the screen.")
        return
    screen.switch(await screen.hub.open(screen.chat.user, number))


def _delete(screen: Screen, args: list[str]) -> None:
    number = _number(screen, args)
    if number is not None:
        screen.spawn(_ask_delete(screen, number))


async def _ask_delete(screen: Screen, number: int) -> None:
    row = await screen.hub.title(screen.chat.user, number)

    def answer(reply: str) -> bool:
        reply = reply.strip().lower()
        if reply in ("y", "yes"):
            screen.spawn(_really_delete(screen, number))
        else:
            screen.say(f"Conversation {number} was not deleted.")
        return reply in ("y", "yes", "n", "no")

    screen.ask_first(answer)
    turns = f"{row.turn_count} turn{'' if row.turn_count == 1 else 's'}"
    screen.say(
        f'Delete conversation {number}, "{sanitize_inline(row.title, 40)}" ({turns})? '
        "Type y and Enter to delete it; anything else keeps it."
    )


async def _really_delete(screen: Screen, number: int) -> None:
    if not await screen.hub.delete(screen.chat.user, number):
        screen.say(f"No conversation {number}.", "error")
        return
    # A conversation on the screen (this one's or another's) is emptied in place.
    screen.say(f"Conversation {number} deleted.")


def _export(screen: Screen, args: list[str]) -> None:
    fmt = args[0].lower().lstrip(".") if len(args) == 1 else "md" if not args else ""
    if fmt not in FORMATS:
        screen.say(f"Export as one of: {' '.join(FORMATS)} (default md).", "error")
        return
    screen.spawn(_save(screen, fmt))


async def _save(screen: Screen, fmt: str) -> None:
    if not screen.conversation.turns:
        screen.say("Nothing to export yet: ask a question first.", "error")
        return
    path = await screen.hub.export(screen.chat, datetime.now(UTC), fmt)
    screen.say(f"Saved as {_FORMAT_NAMES[fmt]} on the server: {path}")


_FORMAT_NAMES = {"md": "Markdown", "txt": "plain text", "epub": "an EPUB e-book"}


def _search(screen: Screen, args: list[str]) -> None:
    page = 1
    if args and args[-1].startswith("+") and args[-1][1:].isdigit() and len(args[-1]) < 8:
        page = max(1, int(args.pop()[1:]))
    if not args:
        screen.say("Give words to search for: /search paris museum", "error")
        return
    screen.spawn(_search_page(screen, " ".join(args), page))


async def _search_page(screen: Screen, words: str, page: int) -> None:
    rows_on_screen, columns = screen.size()
    size = max(2, (rows_on_screen - 7) // 2)  # two lines a hit
    try:
        hits = await screen.hub.search(
            screen.chat.user, words, limit=size + 1, offset=(page - 1) * size
        )
    except InputRejected as exc:
        screen.say(str(exc), "error")
        return
    shown = sanitize_inline(words, 40)
    if not hits:
        screen.say(f"Nothing found for {shown}." if page == 1 else "No older matches.")
        return
    lines = [f"Found for {shown} (newest first):" if page == 1 else f"Page {page}:"]
    matches: set[str] = set()
    for hit in hits[:size]:
        when = hit.started_at.astimezone().strftime("%b %d %H:%M")
        lines.append(f"{hit.conversation_id:>4} {when}  " + marked_snippet(hit.snippet, ""))
        matches.update(matched(hit.snippet))
    more = f"; /search {shown} +{page + 1} shows older ones" if len(hits) > size else ""
    lines.append(f"/open N opens one{more}.")
    # The matches in bold: e-ink shows bold (a mark such as ** would read as the text).
    screen.say("\n".join(lines), bold=tuple(matches))


def matched(snippet: str) -> list[str]:
    """The matched words of a search hit's snippet, sanitised as they are shown."""
    text = snippet.replace(MARK_START, "\0").replace(MARK_END, "\0")
    return [re.sub(r"\s+", " ", sanitize(p)) for p in text.split("\0")[1::2]]


def marked_snippet(snippet: str, mark: str) -> str:
    """A search hit's snippet on one line, sanitised, each match between ``mark``s."""
    text = snippet.replace(MARK_START, "\0").replace(MARK_END, "\0")
    pieces = [re.sub(r"\s+", " ", sanitize(p)) for p in text.split("\0")]
    return "".join(p if i % 2 == 0 else f"{mark}{p}{mark}" for i, p in enumerate(pieces))


def _retry(screen: Screen, args: list[str]) -> None:
    try:
        screen.conversation.retry(quota=screen.quota, thoughts=screen.show_thoughts)
    except (InputRejected, BudgetExceeded) as exc:
        screen.say(str(exc), "error")
        return
    screen.sync()


def _usage(screen: Screen, args: list[str]) -> None:
    screen.spawn(_report_usage(screen))


async def _report_usage(screen: Screen) -> None:
    user = screen.chat.user
    holder = screen.quota.holder if screen.quota is not None else user
    counts = await screen.hub.usage(user, holder=holder)
    status = screen.hub.quota.status(holder)
    when = f"{status.resets_at:%H:%M} UTC, in {span(status.resets_in)}"
    lines = [
        f"Tokens today: {counts.counted:,} (input {counts.input_tokens:,}, output "
        f"{counts.output_tokens:,}, thinking {counts.thoughts_tokens:,})."
    ]
    if status.daily_tokens:
        left = max(0, status.daily_tokens - counts.counted)
        lines.append(f"Left today: {left:,} of {status.daily_tokens:,}; resets at {when}.")
    else:
        lines.append(f"No daily limit; the count starts again at {when}.")
    if status.prompts_now is None:
        lines.append("Questions: no limit on how often you ask.")
    else:
        lines.append(
            f"Questions you can ask now: {status.prompts_now} of {status.prompts} "
            f"(one more every {status.refill_seconds:g} s)."
        )
    screen.say("\n".join(lines))


def _profile(name: str) -> Handler:
    def switch(screen: Screen, args: list[str]) -> None:
        screen.set_profile(name)

    return switch


def _thoughts(screen: Screen, args: list[str]) -> None:
    screen.show_thoughts = not screen.show_thoughts
    screen.say(
        "Thinking is shown, marked with │, before each answer."
        if screen.show_thoughts
        else "Thinking is hidden; only answers are shown."
    )


def _system(screen: Screen, args: list[str]) -> None:
    conversation = screen.conversation
    if not args:
        text = conversation.instructions
        whose = "the server's" if conversation.system_prompt is None else "this conversation's"
        screen.say(
            f"System prompt ({whose}): {sanitize_inline(text, 2000)}"
            if text
            else "No system prompt in this conversation; /system TEXT sets one."
        )
        return
    word = args[0].lower() if len(args) == 1 else ""
    if word == "off":
        conversation.configure(system_prompt="")
        screen.say("System prompt off for this conversation.")
    elif word == "default":
        conversation.configure(default_prompt=True)
        screen.say("This conversation uses the server's system prompt again.")
    else:
        text = " ".join(args)
        limit = conversation.settings.max_prompt_chars
        if len(text) > limit:
            screen.say(
                f"That system prompt has {len(text):,} characters; the limit is {limit:,}. "
                "Nothing was changed.",
                "error",
            )
            return
        conversation.configure(system_prompt=text)
        screen.say(f"System prompt for this conversation: {sanitize_inline(text, 2000)}")


def _web(screen: Screen, args: list[str]) -> None:
    conversation = screen.conversation
    word = args[0].lower() if len(args) == 1 else ""
    if args and word not in ("on", "off"):
        screen.say("Say /web on or /web off (or /web alone to switch).", "error")
        return
    on = word == "on" if word else not conversation.searching
    conversation.configure(web=on)
    screen.say(
        "Web search is on for this conversation: answers are grounded in Google Search "
        "and list their sources."
        if on
        else "Web search is off for this conversation."
    )


def _model(screen: Screen, args: list[str]) -> None:
    models = screen.hub.models
    conversation = screen.conversation
    if models is None or not models.names:
        screen.say(f"Model: {sanitize_inline(conversation.provider.model, 80)} (the only one).")
        return
    current = conversation.entry or models.name_of(conversation.provider)
    if not args:
        lines = ["Models (/model NAME switches this conversation):"]
        for name in models.names:
            entry = models.entry(name)
            provider = models.get(name)
            kind = entry.provider if entry is not None else "?"
            model = provider.model if provider is not None else "?"
            mark = "  <- current" if name == current else ""
            lines.append(f"  {name}: {kind}, {sanitize_inline(model, 60)}{mark}")
        screen.say("\n".join(lines))
        return
    name = args[0].lower()
    provider = models.get(name)
    if provider is None:
        known = ", ".join(models.names)
        screen.say(
            f"No model entry named {sanitize_inline(args[0], 40)!r}; configured: {known}.",
            "error",
        )
        return
    conversation.use(name, provider)
    screen.say(
        f"This conversation now uses {name} ({sanitize_inline(provider.model, 60)}) "
        "from the next question on."
    )


def _up(screen: Screen, args: list[str]) -> None:
    screen.scroll(1)


def _down(screen: Screen, args: list[str]) -> None:
    screen.scroll(-1)


def _glyphs(screen: Screen, args: list[str]) -> None:
    if not args:
        screen.say(f"Glyphs: {screen.glyphs}. /glyphs full, kindle or ascii switches.")
        return
    wanted = args[0].lower()
    for mode in GLYPH_MODES:
        if mode == wanted:
            screen.glyphs = mode
            screen.say(f"Glyphs: {mode}.")
            return
    screen.say("Glyphs are full, kindle or ascii: /glyphs kindle.", "error")


def _top(screen: Screen, args: list[str]) -> None:
    screen.top()


def _quit(screen: Screen, args: list[str]) -> None:
    screen.quit()


def _help(screen: Screen, args: list[str]) -> None:
    screen.say(
        help_text()
        + f"\nModel: {screen.conversation.provider.model}"
        + f"\nScreen: {screen.profile.name} (from {screen.profile.source})"
    )


COMMANDS: tuple[Command, ...] = (
    Command(("/new",), "start a fresh conversation", _new),
    Command(("/history",), "list your conversations (/history 2: older)", _history),
    Command(("/open",), "reopen conversation N and continue it", _open, "/open N"),
    Command(("/delete",), "delete conversation N (asks first)", _delete, "/delete N"),
    Command(("/search",), "search your conversations (\"a phrase\", pre*)", _search,
            "/search WORDS"),
    Command(("/export",), "save this conversation (md, txt, epub)", _export,
            "/export [FMT]"),
    Command(("/retry",), "ask the last question again", _retry),
    Command(("/usage",), "your tokens today and what is left", _usage),
    Command(("/eink",), "e-ink screen: few repaints, pages", _profile("eink")),
    Command(("/thoughts",), "show or hide the model's thinking", _thoughts),
    Command(("/web",), "answers with web sources (on/off)", _web),
    Command(("/system",), "this chat's instructions (TEXT, off)", _system),
    Command(("/model",), "list the models; /model NAME switches", _model, "/model NAME"),
    Command(("/smooth",), "laptop screen: smooth streaming", _profile("smooth")),
    Command(("/glyphs",), "emoji as words (full, kindle, ascii)", _glyphs, "/glyphs M"),
    Command(("/up",), "page back and forth (or PgUp/PgDn)", _up, "/up /down"),
    Command(("/down",), "page forth", _down, listed=False),
    Command(("/top",), "first page of the latest answer (or Home)", _top),
    Command(("/quit", "/exit", "/q"), "leave (also Ctrl-D on an empty line)", _quit),
    Command(("/help", "/?"), "this list", _help),
)

_BY_NAME = {name: command for command in COMMANDS for name in command.names}
