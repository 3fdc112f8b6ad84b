"""What painting a streamed answer costs: the e-ink and smooth profiles against a naive
baseline that paints every chunk.

One process runs a fake Gemini on loopback (``tests/fake_gemini.py``), the real server
(``kindlessh.start_server`` with a config file: 127.0.0.1, port 0, a temporary host key
and authorized_keys, default ``[ui]`` settings) and SSH clients with a PTY
(``tests/sshterm.py``, 60x30, each screen read through pyte). The fake streams a scripted
600-word answer (prose, paragraphs and a list) in two-word text events, one every 25 ms
(40 chunks/s, ``Reply.text(..., chunk_delay=0.025)``). Three variants:

* ``eink``: the ssh command ``eink`` (default ``eink_interval_ms``, 1000 ms, paged);
* ``smooth``: the ssh command ``smooth`` (default ``smooth_interval_ms``, 50 ms);
* ``every chunk``: the smooth profile with the session's ``ui.throttle.interval`` set to 0
  right after connecting, so every chunk commits and paints.

Each variant streams the answer twice, on a fresh connection each time:

1. a clean run, nothing typed, which measures
   - writes per second while streaming: server-side ``ChannelOutput.writes`` and
     client-side SSH data packets from the moment the fake sends the first text event
     until the answer has settled on the client, divided by the streaming period (first
     to last text event sent upstream);
   - bytes per answer byte: bytes the client received in that window divided by the
     UTF-8 bytes of the answer;
   - changed screen cells: the received packets are fed one at a time into a separate
     pyte screen, and for each packet the cells whose character changed are counted (a
     proxy for the area an e-ink panel refreshes), with the rows that changed;
   - first-text latency: from the fake writing its first text event to the socket to
     the arrival of the first packet after which the client's screen shows the first
     word of the answer;
2. a typing run that measures keystroke echo while the answer streams: every 200 ms a
   letter is typed and timed until the client's pyte screen shows it in the input line
   (then it is erased with Backspace, not timed). First-text latency is taken again.

The SSH client and its pyte screen share the server's event loop and CPU, so the
latencies include the client's own work. Checks: each run's answer arrives whole (the
server's transcript holds exactly the streamed text, ended normally, and the client's
final screen shows the answer's last words), and nothing is logged at ERROR; exit status
1 when a check fails. Targets are printed next to the figures; missing one does not change
the exit status.

Run from the repository root:  python bench/render.py   (about 55 s; ``--quick``, about 20 s,
streams only the answer's first paragraphs, at least 150 words)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh
import pyte

from bench._probe import ProbeTerminal, input_is
from kindlessh import Server, load_config, start_server
from kindlessh._process import tune_process
from kindlessh._session import Session
from tests.conftest import write_config
from tests.fake_gemini import FakeGemini, RecordedRequest, Reply, _Connection

COLS, ROWS = 60, 30
WORDS_PER_CHUNK = 2
CHUNK_DELAY = 0.025  # seconds between text events: 40 chunks/s
ECHO_EVERY = 0.2  # seconds between keystroke probes
SETTLE = 0.3  # seconds of quiet after the answer, so late packets are counted
QUICK_WORDS = 150
QUESTION = "How do e-ink screens work, and why do they refresh so slowly?"
TEXT_MARKER = b'"text": '  # in every text event the fake writes, never in its head

# Targets.
EINK_BYTES_PER_BYTE = 1.5
SMOOTH_WRITES_PER_S = 25.0
FIRST_TEXT_MS = 50.0
ECHO_MS = 30.0

ANSWER = "\n\n".join(
    (
        "Electronic paper screens, like the one in a Kindle, work very differently from the "
        "LCD or OLED panel in a laptop or a phone. Instead of lighting pixels from behind or "
        "making them glow, they move tiny particles of pigment around and let the light in "
        "the room bounce off them. That single difference explains almost everything about "
        "how they look, how little power they use, and why they feel slow.",
        "Each pixel sits above a layer of microcapsules, or tiny cups, filled with a clear "
        "oil. Inside every capsule float many small particles: white ones carrying one "
        "electric charge and black ones carrying the opposite charge. Electrodes above and "
        "below the layer can apply a voltage in either direction. Pull the black particles "
        "to the top and that spot looks dark; pull the white ones up and it looks like blank "
        "paper.",
        "The particles stay where they were put after the voltage is removed. This is called "
        "bistability, and it is the reason an e-ink reader can show the same page for weeks "
        "on a single charge. The screen only draws power while it changes, never while it "
        "simply holds a picture.",
        "Changing a picture is where the trouble starts. The particles have to travel through "
        "the oil, and that takes time, typically somewhere between a hundred and several "
        "hundred milliseconds for a full update. The controller also cannot simply push "
        "every pixel from its old shade to its new one, because particles remember a little "
        "of their history. To get clean results it drives each pixel through a waveform, a "
        "carefully timed sequence of voltages that depends on the old shade, the new shade "
        "and even the temperature.",
        "A few consequences follow from this design:",
        "\n".join(
            (
                "- A full refresh flashes the screen black and white to reset every particle, "
                "which removes faint leftovers of the previous page, known as ghosting.",
                "- A partial refresh updates only the pixels that change and skips the flash, "
                "so it is quicker, but ghosting slowly builds up and needs an occasional full "
                "refresh.",
                "- Small regions redraw faster than large ones, and a screen that scrolls line "
                "by line forces nearly every pixel to move on every step.",
                "- Animations, smooth scrolling and blinking cursors look poor and drain the "
                "battery, because they keep the particles in motion all the time.",
            )
        ),
        "This is why programs written for e-ink behave differently from ordinary terminal "
        "programs. A chat client that streams text word by word is pleasant on a laptop, "
        "where a repaint costs nothing and the eye enjoys the motion. On a Kindle the same "
        "stream would trigger dozens of partial refreshes every second, each of them a small "
        "smear of grey, and the page would flicker while the answer grows. It is much better "
        "to collect the new words for a second or so and then paint them in one go, ideally "
        "only in the rows that actually changed.",
        "Paging helps too. When the text reaches the bottom of the screen, a reader program "
        "can start a fresh page at the top instead of scrolling everything up by one line. A "
        "page flip costs one refresh of the whole screen, while scrolling would cost a "
        "refresh of the whole screen for every new line.",
        "None of this makes e-ink worse than other displays; it simply suits a different kind "
        "of work. For long reading in daylight, with no glare and a battery that lasts for "
        "weeks, it is still hard to beat. The trick is to paint rarely, paint only what "
        "changed, and let the page stay still while you read it.",
    )
)


@dataclass(frozen=True)
class Variant:
    name: str
    command: str
    interval_override: float | None = None  # set on the session's throttle after connecting


VARIANTS = (
    Variant("eink", "eink"),
    Variant("smooth", "smooth"),
    Variant("every chunk", "smooth", 0.0),
)


# ----- the answer ---------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def shortened(text: str, at_least: int) -> str:
    """The first paragraphs of ``text`` that hold at least ``at_least`` words."""
    kept: list[str] = []
    for para in text.split("\n\n"):
        kept.append(para)
        if len(words("\n\n".join(kept))) >= at_least:
            break
    return "\n\n".join(kept)


def chunked(text: str, per_chunk: int) -> list[str]:
    """``text`` cut into pieces of ``per_chunk`` words, each word with the space after it."""
    tokens = re.findall(r"\S+\s*", text)
    return ["".join(tokens[i : i + per_chunk]) for i in range(0, len(tokens), per_chunk)]


def squash(text: str) -> str:
    """Whitespace-insensitive form, for text that the screen wraps across rows."""
    return " ".join(text.split())


# ----- instrumented fake and client ----------------------------------------------------------


class TimedGemini(FakeGemini):
    """The fake Gemini, noting when each text event is written to the socket.

    ``on_first_text`` runs (synchronously) just before the first text event of a response
    is written; ``text_sent`` holds ``time.perf_counter()`` taken before each text event.
    """

    def __init__(self) -> None:
        super().__init__()
        self.text_sent: list[float] = []
        self.on_first_text: Callable[[], None] | None = None

    async def _send_reply(
        self, conn: _Connection, reply: Reply, request: RecordedRequest, keep_alive: bool
    ) -> bool:
        plain_send = conn.send

        async def timed_send(data: bytes) -> None:
            if TEXT_MARKER in data:
                if not self.text_sent and self.on_first_text is not None:
                    self.on_first_text()
                self.text_sent.append(time.perf_counter())
            await plain_send(data)

        conn.send = timed_send  # type: ignore[method-assign]
        try:
            return await super()._send_reply(conn, reply, request, keep_alive)
        finally:
            conn.send = plain_send  # type: ignore[method-assign]


class RecordingTerminal(ProbeTerminal):
    """A ProbeTerminal that also keeps every packet with its arrival time."""

    def __init__(self, cols: int, rows: int) -> None:
        super().__init__(cols, rows)
        self.arrivals: list[tuple[float, str]] = []

    def _feed(self, data: str) -> None:
        self.arrivals.append((time.perf_counter(), data))
        super()._feed(data)


class ErrorLog(logging.Handler):
    """Keeps every record at ERROR or above, and the server's own warnings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or (
            record.levelno >= logging.WARNING and record.name.startswith("kindlessh")
        ):
            self.records.append(record)


