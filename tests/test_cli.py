"""``kindlessh serve`` as a person starts it: a subprocess, no config file at all."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import asyncssh

import kindlessh

from .helpers import connected, start_serve, stop_serve


async def test_serve_without_config_creates_a_key_and_explains(tmp_path: Path) -> None:
    proc, lines = await start_serve(tmp_path, "--host", "127.0.0.1", "--port", "0")
    try:
        text = "\n".join(lines)
        key = tmp_path / "keys" / "ssh_host_ed25519_key"
        assert key.stat().st_mode & 0o777 == 0o600
        fingerprint = asyncssh.read_private_key(str(key)).get_fingerprint()
        assert fingerprint in text
        assert "(created now)" in text
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        assert re.search(rf"Connect:  ssh -t -p {port} \S+@127\.0\.0\.1", text)
        assert "No keys are authorized yet" in text
        assert str(tmp_path / "keys" / "authorized_keys") in text
        assert "NO API KEY" in text and "GEMINI_API_KEY" in text
    finally:
        assert await stop_serve(proc) == 0


async def test_serve_with_a_key_file_lets_the_key_in(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "authorized_keys").write_bytes(key.export_public_key())
    proc, lines = await start_serve(
        tmp_path, "--host", "127.0.0.1", "--port", "0", env={"GEMINI_API_KEY": "k"}
    )
    try:
        text = "\n".join(lines)
        assert "Authorized keys: 1 in" in text and "API key set" in text
        port = int(re.search(r":(\d+)\n", text).group(1))  # type: ignore[union-attr]
        async with connected(port, key) as term:
            await term.send("/quit\r")
            await term.wait_closed()
        # Restarting reuses the same host key.
    finally:
        assert await stop_serve(proc) == 0
    proc, lines = await start_serve(tmp_path, "--host", "127.0.0.1", "--port", "0")
    try:
        assert "(created now)" not in "\n".join(lines)
    finally:
        await stop_serve(proc)


async def test_bad_config_fails_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'x'\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kindlessh", "serve", "--config", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines == [f"kindlessh: {bad}: [server] port: expected an integer, got a string"]


async def test_port_in_use_fails_with_one_line(tmp_path: Path) -> None:
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kindlessh", "serve", "--host", "127.0.0.1",
            "--port", str(port), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        holder.close()
    assert proc.returncode == 2
    # One line says what is wrong (log lines, e.g. the database's creation, may precede it).
    (line,) = [ln for ln in err.decode().splitlines() if ln.startswith("kindlessh:")]
    assert line == (
        f"kindlessh: cannot listen on 127.0.0.1:{port}: the port is in use by another "
        "program; choose another with --port"
    )


def test_version_is_exposed() -> None:
    assert kindlessh.__version__
