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
    """The process has exited (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def until_gone(pids: list[int], seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if all(map(gone, pids)):
            return True
        await asyncio.sleep(0.05)
    return all(map(gone, pids))


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


class Serving:
    """A ``kindlessh serve --workers N`` subprocess, its start-up lines and its log."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.log: list[str] = []
        self.reader = asyncio.create_task(self._read_log())

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode())

    async def started(self) -> str:
        """The start-up lines, once the workers' line is out."""
        assert self.proc.stdout is not None
        while not (any(x.startswith("Gemini:") for x in self.lines)
                   and any(x.startswith("Workers:") for x in self.lines)):
            line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
            if not line:
                await asyncio.wait_for(self.reader, 5)
                if any("no PostgreSQL store" in x for x in self.log):
                    pytest.skip("this build's store does not take [storage] url yet")
                raise AssertionError(f"serve exited: {self.lines} {self.log}")
            self.lines.append(line.decode().rstrip("\n"))
        return "\n".join(self.lines)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.wait_for(self.reader, 5)
        return code


def need_postgres() -> None:
    if not postgres_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES} (.ci/postgres starts it)")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}")


async def test_two_workers_share_the_port_the_host_key_and_stop_together(
    tmp_path: Path,
) -> None:
    need_postgres()
    config = config_file(tmp_path, url=POSTGRES)
    serving = Serving(await serve(tmp_path, "--config", str(config), "--workers", "2"))
    log = serving.log
    try:
        text = await serving.started()
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
        code = await serving.stop()
    assert code == 0
    assert all(gone(pid) for pid in workers), "a worker outlived the parent"


async def test_a_second_server_on_the_port_of_running_workers_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    need_postgres()
    config = config_file(tmp_path, url=POSTGRES)
    first = Serving(await serve(tmp_path, "--config", str(config), "--workers", "2"))
    try:
        text = await first.started()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        second = Serving(await serve(
            tmp_path, "--config", str(config), "--port", str(port), "--workers", "2"
        ))
        assert second.proc.stdout is not None
        out: list[str] = []
        serving = True  # until its output ends: stopped then, not signalled
        try:
            # Its end, or its workers' line: a second generation serving on the port.
            while (line := await asyncio.wait_for(second.proc.stdout.readline(), 20)):
                out.append(line.decode())
                if line.startswith(b"Workers:"):
                    break
            else:
                serving = False
        finally:
            if serving:
                code = await second.stop()
            else:  # a signal now could reap it before asyncio does (returncode 255)
                code = await asyncio.wait_for(second.proc.wait(), 20)
                await asyncio.wait_for(second.reader, 5)
        assert "".join(second.log) == (
            f"kindlessh: cannot listen on 127.0.0.1:{port}: the port is in use by another "
            "program; choose another with --port\n"
        ), out
        assert code == 2
        assert not any("listening on" in x for x in out)
        assert first.proc.returncode is None  # the first one serves on
    finally:
        assert await first.stop() == 0




# A supervisor like ``serve --workers 2`` around a small worker that answers each
# connection with its pid. argv[1] picks what the test arranges around a fork.
SUPERVISED = textwrap.dedent("""
    import logging, os, signal, sys
    from kindlessh import _workers
    from kindlessh._workers import listening_sockets, run_workers
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    mode = sys.argv[1]

    def say(line):  # one write per line: several processes share the pipe
        os.write(1, (line + "\\n").encode())

    def child(slot, sock, first):
        port = sock.getsockname()[1]
        say(f"worker {slot} up on {port} first={first} pid {os.getpid()}")
        sock.setblocking(True)
        while True:
            conn, _ = sock.accept()
            conn.sendall(f"{os.getpid()}\\n".encode())
            conn.close()

    if mode == "slow-restart":  # worker 1 stays dead long enough to connect meanwhile
        _workers.FIRST_DELAY = 2.0
    if mode.startswith("signal-"):
        # SIGTERM right after the second fork returns, in the parent or in the child:
        # the narrowest window a signal can arrive in.
        _workers.STOP_GRACE = 2.0
        real_fork, forks = os.fork, []

        def fork():
            pid = real_fork()
            forks.append(pid)
            if len(forks) == 2 and (pid == 0) == (mode == "signal-child"):
                os.kill(os.getpid(), signal.SIGTERM)
            return pid

        os.fork = fork

    socks = listening_sockets("127.0.0.1", 0, 2)
    sys.exit(run_workers(socks, child, lambda pids: say("pids " + " ".join(map(str, pids)))))
""")