# ----- one run ------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float = 0.0
    writes: int = 0
    bytes_sent: int = 0
    commits: int = 0
    packets: int = 0


@dataclass
class RunResult:
    variant: str
    typing: bool
    profile: str = ""
    interval: float = 0.0
    stream_s: float = 0.0
    server_writes: int = 0
    server_bytes: int = 0
    commits: int = 0
    packets: int = 0
    client_bytes: int = 0
    cells_changed: int = 0
    rows_changed: int = 0
    first_text_ms: float = math.nan
    echoes: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def session_of(server: Server, username: str, timeout: float = 10.0) -> Session:
    """The server-side session of ``username``, once its chat screen is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for session in list(server.ctx.session.sessions):
            if (
                isinstance(session, Session)
                and session.username == username
                and session.screen is not None
                and session.output is not None
            ):
                return session
        await asyncio.sleep(0.01)
    raise RuntimeError(f"no server session for {username}")


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def echo_probe(term: RecordingTerminal, echoes: list[float], stop: asyncio.Event) -> None:
    """Type a letter, time its echo, erase it; every ECHO_EVERY seconds until ``stop``."""
    i = 0
    while not stop.is_set():
        letter = "abcdefghijklmnopqrstuvwxyz"[i % 26]
        i += 1
        echoes.append(await term.keystroke(letter, input_is(term, "> " + letter)))
        await term.keystroke("\x7f", input_is(term, ">"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ECHO_EVERY)


def analyse(result: RunResult, term: RecordingTerminal, start: float, end: float,
            first_word: str) -> None:
    """Replay the client's packets into a fresh screen; fill in the client-side figures."""
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.Stream(screen)
    for at, data in term.arrivals:
        if at < start:
            stream.feed(data)
            continue
        if at > end:
            break
        if not result.packets and first_word in " ".join(screen.display):
            result.problems.append(f"{first_word!r} was on the screen before the answer")
        before = list(screen.display)
        stream.feed(data)
        after = screen.display
        result.packets += 1
        result.client_bytes += len(data.encode("utf-8"))
        for old, new in zip(before, after, strict=True):
            changed = sum(1 for a, b in zip(old, new, strict=True) if a != b)
            result.cells_changed += changed
            result.rows_changed += changed > 0
        if math.isnan(result.first_text_ms) and first_word in " ".join(after):
            result.first_text_ms = (at - start) * 1000


