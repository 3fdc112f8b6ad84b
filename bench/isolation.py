"""One session's hanging or failing upstream must not slow the others (DESIGN C7).

Runs the real server with a fake Gemini on loopback, 10 SSH sessions: session 0's
upstream hangs, sessions 1-9 stream answers; a baseline phase runs without the hang.
The SSH clients and their terminal emulators run in the same process and event loop as
the server, so the absolute lag includes the clients' own work. Prints event-loop lag
(10 ms ticker) and keystroke echo latency on a healthy session.
Run from the repository root:  python bench/isolation.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh  # noqa: E402

from kindlessh import load_config, start_server  # noqa: E402
from tests.conftest import write_config  # noqa: E402
from tests.fake_gemini import FakeGemini, Reply  # noqa: E402
from tests.sshterm import Terminal  # noqa: E402

SESSIONS = 10
ROUNDS = 3
WORDS = [f"word{i} " for i in range(120)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append((time.perf_counter() - start - 0.01) * 1000)


async def echo(term: Terminal, echoes: list[float], stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        mark = "abcdefghij"[i % 10]
        i += 1
        start = time.perf_counter()
        await term.send(mark)
        await term.wait_for(lambda t, m=mark: t.screen.display[-1].rstrip().endswith(m), 5)
        echoes.append((time.perf_counter() - start) * 1000)
        await term.send("\x08")
        await asyncio.sleep(0.2)


async def phase(name: str, bad: Reply | None, port: int, key: asyncssh.SSHKey,
                fake: FakeGemini) -> bool:
    terms = [await Terminal.connect(port, key, cols=60, rows=30) for _ in range(SESSIONS)]
    for t in terms:
        await t.wait_for("/help")
    lags: list[float] = []
    echoes: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, stop))
    healthy = terms[1:] if bad is not None else terms
    if bad is not None:
        fake.enqueue(bad)
        await terms[0].ask("the troubled question")
        await terms[0].wait_for("the troubled question")
    echo_task = asyncio.create_task(echo(healthy[0], echoes, stop))
    ok = True
    for r in range(ROUNDS):
        for t in healthy[1:]:
            fake.enqueue(Reply.text(WORDS + [f"done{r}."], chunk_delay=0.02))
            await t.ask(f"round {r}")
        for t in healthy[1:]:
            try:
                await t.wait_for(f"done{r}.", 30)
                await t.wait_for(lambda x: "ready" in x.text(), 10)
            except AssertionError:
                ok = False
    stop.set()
    await tick
    await echo_task
    for t in terms:
        await t.close()
    print(f"{name:<28} loop lag p50 {statistics.median(lags):6.1f} ms  p99 {pct(lags, .99):6.1f} ms"
          f"  max {max(lags):6.1f} ms | echo p50 {statistics.median(echoes):5.1f} ms"
          f"  p99 {pct(echoes, .99):5.1f} ms | answers complete: {ok}")
    return ok


async def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp / "auth").write_bytes(key.export_public_key())
    async with FakeGemini() as fake:
        config = load_config(write_config(tmp / "c.toml", {
            "server": {"host": "127.0.0.1", "port": 0, "host_key": str(tmp / "hk"),
                       "authorized_keys": str(tmp / "auth")},
            "gemini": {"api_key": "test-key", "base_url": fake.base_url,
                       "retry_base_delay": 0.05, "retry_jitter": 0.0, "max_retries": 10,
                       "retry_budget": 60.0, "first_byte_timeout": 60.0},
        }))
        server = await start_server(config)
        print(f"{SESSIONS} sessions at 60x30, {ROUNDS} rounds of {len(WORDS)}-chunk answers "
              "at 50 chunks/s on the healthy sessions; target loop lag p99 < 100 ms")
        results = [
            await phase("baseline (all healthy)", None, server.port, key, fake),
            await phase("one upstream hangs", Reply.hang(["A few words"]), server.port, key,
                        fake),
        ]
        await server.close()
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
