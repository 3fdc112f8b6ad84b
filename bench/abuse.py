"""Abuse: one connection against everyone (issue 18).

Runs each attack of issue 18 against the real server while one legitimate SSH session
keeps typing, and prints, per attack: the legitimate session's worst and p99 echo, whether
a fresh login succeeded during and after the attack, the server's CPU seconds, and its RSS
before, at peak and 2 s after the attacker disconnected.

Each attack gets a fresh server in a process of its own (``bench/_load_server.py``:
``load_config`` + ``start_server`` + ``tune_process``, as ``kindlessh serve`` does, with
its 10 ms event-loop probe) and a fresh temporary directory (config, keys, store). This
process runs the fake Gemini on loopback (``tests/fake_gemini.py``, answering by question),
the legitimate session and the attacker. The server's CPU time is read from
``/proc/PID/stat`` and its memory from ``/proc/PID/status`` (VmRSS before and after, VmHWM
for the peak: the process is fresh, so its peak is the attack's).

The legitimate session logs in from 127.0.0.1 as ``bystander`` (a PTY of 54x20, the
screen read through pyte: ``tests/sshterm.Terminal``) and types a letter, waits until the
input line shows it, erases it, and types the next one 50 ms later; each echo is timed
from when its key was due (``tests/bystander.py``'s idea: a finger does not wait for the
server). A key still unanswered when the window ends counts with the time it has waited.
The attacker connects from 127.0.0.2 and up (``bench/_abuse_attacks.py``), so per-address
limits and penalties fall on it, not on the legitimate user; the server's config is the
default but for the listening address and ``password_auth`` (on for the attacks that need
it, with one user who has a password and one with a pending invite).

Per attack: the server starts, the legitimate session comes up and types for 1 s (the
"before" RSS), the attack runs (a fresh login is tried 0.5 s in), the attacker stays
until the server has worked through what it sent (its CPU use under 30% of a core for
three 0.5 s windows in a row) and disconnects. 2 s later come the "after" RSS and a
second fresh login; the window of the echo and CPU figures goes on until the server is
quiet again (at most 15 s more), so that work the attack leaves behind counts. An attack
not finished after its timeout (40 s, times ``--scale``; 30 s for the endless answer) is
recorded as stalled and its connections closed. The server's own probe gives its longest
event-loop stall (none when the server had to be killed at the end); this process's loop
lag is printed too, since the attacker's client work shares its core. A key that never
showed counts with the time it waited, marked ">=".

Run from the repository root:  python bench/abuse.py   (every attack, a few minutes)
  --only NAME   one attack (repeatable; a prefix picks several: --only csi)
  --scale X     multiply the attacks' sizes (and durations) by X
  --list        the attacks' names;  --keep  keep the temporary directories
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh

from bench._abuse_attacks import (
    ATTACKS,
    INVITED_USER,
    PASSWORD,
    PASSWORD_USER,
    Attack,
    Spec,
)
from bench._probe import loop_lag
from bench._routed import RoutedGemini
from bench.load import cpu_model, git, proc_cpu, proc_status, versions
from kindlessh._invites import Invites
from kindlessh._passwords import Passwords
from tests.conftest import write_config
from tests.helpers import CLIENT_KEY, open_chat
from tests.sshterm import Terminal

ATTACKER_KEY = asyncssh.generate_private_key("ssh-ed25519", comment="attacker")

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "bench" / "_load_server.py"
API_KEY = "test-key"
INTERVAL = 0.05  # seconds between the legitimate session's keys
ECHO_LIMIT_MS = 250.0  # issue 18's bound on the legitimate session's echo
LOGIN_TIMEOUT = 10.0  # seconds a fresh login may take before it counts as failed
AFTER = 2.0  # seconds after the attacker disconnected for the "after" figures
QUIET_TIMEOUT = 15.0  # seconds after that to wait for the server to go quiet
QUIET = 1.5  # seconds of low CPU use that count as quiet (Attack.digested)


# ----- the legitimate session ------------------------------------------------------------


class Person:
    """Types a letter every INTERVAL seconds and times its echo from when it was due."""

    def __init__(self, term: Terminal) -> None:
        self.term = term
        self.samples: list[tuple[float, float, bool]] = []  # (due, echo in s, shown)
        self.lost = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _line(self) -> str:
        return str(self.term.screen.display[-1]).rstrip()

    async def _type(self) -> None:
        letters = "abcdefghij"
        n = 0
        due = time.monotonic()
        while not self._stop.is_set() and not self.term.closed.is_set():
            letter = letters[n % len(letters)]
            n += 1
            await self.term.send(letter)
            want = "> " + letter
            try:
                await self.term.wait_until(
                    lambda w=want: self._line() == w or self._stop.is_set(), "echo", 3600)
            except AssertionError:  # the connection is gone
                self.lost = True
                self.samples.append((due, time.monotonic() - due, False))
                return
            self.samples.append((due, time.monotonic() - due, self._line() == want))
            await self.term.send("\x7f")
            due = time.monotonic() + INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), INTERVAL)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._type())

    async def typed_once(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.samples:
            if time.monotonic() > deadline or (self._task and self._task.done()):
                raise RuntimeError("the legitimate session's first key never showed")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    def echoes(self, a: float, b: float) -> tuple[list[float], int]:
        """Echoes (ms) of the keys due from ``a`` to ``b``, and how many of them never
        showed (counted with the time they waited)."""
        chosen = [(echo, shown) for due, echo, shown in self.samples if a <= due <= b]
        return [echo * 1000 for echo, _ in chosen], sum(1 for _, shown in chosen if not shown)


async def try_login(port: int, timeout: float = LOGIN_TIMEOUT) -> str:
    """A fresh connection logs in and its chat comes up: 'ok 0.3 s', or why not."""
    started = time.monotonic()
    term: Terminal | None = None
    try:
        async with asyncio.timeout(timeout):
            term = await open_chat(port, CLIENT_KEY, username="latecomer")
        return f"ok {time.monotonic() - started:.2f} s"
    except TimeoutError:
        return f"FAILED (no chat in {timeout:.0f} s)"
    except (OSError, asyncssh.Error, AssertionError) as exc:
        return f"FAILED ({type(exc).__name__}: {str(exc)[:60]})"
    finally:
        if term is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(term.close(), 5)


# ----- one attack ------------------------------------------------------------------------


@dataclass
class Row:
    spec: Spec
    result: str = ""
    notes: list[str] = field(default_factory=list)
    stalled: bool = False
    error: str = ""
    echoes: list[float] = field(default_factory=list)  # ms
    unseen: int = 0  # keys whose echo never showed
    lost: bool = False
    login_during: str = "-"
    login_after: str = "-"
    cpu_s: float = math.nan
    window_s: float = math.nan
    rss_before: float = math.nan  # MiB
    rss_peak: float = math.nan
    rss_after: float = math.nan
    loop_max_ms: float = math.nan
    driver_max_ms: float = math.nan
    log_bytes: int = 0
    log_errors: int = 0

    @property
    def worst(self) -> float:
        return max(self.echoes, default=math.nan)

    @property
    def p99(self) -> float:
        if len(self.echoes) < 2:
            return self.worst
        return statistics.quantiles(self.echoes, n=100, method="inclusive")[98]


def prepare(tmp: Path, spec: Spec, fake: RoutedGemini) -> Path:
    """The server's directory: keys, the users the attacks need, the config."""
    keys = tmp / "keys"
    users = keys / "users"
    users.mkdir(parents=True)
    # Two keys in the shared file: the people's and the attacker's own (an attacker does
    # not hold the victim's key, and limits follow the key).
    (keys / "authorized_keys").write_bytes(
        CLIENT_KEY.export_public_key() + ATTACKER_KEY.export_public_key()
    )
    if spec.password_auth:
        Passwords(users).set(PASSWORD_USER, PASSWORD)
        Invites.beside(users).create(INVITED_USER, profile=None, ttl=timedelta(hours=1),
                                     now=datetime.now(UTC))
    sections = {
        "server": {"host": "127.0.0.1", "port": 0, "password_auth": spec.password_auth},
        "gemini": {"base_url": fake.base_url},
    }
    return write_config(tmp / "kindlessh.toml", sections)


