"""Load: 100 SSH sessions at once, each streaming a 60 s answer (issue 6, DESIGN E1).

The server runs in a process of its own (``bench/_load_server.py``: ``load_config`` and
``start_server``, as ``kindlessh serve --config`` does, plus a 10 ms event-loop probe), so
its memory, CPU time and loop lag are its own. This process runs the fake Gemini on
loopback (``tests/fake_gemini.py``, answering by question) and the SSH clients.

Config: a temporary directory holds the config file, host keys, authorized_keys (one
client key per session, since limits follow the key; the SSH username names the account)
and the SQLite store; GEMINI_API_KEY is set for the server and ``[gemini] base_url``
points at the fake. Every connection comes from 127.0.0.1, so the per-address startup
limits are raised to the session count (``max_startups``, ``max_startups_full``,
``max_startups_per_source``) and 127.0.0.1 is exempt from penalties; ``max_sessions``
stays at its default of 100 (raised to the session count above 100);
``max_sessions_per_user`` stays at 5, since each session logs in with its own key under
its own user name (``load0``, ``load1``, ...); ``[quota] max_upstream``, the cap on
requests to Gemini in flight (8), is raised to the session count where this version of
kindlessh has it; ``answer_timeout`` is raised for answers longer than about two minutes.
Everything else is the default (per-user prompt and token limits too, which one question
does not reach): smooth repaints every 50 ms, e-ink every 1000 ms, the store commits a
streaming answer once a second. ``--set SECTION.KEY=VALUE`` adds or overrides a key (a
TOML value).

Each session connects (asyncssh, a PTY of 60x30, xterm, the ssh command ``smooth`` or
``eink`` choosing the profile), waits for the chat screen, asks its own question and
gets its own answer: distinct scripted prose (paragraphs headed ``Session N, part P``, a
short list every fifth paragraph) of 20 characters per text event, cut anywhere, even
mid-word, streamed as ``--rate`` events per second for ``--seconds`` seconds
(``Reply.text(pieces, chunk_delay=1/rate)``). Session starts are spread evenly over
``--ramp`` seconds, as people arriving. The clients only keep what they receive; once
every answer has ended upstream, each client's data is fed to a pyte screen until the
screen shows its answer whole (so the clients cost little CPU while the answers stream).
The run ends when the last final screen is complete.

Checks (exit status 1 when one fails): every session's chat screen came up, its upstream
response went out whole, and its connection stayed open to the end; the server's store
(``data/kindlessh.sqlite3``, table ``turns``) holds exactly the scripted answer for each
user, state ``done``, no note; each client's final screen (all it received, fed to pyte)
shows the answer's last words and "ready", and no other session's text; no upstream
request was unscripted or repeated; nothing in the server's log at ERROR or a traceback;
the server exits cleanly. Figures: the server's event-loop lag (p50/p99/max over the whole
run and per phase), RSS (VmRSS sampled every 0.5 s from /proc, VmHWM at the end), CPU
time, and wall time. Targets (issue 6), printed as met or NOT met: zero session errors and
every transcript complete (both also checks above), loop lag p99 < 100 ms and server RSS
< 512 MiB (these two do not change the exit status).

Several workers (issue 17): ``--workers N`` runs the server as ``kindlessh serve
--workers N`` does (``_load_server.py --workers N``: N processes on one port with
``SO_REUSEPORT``, each with the probe); ``--store postgresql`` keeps conversations in a
fresh database ``kb_<random>`` made on the PostgreSQL server of ``--url`` (default
$KINDLESSH_BENCH_PG or the local ``kindlessh`` role's server; ``--url`` alone implies
``--store postgresql``) and dropped after the run unless ``--keep``; several workers
need it. The store check then reads PostgreSQL. The report adds, per worker, the lag over
its own samples, CPU time, RSS and how many sessions the kernel sent it (every worker's
p99 and RSS are held to the targets), the sums, and the machine's busy CPU time in the
run split into the server, this driver, PostgreSQL and anything else (other programs),
since they all share the cores. ``[server] max_connections`` is raised to the session
count too, and the time from each question to its answer starting upstream is printed
(an answer that waited was queued somewhere). ``bench/capacity.py`` steps the session
count up to find what each setup holds.

Run from the repository root:  python bench/load.py   (100 sessions, 60 s answers at
4 events/s, smooth; about 80 s.  --quick: 20 sessions, 10 s answers, about 15 s.
--profile eink, --rate 20 (DESIGN E1's pace), --sessions N, --seconds S, --ramp R;
--keep keeps the temporary directory with the server's log; --cprofile FILE profiles the
server; --slow FILE times each of its event loop's callbacks.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh
import pyte

from bench._probe import loop_lag
from bench._routed import RoutedGemini, last_question
from kindlessh import Config
from tests.conftest import write_config
from tests.fake_gemini import RecordedRequest, Reply, ResponseLog, _Connection

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "bench" / "_load_server.py"
COLS, ROWS = 60, 30
CHARS_PER_CHUNK = 20
API_KEY = "test-key"
PAINT_TIMEOUT = 60.0  # seconds after the last answer's end for every final screen to show
TAIL_WORDS = 6  # the answer's last words that the final screen must show
DRIVER_TICK = 0.010
PG_SERVER = "postgresql://kindlessh:kindlessh@127.0.0.1:5432/kindlessh"

# Targets (issue 6).
LAG_P99_MS = 100.0
RSS_MIB = 512.0

VOCABULARY = (
    "the of and to in is that it for on with as was by at from this be are or an which "
    "screen light page reader battery paper particles voltage pixel refresh ghosting "
    "terminal answer stream words line cursor network server session question model "
    "memory quickly slowly carefully usually often rarely every small large bright dark "
    "simple clear careful patient steady modern old new first last other same different "
    "write read move change hold show draw keep send wait start finish travel remember "
    "because while after before although during between through across around under over"
).split()


# ----- the scripted answers ----------------------------------------------------------------


def sentence(rng: random.Random) -> str:
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(8, 15))]
    return " ".join(words).capitalize() + "."


def answer_for(index: int, length: int) -> str:
    """Prose of at least ``length`` characters, distinct for each session, ending in a
    plain paragraph."""
    rng = random.Random(index)
    paras: list[str] = []
    total = 0
    part = 0
    while total < length or not paras[-1].startswith("Session"):
        part += 1
        if part % 5 == 0:
            para = "\n".join(f"- {sentence(rng)}" for _ in range(3))
        else:
            para = f"Session {index}, part {part}: " + " ".join(
                sentence(rng) for _ in range(rng.randint(3, 6))
            )
        paras.append(para)
        total += len(para) + 2
    return "\n\n".join(paras)


def pieces_of(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` pieces of nearly equal length, anywhere (mid-word too)."""
    bounds = [round(k * len(text) / count) for k in range(count + 1)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def squash(text: str) -> str:
    return " ".join(text.split())


class LoadGemini(RoutedGemini):
    """The fake Gemini answering by question; notes when each response has ended."""

    def __init__(self) -> None:
        super().__init__(api_key=API_KEY)
        self.ended: dict[str, asyncio.Event] = {}
        self.logs: dict[str, ResponseLog] = {}

    async def _send_reply(
        self, conn: _Connection, reply: Reply, request: RecordedRequest, keep_alive: bool
    ) -> bool:
        question = last_question(request)
        try:
            return await super()._send_reply(conn, reply, request, keep_alive)
        finally:
            for log in reversed(self.responses):
                if log.request is request:
                    self.logs[question] = log
                    break
            ended = self.ended.get(question)
            if ended is not None:
                ended.set()


# ----- the clients -----------------------------------------------------------------------


@dataclass
class Session:
    index: int
    start_at: float  # seconds after the run starts
    question: str
    answer: str
    user: str = ""
    received: list[str] = field(default_factory=list)
    bytes: int = 0
    packets: int = 0
    up: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False  # we are closing it: connection_lost is no error
    lost: str | None = None
    error: str | None = None
    conn: asyncssh.SSHClientConnection | None = None
    connect_s: float = math.nan  # from starting to connect to the chat screen
    asked_at: float = math.nan
    streaming: bool = False
    last_packet: float = 0.0
    max_gap: float = 0.0  # longest pause between packets while the answer streamed
    tail: str = ""
    screen: pyte.Screen | None = None  # fed only once the answer has ended upstream
    stream: pyte.Stream | None = None
    fed: int = 0  # packets fed to the screen so far
    screen_ok: bool = False
    screen_note: str = ""
    painted_at: float = math.nan  # arrival of the packet that completed the final screen
    store_ok: bool = False
    store_note: str = ""

    def __post_init__(self) -> None:
        self.user = f"load{self.index}"


class LoadClient(asyncssh.SSHClientSession[str]):
    """Keeps what arrives; spots the chat screen's ``/help`` hint, nothing more."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def data_received(self, data: str, datatype: Any) -> None:
        s = self.s
        now = time.monotonic()
        s.received.append(data)
        s.bytes += len(data)
        s.packets += 1
        if s.streaming and s.last_packet:
            s.max_gap = max(s.max_gap, now - s.last_packet)
        s.last_packet = now
        if not s.up.is_set():
            s.tail = (s.tail + data)[-16:]
            if "/help" in s.tail or "/help" in data:
                s.up.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.s.closing and self.s.lost is None:
            self.s.lost = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self.s.closed.set()


async def first_of(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def feed_screen(s: Session) -> pyte.Screen:
    """The session's pyte screen, fed with everything received so far."""
    if s.screen is None or s.stream is None:
        s.screen = pyte.Screen(COLS, ROWS)
        s.stream = pyte.Stream(s.screen)
    if s.fed < len(s.received):
        upto = len(s.received)
        s.stream.feed("".join(s.received[s.fed : upto]))
        s.fed = upto
    return s.screen


def visible(s: Session) -> str:
    """What a session's screen shows, squashed, for messages."""
    return squash(" ".join(feed_screen(s).display))[:200]


async def run_session(
    s: Session, t0: float, port: int, key: asyncssh.SSHKey, fake: LoadGemini, profile: str,
    answer_timeout: float,
) -> None:
    """Connect at the session's start time, ask, and wait until its answer has been sent."""
    await asyncio.sleep(max(0.0, t0 + s.start_at - time.monotonic()))
    begin = time.monotonic()
    try:
        s.conn = await asyncio.wait_for(
            asyncssh.connect("127.0.0.1", port, username=s.user, client_keys=[key],
                             known_hosts=None, agent_path=None),
            60,
        )
        chan, _ = await s.conn.create_session(
            lambda: LoadClient(s), command=profile, term_type="xterm",
            term_size=(COLS, ROWS), encoding="utf-8", errors="replace",
        )
        await first_of(s.up, s.closed, timeout=60)
        if not s.up.is_set():
            s.error = f"no chat screen ({s.lost or 'timed out'}); the screen: {visible(s)!r}"
            return
        s.connect_s = time.monotonic() - begin
        chan.write(s.question)
        await asyncio.sleep(0)
        chan.write("\r")
        s.asked_at = time.monotonic()
        s.streaming = True
        ended = fake.ended[s.question]
        await first_of(ended, s.closed, timeout=answer_timeout)
        s.streaming = False
        if not ended.is_set():
            s.error = f"the answer did not end ({s.lost or 'timed out'})"
    except Exception as exc:  # noqa: BLE001  (any failure is this session's error)
        s.error = f"{type(exc).__name__}: {exc}"


async def close_session(s: Session) -> None:
    if s.conn is None:
        return
    s.closing = True
    s.conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(s.conn.wait_closed(), 10)


async def painted(sessions: list[Session], timeout: float) -> bool:
    """Wait until the final screen of every session whose answer ended shows it whole
    (see ``check_screen``); each screen is fed only what arrived since the last look."""
    deadline = time.monotonic() + timeout
    pending = [s for s in sessions if s.error is None]
    while pending:
        for s in pending:
            if s.screen is None or s.fed < len(s.received):
                check_screen(s)
                if s.screen_ok:
                    s.painted_at = s.last_packet
                # A first feed takes up to 0.1 s: let packets in (and timed) in between.
                await asyncio.sleep(0)
        pending = [s for s in pending if not s.screen_ok]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    return not pending


# ----- the server process ----------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads from /proc/PID/status."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                out[name] = int(value.split()[0])
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample_rss(pid: int, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss = proc_status(pid).get("VmRSS")
        if rss is not None:
            samples.append((time.monotonic(), rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def machine_cpu() -> tuple[float, float, float, float]:
    """CPU seconds the whole machine has been busy (all cores; not idle, not waiting for
    I/O), in all, in interrupts (soft and hard: loopback networking runs there, counted
    to no process) and stolen by the hypervisor, from /proc/stat."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan, math.nan, math.nan
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # guest time is already counted in user time
    return ((total - fields[3] - fields[4]) / tick, total / tick,
            (fields[5] + fields[6]) / tick, fields[7] / tick)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL process on the machine (by pid)."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    out[int(entry.name)] = proc_cpu(int(entry.name))
    return {pid: cpu for pid, cpu in out.items() if not math.isnan(cpu)}


def make_database(server_url: str) -> str:
    """A fresh database ``kb_<random>`` on the PostgreSQL server at ``server_url``; its URL."""
    import psycopg

    name = f"kb_{random.randrange(16**10):010x}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urllib.parse.urlsplit(server_url)._replace(path="/" + name).geturl()


def drop_database(server_url: str, db_url: str) -> None:
    import psycopg

    name = urllib.parse.urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def toml_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def server_config(
    tmp: Path, fake: LoadGemini, sessions: int, seconds: float, extra: list[str],
    db_url: str = "",
) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "authorized_keys": str(tmp / "authorized_keys"),
            "max_startups": max(10, sessions),
            "max_startups_full": max(60, sessions),
            "max_startups_per_source": max(3, sessions),
            "penalty_exempt": "127.0.0.1",
            "max_sessions": max(100, sessions),
        },
        "gemini": {
            "base_url": fake.base_url,
            "answer_timeout": max(300.0, 2 * seconds + 60),
        },
    }
    # The global cap on requests to Gemini in flight (8 by default) would queue all but a
    # few answers: raised to the session count, where this version of kindlessh has it.
    if db_url:
        sections["storage"] = {"url": db_url}
    # The cap on connections logged in (150 by default, per process) likewise.
    if hasattr(Config().server, "max_connections"):
        sections["server"]["max_connections"] = max(Config().server.max_connections, sessions)
    quota = getattr(Config(), "quota", None)
    if quota is not None and hasattr(quota, "max_upstream"):
        sections["quota"] = {"max_upstream": max(quota.max_upstream, sessions)}
    for item in extra:
        name, _, value = item.partition("=")
        section, _, key = name.strip().partition(".")
        if not key or not _:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        sections.setdefault(section, {})[key] = toml_literal(value.strip())
    return sections


def read_log(path: Path) -> tuple[dict[str, int], list[str]]:
    """Counts of log lines by level, and every line at WARNING or above (with tracebacks)."""
    counts: dict[str, int] = {}
    problems: list[str] = []
    in_trace = False
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
            in_trace = m.group(1) in ("WARNING", "ERROR", "CRITICAL")
            if in_trace:
                problems.append(line)
        elif line.startswith("Traceback"):
            counts["Traceback"] = counts.get("Traceback", 0) + 1
            in_trace = True
            problems.append(line)
        elif in_trace:
            problems.append(line)
        else:
            counts["other"] = counts.get("other", 0) + 1
            problems.append(line)
    return counts, problems


# ----- checks ----------------------------------------------------------------------------


STORED_TURNS = ('SELECT c."user", t.question, t.answer, t.state, t.note FROM turns t '
                'JOIN conversations c ON c.id = t.conversation_id')


def check_store(db_path: Path, sessions: list[Session]) -> None:
    """Each user has exactly one turn: its question, the scripted answer, done, no note."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        rows = db.execute(STORED_TURNS).fetchall()
        db.close()
    except sqlite3.Error as exc:
        for s in sessions:
            s.store_note = f"cannot read the store: {exc}"
        return
    check_rows(rows, sessions)


def check_postgres(db_url: str, sessions: list[Session]) -> None:
    """``check_store`` for the PostgreSQL store (texts as stored: none has a NUL)."""
    import psycopg

    try:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(STORED_TURNS).fetchall()
    except psycopg.Error as exc:
        for s in sessions:
            s.store_note = f"cannot read the store: {exc}"
        return
    check_rows(rows, sessions)


def check_rows(rows: list[Any], sessions: list[Session]) -> None:
    by_user: dict[str, list[tuple[str, str, str, str | None]]] = {}
    for user, question, answer, state, note in rows:
        by_user.setdefault(user, []).append((question, answer, state, note))
    for s in sessions:
        turns = by_user.get(s.user, [])
        if len(turns) != 1:
            s.store_note = f"{len(turns)} turns stored"
            continue
        question, answer, state, note = turns[0]
        if question != s.question:
            s.store_note = f"stored question {question[:40]!r}"
        elif answer != s.answer or state != "done" or note is not None:
            s.store_note = (f"state {state!r}, {len(answer)}/{len(s.answer)} characters"
                            f"{' (equal)' if answer == s.answer else ''}, note {note!r}")
        else:
            s.store_ok = True


SESSION_TAG = re.compile(r"Session (\d+), part")


def check_screen(s: Session) -> None:
    """The screen (everything received so far, fed to pyte) shows the answer's last words
    and "ready", and no other session's text."""
    s.screen_ok = False
    text = "\n".join(line.rstrip() for line in feed_screen(s).display)
    flat = squash(text)
    tail = squash(" ".join(s.answer.split()[-TAIL_WORDS:]))
    others = {int(n) for n in SESSION_TAG.findall(flat)} - {s.index}
    if tail not in flat:
        s.screen_note = f"the answer's last words {tail!r} are not on the screen"
    elif "- ready" not in flat:
        s.screen_note = "the status line does not say ready"
    elif others:
        s.screen_note = f"text of session(s) {sorted(others)} on the screen"
    else:
        s.screen_ok = True
    if not s.screen_ok:
        s.screen_note += "; screen: " + repr(flat[-300:])


# ----- report ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0.1 steps), interpolated between samples."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


def spread(values: list[float], unit: str = "ms", digits: int = 1) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "no samples"
    return (f"p50 {statistics.median(values):.{digits}f} {unit}, "
            f"p99 {percentile(values, 99):.{digits}f} {unit}, "
            f"max {max(values):.{digits}f} {unit} (n={len(values)})")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def versions() -> str:
    out = []
    for name in ("asyncssh", "prompt_toolkit", "pyte", "rich", "httpx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(out)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "?"


# ----- main ------------------------------------------------------------------------------


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers, --store and --url (shared with bench/capacity.py)."""
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes on one port (1; above 1 needs "
                             "--store postgresql)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                        help="sqlite (the default) or postgresql: a fresh database on the "
                             "server of --url, dropped after the run unless --keep")
    parser.add_argument("--url", default=None,
                        help="the PostgreSQL server to make the database on (implies "
                             f"--store postgresql; default $KINDLESSH_BENCH_PG or {PG_SERVER})")


def run(args: argparse.Namespace) -> int:
    """Check the setup arguments, then run ``main``; ``args.result`` gets the figures."""
    if args.url:
        args.store = "postgresql"
    else:
        args.url = os.environ.get("KINDLESSH_BENCH_PG", PG_SERVER)
    if args.workers < 1:
        raise SystemExit("--workers: 1 or more")
    if args.workers > 1 and args.store != "postgresql":
        raise SystemExit(f"--workers {args.workers}: several workers need --store postgresql "
                         "(the SQLite file serves one process)")
    args.result = {}
    return asyncio.run(main(args))


async def main(args: argparse.Namespace) -> int:
    script_start = time.monotonic()
    n, seconds, rate, profile = args.sessions, args.seconds, args.rate, args.profile
    chunks = max(1, round(seconds * rate))
    length = chunks * CHARS_PER_CHUNK
    dirty = git("status", "--porcelain", "--", "kindlessh")
    print(f"load: {n} sessions ({profile}, {COLS}x{ROWS}), one question each; answers of "
          f"{chunks} text events of {CHARS_PER_CHUNK} characters, {rate:g}/s "
          f"({chunks / rate:.0f} s); session starts spread over {args.ramp:g} s")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; Linux {platform.release()}; "
          f"Python {platform.python_version()}; {versions()}")
    commit = git("rev-parse", "--short", "HEAD")
    print(f"kindlessh at commit {commit}"
          f"{' (not a git checkout)' if commit == '?' else ''}"
          f"{' with uncommitted changes in kindlessh/' if dirty and dirty != '?' else ''}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")

    tmpdir = tempfile.mkdtemp(prefix="kindlessh-load-")
    tmp = Path(tmpdir)
    # One key per session, as a hundred people would have: limits follow the key.
    keys = [asyncssh.generate_private_key("ssh-ed25519", comment=f"load{i}@kindlessh")
            for i in range(n)]
    (tmp / "authorized_keys").write_bytes(b"".join(k.export_public_key() for k in keys))
    db_url = ""
    if args.store == "postgresql":
        db_url = make_database(args.url)
        print(f"store: PostgreSQL, a fresh database {urllib.parse.urlsplit(db_url).path[1:]} "
              f"on {urllib.parse.urlsplit(args.url).hostname}; {args.workers} worker(s)")
    else:
        print(f"store: SQLite; {args.workers} worker(s)")
    fake = LoadGemini()
    await fake.start()
    sections = server_config(tmp, fake, n, chunks / rate, args.set, db_url)
    config_path = write_config(tmp / "kindlessh.toml", sections)
    print("config: " + "; ".join(
        f"[{name}] " + ", ".join(f"{k} = {v!r}" for k, v in values.items()
                                 if k not in ("host", "port", "authorized_keys", "base_url"))
        for name, values in sections.items()
    ))

    sessions: list[Session] = []
    for i in range(n):
        question = f"Question {i} of the load test: tell me a long story, please."
        answer = answer_for(i, length)
        s = Session(i, args.ramp * i / n, question, answer)
        sessions.append(s)
        fake.routes[question] = Reply.text(pieces_of(answer, chunks), chunk_delay=1 / rate)
        fake.ended[question] = asyncio.Event()

    log_path = tmp / "server.log"
    samples_path = tmp / "lag.json"
    workers_arg = ["--workers", str(args.workers)] if args.workers > 1 else []
    env = dict(os.environ, GEMINI_API_KEY=API_KEY)
    if args.cprofile:
        env["LOAD_CPROFILE"] = str(Path(args.cprofile).resolve())
    if args.slow:
        env["LOAD_SLOW"] = str(Path(args.slow).resolve())
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPER), str(config_path), str(samples_path), *workers_arg,
            stdout=asyncio.subprocess.PIPE, stderr=log_file, env=env, cwd=tmp,
        )
    assert proc.stdout is not None
    failed: list[str] = []
    summaries: list[dict[str, Any]] = []  # one per worker, in pids' order
    closed: dict[str, Any] = {}
    pids: list[int] = []  # the worker processes (the server itself with one worker)
    rss: dict[int, list[tuple[float, int]]] = {}
    status_end: dict[int, dict[str, int]] = {}
    driver_lags: list[float] = []
    t0 = t_asked = t_end = math.nan
    cpu_start: dict[int, float] = {}
    cpu_end: dict[int, float] = {}
    idle_rss: dict[int, int] = {}
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    usage_t0 = usage_t_end = usage_start
    machine_t0 = machine_end = (math.nan, math.nan, math.nan, math.nan)
    pg_t0: dict[int, float] = {}
    pg_end: dict[int, float] = {}
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the server did not start")
        first = json.loads(line)
        pids = list(first.get("workers", [first["pid"]]))
        port = first["port"]
        await asyncio.sleep(1.0)
        idle_rss = {pid: proc_status(pid).get("VmRSS", 0) for pid in pids}
        cpu_start = {pid: proc_cpu(pid) for pid in pids}

        stop = asyncio.Event()
        rss = {pid: [] for pid in pids}
        helpers = [*(asyncio.create_task(sample_rss(pid, rss[pid], stop)) for pid in pids),
                   asyncio.create_task(loop_lag(driver_lags, stop, DRIVER_TICK))]
        machine_t0, pg_t0 = machine_cpu(), postgres_cpu()
        usage_t0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        answer_timeout = chunks / rate * 3 + 120
        tasks = [asyncio.create_task(run_session(s, t0, port, keys[s.index], fake, profile,
                                                 answer_timeout)) for s in sessions]

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                up = sum(s.up.is_set() for s in sessions)
                done = sum(e.is_set() for e in fake.ended.values())
                print(f"  {time.monotonic() - t0:5.1f} s: {up}/{n} chat screens up, "
                      f"{len(fake.logs) + sum(1 for q in fake.served if q not in fake.logs)}"
                      f" answers started, {done}/{n} ended", flush=True)

        reporter = asyncio.create_task(progress())
        await asyncio.gather(*tasks)
        reporter.cancel()
        asked = [s.asked_at for s in sessions if not math.isnan(s.asked_at)]
        t_asked = max(asked) if asked else t0
        if not await painted(sessions, PAINT_TIMEOUT):
            failed.append(f"some final screens were not whole {PAINT_TIMEOUT:.0f} s after "
                          "the last answer ended upstream")
        t_end = max((s.painted_at for s in sessions if s.screen_ok), default=time.monotonic())
        status_end = {pid: proc_status(pid) for pid in pids}
        cpu_end = {pid: proc_cpu(pid) for pid in pids}
        machine_end, pg_end = machine_cpu(), postgres_cpu()
        usage_t_end = resource.getrusage(resource.RUSAGE_SELF)
        stop.set()
        await asyncio.gather(*helpers)

        await asyncio.gather(*(close_session(s) for s in sessions))
        proc.send_signal(signal.SIGTERM)
        line = await asyncio.wait_for(proc.stdout.readline(), 90)
        told = json.loads(line) if line else {}
        summaries = told["workers"] if "workers" in told else [told] if told else []
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        closed = json.loads(line) if line else {}
        code = await asyncio.wait_for(proc.wait(), 60)
        if code != 0:
            failed.append(f"the server exited with status {code}")
    except (RuntimeError, TimeoutError, json.JSONDecodeError, KeyError) as exc:
        failed.append(f"driving the server: {type(exc).__name__}: {exc}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake.close()
    usage_end = resource.getrusage(resource.RUSAGE_SELF)

    # ----- checks ----------------------------------------------------------------------
    started = [s for s in sessions if s.up.is_set()]
    for s in sessions:
        log = fake.logs.get(s.question)
        if s.error is None and s.lost is not None:
            s.error = f"connection lost: {s.lost}"
        if s.error is None and (log is None or not log.completed):
            s.error = "the upstream response did not go out whole"
    completed = [s for s in started if s.error is None]
    if db_url:
        check_postgres(db_url, sessions)
    else:
        check_store(tmp / "data" / "kindlessh.sqlite3", sessions)
    for s in sessions:
        check_screen(s)
    whole = [s for s in sessions if s.store_ok and s.screen_ok]
    errors = [s for s in sessions if s.error is not None]
    repeated = {q: c for q, c in fake.served.items() if c > 1}

    counts, problems = read_log(log_path)
    server_errors = [p for p in problems if " ERROR " in p or " CRITICAL " in p
                     or p.startswith("Traceback")]

    # ----- figures ---------------------------------------------------------------------
    per_worker: dict[int, dict[str, Any]] = {}
    for pid in pids:
        path = samples_path if args.workers == 1 else Path(f"{samples_path}.{pid}")
        per_worker[pid] = {}
        with contextlib.suppress(OSError, json.JSONDecodeError):
            per_worker[pid] = json.loads(path.read_text())
    samples: dict[str, Any] = {
        key: [x for pid in pids for x in per_worker[pid].get(key, [])]
        for key in ("lags", "gc_at", "gc_ms")
    }
    lags = [(at, lag) for at, lag in samples.get("lags", [])]
    ends = sorted(log.finished_at for log in fake.logs.values() if log.finished_at)
    t_first_end = ends[0] if ends else t_end

    def window(a: float, b: float) -> list[float]:
        return [lag for at, lag in lags if a <= at <= b]

    whole_run = window(t0, t_end)
    print()
    print(f"sessions: {len(started)} started (chat screen up), {len(completed)} completed, "
          f"{len(errors)} errors")
    print(f"transcripts complete: {len(whole)}/{n} (store: scripted answer, state done: "
          f"{sum(s.store_ok for s in sessions)}; final screen shows the end and ready: "
          f"{sum(s.screen_ok for s in sessions)})")
    streams = [log.finished_at - log.started_at for log in fake.logs.values()
               if log.finished_at]
    print(f"upstream: {len(fake.logs)} responses, {sum(lg.completed for lg in fake.logs.values())}"
          f" sent whole; stream time {spread(streams, 's')}; unscripted {len(fake.unrouted)},"
          f" repeated {len(repeated)}")
    print("server event-loop lag (10 ms probe):")
    for name, a, b in (("whole run", t0, t_end),
                       ("arrivals (first connect to last question)", t0, t_asked),
                       ("all streaming (last question to first answer end)", t_asked,
                        t_first_end),
                       ("endings (first answer end to all painted)", t_first_end, t_end)):
        print(f"  {name:52} {spread(window(a, b))}")
    gc_ms = samples.get("gc_ms", [])
    gc_at = samples.get("gc_at", [])
    in_run = [ms for at, ms in zip(gc_at, gc_ms, strict=False) if t0 <= at <= t_end]
    late = [(at, lag) for at, lag in lags if t0 <= at <= t_end and lag > LAG_P99_MS]
    spans = [(at, at + ms / 1000) for at, ms in zip(gc_at, gc_ms, strict=False)]
    with_gc = sum(any(a < at and b > at - lag / 1000 for a, b in spans) for at, lag in late)
    print(f"  full collections in the run: {len(in_run)}"
          + (f", {min(in_run):.0f}-{max(in_run):.0f} ms each, {sum(in_run) / 1000:.1f} s in all"
             if in_run else "")
          + f"; ticks late by over {LAG_P99_MS:.0f} ms: {len(late)}, {with_gc} of them "
          "during a full collection")
    run_s = t_end - t0
    by_pid = {sm.get("pid", pids[0] if len(pids) == 1 else -1): sm for sm in summaries}
    workers: list[dict[str, Any]] = []  # per worker figures, for the report and capacity
    for slot, pid in enumerate(pids):
        sm = by_pid.get(pid, {})
        own = [(at, lag) for at, lag in per_worker[pid].get("lags", [])]
        in_run_lags = [lag for at, lag in own if t0 <= at <= t_end]
        end = status_end.get(pid, {})
        peak = max(end.get("VmHWM", 0), int(sm.get("maxrss_kib", 0)))
        workers.append({
            "slot": slot, "pid": pid, "lags": in_run_lags,
            "p50": statistics.median(in_run_lags) if in_run_lags else math.nan,
            "p99": percentile(in_run_lags, 99), "max": max(in_run_lags, default=math.nan),
            "cpu_run": cpu_end.get(pid, math.nan) - cpu_start.get(pid, math.nan),
            "cpu_all": sm.get("cpu_user_s", math.nan) + sm.get("cpu_system_s", math.nan),
            "cpu_user": sm.get("cpu_user_s", math.nan),
            "cpu_system": sm.get("cpu_system_s", math.nan),
            "idle_kib": idle_rss.get(pid, 0), "peak_kib": peak, "end_kib": end.get("VmRSS", 0),
            "run_max_kib": max((kib for at, kib in rss.get(pid, []) if t0 <= at <= t_end),
                               default=0),
            "threads": end.get("Threads", 0),
            "sessions_peak": sm.get("sessions_peak", 0),
            "sessions_seen": sm.get("sessions_seen", sm.get("sessions_peak", 0)),
            "missing": not sm or sm.get("missing", False),
        })
    if len(workers) > 1:
        print("per worker (whole run):")
        for w in workers:
            print(f"  worker {w['slot']} (pid {w['pid']}): lag {spread(w['lags'])}; CPU "
                  f"{w['cpu_run']:.1f} s in the run ({w['cpu_run'] / run_s * 100:.0f}% of one "
                  f"core); RSS peak {w['peak_kib'] / 1024:.1f} MiB; sessions "
                  f"{w['sessions_seen']} (open at peak {w['sessions_peak']})")
        seen = [w["sessions_seen"] for w in workers]
        print(f"  sessions over the workers: {' + '.join(map(str, seen))} = {sum(seen)} "
              f"(of {n}; the kernel hashes each connection by its address and port)")
    peak_kib = sum(w["peak_kib"] for w in workers)
    peak_mib = peak_kib / 1024
    idle_kib = sum(w["idle_kib"] for w in workers)
    summed = " (summed over the workers)" if len(workers) > 1 else ""
    print(f"server RSS{summed}: idle {idle_kib / 1024:.1f} MiB; peak (VmHWM) {peak_mib:.1f} MiB; "
          f"max sampled in the run {sum(w['run_max_kib'] for w in workers) / 1024:.1f} MiB; "
          f"at the end {sum(w['end_kib'] for w in workers) / 1024:.1f} MiB; "
          f"{(peak_kib - idle_kib) / 1024 / max(1, n):.2f} MiB per session above idle; "
          f"{sum(w['threads'] for w in workers)} threads")
    cpu_run = sum(w["cpu_run"] for w in workers)
    total_cpu = sum(w["cpu_all"] for w in workers)
    print(f"server CPU{summed}: {cpu_run:.1f} s in the run ({cpu_run / run_s * 100:.0f}% of one "
          f"core over {run_s:.1f} s); {total_cpu:.1f} s in all (start-up to SIGTERM: user "
          f"{sum(w['cpu_user'] for w in workers):.1f} s, system "
          f"{sum(w['cpu_system'] for w in workers):.1f} s); sessions open at peak "
          f"{sum(w['sessions_peak'] for w in workers)}; close took "
          f"{closed.get('closed', math.nan):.2f} s")
    client_cpu = (usage_end.ru_utime + usage_end.ru_stime
                  - usage_start.ru_utime - usage_start.ru_stime)
    driver_run = (usage_t_end.ru_utime + usage_t_end.ru_stime
                  - usage_t0.ru_utime - usage_t0.ru_stime)
    print(f"clients and fake (this process): CPU {client_cpu:.1f} s; loop lag "
          f"{spread(driver_lags)}")
    pg_run = sum(cpu - pg_t0.get(pid, 0.0) for pid, cpu in pg_end.items())
    busy = machine_end[0] - machine_t0[0]
    elapsed = machine_end[1] - machine_t0[1]
    cores = os.cpu_count() or 1
    irq = machine_end[2] - machine_t0[2]
    steal = machine_end[3] - machine_t0[3]
    other = busy - cpu_run - driver_run - (pg_run if db_url else 0.0) - irq - steal
    print(f"machine in the run ({cores} cores, {run_s:.1f} s): busy {busy:.1f} CPU s "
          f"({busy / max(elapsed, 1e-9) * 100:.0f}% of all cores): server {cpu_run:.1f} s "
          f"({cpu_run / run_s * 100:.0f}% of a core), driver {driver_run:.1f} s "
          f"({driver_run / run_s * 100:.0f}%)"
          + (f", PostgreSQL {pg_run:.1f} s ({pg_run / run_s * 100:.0f}%)" if db_url else "")
          + f", interrupts {irq:.1f} s ({irq / run_s * 100:.0f}%), stolen {steal:.1f} s, "
          f"anything else {other:.1f} s ({other / run_s * 100:.0f}%)")
    print(f"  chat screen up after connecting: {spread([s.connect_s for s in sessions], 's', 2)}")
    waits = [fake.logs[s.question].started_at - s.asked_at for s in sessions
             if s.question in fake.logs and not math.isnan(s.asked_at)]
    print(f"  answer started upstream after the question was typed: {spread(waits, 's', 2)}")
    print(f"  longest pause between packets while streaming, per session: "
          f"{spread([s.max_gap for s in completed], 's', 2)}")
    print(f"  received per session: {spread([float(s.bytes) for s in sessions], 'chars', 0)};"
          f" packets {spread([float(s.packets) for s in sessions], '', 0)}")
    print(f"wall time: {run_s:.1f} s from the first connection to the last answer painted; "
          f"{time.monotonic() - script_start:.1f} s in all")
    print(f"server log: {', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'empty'}")
    for p in problems[:40]:
        print(f"  LOG {p}")
    if len(problems) > 40:
        print(f"  ... {len(problems) - 40} more lines at WARNING or above in {log_path}")

    lag_p99 = percentile(whole_run, 99)
    worst_p99 = max((w["p99"] for w in workers), default=math.nan)
    args.result = {
        "sessions": n, "workers": workers, "errors": len(errors), "whole": len(whole),
        "lag_p99_all": lag_p99, "lag_p50_all": percentile(whole_run, 50),
        "lag_max_all": max(whole_run, default=math.nan),
        "lag_p99_worst": worst_p99, "streaming_window_s": t_first_end - t_asked,
        "streaming_lag": window(t_asked, t_first_end),
        "cpu_server": cpu_run, "cpu_driver": driver_run, "cpu_postgres": pg_run if db_url else 0.0,
        "cpu_busy": busy, "cpu_irq": irq, "cpu_steal": steal, "run_s": run_s, "peak_mib": peak_mib,
        "answer_wait_max": max(waits, default=math.nan),
        "pause_p50": statistics.median([s.max_gap for s in completed]) if completed else math.nan,
        "pause_p99": percentile([s.max_gap for s in completed], 99),
        "packets_p50": statistics.median([s.packets for s in sessions]) if sessions else 0,
    }
    print()
    print("targets:")
    print(f"  zero session errors: {len(errors)} -> {verdict(not errors)}")
    print(f"  every transcript complete: {len(whole)}/{n} -> {verdict(len(whole) == n)}")
    if len(workers) > 1:
        print(f"  every worker's loop lag p99 < {LAG_P99_MS:.0f} ms: "
              + ", ".join(f"{w['p99']:.1f}" for w in workers) + f" ms -> "
              f"{verdict(worst_p99 < LAG_P99_MS)}")
    else:
        print(f"  server loop lag p99 < {LAG_P99_MS:.0f} ms: {lag_p99:.1f} ms -> "
              f"{verdict(lag_p99 < LAG_P99_MS)}")
    if len(workers) > 1:
        most = max(w["peak_kib"] for w in workers) / 1024
        print(f"  every worker's RSS < {RSS_MIB:.0f} MiB: {most:.1f} MiB at most -> "
              f"{verdict(0 < most < RSS_MIB)}")
    else:
        print(f"  server RSS < {RSS_MIB:.0f} MiB: {peak_mib:.1f} MiB -> "
              f"{verdict(0 < peak_mib < RSS_MIB)}")

    for s in sessions:
        if s.error:
            failed.append(f"session {s.index}: {s.error}")
        elif not s.store_ok:
            failed.append(f"session {s.index}: store: {s.store_note}")
        elif not s.screen_ok:
            failed.append(f"session {s.index}: screen: {s.screen_note}")
    if fake.unrouted:
        failed.append(f"{len(fake.unrouted)} upstream requests had no scripted answer")
    if repeated:
        failed.append(f"{len(repeated)} questions were sent upstream more than once")
    if server_errors:
        failed.append(f"{len(server_errors)} lines at ERROR or tracebacks in the server log")
    if not summaries or any(w["missing"] for w in workers):
        failed.append("no figures from the server process"
                      + (" (or one of its workers)" if len(pids) > 1 else ""))
    print()
    for problem in failed[:30]:
        print(f"PROBLEM: {problem}")
    if len(failed) > 30:
        print(f"... {len(failed) - 30} more problems")
    if args.keep:
        print(f"kept: {tmp}" + (f" and the database {db_url}" if db_url else ""))
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        if db_url:
            drop_database(args.url, db_url)
    print("result:", "FAILED" if failed else "ok (every session's answer arrived whole)")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100, help="SSH sessions (100)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="length of each streamed answer in seconds (60)")
    parser.add_argument("--rate", type=float, default=4.0,
                        help="text events per second in each answer (4)")
    parser.add_argument("--ramp", type=float, default=5.0,
                        help="session starts spread evenly over this many seconds (5; 0: at once)")
    parser.add_argument("--profile", choices=("smooth", "eink"), default="smooth")
    parser.add_argument("--quick", action="store_true",
                        help="20 sessions, 10 s answers, starts over 2 s")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="add or override a key of the server's config (a TOML value)")
    parser.add_argument("--cprofile", metavar="FILE",
                        help="profile the server with cProfile into FILE (slows it down)")
    parser.add_argument("--slow", metavar="FILE",
                        help="time every callback of the server's event loop, by kind, into FILE")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (config, log, store) and the "
                             "PostgreSQL database")
    add_setup_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.seconds, args.ramp = 20, 10.0, 2.0
    sys.exit(run(args))
