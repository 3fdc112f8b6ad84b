"""The attacks of ``bench/abuse.py`` (issue 18), one function each.

Contract: each attack is ``async def attack(ctx: Attack) -> None``. It opens its own
connections (from ``ctx.addr(i)``, loopback addresses other than the legitimate user's
127.0.0.1, so that per-address limits and penalties fall on the attacker), performs the
attack, waits until the server has digested it (``ctx.digested()``: its CPU use has
dropped) or the runner's timeout cancels it, and closes every connection it opened on the
way out, whatever happened: the runner takes the moment it returns as "the attacker
disconnected". What it found goes in ``ctx.result`` (one line) and ``ctx.notes``.

Sizes are those of the issue's brief, bounded so that the whole benchmark runs in a few
minutes on the unfixed server; ``ctx.scale`` multiplies them.

Strategy: attackers are well-behaved asyncssh clients wherever asyncssh can express the
attack. The one exception is the re-key loop: asyncssh has no public call to re-key, nor
one to hold a connection unauthenticated, so ``rekey`` calls the connection's internal
``_send_kexinit`` while its client-side key request waits (named where it is done).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from bench._routed import RoutedGemini
from tests.fake_gemini import Reply

COLS, ROWS = 80, 24
PASSWORD_USER = "anna"  # has a password (prepared by the runner)
PASSWORD = "correct horse battery"
INVITED_USER = "kindle"  # has a pending invite (prepared by the runner)

WORDS = ("the screen shows a page of light grey text while the reader turns it slowly "
         "and the battery lasts for weeks because nothing moves between pages").split()


def prose(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words)) + "."


def markdown(words: int) -> str:
    """About ``words`` words of Markdown as an answer has it: paragraphs of 60 words,
    a short list after every third, a heading every sixth."""
    parts: list[str] = []
    left, k = words, 0
    while left > 0:
        k += 1
        if k % 6 == 0:
            parts.append(f"## Part {k // 6}")
        parts.append(prose(min(60, left)))
        left -= 60
        if k % 3 == 0:
            parts.append("\n".join(f"- item {j}: **{WORDS[j]}** and `{WORDS[j + 1]}`"
                                   for j in range(4)))
            left -= 16
    return "\n\n".join(parts)


# ----- what every attack gets ------------------------------------------------------------


@dataclass
class Attack:
    """The attack's side of one run: where the server is and what was found."""

    port: int
    pid: int
    key: asyncssh.SSHKey
    fake: RoutedGemini
    scale: float
    cpu: Callable[[], float]  # the server's CPU seconds so far
    result: str = ""
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def addr(i: int = 0) -> str:
        """The attacker's i-th source address (127.0.0.2 upwards)."""
        return f"127.0.{i // 250}.{i % 250 + 2}"

    def n(self, size: float) -> int:
        return max(1, round(size * self.scale))

    async def digested(self, quiet: float = 0.3, window: float = 0.5, times: int = 3) -> None:
        """Wait until the server used less than ``quiet`` of a core over ``window``
        seconds ``times`` times in a row: it has worked through what the attack sent (or
        the runner gives up).

        Strategy: three windows, 1.5 s, outlast the input parser's wait for the rest of
        an escape sequence, so that the work it does once it gives up waiting comes while
        the attacker is still connected."""
        calm = 0
        while calm < times:
            before = self.cpu()
            await asyncio.sleep(window)
            calm = calm + 1 if self.cpu() - before < quiet * window else 0

    async def connect(self, i: int = 0, *, username: str = "attacker", **kwargs: Any
                      ) -> asyncssh.SSHClientConnection:
        kwargs.setdefault("client_keys", [self.key])
        return await asyncssh.connect(
            "127.0.0.1", self.port, username=username, known_hosts=None, agent_path=None,
            local_addr=(self.addr(i), 0), **kwargs)

    async def chat(self, i: int = 0, *, username: str = "attacker",
                   env: dict[str, str] | None = None, timeout: float = 30.0
                   ) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientChannel[bytes],
                              Sink]:
        """A logged-in chat with a PTY whose output is counted and thrown away."""
        conn = await self.connect(i, username=username)
        try:
            kwargs: dict[str, Any] = {"term_type": "xterm", "term_size": (COLS, ROWS),
                                      "encoding": None}
            if env is not None:
                kwargs["env"] = env
            chan, sink = await conn.create_session(Sink, **kwargs)
            await asyncio.wait_for(sink.up.wait(), timeout)
        except BaseException:
            conn.abort()
            raise
        return conn, chan, sink


