"""Drive a real SSH client binary (OpenSSH ``ssh``, Dropbear ``dbclient``, PuTTY ``plink``)
under a PTY.

Contract:
- :class:`PtyClient` runs one client process on a pseudo-terminal and reads what it
  shows through :class:`~tests.screenreader.ScreenReader`; ``raw`` is every byte the
  client wrote to its terminal.
- :data:`CLIENTS` builds, per client, the command line that logs in to a test server
  with a key of the client's own format (authorizing that key first where needed).
- A missing binary skips its test, except under ``CI=true``, where it fails.
"""

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
from pathlib import Path

import asyncssh
import pytest

from kindlessh import Server

from .screenreader import ScreenReader


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


class PtyClient(ScreenReader):
    """A client process on a pseudo-terminal of ``cols`` x ``rows``, read through pyte."""

    wait_timeout = 10.0  # a real client's login takes longer than asyncssh's

    def __init__(self, argv: Sequence[str], cols: int = 54, rows: int = 20) -> None:
        super().__init__(cols, rows)
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
        self.raw = bytearray()
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            self._ended()
        else:
            self.raw += data
            self._show(data)

    async def send(self, data: bytes) -> None:
        os.write(self.master, data)
        await asyncio.sleep(0)

    def resize(self, cols: int, rows: int) -> None:
        """Resize the pty (and the pyte screen), as a terminal window or kterm does."""
        # The kernel sends the client SIGWINCH: the pty is its controlling terminal.
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self._resize_screen(cols, rows)

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


# ----- the clients' command lines -----------------------------------------------------------


def _authorize(server: Server, public_key_line: str) -> None:
    """Add a key; the server re-reads authorized_keys at the next login."""
    with server.ctx.keys.authorized.path.open("a") as fh:
        fh.write(public_key_line.strip() + "\n")


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def openssh_argv(server: Server, client_key: asyncssh.SSHKey, tmp_path: Path) -> list[str]:
    ssh = need_binary("ssh", "openssh-client")
    key = tmp_path / "id_ed25519"
    key.write_bytes(client_key.export_private_key("openssh"))
    key.chmod(0o600)
    return [
        ssh, "-t", "-p", str(server.port), "-i", str(key),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "reader@127.0.0.1",
    ]


def dropbear_argv(server: Server, client_key: asyncssh.SSHKey, tmp_path: Path) -> list[str]:
    dbclient = need_binary("dbclient", "dropbear-bin")
    dropbearkey = need_binary("dropbearkey", "dropbear-bin")
    key = tmp_path / "id_dropbear"
    _run(dropbearkey, "-t", "ed25519", "-f", str(key))
    public = [ln for ln in _run(dropbearkey, "-y", "-f", str(key)).splitlines()
              if ln.startswith("ssh-ed25519 ")]
    _authorize(server, public[0])
    # -y -y: accept any host key without asking (the test's known_hosts is nowhere).
    return [dbclient, "-t", "-y", "-y", "-i", str(key), "-p", str(server.port),
            "reader@127.0.0.1"]


def putty_argv(server: Server, client_key: asyncssh.SSHKey, tmp_path: Path) -> list[str]:
    plink = need_binary("plink", "putty-tools")
    puttygen = need_binary("puttygen", "putty-tools")
    key = tmp_path / "key.ppk"
    _run(puttygen, "-t", "ed25519", "-o", str(key), "--new-passphrase", "/dev/null")
    _authorize(server, _run(puttygen, "-L", str(key)))
    return [plink, "-ssh", "-batch", "-t", "-P", str(server.port), "-i", str(key),
            "-hostkey", server.host_key.fingerprint, "reader@127.0.0.1"]


CLIENTS: dict[str, Callable[[Server, asyncssh.SSHKey, Path], list[str]]] = {
    "openssh": openssh_argv,
    "dropbear": dropbear_argv,
    "putty": putty_argv,
}
