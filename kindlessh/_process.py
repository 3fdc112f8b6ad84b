"""Process-wide tuning for a process that serves: the garbage collector and painting.

Contract: :func:`tune_process` is called once a server has started, by ``kindlessh
serve`` (and by the tests and benchmarks, whose figures assume it); calling it again
changes nothing. It is never a side effect of :func:`~kindlessh.start_server`, so a
program that embeds the server keeps its own collector settings.
"""

from __future__ import annotations

import gc

from ._paint import skip_unchanged_rows

GC_THRESHOLD = (10_000, 10, 10)


def tune_process() -> None:
    """Tune this process for serving many sessions (idempotent).

    - Freeze what imports and start-up made (rich, pygments, asyncssh and prompt-toolkit
      tables), which lives as long as the process: a full collection under load then
      scans only the sessions' objects. Without this, each one took 40-60 ms here, long
      enough to delay a keystroke's echo visibly. Once per process: the first
      server's start-up is what matters.
    - Collect the youngest objects every 10,000 allocations instead of 700: a hundred
      streaming sessions allocate fast, and every tenth of every tenth of those
      collections was a full one taking up to 230 ms (bench/load.py).
    - Make prompt-toolkit's screen diff skip unchanged rows (:mod:`._paint`).
    """
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)
    skip_unchanged_rows()