def mib(kib: int | None) -> float:
    return kib / 1024 if kib is not None else math.nan


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run_one(spec: Spec, tmp: Path, fake: RoutedGemini, scale: float) -> Row:
    row = Row(spec)
    config = prepare(tmp, spec, fake)
    log_path = tmp / "server.log"
    samples_path = tmp / "lag.json"
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPER), str(config), str(samples_path),
            stdout=asyncio.subprocess.PIPE, stderr=log_file, cwd=tmp,
            env=dict(os.environ, GEMINI_API_KEY=API_KEY),
        )
    assert proc.stdout is not None
    person: Person | None = None
    t0 = t_end = math.nan
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the server did not start")
        started = json.loads(line)
        port, pid = started["port"], started["pid"]
        person = Person(await open_chat(port, CLIENT_KEY, username="bystander"))
        person.start()
        await person.typed_once()
        await asyncio.sleep(1.0)
        row.rss_before = mib(proc_status(pid).get("VmRSS"))
        ctx = Attack(port=port, pid=pid, key=ATTACKER_KEY, fake=fake, scale=scale,
                     cpu=lambda: proc_cpu(pid))
        driver_lags: list[float] = []
        stop_lag = asyncio.Event()
        lagger = asyncio.create_task(loop_lag(driver_lags, stop_lag, 0.01))

        async def login_during() -> None:
            await asyncio.sleep(0.5)
            row.login_during = await try_login(port)

        during = asyncio.create_task(login_during())
        t0 = time.monotonic()
        cpu0 = proc_cpu(pid)
        timeout = spec.timeout * max(1.0, scale)
        try:
            async with asyncio.timeout(timeout):
                await spec.run(ctx)
        except TimeoutError:
            row.stalled = True
            row.notes.append(f"stalled: not finished after {timeout:.0f} s")
        except Exception as exc:  # noqa: BLE001  (the attack failed; say how, go on)
            row.error = f"{type(exc).__name__}: {exc}"
        t_gone = time.monotonic()

        async def login_after() -> None:
            await asyncio.sleep(AFTER)
            row.login_after = await try_login(port)

        after = asyncio.create_task(login_after())
        await asyncio.sleep(AFTER)
        row.rss_after = mib(proc_status(pid).get("VmRSS"))
        # Strategy: the window ends when the server is quiet again, not at a fixed time:
        # work an attack leaves behind (a flushed escape sequence, an answer that goes on)
        # belongs to it.
        quiet = True
        try:
            async with asyncio.timeout(QUIET_TIMEOUT):
                await ctx.digested()
        except TimeoutError:
            quiet = False
            row.notes.append(f"the server was still busy {AFTER + QUIET_TIMEOUT:.0f} s "
                             "after the attacker disconnected")
        t_end = time.monotonic()
        busy = t_end - t_gone - QUIET  # when its last busy stretch ended
        if quiet and busy > AFTER + 0.5:
            row.notes.append(f"the server was busy until about {busy:.1f} s after the "
                             "attacker disconnected")
        row.cpu_s = proc_cpu(pid) - cpu0
        row.window_s = t_end - t0
        row.rss_peak = mib(proc_status(pid).get("VmHWM"))
        await during
        await after
        stop_lag.set()
        await lagger
        row.driver_max_ms = max(driver_lags, default=math.nan)
        row.result, row.notes = ctx.result, ctx.notes + row.notes
        await person.stop()
        row.echoes, row.unseen = person.echoes(t0, t_end)
        row.lost = person.lost
    except (RuntimeError, OSError, asyncssh.Error, TimeoutError, AssertionError,
            json.JSONDecodeError, KeyError) as exc:
        row.error = row.error or f"{type(exc).__name__}: {exc}"
    finally:
        if person is not None:
            await person.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(person.term.close(), 5)
        await stop_server(proc)
    with contextlib.suppress(OSError, json.JSONDecodeError):
        lags = json.loads(samples_path.read_text())["lags"]
        row.loop_max_ms = max((lag for at, lag in lags if t0 <= at <= t_end),
                              default=math.nan)
    with contextlib.suppress(OSError):
        text = log_path.read_text(errors="replace")
        row.log_bytes = len(text.encode())
        row.log_errors = sum(1 for ln in text.splitlines()
                             if " ERROR " in ln or ln.startswith("Traceback"))
    return row


