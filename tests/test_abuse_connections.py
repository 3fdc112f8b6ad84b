"""Issue 18, items 3-5: what one connection can cost everyone, done against the real server.

Each attack runs while :func:`tests.bystander.bystander` keeps typing beside it: the
bystander's worst echo stays under ``ECHO_LIMIT``, a new login still works, and memory
comes back to within ``MEMORY_SLACK_MIB`` once the attacker has gone. Each attack is
bounded (loopback, about two seconds). ``FIGURES`` collects what each attack cost
(printed with ``pytest -s``), for the benchmark note.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncssh
import pytest

from kindlessh import Server
from kindlessh._acceptlog import ACCEPT_FAILURE, AcceptFailureLog, install_accept_log
from kindlessh._config import ServerConfig
from kindlessh._guard import Guard
from kindlessh._rekeys import Rekeys
from kindlessh._stall import StallWatch

from .bystander import ECHO_LIMIT, MEMORY_SLACK_MIB, bystander, can_log_in, rss_mib
from .conftest import ServerFactory
from .fake_gemini import FakeGemini, Reply
from .helpers import CLIENT_KEY, FakeClock, connected, shared_key, until

KW: dict[str, Any] = {"known_hosts": None, "agent_path": None}


def _figures(name: str, worst: float, cpu: float, rss: tuple[float, float, float]) -> None:
    before, peak, after = rss
    print(
        f"\n{name}: worst echo {worst * 1000:.0f} ms, CPU {cpu:.2f} s, "
        f"RSS {before:.0f}/{peak:.0f}/{after:.0f} MiB (before/peak/after)"
    )


def _long_answer(words: int) -> list[str]:
    """An answer of ``words`` words in paragraphs of 100, one chunk each."""
    chunks = []
    for p in range(words // 100):
        body = " ".join(f"word{p}x{i}" for i in range(100))
        chunks.append(f"Paragraph {p}: {body}.\n\n")
    return chunks


# ----- 3. window resizes ---------------------------------------------------------------


async def test_a_resize_flood_is_coalesced_and_cut(
    server: Server, fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    """200 window changes a second for up to 2 s on a chat holding a 3,000-word answer."""
    caplog.set_level(logging.INFO, logger="kindlessh")
    fake_gemini.enqueue(Reply.text(_long_answer(3000)))
    async with connected(server, username="resizer", cols=80, rows=24) as attacker:
        await attacker.ask("a long one")
        await attacker.wait_for(lambda t: "ready" in t.text(), timeout=20)
        session = next(s for s in server.ctx.session.sessions if s.username == "resizer")
        assert session.screen is not None
        async with bystander(server) as person:
            rss_before = rss_mib()
            renders = session.screen.app.render_counter
            cpu = time.process_time()
            assert attacker.chan is not None
            sent = 0
            end = time.monotonic() + 2.0
            while time.monotonic() < end and not attacker.closed.is_set():
                # Ten at a time, as a remote client's packets arrive in one read.
                for _ in range(10):
                    attacker.chan.change_terminal_size(80 + sent % 2, 24 + sent % 3)
                    sent += 1
                await asyncio.sleep(0.05)
            cpu = time.process_time() - cpu
            rss_peak = rss_mib()
            layouts = session.screen.app.render_counter - renders
            # Coalesced: far fewer layouts than window changes, and the flood was cut.
            await attacker.wait_closed(5)
            await can_log_in(server)
    assert "too many window size changes" in attacker.text()
    assert any("window size changes" in r.getMessage() for r in caplog.records)
    await until(lambda: not any(s.username == "resizer" for s in server.ctx.session.sessions))
    rss_after = rss_mib()
    _figures(f"resize flood ({sent} sent, {layouts} laid out)", person.worst, cpu,
             (rss_before, rss_peak, rss_after))
    assert layouts <= sent // 4
    assert person.worst < ECHO_LIMIT
    assert rss_after - rss_before < MEMORY_SLACK_MIB


# ----- 4. key exchanges ----------------------------------------------------------------


class _Held(asyncssh.SSHClient):
    """A client that never finishes logging in: its key is "being looked up" forever."""

    def __init__(self) -> None:
        self.conn: asyncssh.SSHClientConnection | None = None
        self.made = asyncio.Event()

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def auth_banner_received(self, msg: str, lang: str) -> None:
        pass

    async def public_key_auth_requested(self) -> asyncssh.SSHKey | None:  # type: ignore[override]
        self.made.set()
        await asyncio.sleep(3600)
        return None


async def _rekey_loop(conn: Any, seconds: float) -> int:
    """Start a new key exchange as soon as the last one is done, for ``seconds``;
    returns how many completed. (asyncssh has no public re-key call for a client.)"""
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and conn._transport is not None:
        conn._kexinit_sent = True  # as asyncssh marks a re-key it starts itself
        conn._send_kexinit()
        while not conn._kex_complete and conn._transport is not None:
            await asyncio.sleep(0.001)
        if conn._transport is not None:
            done += 1
    return done


async def test_the_costly_key_exchanges_are_not_offered(server: Server) -> None:
    for alg in ("rsa2048-sha256", "diffie-hellman-group-exchange-sha256",
                "diffie-hellman-group14-sha256", "diffie-hellman-group16-sha512"):
        with pytest.raises(asyncssh.Error):
            await asyncssh.get_server_host_key("127.0.0.1", server.port, kex_algs=[alg])


@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
async def test_a_rekey_loop_is_cut(
    server: Server, logged_in: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """One connection re-keying in a loop for 2 s (with the costliest exchange the
    client knows, if the server offers it)."""
    caplog.set_level(logging.INFO, logger="kindlessh")
    kex = ["rsa2048-sha256", "curve25519-sha256"]
    async with bystander(server) as person:
        rss_before = rss_mib()
        cpu = time.process_time()
        if logged_in:
            conn: Any = await asyncssh.connect(
                "127.0.0.1", server.port, username="rekeyer", client_keys=[CLIENT_KEY],
                kex_algs=kex, **KW,
            )
            login = None
        else:
            held = _Held()

            async def log_in() -> None:
                await asyncssh.connect(
                    "127.0.0.1", server.port, username="rekeyer", client_keys=None,
                    client_factory=lambda: held, kex_algs=kex, **KW,
                )

            login = asyncio.get_running_loop().create_task(log_in())
            await asyncio.wait_for(held.made.wait(), 5)
            conn = held.conn
        try:
            done = await _rekey_loop(conn, 2.0)
        finally:
            cpu = time.process_time() - cpu
            conn.abort()
            if login is not None:
                login.cancel()
                with contextlib.suppress(BaseException):
                    await login
        rss_peak = rss_mib()
        await can_log_in(server)
    rss_after = rss_mib()
    _figures(f"re-key loop {'after' if logged_in else 'before'} login ({done} exchanges)",
             person.worst, cpu, (rss_before, rss_peak, rss_after))
    assert done <= 10
    assert any("key exchanges" in r.getMessage() for r in caplog.records)
    assert person.worst < ECHO_LIMIT
    assert rss_after - rss_before < MEMORY_SLACK_MIB


# ----- 5. logged-in connections with no session ----------------------------------------


async def test_unused_connections_are_capped_and_closed(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """50 logins as one user with no session, two at a time (the per-address startup
    limit is 3), with a 0.5 s unused timeout."""
    caplog.set_level(logging.INFO, logger="kindlessh")
    server = await make_server(server={"unused_timeout": 0.5})
    guard = server.ctx.guard
    per_user = server.ctx.config.server.max_connections_per_user
    idler = shared_key(server)  # the attacker's own key: the bystander's is another holder
    conns: list[asyncssh.SSHClientConnection] = []
    most = 0
    slots = asyncio.Semaphore(2)

    async def one() -> None:
        async with slots:
            with contextlib.suppress(asyncssh.Error, OSError):
                conns.append(await asyncssh.connect(
                    "127.0.0.1", server.port, username="idler", client_keys=[idler], **KW,
                ))

    async def sample() -> None:
        nonlocal most
        while True:
            most = max(most, guard.logged_in_connections)
            await asyncio.sleep(0.005)

    async with bystander(server) as person:
        rss_before = rss_mib()
        sampler = asyncio.get_running_loop().create_task(sample())
        cpu = time.process_time()
        await asyncio.gather(*(one() for _ in range(50)))
        cpu = time.process_time() - cpu
        rss_peak = rss_mib()
        await can_log_in(server)
        # The server closes every one of them: none has a session.
        await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in conns)), 5)
        sampler.cancel()
    rss_after = rss_mib()
    refused = sum("server full for idler" in r.getMessage() for r in caplog.records)
    unused = sum("no session for 0.5 s" in r.getMessage() for r in caplog.records)
    _figures(f"50 unused connections ({refused} refused at login, {unused} closed unused)",
             person.worst, cpu, (rss_before, rss_peak, rss_after))
    assert most <= per_user + 2  # the bystander and the latecomer besides
    assert refused >= 1 and unused >= per_user and refused + unused == 50
    await until(lambda: guard.logged_in_connections == 0 and not server.ctx.connections)
    assert person.worst < ECHO_LIMIT
    assert rss_after - rss_before < MEMORY_SLACK_MIB


async def test_a_connection_whose_chat_ended_is_closed_when_unused(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The one chat of a connection ends (/quit) and the client keeps the connection."""
    caplog.set_level(logging.INFO, logger="kindlessh")
    server = await make_server(server={"unused_timeout": 0.3})
    async with connected(server) as term:
        await term.ask("/quit")
        await term.wait_closed()  # the session channel; the connection stays
        assert term.conn is not None
        await asyncio.wait_for(term.conn.wait_closed(), 5)
    assert any("no session for 0.3 s" in r.getMessage() for r in caplog.records)