class Supervised:
    """The supervisor above as a subprocess; its stdout lines and its log, as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            asyncio.create_task(self._read(proc.stdout, self.out)),
            asyncio.create_task(self._read(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, mode: str = "plain") -> Supervised:
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-c", SUPERVISED, mode,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        ))

    @staticmethod
    async def _read(stream: asyncio.StreamReader | None, into: list[str]) -> None:
        assert stream is not None
        async for line in stream:
            into.append(line.decode().rstrip("\n"))

    async def wait_for(
        self, lines: list[str], pattern: str, since: int = 0, seconds: float = 20
    ) -> re.Match[str]:
        """The first line from ``since`` on matching ``pattern``, waiting for it if need be."""
        for _ in range(int(seconds / 0.02)):
            for line in lines[since:]:
                if found := re.search(pattern, line):
                    return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {pattern!r} in {lines}; out {self.out} log {self.err}")

    async def workers(self) -> tuple[list[int], int]:
        """The first workers' pids and their port, once both are up."""
        pids = [int(p) for p in (await self.wait_for(self.out, r"^pids (.*)")).group(1).split()]
        ports = {int((await self.wait_for(self.out, rf"^worker {slot} up on (\d+)")).group(1))
                 for slot in range(2)}
        assert len(ports) == 1  # both on one port
        return pids, ports.pop()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.wait_for(asyncio.gather(*self.readers), 5)
        return code


async def served_by(port: int, seconds: float = 1.0) -> int:
    """The pid of the worker that answers a new connection within ``seconds``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), seconds)
    try:
        return int(await asyncio.wait_for(reader.readline(), seconds))
    finally:
        writer.close()


async def test_the_parent_restarts_a_dead_worker_and_stops_them_all() -> None:
    sup = await Supervised.start()
    try:
        pids, _ = await sup.workers()
        assert "first=True" in next(x for x in sup.out if x.startswith("worker 0 up"))
        assert "first=False" in next(x for x in sup.out if x.startswith("worker 1 up"))
        since = len(sup.out)
        os.kill(pids[1], signal.SIGKILL)
        again = await sup.wait_for(sup.out, r"^worker 1 up on \d+ first=(\w+) pid (\d+)", since)
        assert again.group(1) == "False"
        assert int(again.group(2)) != pids[1]
        assert not gone(pids[0])
    finally:
        code = await sup.stop()
    err = "\n".join(sup.err)
    assert code == 0
    assert f"worker 1 (pid {pids[1]}) was killed by signal 9" in err
    assert "starting it again in 0.5 s" in err
    assert "every worker has stopped" in err
    restarted = int(re.search(r"worker 1 started again: pid (\d+)", err).group(1))  # type: ignore[union-attr]
    assert all(gone(pid) for pid in (pids[0], restarted))


async def test_while_a_worker_is_dead_every_new_connection_is_served_by_the_live_one() -> None:
    sup = await Supervised.start("slow-restart")
    try:
        pids, port = await sup.workers()
        since = len(sup.out)
        os.kill(pids[1], signal.SIGKILL)
        await sup.wait_for(sup.err, rf"worker 1 \(pid {pids[1]}\) was killed by signal 9")
        # Its socket is closed with it: none of these waits in a backlog nobody accepts on
        # until the restart, 2 s later.
        answers = [await served_by(port) for _ in range(12)]
        assert set(answers) <= {pids[0]}, answers
        # The worker started again listens on a fresh socket on the same port.
        again = await sup.wait_for(sup.out, r"^worker 1 up on (\d+) first=False pid (\d+)", since)
        assert int(again.group(1)) == port
        answers = []
        while int(again.group(2)) not in answers and len(answers) < 32:
            answers.append(await served_by(port))
        assert int(again.group(2)) in answers
        assert set(answers) <= {pids[0], int(again.group(2))}, answers
    finally:
        assert await sup.stop() == 0


async def test_the_workers_stop_when_the_parent_is_killed() -> None:
    sup = await Supervised.start()
    try:
        pids, _ = await sup.workers()
        sup.proc.kill()
        assert await until_gone(pids, 5), "a worker outlived its killed parent"
    finally:
        for pid in pids:  # what a failure left behind (they hold the pipes open)
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(sup.proc.wait(), 10)
        await asyncio.wait_for(asyncio.gather(*sup.readers), 5)


async def test_a_sigterm_just_after_a_fork_reaches_the_new_worker_too() -> None:
    # The signal arrives in the parent before it has noted worker 1's pid: it is held
    # until it has, then passed on to both workers.
    sup = await Supervised.start("signal-parent")
    code = await asyncio.wait_for(sup.proc.wait(), 30)
    await asyncio.wait_for(asyncio.gather(*sup.readers), 5)
    err = "\n".join(sup.err)
    assert code == 0, err
    assert "did not stop" not in err  # no worker left for SIGKILL
    assert "every worker has stopped" in err
    pids = [int(p) for p in (await sup.wait_for(sup.out, r"^pids (.*)")).group(1).split()]
    assert all(map(gone, pids))


async def test_a_sigterm_reaching_a_new_worker_before_its_handlers_stops_only_it() -> None:
    # The signal arrives in worker 1 before it has put back the default handlers: it
    # is held until it has, so worker 1 stops (and is started again) and the parent's
    # handler never runs in it (it would pass SIGTERM on to worker 0).
    sup = await Supervised.start("signal-child")
    try:
        pids, _ = await sup.workers()
        await sup.wait_for(sup.err, rf"worker 1 \(pid {pids[1]}\) was killed by signal 15")
        await sup.wait_for(sup.err, r"worker 1 started again")
        assert not gone(pids[0])
        assert not any(x.startswith("worker 0 (pid") for x in sup.err), sup.err
        assert sum(x.startswith("worker 0 up") for x in sup.out) == 1
    finally:
        assert await sup.stop() == 0