# ----- report ----------------------------------------------------------------------------


def ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


def worst(row: Row) -> str:
    """The worst echo; '>= x' when a key never showed (it waited x, then the run ended)."""
    return (">= " if row.unseen else "") + ms(row.worst)


def report_one(row: Row) -> None:
    print(f"[{row.spec.name}] {row.spec.what}")
    if row.result:
        print(f"  result: {row.result}")
    for note in row.notes:
        print(f"  note: {note}")
    if row.error:
        print(f"  ERROR: {row.error}")
    print(f"  legitimate session: worst echo {worst(row)}, p99 {ms(row.p99)} over "
          f"{len(row.echoes)} keys{f' ({row.unseen} never shown)' if row.unseen else ''}"
          f"{' (its connection was lost)' if row.lost else ''}; "
          f"login during: {row.login_during}; after: {row.login_after}")
    print(f"  server: CPU {row.cpu_s:.1f} s over {row.window_s:.1f} s; RSS before "
          f"{row.rss_before:.0f} MiB, peak {row.rss_peak:.0f} MiB, {AFTER:g} s after "
          f"{row.rss_after:.0f} MiB; longest loop stall {ms(row.loop_max_ms)}; log "
          f"{row.log_bytes / 1024:.0f} KiB, {row.log_errors} ERROR/traceback lines")
    print(f"  driver loop lag max {ms(row.driver_max_ms)}", flush=True)