async def run_once(
    variant: Variant, typing: bool, server: Server, key: asyncssh.SSHKey, fake: TimedGemini,
    answer: str, tag: str,
) -> RunResult:
    result = RunResult(variant.name, typing)
    username = f"{tag}{'t' if typing else 'c'}"
    pieces = chunked(answer, WORDS_PER_CHUNK)
    first_word = words(answer)[0]
    last_words = squash(" ".join(words(answer)[-8:]))
    term = cast(
        RecordingTerminal,
        await RecordingTerminal.connect(server.port, key, username=username, cols=COLS,
                                        rows=ROWS, command=variant.command),
    )
    try:
        await term.wait_for("/help", 10.0)
        session = await session_of(server, username)
        ui, output = session.screen, session.output
        assert ui is not None and output is not None
        if variant.interval_override is not None:
            ui.throttle.interval = variant.interval_override
        result.profile = ui.profile.name
        result.interval = ui.throttle.interval

        begin = Snapshot()

        def first_text() -> None:
            begin.at = time.perf_counter()
            begin.writes, begin.bytes_sent = output.writes, output.bytes_sent
            begin.commits = ui.throttle.commits

        fake.text_sent = []
        fake.on_first_text = first_text
        fake.enqueue(Reply.text(pieces, chunk_delay=CHUNK_DELAY))
        await term.ask(QUESTION)
        await term.wait_for(first_word, 10.0)

        stop = asyncio.Event()
        prober = asyncio.create_task(echo_probe(term, result.echoes, stop)) if typing else None
        conv = ui.conversation
        done = await until(lambda: conv.current is not None and not conv.current.active, 60.0)
        stop.set()
        if prober is not None:
            try:
                await prober
            except (TimeoutError, AssertionError) as exc:
                result.problems.append(f"keystroke probe: {exc!r}")
        if not done:
            result.problems.append("the answer never ended")
        try:
            await term.wait_for(
                lambda t: "- ready" in t.text() and last_words in squash(t.text()), 10.0
            )
        except AssertionError:
            result.problems.append(
                f"the final screen lacks the answer's last words {last_words!r}:\n{term.text()}"
            )
        await asyncio.sleep(SETTLE)
        end = Snapshot(time.perf_counter(), output.writes, output.bytes_sent,
                       ui.throttle.commits)

        turn = conv.current
        if turn is None or turn.question != QUESTION:
            result.problems.append("no turn on the server")
        elif turn.answer != answer or turn.state != "done" or turn.note is not None:
            result.problems.append(
                f"server transcript {turn.state!r} ({len(turn.answer)}/{len(answer)} chars, "
                f"note {turn.note!r})"
            )
        if len(fake.text_sent) != len(pieces):
            result.problems.append(f"the fake sent {len(fake.text_sent)}/{len(pieces)} events")
        else:
            result.stream_s = fake.text_sent[-1] - fake.text_sent[0]
        result.server_writes = end.writes - begin.writes
        result.server_bytes = end.bytes_sent - begin.bytes_sent
        result.commits = end.commits - begin.commits
        analyse(result, term, begin.at, end.at, first_word)
        if math.isnan(result.first_text_ms):
            result.problems.append(f"no packet showed {first_word!r}")
    finally:
        fake.on_first_text = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(term.close(), 5.0)
    return result


