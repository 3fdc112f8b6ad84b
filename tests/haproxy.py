"""A real HAProxy for the tests, configured from ``deploy/haproxy.cfg``.

Contract:
- :func:`haproxy_config` is ``deploy/haproxy.cfg`` moved to loopback: it listens on
  ``listen``, sends to ``backends`` (ports on 127.0.0.1) in that order, checks them every
  100 ms and logs to stdout; ``balance`` replaces the deployment's choice when given.
- :func:`running_haproxy` runs it (``haproxy -db``) for an ``async with`` block and
  yields the port it listens on, once it accepts connections (with no connection of
  its own: a probe would count as a client to the balancing). Without the binary the
  test is skipped, or fails under ``CI=true`` (``.ci/postgres`` installs it).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_config(listen: int, backends: list[int], balance: str | None = None) -> str:
    """The deployment's configuration on loopback (see the module contract)."""
    text = DEPLOY.read_text()
    text = text.replace("log /dev/log local0", "log stdout format raw local0")
    text = text.replace("bind :22", f"bind 127.0.0.1:{listen}")
    text = re.sub(r"^    server .*\n", "", text, flags=re.M)
    if balance is not None:
        text = re.sub(r"^    balance \w+$", f"    balance {balance}", text, flags=re.M)
    for number, port in enumerate(backends, 1):
        text += f"    server kindlessh{number} 127.0.0.1:{port}\n"
    return text.replace("inter 5s", "inter 100ms")


def _listening(port: int) -> bool:
    # Read from the kernel's table of listening sockets, not by connecting: a probe
    # connection would be sent to a backend and count in the balancing.
    wanted = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            if any(wanted in line and line.split()[3] == "0A" for line in lines):
                return True
    return False


@asynccontextmanager
async def running_haproxy(
    folder: Path, backends: list[int], balance: str | None = None
) -> AsyncIterator[int]:
    """HAProxy in front of ``backends``, for the block (see the module contract)."""
    binary = shutil.which("haproxy")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed (.ci/postgres installs it)")
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    port = free_port()
    cfg = folder / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, backends, balance))
    proc = await asyncio.create_subprocess_exec(
        binary, "-f", str(cfg), "-db",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            if _listening(port):
                break
            if proc.returncode is not None:
                raise AssertionError(f"haproxy exited with status {proc.returncode}")
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("haproxy never listened")
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
