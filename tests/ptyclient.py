"""Drive a real SSH client binary (OpenSSH ``ssh``, Dropbear ``dbclient``, PuTTY ``plink``)
under a PTY."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence

import pyte
import pytest


def need_binary(name: str, package: str) -> str:
    """The binary's path; skip the test if it is missing, except under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _take_terminal() -> None:
    """In the child, after setsid(): make standard input (the pty) the controlling tty."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyClient:
    """A client process on a pseudo-terminal of ``cols`` x ``rows``, read through pyte."""

    def __init__(self, argv: Sequence[str], cols: int = 54, rows: int = 20) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, close_fds=True,
            env={**os.environ, "TERM": "xterm"},
            # The pty becomes the client's controlling terminal, as in a real terminal:
            # clients read passphrases and keyboard-interactive answers from /dev/tty,
            # and the kernel sends SIGWINCH on a resize.
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._changed = asyncio.Event()
        self.eof = False
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            asyncio.get_running_loop().remove_reader(self.master)
        else:
            self.raw += data
            self.stream.feed(data)
        self._changed.set()

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def joined(self) -> str:
        return " ".join(line.strip() for line in self.screen.display if line.strip())

    async def wait_for(self, what: str, timeout: float = 10.0) -> None:
        await self.wait_until(
            lambda: what in self.text() or what in self.joined(), repr(what), timeout
        )

    async def wait_until(
        self, check: Callable[[], bool], what: str, timeout: float = 10.0
    ) -> None:
        """Wait until ``check()`` holds for the screen; ``what`` describes it on failure."""
        deadline = time.monotonic() + timeout
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"waited for {what}; the screen shows:\n{self.text()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    async def send(self, data: bytes) -> None:
        os.write(self.master, data)
        await asyncio.sleep(0)

    def resize(self, cols: int, rows: int) -> None:
        """Resize the pty (and the pyte screen), as a terminal window or kterm does."""
        # The kernel sends the client SIGWINCH: the pty is its controlling terminal.
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.screen.resize(rows, cols)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("the client did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            asyncio.get_running_loop().remove_reader(self.master)
        except (ValueError, RuntimeError):
            pass
        os.close(self.master)
