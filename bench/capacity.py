"""Capacity: how many streaming laptops each setup holds (issue 17).

For each setup (1 worker on SQLite, 1 worker on PostgreSQL, 2 workers on PostgreSQL, or
those ``--setups`` names), runs ``bench/load.py`` (its ``run``, in this process) with
more and more sessions, ``--start`` then ``--step`` more each time, until a run fails;
the capacity is the largest count that held. A count holds when every session came up,
got its answer whole (store and final screen: the load checks, exit status 0), no
session had an error, and every worker's event-loop lag p99 over the whole run (first
connection to last final screen) stayed under 100 ms, and every answer started upstream
within 5 s of its question (none waited in a queue). When ``--start`` itself fails, the
count steps down instead.

Each run uses the smooth profile, answers at ``--rate`` events per second, and session
starts spread at ``--arrivals`` per second (20, as load.py's 100 sessions over 5 s), so
the ramp grows with the count; answers last ``--seconds`` (30) but at least the ramp plus
``--streaming`` (20) seconds, so that every count has that long a phase where all
sessions stream at once. Each run's whole report goes to ``--out``/SETUP-N.txt; one line
per run and a table at the end go to stdout, with the CPU share of the server (its
workers), of this driver (the SSH clients and the fake Gemini), and of PostgreSQL, since
all of them share the machine's cores.

    python bench/capacity.py                       # the three setups, about 15-25 min
    python bench/capacity.py --setups pg2 --start 200 --step 25
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load

LAG_P99_MS = load.LAG_P99_MS
ANSWER_WAIT_S = 5.0  # the longest an answer may wait to start upstream: none queued
SETUPS = {  # name -> (store, workers)
    "sqlite1": ("sqlite", 1),
    "pg1": ("postgresql", 1),
    "pg2": ("postgresql", 2),
}


def load_args(opts: argparse.Namespace, store: str, workers: int, sessions: int) -> Any:
    ramp = sessions / opts.arrivals
    return argparse.Namespace(
        sessions=sessions, seconds=max(opts.seconds, ramp + opts.streaming), rate=opts.rate,
        ramp=ramp, profile="smooth", quick=False, set=list(opts.set), cprofile=None,
        slow=None, keep=False, workers=workers, store=store,
        url=opts.url if store == "postgresql" else None,
    )


def one_run(opts: argparse.Namespace, name: str, sessions: int) -> dict[str, Any]:
    """Run load.py once; its report goes to a file. The figures, and whether it held."""
    store, workers = SETUPS[name]
    args = load_args(opts, store, workers, sessions)
    report = opts.out / f"{name}-{sessions}.txt"
    with open(report, "w") as out, contextlib.redirect_stdout(out):
        status = load.run(args)
    result: dict[str, Any] = dict(args.result)
    result.update(status=status, setup=name, report=report, seconds=args.seconds,
                  ramp=args.ramp)
    result["held"] = (status == 0 and result.get("errors", 1) == 0
                      and result.get("whole", 0) == sessions
                      and result.get("lag_p99_worst", math.inf) < LAG_P99_MS
                      and result.get("answer_wait_max", math.inf) < ANSWER_WAIT_S)
    return result


def describe(r: dict[str, Any]) -> str:
    run_s = r.get("run_s", math.nan)
    workers = r.get("workers", [])
    lags = "; ".join(f"{w['p50']:.1f}/{w['p99']:.1f}/{w['max']:.0f}" for w in workers)
    spread = "+".join(str(w["sessions_seen"]) for w in workers)
    return (f"{r['setup']:8} {r['sessions']:4d} sessions: {'held' if r['held'] else 'FAILED'}; "
            f"lag p50/p99/max per worker {lags} ms; errors {r.get('errors', '?')}, "
            f"whole {r.get('whole', '?')}, answer waited {r.get('answer_wait_max', math.nan):.1f}"
            f" s at most; CPU share of a core: server "
            f"{r.get('cpu_server', math.nan) / run_s * 100:.0f}%, driver "
            f"{r.get('cpu_driver', math.nan) / run_s * 100:.0f}%, PostgreSQL "
            f"{r.get('cpu_postgres', math.nan) / run_s * 100:.0f}%, interrupts "
            f"{r.get('cpu_irq', math.nan) / run_s * 100:.0f}%, other programs "
            f"{other(r) / run_s * 100:.0f}%, machine busy "
            f"{r.get('cpu_busy', math.nan) / run_s / (os.cpu_count() or 1) * 100:.0f}%; "
            f"longest pause between packets p50/p99 {r.get('pause_p50', math.nan):.1f}/"
            f"{r.get('pause_p99', math.nan):.1f} s; sessions per worker {spread}; "
            f"{run_s:.0f} s (answers {r['seconds']:.0f} s, "
            f"ramp {r['ramp']:.0f} s, all streaming {r.get('streaming_window_s', math.nan):.0f}"
            f" s); {r['report'].name}")


def capacity(opts: argparse.Namespace, name: str) -> tuple[int, list[dict[str, Any]]]:
    """Up by --step from --start until a count fails (down, if --start fails); the
    largest count that held, and every run."""
    runs: list[dict[str, Any]] = []
    step = opts.step
    n = opts.start
    while 0 < n <= opts.max:
        print(f"  {time.strftime('%H:%M:%S')} load average {os.getloadavg()[0]:.2f}; "
              f"{name} with {n} sessions ...", flush=True)
        r = one_run(opts, name, n)
        runs.append(r)
        print("  " + describe(r), flush=True)
        if r["held"]:
            if step < 0:  # stepping down: the first count that holds is the capacity
                break
        elif len(runs) == 1:  # --start failed: step down instead
            step = -step
        elif step > 0:  # stepping up: the first failure ends it
            break
        n += step
    return max((r["sessions"] for r in runs if r["held"]), default=0), runs


def other(r: dict[str, Any]) -> float:
    """CPU seconds the machine was busy in the run with anything but the server, this
    driver, PostgreSQL, interrupts and the hypervisor: other programs."""
    return float(r.get("cpu_busy", math.nan) - r.get("cpu_server", math.nan)
                 - r.get("cpu_driver", math.nan) - r.get("cpu_postgres", math.nan)
                 - r.get("cpu_irq", math.nan) - r.get("cpu_steal", math.nan))


def table(runs: list[dict[str, Any]]) -> str:
    rows = ["| setup | sessions | lag p50 / p99 / max per worker (ms) | server CPU | "
            "driver CPU | PostgreSQL CPU | interrupts | other CPU | RSS peak per worker "
            "(MiB) | sessions per worker | errors | whole | longest pause p50 / p99 (s) | "
            "packets p50 | held |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        run_s = r.get("run_s", math.nan)
        workers = r.get("workers", [])
        rows.append(
            f"| {r['setup']} | {r['sessions']} | "
            + "; ".join(f"{w['p50']:.1f} / {w['p99']:.1f} / {w['max']:.0f}" for w in workers)
            + f" | {r.get('cpu_server', math.nan) / run_s * 100:.0f}% | "
            f"{r.get('cpu_driver', math.nan) / run_s * 100:.0f}% | "
            f"{r.get('cpu_postgres', math.nan) / run_s * 100:.0f}% | "
            f"{r.get('cpu_irq', math.nan) / run_s * 100:.0f}% | "
            f"{other(r) / run_s * 100:.0f}% | "
            + " + ".join(f"{w['peak_kib'] / 1024:.0f}" for w in workers)
            + " | " + " + ".join(str(w["sessions_seen"]) for w in workers)
            + f" | {r.get('errors', '?')} | {r.get('whole', '?')}/{r['sessions']} | "
            f"{r.get('pause_p50', math.nan):.1f} / {r.get('pause_p99', math.nan):.1f} | "
            f"{r.get('packets_p50', 0):.0f} | {'yes' if r['held'] else 'no'} |"
        )
    return "\n".join(rows)


def settle(below: float, longest: float = 180.0) -> None:
    """Wait (at most ``longest`` seconds) for the 1-minute load average to fall below
    ``below``, so that a setup starts on a quiet machine; say what it was."""
    if below <= 0:
        return
    start = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - start < longest:
        time.sleep(5)
    print(f"  load average {os.getloadavg()[0]:.2f} after waiting "
          f"{time.monotonic() - start:.0f} s (for under {below:g}, {longest:.0f} s at most)",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="sqlite1,pg1,pg2",
                        help="comma-separated, of: " + ", ".join(SETUPS))
    parser.add_argument("--start", type=int, default=100, help="first session count (100)")
    parser.add_argument("--step", type=int, default=50, help="step between counts (50)")
    parser.add_argument("--max", type=int, default=1000, help="highest count tried (1000)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="shortest answer, in seconds (30)")
    parser.add_argument("--streaming", type=float, default=20.0,
                        help="seconds every session streams at once, at least (20)")
    parser.add_argument("--rate", type=float, default=4.0, help="text events per second (4)")
    parser.add_argument("--arrivals", type=float, default=20.0,
                        help="session starts per second (20)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="passed to load.py")
    parser.add_argument("--url", default=os.environ.get("KINDLESSH_BENCH_PG", load.PG_SERVER),
                        help="the PostgreSQL server to make each run's database on")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="before each setup, wait up to 3 minutes for the 1-minute load "
                             "average to fall below this (0.5; 0: do not wait)")
    parser.add_argument("--out", type=Path, help="directory for each run's report "
                        "(default: a new temporary directory)")
    opts = parser.parse_args()
    names = [s.strip() for s in opts.setups.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETUPS]
    if unknown:
        parser.error(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")
    opts.out = opts.out or Path(tempfile.mkdtemp(prefix="kindlessh-capacity-"))
    opts.out.mkdir(parents=True, exist_ok=True)
    print(f"capacity: smooth laptops held at every worker's loop lag p99 < {LAG_P99_MS:.0f} ms,"
          f" zero errors, every transcript whole; {opts.arrivals:g} arrivals/s, answers at "
          f"{opts.rate:g} events/s of at least {opts.seconds:g} s with {opts.streaming:g} s "
          f"all streaming; counts from {opts.start} by {opts.step}; reports in {opts.out}")
    print(f"kindlessh at commit {load.git('rev-parse', '--short', 'HEAD')}; "
          f"{load.cpu_model()}, {os.cpu_count()} cores")
    found: dict[str, int] = {}
    every: list[dict[str, Any]] = []
    for name in names:
        settle(opts.settle)
        found[name], runs = capacity(opts, name)
        every.extend(runs)
        print(f"{name}: holds {found[name]} sessions", flush=True)
    print()
    print(table(every))
    print()
    for name in names:
        print(f"capacity {name}: {found[name]} sessions")
    if found.get("pg1") and "pg2" in found:
        print(f"2 workers / 1 worker (PostgreSQL): {found['pg2'] / found['pg1']:.2f}x")
    if found.get("sqlite1") and "pg1" in found:
        print(f"1 worker, PostgreSQL / SQLite: {found['pg1'] / found['sqlite1']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
