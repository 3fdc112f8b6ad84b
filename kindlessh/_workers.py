"""Several worker processes on one port: a pre-fork parent that binds and watches.

Contract:
- :func:`listening_sockets` binds ``count`` TCP sockets to one address and port with
  ``SO_REUSEPORT`` (port 0: the first picks one, the others take the same), each
  listening, so the kernel spreads new connections over them; the port is known before
  any worker starts, and a worker's socket stays open in the parent while that worker
  is restarted (connections meanwhile wait in its backlog).
- :func:`run_workers` forks one worker per socket; ``child(slot, sock, first)`` runs in
  the worker (its own event loop; the other sockets closed) and returns its exit
  status; ``first`` is True only for slot 0's first start (the one that prints the
  start-up lines). The parent forwards SIGTERM and SIGINT to every worker and waits
  for them (SIGKILL after :data:`STOP_GRACE` seconds), then returns 0. A worker that
  exits while the parent is not stopping is logged and restarted after a back-off:
  :data:`FIRST_DELAY` seconds, doubled for each further exit within
  :data:`STEADY_SECONDS` of its start, at most :data:`MAX_DELAY`.
- ``on_started(pids)`` is called once, with every first worker's pid, slot order.

Strategy: fork, not spawn: the parent loads the configuration and host keys and runs
the store's migrations once, and every worker inherits them as they are, so no two
workers race to create a key or migrate a schema. The parent starts no event loop and
no thread before forking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("kindlessh.workers")

FIRST_DELAY = 0.5  # seconds before a worker that exited is started again
MAX_DELAY = 30.0
STEADY_SECONDS = 60.0  # a worker that ran this long starts again after FIRST_DELAY
STOP_GRACE = 20.0  # seconds workers have to stop before SIGKILL
_POLL = 0.05  # seconds between two looks at the workers
BACKLOG = 100  # asyncio's default

Child = Callable[[int, socket.socket, bool], int]


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` (the first address it resolves to).

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
            # Port 0: the others take the port the first one was given.
            address = (address[0], sock.getsockname()[1], *address[2:])
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def run_workers(
    socks: list[socket.socket],
    child: Child,
    on_started: Callable[[list[int]], None] = lambda pids: None,
) -> int:
    """Run one worker per socket until SIGTERM or SIGINT; see the module contract."""
    pids: dict[int, int] = {}  # pid -> slot
    started: dict[int, float] = {}  # slot -> when its worker started
    quick_exits = [0] * len(socks)
    due: dict[int, float] = {}  # slot -> when to start it again
    stopping: list[int] = []  # the signals received

    def spawn(slot: int, first: bool) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                for other, sock in enumerate(socks):
                    if other != slot:
                        sock.close()
                status = child(slot, socks[slot], first)
            except KeyboardInterrupt:
                status = 130
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        pids[pid] = slot
        started[slot] = time.monotonic()
        return pid

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for pid in list(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # An ignored SIGCHLD (inherited across exec) would have the kernel reap the workers
    # unseen, and a dead one would never be started again.
    previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        first_pids = [spawn(slot, slot == 0) for slot in range(len(socks))]
        log.info("%d workers started: pids %s", len(socks), ", ".join(map(str, first_pids)))
        on_started(first_pids)
        stop_deadline: float | None = None
        while pids or (due and not stopping):
            if stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + STOP_GRACE
                due.clear()
            _reap(pids, started, quick_exits, due, stopping)
            now = time.monotonic()
            for slot, when in sorted(due.items()):
                if when <= now:
                    del due[slot]
                    pid = spawn(slot, False)
                    log.info("worker %d started again: pid %d", slot, pid)
            if stop_deadline is not None and now > stop_deadline:
                for pid in list(pids):
                    log.warning("worker pid %d did not stop in %g s; killing it", pid, STOP_GRACE)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                stop_deadline = now + STOP_GRACE
            time.sleep(_POLL)
        log.info("every worker has stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in socks:
            sock.close()


def _reap(
    pids: dict[int, int],
    started: dict[int, float],
    quick_exits: list[int],
    due: dict[int, float],
    stopping: list[int],
) -> None:
    """Collect every worker that has exited; schedule its restart unless stopping."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        slot = pids.pop(pid, None)
        if slot is None:
            continue
        if stopping:
            continue
        lived = time.monotonic() - started[slot]
        quick_exits[slot] = quick_exits[slot] + 1 if lived < STEADY_SECONDS else 1
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (quick_exits[slot] - 1))
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        log.warning(
            "worker %d (pid %d) %s after %.1f s; starting it again in %.1f s",
            slot, pid, how, lived, delay,
        )
        due[slot] = time.monotonic() + delay