# ----- report -------------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1-99), interpolated between samples."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                             strict=True))
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def eink_allowance(result: RunResult) -> int:
    """Writes allowed to the e-ink profile: one per interval, plus one for the final."""
    return math.ceil(result.stream_s / result.interval) + 1


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(clean: list[RunResult], typed: list[RunResult], answer_bytes: int) -> None:
    rows: list[list[str]] = []
    for c, t in zip(clean, typed, strict=True):
        stream = c.stream_s or math.nan
        echo = t.echoes or [math.nan]
        rows.append([
            c.variant,
            f"{c.interval * 1000:.0f} ms",
            f"{c.stream_s:.2f}",
            f"{c.server_writes} ({c.server_writes / stream:.1f}/s)",
            f"{c.packets} ({c.packets / stream:.1f}/s)",
            f"{c.commits}",
            f"{c.client_bytes:,} ({c.client_bytes / answer_bytes:.2f})",
            f"{c.cells_changed:,} ({c.cells_changed / (COLS * ROWS):.1f})",
            f"{c.rows_changed:,}",
            f"{c.first_text_ms:.1f} / {t.first_text_ms:.1f}",
            f"{statistics.median(echo):.1f} / {percentile(echo, 99):.1f} / {max(echo):.1f}"
            f" (n={len(t.echoes)})",
        ])
    print(table(
        ["variant", "interval", "stream s", "server writes (/s)", "client packets (/s)",
         "commits", "bytes received (per answer byte)", "cells changed (screens)",
         "rows changed", "first text ms (clean / typing)", "echo ms p50 / p99 / max"],
        rows,
    ))
    by_name = {r.variant: r for r in clean}
    typed_by_name = {r.variant: r for r in typed}
    print()
    print("targets:")
    eink = by_name.get("eink")
    if eink is not None and eink.stream_s:
        allowed = eink_allowance(eink)
        print(f"  eink writes <= 1 per {eink.interval * 1000:.0f} ms interval + 1 final "
              f"(<= {allowed} over {eink.stream_s:.2f} s): {eink.server_writes} -> "
              f"{verdict(eink.server_writes <= allowed)}")
        ratio = eink.client_bytes / answer_bytes
        print(f"  eink bytes <= {EINK_BYTES_PER_BYTE} per answer byte at {COLS}x{ROWS}: "
              f"{ratio:.2f} -> {verdict(ratio <= EINK_BYTES_PER_BYTE)}")
    smooth = by_name.get("smooth")
    if smooth is not None and smooth.stream_s:
        rate = smooth.server_writes / smooth.stream_s
        print(f"  smooth writes <= {SMOOTH_WRITES_PER_S:.0f}/s: {rate:.1f}/s -> "
              f"{verdict(rate <= SMOOTH_WRITES_PER_S)}")
    for name in ("eink", "smooth"):
        quiet, busy = by_name.get(name), typed_by_name.get(name)
        if quiet is None or busy is None:
            continue
        worst = max(quiet.first_text_ms, busy.first_text_ms)
        print(f"  {name} first text < {FIRST_TEXT_MS:.0f} ms: {quiet.first_text_ms:.1f} ms "
              f"clean, {busy.first_text_ms:.1f} ms while typing -> "
              f"{verdict(worst < FIRST_TEXT_MS)}")
    for name in ("eink", "smooth"):
        busy = typed_by_name.get(name)
        if busy is None or not busy.echoes:
            continue
        p50, p99 = statistics.median(busy.echoes), percentile(busy.echoes, 99)
        print(f"  {name} echo < {ECHO_MS:.0f} ms (p99): p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {max(busy.echoes):.1f} ms -> {verdict(p99 < ECHO_MS)}")


