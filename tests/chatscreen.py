"""The chat screen below SSH, for tests: keys through a prompt-toolkit pipe, a real hub
over a real store in tmp_path, and a scripted provider.

Contract: ``async with chat_screen(tmp_path) as screen`` runs one :class:`ChatScreen` for
:data:`USER` until the block ends; :class:`Screen` types commands and questions into it
and waits for what they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prompt_toolkit.application import create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from kindlessh._config import QuotaConfig, UIConfig
from kindlessh._conversation import Conversation, GenerationSettings
from kindlessh._hub import Hub
from kindlessh._profile import ProfileName, make_profile
from kindlessh._quota import Quota
from kindlessh._screen import ChatScreen
from kindlessh._sqlite_store import SqliteStore

from .helpers import ScriptedProvider, until

USER = "reader"


@dataclass
class Screen:
    ui: ChatScreen
    keys: PipeInput
    hub: Hub
    store: SqliteStore
    provider: ScriptedProvider
    task: asyncio.Task[None]

    def notices(self) -> list[str]:
        return [item.notice.text for item in self.ui.items if item.notice is not None]

    def last(self) -> str:
        return self.notices()[-1]

    def send(self, keys: str) -> None:
        """Type ``keys`` (the test then waits for what they do)."""
        self.keys.send_text(keys)

    async def command(self, line: str, *, says: str) -> str:
        """Type a command and wait for a notice containing ``says``; returns it."""
        # The items themselves are kept, not their ids: /new drops them from the screen,
        # and a freed item's id may come back as a new item's.
        before = list(self.ui.items)
        seen = {id(item) for item in before}

        def new() -> list[str]:
            return [item.notice.text for item in self.ui.items
                    if item.notice is not None and id(item) not in seen]

        self.keys.send_text(line + "\r")
        await until(lambda: any(says in text for text in new()))
        return next(text for text in new() if says in text)

    async def ask(self, question: str) -> None:
        """Ask and wait for the whole answer."""
        self.keys.send_text(question + "\r")
        await until(lambda: self.ui.conversation.current is not None
                    and self.ui.conversation.current.question == question
                    and not self.ui.conversation.answering
                    and self.ui.chat.id is not None)  # stored: it has a number

    def lines(self) -> list[str]:
        size = self.ui.size()
        return ["".join(text for _, text, *_ in line)
                for line in self.ui.visible_lines(size.columns, size.rows - 2)]


@contextlib.asynccontextmanager
async def chat_screen(
    tmp_path: Path,
    *,
    profile: ProfileName = "smooth",
    rows: int = 24,
    columns: int = 80,
    quota: QuotaConfig | None = None,
) -> AsyncIterator[Screen]:
    store = await SqliteStore.open(tmp_path / "kindlessh.sqlite3")
    limits = Quota(quota or QuotaConfig(prompts=1000), store)
    provider = ScriptedProvider()
    hub = Hub(
        store,
        lambda user: Conversation(
            provider, GenerationSettings(max_prompt_chars=100), quota=limits.of(user)
        ),
        quota=limits,
        commit_interval=0.05,
        finish_on_disconnect=True,
        export_dir=tmp_path / "exports",
    )
    chat = await hub.resume(USER)
    profiles = {n: make_profile(n, UIConfig(), "xterm", {}, "the test")
                for n in ("eink", "smooth")}
    output = Vt100_Output(io.StringIO(), lambda: Size(rows, columns), term="xterm",
                          enable_cpr=False)
    try:
        with create_pipe_input() as keys, create_app_session(input=keys, output=output):
            ui = ChatScreen(chat, hub=hub, username=USER, profile=profiles[profile],
                        profiles=dict(profiles))
            task = asyncio.get_running_loop().create_task(ui.run())
            await until(lambda: ui.app.is_running)
            screen = Screen(ui, keys, hub, store, provider, task)
            try:
                yield screen
            finally:
                ui.quit()
                await asyncio.wait_for(task, 5.0)
                hub.release(ui.chat)
    finally:
        await hub.aclose()
