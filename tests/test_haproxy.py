"""A real HAProxy, configured from ``deploy/haproxy.cfg``, in front of the real server."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from kindlessh import Server
from kindlessh._config import ServerConfig, StorageConfig
from kindlessh._keys import load_or_create_host_key, load_or_create_rsa_host_key
from kindlessh._store import open_store

from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .haproxy import running_haproxy
from .helpers import connected, open_chat, start_serve, stop_serve, until
from .sshterm import Terminal


@pytest.fixture
async def haproxy(tmp_path: Path, make_server: ServerFactory) -> AsyncIterator[tuple[Server, int]]:
    server = await make_server(server={"proxy_from": "127.0.0.1"})
    async with running_haproxy(tmp_path, [server.port]) as port:
        yield server, port


async def test_a_chat_through_haproxy_takes_the_proxy_path(
    haproxy: tuple[Server, int], fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kindlessh.server")
    server, port = haproxy
    # HAProxy's health checks arrive as PROXY LOCAL and are answered quietly.
    await until(lambda: caplog.text.count("PROXY LOCAL (health check)") >= 3)
    caplog.clear()
    fake_gemini.enqueue(Reply.text(["Through ", "HAProxy."]))
    async with connected(port) as term:
        await term.ask("hello")
        await term.wait_for("Through HAProxy.")
        client_port = term.conn.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    # The address and port HAProxy saw, carried by its PROXY v2 header.
    assert f"connection from 127.0.0.1 port {client_port} via proxy 127.0.0.1" in caplog.text
    await asyncio.sleep(0.3)  # a few more health checks
    assert caplog.text.count("PROXY LOCAL (health check)") >= 2
    assert "refus" not in caplog.text
    assert server.ctx.guard.refused_for("127.0.0.1") == 0  # checks are no failed logins
    assert server.ctx.guard.logging_in == 0
    connections = [r for r in caplog.records if "connection from" in r.getMessage()]
    assert len(connections) == 1  # the chat only: no health check counted as one


async def _machine(
    folder: Path, keys: Path, pg_url: str, gemini: FakeGemini
) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """One machine: ``kindlessh serve`` in ``folder`` with the host keys and
    authorized_keys copied from ``keys`` (the README: the same files on every machine),
    the shared PostgreSQL store, and PROXY headers taken from HAProxy on 127.0.0.1.
    Returns the process, its port and its log as it grows."""
    shutil.copytree(keys, folder / "keys")
    config = folder / "kindlessh.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\nproxy_from = "127.0.0.1"\n'
        f'[gemini]\nbase_url = "{gemini.base_url}"\n'
        f'[storage]\nurl = "{pg_url}"\ncommit_interval_ms = 50\nfollow_check_ms = 200\n'
    )
    proc, lines = await start_serve(
        folder, "--config", str(config), env={"GEMINI_API_KEY": "test-key"}
    )
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", "\n".join(lines))
    assert found is not None
    log: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            log.append(line.decode())

    # Kept with the process (a task nobody holds may be collected); it ends with it.
    proc.reader = asyncio.get_running_loop().create_task(read())  # type: ignore[attr-defined]
    return proc, int(found.group(1)), log


async def test_a_reconnection_through_haproxy_to_the_other_machine_sees_the_rest_live(
    pg_url: str, tmp_path: Path, client_key: asyncssh.SSHKey, fake_gemini: FakeGemini
) -> None:
    # Two `kindlessh serve` processes, each in a folder of its own as two machines would
    # be, on one PostgreSQL database, behind one HAProxy sending to each in turn.
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "authorized_keys").write_bytes(client_key.export_public_key())
    # Made once, then copied to each machine, as the README says to.
    host_key = keys / ServerConfig().host_key.name
    load_or_create_host_key(host_key)
    load_or_create_rsa_host_key(host_key)
    machines = [await _machine(tmp_path / f"m{n}", keys, pg_url, fake_gemini) for n in (1, 2)]
    pieces = ["First words arrive. ", "Then the middle. ", "More of it. ", "And the end."]
    gate = asyncio.Event()
    fake_gemini.enqueue(Reply.text(pieces, chunk_delay=0.15).gated(1, gate))

    def served(term: Terminal) -> int:
        """Which machine the terminal's connection reached (by HAProxy's PROXY line)."""
        client_port = term.conn.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        line = f"port {client_port} via proxy 127.0.0.1"
        (which,) = [n for n, (_, _, log) in enumerate(machines) if line in "".join(log)]
        return which

    try:
        backends = [port for _, port, _ in machines]
        async with running_haproxy(tmp_path, backends, "roundrobin") as port:
            first = await open_chat(port)
            await first.ask("tell me")
            await first.wait_for("First words arrive.")
            asked = served(first)
            key_seen = first.conn.get_server_host_key()  # type: ignore[union-attr]
            await first.close()  # the Kindle's Wi-Fi sleeps mid-answer
            async with connected(port) as second:
                # Round robin: the reconnection reaches the other machine, which offers
                # the same host key (the files were copied), and follows the answer.
                assert served(second) != asked
                assert second.conn.get_server_host_key() == key_seen  # type: ignore[union-attr]
                await second.wait_for("First words arrive.")
                await second.wait_for("its answer is still coming")
                gate.set()  # the rest comes now, while this screen watches
                await second.wait_for("And the end.")
                await second.wait_for(lambda t: "ready" in t.text())
                assert "".join(pieces) in second.joined()
    finally:
        for proc, _, _ in machines:
            if proc.returncode is None:
                assert await stop_serve(proc) == 0
            await asyncio.wait_for(proc.reader, 5)  # type: ignore[attr-defined]
    store = await open_store(StorageConfig(url=pg_url))
    try:
        latest = await store.latest_conversation("reader")
        assert latest is not None
        rows = await store.load_turns("reader", latest)
    finally:
        await store.close()
    assert [(r.answer, r.state, r.incomplete) for r in rows] == [("".join(pieces), "done", False)]
    assert len(fake_gemini.requests) == 1  # asked upstream once, by the first machine
    assert fake_gemini.responses[0].completed
    for _, _, log in machines:
        assert "Traceback" not in "".join(log)