class Sink(asyncssh.SSHClientSession[bytes]):
    """Counts what the server sends; notes when the chat is up and what the tail says."""

    def __init__(self) -> None:
        self.bytes = 0
        self.tail = b""
        self.up = asyncio.Event()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.bytes += len(data)
        self.tail = (self.tail + data)[-4096:]
        if b"/help" in self.tail:
            self.up.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


def close_all(conns: list[asyncssh.SSHClientConnection]) -> None:
    for conn in conns:
        conn.abort()


async def write_packets(chan: asyncssh.SSHClientChannel[bytes], data: bytes, size: int) -> int:
    """Write ``data`` as separate channel writes of ``size`` bytes (one SSH data message
    each); returns how many."""
    count = 0
    for start in range(0, len(data), size):
        chan.write(data[start:start + size])
        count += 1
        # Let asyncssh flush each write as its own packet, and wait for the window.
        await asyncio.sleep(0)
        while chan.get_write_buffer_size() > 1 << 20:
            await asyncio.sleep(0.01)
    while chan.get_write_buffer_size():  # all of it sent before the attacker may leave
        await asyncio.sleep(0.01)
    return count


# ----- 1. typed input ----------------------------------------------------------------------


def typed(arrows: bool) -> Callable[[Attack], Awaitable[None]]:
    async def attack(ctx: Attack) -> None:
        total = ctx.n(50_000)
        # 100-byte packets of letters; the variant mixes a cursor-right key (ESC [ C)
        # after every nine letters, so each packet is also eight key sequences.
        unit = b"abcdefghi\x1b[C" if arrows else b"abcdefghij"
        data = (unit * (total // len(unit) + 1))[:total]
        conn, chan, sink = await ctx.chat()
        try:
            started = time.monotonic()
            count = await write_packets(chan, data, 100)
            ctx.notes.append(f"wrote {len(data):,} bytes as {count} packets of 100 in "
                             f"{time.monotonic() - started:.2f} s (no bracketed paste)")
            ctx.result = f"{len(data) // 1000} KB typed"
            await ctx.digested()
            ctx.result = (f"{len(data) // 1000} KB typed; the attacker got "
                          f"{sink.bytes / 1000:.0f} KB back")
        finally:
            close_all([conn])

    return attack


# ----- 2. one long escape sequence ---------------------------------------------------------


def long_csi(digits: int) -> Callable[[Attack], Awaitable[None]]:
    async def attack(ctx: Attack) -> None:
        n = ctx.n(digits)
        conn, chan, _ = await ctx.chat()
        try:
            chan.write(b"\x1b[" + b"1" * n)  # one write, one packet (under 32 KiB)
            ctx.result = f"ESC [ + {n:,} digits in one write"
            started = time.monotonic()
            await ctx.digested()
            ctx.result = f"ESC [ + {n:,} digits in one write; digested in " \
                         f"{time.monotonic() - started:.1f} s"
        finally:
            close_all([conn])

    return attack


# ----- 3. window resizes -------------------------------------------------------------------


async def resizes(ctx: Attack) -> None:
    words = ctx.n(3000)
    question = "Tell me everything, at length."
    text = markdown(words)
    pieces = [text[i:i + 400] for i in range(0, len(text), 400)]
    ctx.fake.routes[question] = Reply.text(pieces)
    conn, chan, sink = await ctx.chat()
    try:
        answered = len(ctx.fake.responses)
        chan.write(question.encode() + b"\r")
        log = await ctx.fake.wait_responses(answered + 1, timeout=30)
        await asyncio.wait_for(log.finished.wait(), 60)
        await asyncio.sleep(1.0)  # the last repaint
        await ctx.digested()
        rate, seconds = 200, 5.0
        count = round(rate * seconds)
        started = time.monotonic()
        for i in range(count):
            # Widths from 40 to 119 in a scattered order: every resize lays out anew.
            chan.change_terminal_size(40 + i * 37 % 80, ROWS + i % 3)
            await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        ctx.notes.append(f"{words:,}-word answer on screen, then {count} resizes in "
                         f"{time.monotonic() - started:.1f} s")
        await ctx.digested()
        ctx.result = (f"{count} resizes over {seconds:g} s with a {words:,}-word transcript; "
                      f"{'the attacker was disconnected' if sink.closed.is_set() else 'still on'}")
    finally:
        close_all([conn])


# ----- 4. re-keying without logging in -----------------------------------------------------


class _Holding(asyncssh.SSHClient):
    """A client that never offers a key: its key request waits until released, so the
    connection stays unauthenticated as long as the attack wants."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    async def public_key_auth_requested(self) -> None:  # type: ignore[override]
        await self.release.wait()
        return None


async def rekey(ctx: Attack) -> None:
    release = asyncio.Event()
    client = _Holding(release)
    loop = asyncio.get_running_loop()
    seconds = 5.0 * ctx.scale
    try:
        async def connect() -> asyncssh.SSHClientConnection:
            return await asyncssh.connect(
                "127.0.0.1", ctx.port, username="nobody", known_hosts=None, agent_path=None,
                client_keys=None, kex_algs=["rsa2048-sha256"], local_addr=(ctx.addr(), 0),
                client_factory=lambda: client)

        task = loop.create_task(connect())
        # Wait for the first exchange, or for the server to refuse the algorithm.
        deadline = time.monotonic() + 10
        while not task.done() and time.monotonic() < deadline:
            conn = client.conn
            if conn is not None and conn._kex_complete:  # noqa: SLF001
                break
            await asyncio.sleep(0.005)
        if task.done():
            exc = task.exception()
            ctx.result = f"refused at connect ({type(exc).__name__}: {exc})"
            return
        conn = client.conn
        assert conn is not None
        # Strategy: asyncssh has no public re-key call; _send_kexinit (with
        # _kexinit_sent) is what its own rekey_bytes/rekey_seconds limits do in
        # send_packet. One exchange at a time, back to back.
        exchanges = 0
        end = time.monotonic() + seconds
        refused = ""
        while time.monotonic() < end:
            if task.done():
                refused = f"; the server closed it after {exchanges} ({task.exception()})"
                break
            conn._send_kexinit()  # noqa: SLF001
            conn._kexinit_sent = True  # noqa: SLF001
            while not conn._kex_complete and not task.done():  # noqa: SLF001
                await asyncio.sleep(0.001)
            if conn._kex_complete:  # noqa: SLF001
                exchanges += 1
        ctx.result = (f"{exchanges} rsa2048-sha256 exchanges in {seconds:g} s "
                      f"({exchanges / seconds:.1f}/s) before logging in{refused}")
        await ctx.digested()
    finally:
        release.set()
        if client.conn is not None:
            client.conn.abort()
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 2)


# ----- 5. logged-in connections without a session ------------------------------------------


async def idle_connections(ctx: Attack) -> None:
    want = ctx.n(300)
    conns: list[asyncssh.SSHClientConnection] = []
    failures: dict[str, int] = {}
    gate = asyncio.Semaphore(8)  # under max_startups (10): the server's own limit

    async def one(i: int) -> None:
        async with gate:
            try:
                conns.append(await asyncio.wait_for(ctx.connect(i % 100, username="idle"), 20))
            except Exception as exc:  # noqa: BLE001  (any failure is counted)
                name = type(exc).__name__
                failures[name] = failures.get(name, 0) + 1

    try:
        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(want)))
        ctx.notes.append(f"{len(conns)} logged in within {time.monotonic() - started:.1f} s "
                         f"from 100 addresses, 8 at a time; refused: {failures or 'none'}")
        await asyncio.sleep(3.0)  # do they stay?
        alive = sum(1 for c in conns if not c.is_closed())
        ctx.result = (f"{len(conns)}/{want} accepted without opening a session; "
                      f"{alive} still open 3 s later")
    finally:
        close_all(conns)


# ----- 6. one key, many names ----------------------------------------------------------------


REFUSALS = ("Slow down", "still coming", "used today's")


def _refusal(screen: str) -> bool:
    """The screen shows a question refused by the holder's limits."""
    return any(words in screen for words in REFUSALS)


async def many_names(ctx: Attack) -> None:
    names, per_name = 12, 3
    granted = refused = unclear = full = 0
    failed: list[str] = []
    gate = asyncio.Semaphore(6)

    async def one(i: int) -> None:
        nonlocal granted, refused, unclear, full
        from bench._probe import ProbeTerminal  # a pyte screen: the answers are read

        user = f"alias{i:02d}"
        term = ProbeTerminal(COLS, ROWS)
        try:
            async with gate:  # under max_startups (10), which would drop some at random
                term.conn = await ctx.connect(i, username=user)
        except (OSError, asyncssh.Error) as exc:
            failed.append(f"{user}: {type(exc).__name__}: {exc}")
            return
        try:
            from tests.sshterm import _Client

            try:
                term.chan, _ = await term.conn.create_session(
                    lambda: _Client(term), term_type="xterm", term_size=(COLS, ROWS),
                    encoding="utf-8")
            except asyncssh.ChannelOpenError:
                full += 1  # closed at login: the key's connections are at their cap
                return
            await term.wait_until(
                lambda: "/help" in term.text() or "server full" in term.joined(),
                "the chat or a refusal", 30)
            if "server full" in term.joined():
                full += 1
                return
            for q in range(per_name):
                question = f"{user} question {q}"
                marker = f"answer-{user}-{q}"
                ctx.fake.routes[question] = Reply.text([f"Here is {marker} done."])
                await term.ask(question)
                try:
                    await term.wait_until(
                        lambda m=marker: m in term.joined() or _refusal(term.joined()),
                        "an answer or a refusal", 15)
                except AssertionError:
                    unclear += 1
                    continue
                if marker in term.joined():
                    granted += 1
                    await term.wait_until(lambda: "ready" in term.text(), "ready", 10)
                else:
                    refused += 1
                    await term.send("\x15")  # Ctrl-U: clear whatever the refusal left
        finally:
            term.conn.abort()

    await asyncio.gather(*(one(i) for i in range(names)))
    upstream = sum(ctx.fake.served.get(f"alias{i:02d} question {q}", 0)
                   for i in range(names) for q in range(per_name))
    ctx.notes.extend(failed)
    ctx.result = (f"one key as {names} names x {per_name} questions: {granted} answered, "
                  f"{refused} refused, {unclear} unclear; {full} chats refused as server full; "
                  f"{upstream} reached Gemini"
                  f"{f'; {len(failed)} names could not log in' if failed else ''}")


# ----- 7. who has an invite or a password --------------------------------------------------


async def none_methods(ctx: Attack) -> None:
    lists = []
    for i, name in enumerate((INVITED_USER, PASSWORD_USER, "nobody")):
        methods = await asyncssh.get_server_auth_methods(
            "127.0.0.1", ctx.port, username=name, local_addr=(ctx.addr(i), 0))
        lists.append(f"{['invite', 'password', 'neither'][i]}: {','.join(methods)}")
    same = len({line.partition(": ")[2] for line in lists}) == 1
    probes = ctx.n(60)
    answered = 0
    started = time.monotonic()
    for k in range(probes):  # one address probing many names, as fast as it may
        try:
            await asyncio.wait_for(asyncssh.get_server_auth_methods(
                "127.0.0.1", ctx.port, username=f"probe{k}", local_addr=(ctx.addr(10), 0)), 5)
            answered += 1
        except (OSError, asyncssh.Error, TimeoutError):
            pass
    ctx.result = ("; ".join(lists) + f" -> {'the same' if same else 'DIFFERENT'}; "
                  f"{answered}/{probes} probes of other names from one address answered in "
                  f"{time.monotonic() - started:.1f} s")


# ----- 8. smaller ones ----------------------------------------------------------------------


async def many_env(ctx: Attack) -> None:
    """Strategy: the attacker runs on a thread with its own event loop. Building and
    sending 5,000 environment requests costs the client about a quarter of a second of
    its loop; on the driver's loop that would show as the bystander's echo, a cost of
    the measuring client, not of the server."""
    count = ctx.n(5000)
    env = {f"V{i:05d}": "x" * 1024 for i in range(count)}
    up, done = threading.Event(), threading.Event()

    def attacker() -> None:
        async def hold() -> None:
            conn, _, _ = await ctx.chat(env=env, timeout=60)
            up.set()
            try:
                await asyncio.to_thread(done.wait)
            finally:
                close_all([conn])

        asyncio.run(hold())

    thread = asyncio.get_running_loop().run_in_executor(None, attacker)
    try:
        while not up.is_set() and not thread.done():
            await asyncio.sleep(0.05)
        if thread.done():
            await thread  # the chat did not come up: its error is the result
        await ctx.digested()
        ctx.result = f"{count:,} environment variables of 1 KB accepted, chat up"
    finally:
        done.set()
        await thread


async def endless_paste(ctx: Attack) -> None:
    size = ctx.n(5_000_000)
    conn, chan, _ = await ctx.chat()
    try:
        started = time.monotonic()
        chan.write(b"\x1b[200~")
        count = await write_packets(chan, b"pasted words " * (size // 13), 32_000)
        ctx.notes.append(f"{size / 1e6:.1f} MB written in {count} writes of 32 KB in "
                         f"{time.monotonic() - started:.1f} s; no end of paste")
        await ctx.digested()
        ctx.result = f"{size / 1e6:.0f} MB bracketed paste with no end"
    finally:
        close_all([conn])


async def endless_answer(ctx: Attack) -> None:
    size = ctx.n(20_000_000)
    question = "Never stop talking."
    piece = prose(180)[:1000] + " "
    ctx.fake.routes[question] = Reply.text([piece] * (size // len(piece)))
    conn, chan, sink = await ctx.chat()
    try:
        answered = len(ctx.fake.responses)
        chan.write(question.encode() + b"\r")
        log = await ctx.fake.wait_responses(answered + 1, timeout=30)
        ctx.result = f"{size / 1e6:.0f} MB answer streamed as fast as possible"
        while not log.finished.is_set():  # what was taken so far, should the run stall
            ctx.result = (f"{size / 1e6:.0f} MB answer streamed as fast as possible; "
                          f"{log.bytes_sent / 1e6:.1f} MB taken in "
                          f"{time.monotonic() - log.started_at:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.finished.wait(), 1.0)
        ctx.notes.append(f"upstream sent {log.bytes_sent / 1e6:.1f} MB in "
                         f"{(log.finished_at or math.nan) - log.started_at:.1f} s"
                         f"{'' if log.completed else ' (cut off by the server)'}")
        await ctx.digested()
        ctx.result = (f"{size / 1e6:.0f} MB answer streamed as fast as possible; "
                      f"{log.bytes_sent / 1e6:.1f} MB taken; the attacker got "
                      f"{sink.bytes / 1e6:.1f} MB")
    finally:
        close_all([conn])


async def password_guessing(ctx: Attack) -> None:
    addresses, seconds = 40, 5.0 * ctx.scale
    guesses = connections = refused = 0
    end = time.monotonic() + seconds

    class Guesser(asyncssh.SSHClient):
        def password_auth_requested(self) -> str:
            nonlocal guesses
            guesses += 1
            return f"guess {guesses}"

    async def from_address(i: int) -> None:
        nonlocal connections, refused
        while time.monotonic() < end:
            connections += 1
            try:
                conn = await asyncio.wait_for(asyncssh.connect(
                    "127.0.0.1", ctx.port, username=PASSWORD_USER, known_hosts=None,
                    agent_path=None, client_keys=None, local_addr=(ctx.addr(20 + i), 0),
                    client_factory=Guesser, preferred_auth="password"), 10)
                conn.abort()  # a guess was right: not expected
            except asyncssh.PermissionDenied:
                pass
            except (OSError, asyncssh.Error, TimeoutError):
                refused += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(from_address(i) for i in range(addresses)))
    ctx.result = (f"{guesses} wrong passwords tried in {seconds:g} s from {addresses} addresses "
                  f"({guesses / seconds:.0f}/s); {connections} connections, {refused} refused "
                  "or cut before a guess")
    await ctx.digested()


@dataclass(frozen=True)
class Spec:
    name: str
    what: str
    run: Callable[[Attack], Awaitable[None]]
    password_auth: bool = False
    timeout: float = 40.0  # seconds before the attack is recorded as stalled


ATTACKS: tuple[Spec, ...] = (
    Spec("typed", "1. 50 KB typed as 100-byte packets", typed(False)),
    Spec("typed-arrows", "1. the same with ESC [ C mixed in", typed(True)),
    Spec("csi-5k", "2. ESC [ + 5,000 digits in one write", long_csi(5000)),
    Spec("csi-10k", "2. ESC [ + 10,000 digits", long_csi(10_000)),
    Spec("csi-20k", "2. ESC [ + 20,000 digits", long_csi(20_000)),
    Spec("resize", "3. 200 resizes/s for 5 s, 3,000-word transcript", resizes),
    Spec("rekey", "4. re-keying with rsa2048-sha256 before login", rekey),
    Spec("idle", "5. 300 logged-in connections with no session", idle_connections),
    Spec("names", "6. one key as 12 names x 3 questions", many_names),
    Spec("none", "7. the none request's method lists", none_methods, password_auth=True),
    Spec("env", "8. 5,000 environment variables of 1 KB", many_env),
    Spec("paste", "8. a 5 MB bracketed paste that never ends", endless_paste),
    Spec("answer", "8. a 20 MB upstream answer", endless_answer, timeout=30.0),
    Spec("passwords", "8. password guessing from 40 addresses", password_guessing,
         password_auth=True),
)


def spec_names() -> list[str]:
    return [s.name for s in ATTACKS]
