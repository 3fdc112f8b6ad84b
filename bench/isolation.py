"""One session's hanging or failing upstream must not slow any other session (DESIGN C7).

One process runs a fake Gemini on loopback, the real server (``kindlessh.start_server``)
and ten SSH clients with a PTY (``tests.sshterm.Terminal``, 54x20, each screen read through
pyte). Three phases, each with ten fresh sessions:

* baseline: session 0 connects and stays idle; sessions 1-9 stream answers;
* hang: session 0's upstream sends a few words, then nothing (the response stays open);
* 503: session 0's upstream answers 503 every time; the server retries, gives up, and
  session 0 asks again, over and over.

In every phase sessions 1-9 each ask three questions in a row; each answer streams
``PIECES`` text events, one every 50 ms (about 10 s per phase). Meanwhile a 10 ms ticker
measures event-loop lag (actual wake time minus the time it asked to wake) and session 1
measures keystroke echo: the time from typing a character until it shows in the input line
of its pyte screen. The SSH clients and their pyte screens share the server's event loop,
so the lag figures include the clients' own work.

Checks: every healthy answer arrives whole (the server's transcript holds exactly the
streamed text, ended normally, and the client's screen shows all of it), session 0 hangs
or fails as scripted, a hanging upstream response is closed when its session ends, and
nothing is logged at ERROR. Exit status 1 when a check fails. The per-user prompt bucket
is raised to 1,000 (session 0 asks far more than 3 questions per 10 s) and
``finish_on_disconnect`` is off (a session that leaves stops its answer); everything else
keeps its default but the timeouts and retry delays set in ``main``.

Run from the repository root:  python bench/isolation.py
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh

from bench._probe import ProbeTerminal, input_is, loop_lag
from bench._routed import RoutedGemini, last_question
from kindlessh import Server, load_config, start_server
from kindlessh._conversation import Conversation
from kindlessh._process import tune_process
from kindlessh._session import Session
from tests.conftest import write_config
from tests.fake_gemini import Reply
from tests.sshterm import Terminal

SESSIONS = 10
COLS, ROWS = 54, 20
ROUNDS = 3  # questions per healthy session and phase
PIECES = 60  # text events per answer
CHUNK_DELAY = 0.05  # seconds between text events
TICK = 0.010  # seconds; the lag ticker's period
ECHO_EVERY = 0.15  # seconds between keystroke probes
TARGET_P99_MS = 100.0

Bad = Literal["none", "hang", "503"]
PHASES: tuple[tuple[str, Bad], ...] = (
    ("baseline (session 0 idle)", "none"),
    ("session 0 upstream hangs", "hang"),
    ("session 0 upstream 503s", "503"),
)


# ----- helpers ----------------------------------------------------------------------------


def squash(text: str) -> str:
    """Whitespace-insensitive form, for text that the screen wraps across rows."""
    return " ".join(text.split())


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1-99), interpolated between samples."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def screen_has(text: str) -> Callable[[Terminal], bool]:
    """A wait_for predicate: ``text`` is on the screen, however it wraps."""
    want = squash(text)
    return lambda t: want in squash(t.text())


class ErrorLog(logging.Handler):
    """Keeps every record at ERROR or above (any logger), and the server's warnings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or (
            record.levelno >= logging.WARNING and record.name.startswith("kindlessh")
        ):
            self.records.append(record)


@dataclass
class PhaseResult:
    name: str
    bad: Bad
    lags: list[float] = field(default_factory=list)
    echoes: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    answers: int = 0
    answers_whole: int = 0
    seconds: float = 0.0
    bad_note: str = ""


# ----- one phase --------------------------------------------------------------------------