async def test_a_login_cut_while_the_server_stalled_is_not_penalised(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop is held for 1.2 s while a client logs in; its login times out; one such
    timeout would otherwise refuse the address (penalty_min below penalty_grace)."""
    caplog.set_level(logging.INFO, logger="kindlessh")
    server = await make_server(
        server={"login_timeout": 1.5, "penalty_grace": 10.0, "penalty_min": 5.0}
    )
    held = _Held()

    async def log_in() -> None:
        await asyncssh.connect(
            "127.0.0.1", server.port, username="victim", client_keys=None,
            client_factory=lambda: held, **KW,
        )

    login = asyncio.get_running_loop().create_task(log_in())
    await asyncio.wait_for(held.made.wait(), 5)
    time.sleep(1.2)  # the whole server held, as the resize flood held it
    with pytest.raises(asyncssh.Error):
        await asyncio.wait_for(login, 5)
    await until(lambda: server.ctx.guard.logging_in == 0)
    assert any("server was slow" in r.getMessage() for r in caplog.records)
    assert server.ctx.guard.refused_for("127.0.0.1") == 0
    await can_log_in(server)


# ----- the pieces, on their own ----------------------------------------------------------


def test_rekeys_one_before_login_then_the_hourly_budget() -> None:
    clock = FakeClock()
    rekeys = Rekeys(3, clock=clock)
    assert rekeys.allow()  # one re-key before login
    assert not rekeys.allow()
    rekeys = Rekeys(3, clock=clock)
    rekeys.logged_in()
    assert [rekeys.allow() for _ in range(4)] == [True, True, True, False]
    clock.advance(1200)  # a third of an hour: one more
    assert rekeys.allow()
    assert not rekeys.allow()
    assert rekeys.started == 6


def test_a_timeout_while_the_server_stalled_is_not_charged() -> None:
    guard = Guard(ServerConfig(penalty_grace=10.0, penalty_min=15.0))
    clock = FakeClock()
    guard.clock = clock
    for _ in range(3):
        assert guard.admit("192.0.2.7") is None
        guard.closed("192.0.2.7", logged_in=False, failed=0, timed_out=True, server_slow=True)
    assert guard.refused_for("192.0.2.7") == 0
    for _ in range(2):
        assert guard.admit("192.0.2.7") is None
        guard.closed("192.0.2.7", logged_in=False, failed=0, timed_out=True)
    assert guard.refused_for("192.0.2.7") > 0


def test_the_stall_watch_sums_recent_stalls() -> None:
    watch = StallWatch(keep=60.0)
    clock = FakeClock()
    watch.clock = clock
    watch.note(0.7)
    clock.advance(20)
    watch.note(0.6)
    assert watch.stalled(30) == pytest.approx(1.3)
    assert watch.stalled(10) == pytest.approx(0.6)
    clock.advance(100)
    assert watch.stalled(1000) == 0


async def test_the_stall_watch_sees_a_held_loop() -> None:
    watch = StallWatch(tick=0.05)
    watch.start()
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # the loop held, as a costly request would hold it
        await asyncio.sleep(0.1)
    finally:
        watch.stop()
    assert watch.stalled(5) >= 0.2


def test_logged_in_connections_are_capped_per_user_and_in_all() -> None:
    guard = Guard(ServerConfig(max_connections=3, max_connections_per_user=2))
    assert guard.open_connection("ann") is None
    assert guard.open_connection("ann") is None
    assert "server full for ann: 2 connections" in (guard.open_connection("ann") or "")
    assert guard.open_connection("bo") is None
    assert "server full: 3 connections" in (guard.open_connection("cy") or "")
    guard.close_connection("ann")
    assert guard.open_connection("cy") is None
    assert guard.logged_in_connections == 3


def test_accept_failures_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kindlessh")
    others: list[dict[str, Any]] = []
    handler = AcceptFailureLog(interval=60.0, fallback=lambda loop, ctx: others.append(ctx))
    clock = FakeClock()
    handler.clock = clock
    loop = asyncio.new_event_loop()
    try:
        failure = {"message": ACCEPT_FAILURE, "exception": OSError(24, "Too many open files")}
        for _ in range(100):  # asyncio retries every second, per listening socket
            handler(loop, failure)
            clock.advance(1.0)
        handler(loop, {"message": "something else"})
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 2  # at 0 s and at 60 s
    assert "Too many open files" in lines[0] and "(1 time(s)" in lines[0]
    assert "(60 time(s)" in lines[1]
    assert handler.failures == 100
    assert others == [{"message": "something else"}]


async def test_serve_installs_the_accept_log() -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    try:
        handler = install_accept_log(loop)
        assert loop.get_exception_handler() is handler
        assert handler.fallback is before
    finally:
        loop.set_exception_handler(before)
