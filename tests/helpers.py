"""What the tests share: connecting a screen to the chat, clocks, waiting, ``kindlessh serve``.

Contract:
- :data:`CLIENT_KEY` is the client key every test server authorizes (the ``client_key``
  fixture is this key).
- :func:`connected` opens a :class:`~tests.sshterm.Terminal` to a server (or a port),
  waits until the chat is up (``/help`` on the screen, or the ``ready`` text) and closes
  it on the way out, whatever happened; :func:`open_chat` is the same without the
  closing, for tests that drop or keep connections themselves.
- :func:`only_session` is a server's one open session.
- :class:`FakeClock` is a monotonic clock that moves only when told; :func:`until`
  waits for a condition on the server's side.
- :class:`ScriptedProvider` is a model API with no sockets that plays scripted answers.
- :func:`epubcheck` is the command line of Debian's epubcheck.
- :func:`start_serve` runs ``kindlessh serve`` as a subprocess and returns once it has
  printed its start-up lines; :func:`stop_serve` stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

import asyncssh
import pytest

from kindlessh import ChatRequest, Finish, Server, StreamEvent, TextDelta, UpstreamError

from .sshterm import Terminal

CLIENT_KEY = asyncssh.generate_private_key("ssh-ed25519", comment="reader@kindle")


class TermOptions(TypedDict, total=False):
    """How :func:`connected` connects: the keywords of ``Terminal.connect``."""

    username: str
    cols: int
    rows: int
    command: str | None
    term_type: str
    encoding: str | None
    password: str | None
    env: dict[str, str] | None
    sock: socket.socket | None


async def open_chat(
    target: Server | int,
    key: asyncssh.SSHKey | None = CLIENT_KEY,
    *,
    ready: str = "/help",
    **options: Unpack[TermOptions],
) -> Terminal:
    """A terminal logged in to ``target`` with ``ready`` on its screen; the caller closes it."""
    port = target if isinstance(target, int) else target.port
    term = await Terminal.connect(port, key, **options)
    try:
        await term.wait_for(ready)
    except BaseException:
        await term.close()
        raise
    return term


@asynccontextmanager
async def connected(
    target: Server | int,
    key: asyncssh.SSHKey | None = CLIENT_KEY,
    *,
    ready: str = "/help",
    **options: Unpack[TermOptions],
) -> AsyncIterator[Terminal]:
    """``async with connected(server) as term:`` - the chat, up, on a terminal that is
    closed at the end of the block."""
    term = await open_chat(target, key, ready=ready, **options)
    try:
        yield term
    finally:
        await term.close()


def only_session(server: Server) -> Any:
    """The server's one open session (the test has exactly one connection)."""
    (session,) = server.ctx.session.sessions
    return session


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Step = StreamEvent | asyncio.Event | UpstreamError


@dataclass
class ScriptedProvider:
    """Answers from a script, no sockets: each call to ``stream`` plays the next reply,
    a list of steps: an event is yielded, an :class:`asyncio.Event` holds the answer
    there until it is set, an :class:`UpstreamError` is raised there. With no reply
    left, the answer is "Fine."."""

    replies: list[list[Step]] = field(default_factory=list)
    requests: list[ChatRequest] = field(default_factory=list)
    name: str = "Scripted"
    model: str = "test-model"

    @property
    def calls(self) -> int:
        """How many answers were asked for."""
        return len(self.requests)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else [TextDelta("Fine."), Finish("STOP")]
        for step in reply:
            if isinstance(step, asyncio.Event):
                await step.wait()
            elif isinstance(step, UpstreamError):
                raise step
            else:
                yield step


def shared_key(server: Server) -> asyncssh.SSHKey:
    """A new key added to the server's shared authorized_keys: another holder."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = server.ctx.keys.authorized.path
    path.write_text(path.read_text() + "\n" + key.export_public_key().decode())
    return key


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (the server handles closes a little later)."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def start_serve(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, list[str]]:
    """``kindlessh serve *args`` in ``cwd`` (no ``GEMINI_API_KEY`` unless ``env`` sets one);
    returns the process and the lines it printed up to the ``Gemini:`` line."""
    base = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kindlessh", "serve", *args,
        cwd=cwd,
        env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("Gemini:") for line in lines):
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"server exited: {lines} {err.decode()}")
        lines.append(line.decode().rstrip("\n"))
    return proc, lines


async def stop_serve(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, as a service manager stops it; returns the exit code."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 10)


def epubcheck() -> list[str]:
    """The command line that runs epubcheck; skips the test without it (fails it in CI)."""
    java, jar = shutil.which("java"), shutil.which("epubcheck")
    if java is None or jar is None:
        message = "epubcheck is not installed (apt-get install epubcheck)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    # Debian's /usr/bin/epubcheck is the jar itself, run directly only where binfmt is on.
    return [java, "-jar", jar]