# ----- main ---------------------------------------------------------------------------------


async def with_server(body: Callable[[Server, asyncssh.SSHKey, TimedGemini], Awaitable[None]],
                      ) -> None:
    with tempfile.TemporaryDirectory(prefix="kindlessh-bench-") as tmpdir:
        tmp = Path(tmpdir)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="bench@kindlessh")
        (tmp / "authorized_keys").write_bytes(key.export_public_key())
        fake = TimedGemini()
        async with fake:
            config = load_config(write_config(tmp / "kindlessh.toml", {
                "server": {"host": "127.0.0.1", "port": 0, "host_key": str(tmp / "host_key"),
                           "authorized_keys": str(tmp / "authorized_keys")},
                "gemini": {"api_key": "test-key", "base_url": fake.base_url,
                           "connect_timeout": 2.0, "first_byte_timeout": 30.0,
                           "chunk_timeout": 30.0, "answer_timeout": 120.0},
                # One key asks every question of the six runs: no burst limit.
                "quota": {"prompts": 1000},
            }), env={})
            server = await start_server(config)
            tune_process()  # as kindlessh serve does
            try:
                await body(server, key, fake)
            finally:
                await server.close()


async def main(quick: bool) -> int:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    answer = shortened(ANSWER, QUICK_WORDS) if quick else ANSWER
    answer_bytes = len(answer.encode("utf-8"))
    pieces = chunked(answer, WORDS_PER_CHUNK)
    print(f"python {platform.python_version()}, {platform.machine()}; {COLS}x{ROWS}; answer "
          f"{len(words(answer))} words, {answer_bytes:,} bytes, {len(pieces)} text events, one "
          f"every {CHUNK_DELAY * 1000:.0f} ms")
    clean: list[RunResult] = []
    typed: list[RunResult] = []
    started = time.perf_counter()

    async def body(server: Server, key: asyncssh.SSHKey, fake: TimedGemini) -> None:
        for n, variant in enumerate(VARIANTS):
            for typing in (False, True):
                gc.collect()
                result = await run_once(variant, typing, server, key, fake, answer, f"v{n}")
                (typed if typing else clean).append(result)
                print(f"  {variant.name} ({'typing' if typing else 'clean'}): "
                      f"{result.stream_s:.2f} s streamed, "
                      f"{'ok' if not result.problems else 'PROBLEMS'}", flush=True)
                for problem in result.problems:
                    print(f"  PROBLEM: {problem}")

    await with_server(body)
    logging.getLogger().removeHandler(errors)
    print(f"whole run: {time.perf_counter() - started:.1f} s")
    print()
    report(clean, typed, answer_bytes)

    failed = any(r.problems for r in clean + typed)
    for record in errors.records:
        print(f"LOGGED {record.levelname} {record.name}: {record.getMessage()}")
        failed = True
    print("result:", "FAILED" if failed else "ok (every answer arrived whole)")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="stream only the first paragraphs (at least 150 words)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.quick)))