async def conversation_of(server: Server, username: str, timeout: float = 10.0) -> Conversation:
    """The server-side conversation of the session logged in as ``username``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for session in list(server.ctx.session.sessions):
            if isinstance(session, Session) and session.username == username:
                if session.screen is not None:
                    return session.screen.conversation
        await asyncio.sleep(0.01)
    raise RuntimeError(f"no server session for {username}")


async def echo_probe(
    term: ProbeTerminal, lock: asyncio.Lock, echoes: list[float], stop: asyncio.Event
) -> None:
    """Type a letter, time its echo, erase it; every ECHO_EVERY seconds until ``stop``."""
    i = 0
    while not stop.is_set():
        letter = "abcdefghijklmnopqrstuvwxyz"[i % 26]
        i += 1
        async with lock:
            echoes.append(await term.keystroke(letter, input_is(term, "> " + letter)))
            await term.keystroke("\x7f", input_is(term, ">"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ECHO_EVERY)


async def healthy_session(
    index: int,
    term: ProbeTerminal,
    conv: Conversation,
    fake: RoutedGemini,
    tag: str,
    lock: asyncio.Lock,
    result: PhaseResult,
) -> None:
    """Ask ROUNDS questions in a row; check that every answer arrives whole."""
    for r in range(ROUNDS):
        question = f"{tag} s{index} q{r}"
        pieces = [f"{tag}s{index}q{r}w{k} " for k in range(PIECES - 1)]
        pieces.append(f"end{tag}s{index}q{r}.")
        expected = "".join(pieces)
        fake.routes[question] = Reply.text(pieces, chunk_delay=CHUNK_DELAY)
        async with lock:
            await term.ask(question)
        result.answers += 1
        try:
            await term.wait_for(screen_has(expected), 15.0)
            await term.wait_for(lambda t: "- ready" in t.text(), 10.0)
        except AssertionError:
            result.problems.append(f"session {index} question {r}: the answer never showed whole")
            return
        turn = conv.current
        if turn is None or turn.question != question:
            result.problems.append(f"session {index} question {r}: no turn on the server")
        elif turn.answer != expected or turn.state != "done" or turn.note is not None:
            result.problems.append(
                f"session {index} question {r}: server transcript {turn.state!r} "
                f"({len(turn.answer)}/{len(expected)} chars, note {turn.note!r})"
            )
        else:
            result.answers_whole += 1


async def answered(conv: Conversation, turns: int, timeout: float) -> bool:
    """Wait until ``conv`` has more than ``turns`` turns and no answer in flight."""
    deadline = time.monotonic() + timeout
    while len(conv.turns) <= turns or conv.answering:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def failing_session(
    term: ProbeTerminal, conv: Conversation, question: str, stop: asyncio.Event,
    result: PhaseResult,
) -> int:
    """Ask ``question`` (always answered 503) again each time the server gives up."""
    asked = 0
    while not stop.is_set():
        before = len(conv.turns)
        await term.ask(question)
        asked += 1
        if not await answered(conv, before, 15.0):
            result.problems.append("session 0: the server never gave up on the 503s")
            return asked
        turn = conv.turns[-1]
        if turn.state != "failed" or "(503)" not in (turn.note or ""):
            result.problems.append(f"session 0: turn {turn.state!r}, note {turn.note!r}")
            return asked
        result.bad_note = turn.note or ""
        try:
            await term.wait_for(lambda t: "- ready" in t.text(), 10.0)
        except AssertionError:
            result.problems.append("session 0: the screen never came back to ready")
            return asked
    return asked


async def run_phase(
    name: str, bad: Bad, server: Server, keys: list[asyncssh.SSHKey], fake: RoutedGemini,
    tag: str,
) -> PhaseResult:
    result = PhaseResult(name, bad)
    terms: list[ProbeTerminal] = []
    bad_question = f"{tag} s0 troubled"
    try:
        for i in range(SESSIONS):
            term = cast(
                ProbeTerminal,
                await ProbeTerminal.connect(server.port, keys[i], username=f"{tag}u{i}",
                                            cols=COLS, rows=ROWS),
            )
            terms.append(term)
        for term in terms:
            await term.wait_for("/help", 10.0)
        convs = [await conversation_of(server, f"{tag}u{i}") for i in range(SESSIONS)]

        stop = asyncio.Event()
        background: list[asyncio.Task[Any]] = [
            asyncio.create_task(loop_lag(result.lags, stop, TICK))
        ]
        started = time.perf_counter()

        failing: asyncio.Task[int] | None = None
        if bad == "hang":
            fake.routes[bad_question] = Reply.hang(["The first ", "few words ", "then nothing"])
            await terms[0].ask(bad_question)
            await terms[0].wait_for("few words then nothing", 10.0)
        elif bad == "503":
            fake.routes[bad_question] = Reply.error(503)
            failing = asyncio.create_task(
                failing_session(terms[0], convs[0], bad_question, stop, result)
            )
            background.append(failing)

        lock = asyncio.Lock()  # session 1's questions and its keystroke probes take turns
        background.append(asyncio.create_task(echo_probe(terms[1], lock, result.echoes, stop)))
        healthy = [
            asyncio.create_task(
                healthy_session(i, terms[i], convs[i], fake, tag,
                                lock if i == 1 else asyncio.Lock(), result)
            )
            for i in range(1, SESSIONS)
        ]
        outcomes = await asyncio.gather(*healthy, return_exceptions=True)
        result.seconds = time.perf_counter() - started
        stop.set()
        for i, outcome in enumerate(outcomes, start=1):
            if isinstance(outcome, BaseException):
                result.problems.append(f"session {i}: {outcome!r}")

        if bad == "hang":
            turn = convs[0].current
            logs = [r for r in fake.responses if last_question(r.request) == bad_question]
            if turn is None or not turn.active or not logs or logs[0].finished_at is not None:
                result.problems.append("session 0: the hanging answer did not hang")
            else:
                result.bad_note = f"still {turn.state} after {result.seconds:.1f} s"
        outcomes = await asyncio.gather(*background, return_exceptions=True)
        for task, outcome in zip(background, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                result.problems.append(f"background task {task.get_coro()!r}: {outcome!r}")
        if failing is not None:
            asked = failing.result() if not failing.exception() else 0
            served = fake.served.get(bad_question, 0)
            result.bad_note = f"{served} upstream 503s over {asked} questions; {result.bad_note}"
            if asked < 2 or served <= asked:
                result.problems.append("session 0: the server did not retry the 503s")
    finally:
        for term in terms:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(term.close(), 5.0)

    if bad == "hang":
        logs = [r for r in fake.responses if last_question(r.request) == bad_question]
        try:
            await asyncio.wait_for(logs[0].finished.wait(), 3.0)
        except (TimeoutError, IndexError):
            result.problems.append("session 0: its upstream response stayed open after it left")
    return result


# ----- main -------------------------------------------------------------------------------


def summary(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):6.1f} ms  p99 {percentile(values, 99):6.1f} ms"
            f"  max {max(values):6.1f} ms")


def report(result: PhaseResult) -> None:
    lags, echoes = result.lags, result.echoes
    print(f"{result.name}  ({result.seconds:.1f} s, {len(lags)} ticks, {len(echoes)} echoes)")
    print(f"  loop lag  {summary(lags)}")
    print(f"  echo      {summary(echoes)}")
    whole = result.answers_whole == result.answers == (SESSIONS - 1) * ROUNDS
    print(f"  healthy answers whole: {result.answers_whole}/{(SESSIONS - 1) * ROUNDS}"
          f" ({'yes' if whole else 'NO'})")
    if result.bad_note:
        print(f"  session 0: {result.bad_note}")
    for problem in result.problems:
        print(f"  PROBLEM: {problem}")


async def main() -> int:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    print(f"python {platform.python_version()}, {platform.machine()}, "
          f"{SESSIONS} sessions at {COLS}x{ROWS}; sessions 1-9: {ROUNDS} questions each, "
          f"{PIECES} events per answer, one every {CHUNK_DELAY * 1000:.0f} ms; "
          f"target loop lag p99 < {TARGET_P99_MS:.0f} ms")
    results: list[PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="kindlessh-bench-") as tmpdir:
        tmp = Path(tmpdir)
        # One key per session, as different people have: limits follow the key.
        keys = [asyncssh.generate_private_key("ssh-ed25519", comment=f"bench{i}@kindlessh")
                for i in range(SESSIONS)]
        (tmp / "authorized_keys").write_bytes(b"".join(k.export_public_key() for k in keys))
        fake = RoutedGemini()
        async with fake:
            config = load_config(write_config(tmp / "kindlessh.toml", {
                "server": {"host": "127.0.0.1", "port": 0, "host_key": str(tmp / "host_key"),
                           "authorized_keys": str(tmp / "authorized_keys")},
                "gemini": {"api_key": "test-key", "base_url": fake.base_url,
                           "connect_timeout": 2.0, "first_byte_timeout": 30.0,
                           "chunk_timeout": 30.0, "answer_timeout": 60.0,
                           "max_retries": 6, "retry_base_delay": 0.01, "retry_jitter": 0.0,
                           "retry_budget": 5.0},
                # Session 0 asks again each time the server gives up on the 503s: the
                # default prompt bucket (3 per 10 s) would refuse it, which this
                # benchmark is not about (tests/test_quota.py is).
                "quota": {"prompts": 1000},
                # A session that leaves takes its answer with it, so that the check "a
                # hanging upstream response is closed when its session ends" holds; by
                # default the answer is finished for the next login (tests/test_resume.py).
                "chat": {"finish_on_disconnect": False},
            }), env={})
            server = await start_server(config)
            tune_process()  # as kindlessh serve does
            try:
                for n, (name, bad) in enumerate(PHASES):
                    result = await run_phase(name, bad, server, keys, fake, f"p{n}")
                    results.append(result)
                    report(result)
            finally:
                await server.close()
            if fake.unrouted:
                print(f"PROBLEM: {len(fake.unrouted)} requests had no scripted reply")
    logging.getLogger().removeHandler(errors)

    failed = bool(fake.unrouted) or any(r.problems for r in results)
    failed |= any(r.answers_whole != (SESSIONS - 1) * ROUNDS for r in results)
    for record in errors.records:
        print(f"LOGGED {record.levelname} {record.name}: {record.getMessage()}")
        failed = True
    worst = max(percentile(r.lags, 99) for r in results)
    print(f"worst loop lag p99 {worst:.1f} ms: "
          f"{'within' if worst < TARGET_P99_MS else 'ABOVE'} the {TARGET_P99_MS:.0f} ms target")
    print("result:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
