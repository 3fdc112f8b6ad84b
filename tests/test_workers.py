"""``kindlessh serve --workers N``: refused on SQLite; on PostgreSQL N processes on one
port, one host key, connections spread, SIGTERM stops them all; the parent restarts a
worker that dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh
import pytest

from .conftest import write_config
from .helpers import CLIENT_KEY

POSTGRES = os.environ.get(
    "KINDLESSH_TEST_POSTGRES", "postgresql://kindlessh:kindlessh@127.0.0.1:5432/kindlessh"
)
IN_CI = os.environ.get("CI") == "true"


def config_file(tmp_path: Path, **storage: str) -> Path:
    (tmp_path / "authorized_keys").write_text(CLIENT_KEY.export_public_key().decode())
    return write_config(tmp_path / "kindlessh.toml", {
        "server": {
            "host": "127.0.0.1", "port": 0,
            "host_key": str(tmp_path / "host_key"),
            "authorized_keys": str(tmp_path / "authorized_keys"),
        },
        "storage": {"path": str(tmp_path / "store.sqlite3"), **storage},
    })


async def serve(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kindlessh", "serve", *args, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def test_several_workers_on_sqlite_are_refused_in_one_line(tmp_path: Path) -> None:
    proc = await serve(tmp_path, "--config", str(config_file(tmp_path)), "--workers", "2")
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert err.decode() == (
        "kindlessh: --workers 2: several workers need the PostgreSQL store ([storage] url); "
        "the SQLite file serves one process\n"
    )
    assert out == b""  # nothing started: no listening line
    assert not (tmp_path / "host_key").exists()


def postgres_reachable() -> bool:
    where = urlsplit(POSTGRES)
    try:
        socket.create_connection((where.hostname or "127.0.0.1", where.port or 5432), 2).close()
    except OSError:
        return False
    return True


async def test_two_workers_share_the_port_the_host_key_and_stop_together(
    tmp_path: Path,
) -> None:
    if not postgres_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES} (.ci/postgres starts it)")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}")
    config = config_file(tmp_path, url=POSTGRES)
    proc = await serve(tmp_path, "--config", str(config), "--workers", "2")
    assert proc.stdout is not None and proc.stderr is not None
    log: list[str] = []

    async def read_log() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            log.append(line.decode())

    reader = asyncio.create_task(read_log())
    lines: list[str] = []
    try:
        while not (any(x.startswith("Gemini:") for x in lines)
                   and any(x.startswith("Workers:") for x in lines)):
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            if not line:
                await asyncio.wait_for(reader, 5)
                if any("no PostgreSQL store" in x for x in log):
                    pytest.skip("this build's store does not take [storage] url yet")
                raise AssertionError(f"serve exited: {lines} {log}")
            lines.append(line.decode().rstrip("\n"))
        text = "\n".join(lines)
        assert text.count("listening on") == 1  # printed once, not once per worker
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        workers = [int(p) for p in re.search(r"pids (\d+), (\d+)$", text, re.M).groups()]  # type: ignore[union-attr]

        conns: list[asyncssh.SSHClientConnection] = []
        served_by: dict[int, int] = {}  # client port -> worker pid
        keys: set[str] = set()
        # Six at least; more only while the kernel's hash has put them all on one worker.
        while len(conns) < 6 or (len(set(served_by.values())) < 2 and len(conns) < 16):
            conn = await asyncssh.connect(
                "127.0.0.1", port, username="reader", client_keys=[CLIENT_KEY],
                known_hosts=None, agent_path=None, server_host_key_algs=["ssh-ed25519"],
            )
            conns.append(conn)
            client_port = conn.get_extra_info("sockname")[1]
            host_key = conn.get_server_host_key()
            assert host_key is not None
            keys.add(host_key.get_fingerprint())
            pattern = re.compile(rf"\[(\d+)\] kindlessh.server: connection from 127\.0\.0\.1 "
                                 rf"port {client_port}\b")
            for _ in range(200):
                found = [m for m in map(pattern.search, log) if m]
                if found:
                    served_by[client_port] = int(found[0].group(1))
                    break
                await asyncio.sleep(0.02)
        assert set(served_by.values()) == set(workers)  # both served, no one else did
        assert len(keys) == 1  # one host key, whichever worker answered
        assert keys == {re.search(r"ED25519 (SHA256:\S+)", text).group(1)}  # type: ignore[union-attr]
        for conn in conns:
            conn.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(reader, 5)
    assert code == 0
    assert all(gone(pid) for pid in workers), "a worker outlived the parent"


SUPERVISED = textwrap.dedent("""
    import logging, os, sys, time
    from kindlessh._workers import listening_sockets, run_workers
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def say(line):  # one write per line: two processes share the pipe
        os.write(1, (line + "\\n").encode())

    def child(slot, sock, first):
        say(f"worker {slot} up on {sock.getsockname()[1]} first={first}")
        while True:
            time.sleep(1)

    socks = listening_sockets("127.0.0.1", 0, 2)
    sys.exit(run_workers(socks, child, lambda pids: say("pids " + " ".join(map(str, pids)))))
""")


async def test_the_parent_restarts_a_dead_worker_and_stops_them_all() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUPERVISED,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []

    async def line() -> str:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert raw, f"the supervisor exited: {seen}"
        text = raw.decode().strip()
        seen.append(text)
        return text

    try:
        while not any(x.startswith("pids") for x in seen) or sum(
            x.startswith("worker") for x in seen
        ) < 2:
            await line()
        pids = [int(p) for p in next(x for x in seen if x.startswith("pids")).split()[1:]]
        ports = {x.split()[4] for x in seen if x.startswith("worker")}
        assert len(ports) == 1  # both on one port
        assert "worker 0 up" in "\n".join(seen) and "first=True" in "\n".join(seen)
        os.kill(pids[1], signal.SIGKILL)
        again = await line()
        assert again.startswith("worker 1 up") and again.endswith("first=False")
        assert not gone(pids[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    err = (await proc.stderr.read()).decode()
    assert code == 0
    assert f"worker 1 (pid {pids[1]}) was killed by signal 9" in err
    assert "starting it again in 0.5 s" in err
    assert "every worker has stopped" in err
    restarted = int(re.search(r"worker 1 started again: pid (\d+)", err).group(1))  # type: ignore[union-attr]
    assert all(gone(pid) for pid in (pids[0], restarted))
