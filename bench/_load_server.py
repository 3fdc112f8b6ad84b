"""The kindlessh server in a process of its own, with an event-loop probe (for
``bench/load.py``).

    python bench/_load_server.py CONFIG SAMPLES

Starts the server as ``kindlessh serve --config CONFIG`` does (``load_config`` and
``start_server``, logging at INFO to stderr with asyncssh and httpx at WARNING), then
prints one JSON line to stdout: ``{"port": ..., "pid": ...}``. A probe task sleeps 10 ms
again and again and records how late it wakes (``loop.time()`` after the sleep minus the
time it asked to wake), with the ``time.monotonic()`` of each wake, so that the driver can
cut the samples into phases (CLOCK_MONOTONIC is the same clock in every process). Once a
second it also notes the number of chat sessions open. Full (generation 2) garbage
collections are timed through ``gc.callbacks``. Like ``kindlessh serve``, it calls
``tune_process`` once the server has started.

On SIGTERM (or SIGINT) the probe stops, the samples go to SAMPLES as JSON, and one JSON
line goes to stdout: the lag summary, the process's CPU time and peak RSS from
``getrusage``, the session peak and the full collections. Then the server is closed and
a last line ``{"closed": seconds}`` follows.

With the environment variable ``LOAD_CPROFILE=FILE`` the whole run is profiled with
cProfile (from listening to SIGTERM) and the statistics written to FILE (a diagnostic:
the profiler slows the server down, so the other figures of such a run mean little).
With ``LOAD_SLOW=FILE`` every callback the event loop runs is timed, and FILE gets, per
kind of callback (a task's coroutine or a function's name), how many ran, their total
and longest time, and how many took over 20 ms: what the loop's long turns are made of.

    python bench/_load_server.py CONFIG SAMPLES --workers N   (N above 1)

Several workers, as ``kindlessh serve --workers N`` does: the parent loads the config and
host keys once, brings the store's schema up to date once
(``kindlessh._store.bring_up_to_date``), binds N ``SO_REUSEPORT`` sockets
(``kindlessh._workers.listening_sockets``) and forks one worker per socket
(``run_workers``). It refuses a SQLite store, as ``serve``
does. Each worker runs the server on its socket with the same probe, CPU time and RSS
figures. The parent prints one line, ``{"port": ..., "pid": PARENT, "workers": [PIDS]}``.
On SIGTERM the parent passes the signal on; each worker stops its probe, closes its
server and writes ``SAMPLES.<its pid>``: the samples as above plus ``"summary"`` (the
same summary, with ``"pid"``, ``"sessions_seen"`` and ``"closed"``). Once every worker
has stopped, the parent prints ``{"workers": [their summaries]}`` and ``{"closed":
seconds}`` (from SIGTERM to the last worker's exit). Log lines carry the process id.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kindlessh import Config, load_config, start_server
from kindlessh._process import tune_process
from kindlessh._server import HostKey, load_host_keys
from kindlessh._store import bring_up_to_date
from kindlessh._workers import listening_sockets, run_workers

TICK = 0.010  # seconds the probe asks to sleep


def callback_name(handle: asyncio.Handle) -> str:
    """What a loop callback runs: a task's coroutine, or the function's qualified name."""
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return "task " + getattr(coro, "__qualname__", repr(coro))
    func = getattr(callback, "__func__", callback)
    return getattr(func, "__qualname__", repr(func))


def time_callbacks(table: dict[str, list[float]]) -> None:
    """Time every callback the loop runs into ``table``: name -> [count, total ms,
    max ms, count over 20 ms]."""
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.Handle) -> None:
        start = time.perf_counter()
        run(handle)
        ms = (time.perf_counter() - start) * 1000
        row = table.setdefault(callback_name(handle), [0, 0.0, 0.0, 0])
        row[0] += 1
        row[1] += ms
        row[2] = max(row[2], ms)
        row[3] += ms > 20

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


class FullCollections:
    """Times every generation 2 collection."""

    def __init__(self) -> None:
        self.durations: list[float] = []  # ms
        self.at: list[float] = []  # time.monotonic() when each one started
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
            self.at.append(time.monotonic())
        else:
            self.durations.append((time.perf_counter() - self._start) * 1000)


async def probe(
    lags: list[tuple[float, float]], sessions: list[int], open_sessions: set[Any],
    seen: set[int], stop: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    next_count = time.monotonic()
    while not stop.is_set():
        expected = loop.time() + TICK
        await asyncio.sleep(TICK)
        now = time.monotonic()
        lags.append((now, (loop.time() - expected) * 1000))
        if now >= next_count:
            sessions.append(len(open_sessions))
            # Sessions last as long as their answer: a look a second sees each one.
            seen.update(map(id, open_sessions))
            next_count = now + 1.0


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def serve(
    config: Config,
    samples_path: Path,
    *,
    sock: socket.socket | None = None,
    host_keys: tuple[HostKey, HostKey | None] | None = None,
) -> int:
    """Serve with the probe until SIGTERM. Alone (``sock`` None) it prints the port line,
    the summary and the close time; as a worker it writes everything to
    ``SAMPLES.<pid>`` once its server has closed."""
    worker = sock is not None
    server = await start_server(config, sock=sock, host_keys=host_keys)
    tune_process()  # as kindlessh serve does
    collections = FullCollections()
    gc.callbacks.append(collections)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    lags: list[tuple[float, float]] = []
    sessions: list[int] = []
    seen: set[int] = set()
    profiler = None
    if os.environ.get("LOAD_CPROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    slow: dict[str, list[float]] = {}
    if os.environ.get("LOAD_SLOW"):
        time_callbacks(slow)
    open_sessions = server.ctx.session.sessions
    prober = asyncio.create_task(probe(lags, sessions, open_sessions, seen, stop))
    if not worker:
        print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)

    await stop.wait()
    await prober
    suffix = f".{os.getpid()}" if worker else ""
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.environ["LOAD_CPROFILE"] + suffix)
    gc.callbacks.remove(collections)
    if os.environ.get("LOAD_SLOW"):
        rows = sorted(slow.items(), key=lambda kv: -kv[1][1])
        Path(os.environ["LOAD_SLOW"] + suffix).write_text("".join(
            f"{total:10.0f} ms {count:8d} calls max {top:7.1f} ms {over:5d} over 20 ms  {name}\n"
            for name, (count, total, top, over) in rows
        ))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    samples = {"lags": lags, "gc_at": collections.at, "gc_ms": collections.durations}
    values = [lag for _, lag in lags]
    summary = {
        "pid": os.getpid(),
        "ticks": len(values),
        "lag_p50_ms": statistics.median(values) if values else float("nan"),
        "lag_p99_ms": percentile(values, 99),
        "lag_max_ms": max(values, default=float("nan")),
        "cpu_user_s": usage.ru_utime,
        "cpu_system_s": usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,
        "sessions_peak": max(sessions, default=0),
        "sessions_seen": len(seen),
        "full_collections": len(collections.durations),
        "full_collection_ms_max": max(collections.durations, default=0.0),
        "full_collection_ms_total": sum(collections.durations),
    }
    if not worker:
        samples_path.write_text(json.dumps(samples))
        print(json.dumps(summary), flush=True)
    started = time.monotonic()
    try:
        await server.close()
    except Exception:
        logging.getLogger("bench.load").exception("server.close() failed")
    closed = time.monotonic() - started
    if worker:
        summary["closed"] = closed
        samples["summary"] = summary
        Path(f"{samples_path}{suffix}").write_text(json.dumps(samples))
    else:
        print(json.dumps({"closed": closed}), flush=True)
    return 0


def serve_workers(config: Config, samples_path: Path, count: int) -> int:
    """The pre-fork parent: the same steps as ``kindlessh serve --workers N``."""
    if not config.storage.url:
        sys.exit(f"--workers {count}: several workers need the PostgreSQL store "
                 "([storage] url)")
    host_keys = load_host_keys(config)
    asyncio.run(bring_up_to_date(config.storage))
    socks = listening_sockets(config.server.host, config.server.port, count)
    port = socks[0].getsockname()[1]
    pids: list[int] = []
    stopping: list[float] = []

    def child(slot: int, sock: socket.socket, first: bool) -> int:
        return asyncio.run(serve(config, samples_path, sock=sock, host_keys=host_keys))

    def started(first_pids: list[int]) -> None:
        pids.extend(first_pids)
        # run_workers has put in its handler, which passes SIGTERM on to the workers;
        # wrapped, it also notes when the signal came, for the close time.
        forward = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            stopping.append(time.monotonic())
            if callable(forward):
                forward(signum, frame)

        signal.signal(signal.SIGTERM, on_term)
        print(json.dumps({"port": port, "pid": os.getpid(), "workers": pids}), flush=True)

    status = run_workers(socks, child, started)
    summaries = []
    for pid in pids:
        try:
            summaries.append(json.loads(Path(f"{samples_path}.{pid}").read_text())["summary"])
        except (OSError, ValueError, KeyError):
            summaries.append({"pid": pid, "missing": True})
    print(json.dumps({"workers": summaries}), flush=True)
    closed = time.monotonic() - stopping[0] if stopping else float("nan")
    print(json.dumps({"closed": closed}), flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers < 1:
        sys.exit("--workers: 1 or more")
    setup_logging()
    config = load_config(args.config)
    if args.workers == 1:
        return asyncio.run(serve(config, args.samples))
    return serve_workers(config, args.samples, args.workers)


if __name__ == "__main__":
    sys.exit(main())