def table(rows: list[Row]) -> None:
    print("| attack | worst echo | p99 echo | login during / after | server CPU | "
          "RSS before / peak / after | longest stall | result |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    for r in rows:
        during = r.login_during.split(" (")[0]
        after = r.login_after.split(" (")[0]
        result = ("STALLED; " if r.stalled else "") + (f"ERROR {r.error}; " if r.error else "")
        print(f"| {r.spec.name} | {worst(r)} | {ms(r.p99)} | {during} / {after} | "
              f"{r.cpu_s:.1f} s | {r.rss_before:.0f} / {r.rss_peak:.0f} / "
              f"{r.rss_after:.0f} MiB | {ms(r.loop_max_ms)} | {result}{r.result} |")


def raise_fd_limit() -> int:
    """This process opens hundreds of connections (attack 5): soft limit up to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def main(args: argparse.Namespace) -> int:
    chosen = [s for s in ATTACKS
              if not args.only or any(s.name.startswith(o) for o in args.only)]
    if not chosen:
        raise SystemExit(f"no attack named {args.only}; --list shows them")
    fds = raise_fd_limit()
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "kindlessh")
    print(f"abuse: {len(chosen)} attacks, scale {args.scale:g}; kindlessh at commit {commit}"
          f"{' with uncommitted changes in kindlessh/' if dirty and dirty != '?' else ''}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; Linux {platform.release()}; "
          f"Python {platform.python_version()}; {versions()}; driver fd limit {fds}; "
          f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews the "
          "figures)", flush=True)
    base = Path(tempfile.mkdtemp(prefix="kindlessh-abuse-"))
    fake = RoutedGemini(api_key=API_KEY)
    await fake.start()
    rows: list[Row] = []
    started = time.monotonic()
    try:
        for spec in chosen:
            tmp = base / spec.name
            rows.append(await run_one(spec, tmp, fake, args.scale))
            report_one(rows[-1])
    finally:
        await fake.close()
    print()
    table(rows)
    print(f"\n{time.monotonic() - started:.0f} s in all (load average at the end "
          f"{os.getloadavg()[0]:.2f}); echo bound of issue 18: "
          f"{ECHO_LIMIT_MS:.0f} ms; over it: "
          f"{', '.join(r.spec.name for r in rows if not r.worst <= ECHO_LIMIT_MS) or 'none'}")
    if args.keep:
        print(f"kept: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this attack (a prefix; repeatable)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the attacks' sizes by this (1)")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directories (config, log, store)")
    args = parser.parse_args()
    if args.list:
        for s in ATTACKS:
            print(f"{s.name:14} {s.what}")
        sys.exit(0)
    sys.exit(asyncio.run(main(args)))
