"""Several worker processes on one port: a pre-fork parent that binds and watches.

Contract:
- :func:`listening_sockets` binds ``count`` TCP sockets to one address and port with
  ``SO_REUSEPORT`` (port 0: the first picks one, the others take the same), each
  listening, so the kernel spreads new connections over them; the port is known before
  any worker starts. A port other than 0 is first bound once without ``SO_REUSEPORT``
  and let go: if anything listens on it (a single ``serve``, another ``--workers``
  parent, workers left from one) that fails with ``EADDRINUSE`` and nothing is bound,
  so two generations of the server never split the clients between them.
- :func:`run_workers` forks one worker per socket; ``child(slot, sock, first)`` runs in
  the worker (its own event loop; the other sockets closed) and returns its exit
  status; ``first`` is True only for slot 0's first start (the one that prints the
  start-up lines). The parent forwards SIGTERM and SIGINT to every worker and waits
  for them (SIGKILL after :data:`STOP_GRACE` seconds), then returns 0. A worker that
  exits while the parent is not stopping is logged and restarted after a back-off:
  :data:`FIRST_DELAY` seconds, doubled for each further exit within
  :data:`STEADY_SECONDS` of its start, at most :data:`MAX_DELAY`. Its socket is closed
  as soon as the parent sees it dead, so the kernel hashes new connections over the
  live workers only (those already queued on it are lost), and a fresh one is bound
  on the same port just before the restart; a restart that cannot bind or fork is
  tried again after the next back-off.
- A worker receives SIGTERM when the parent dies, even by SIGKILL (Linux
  ``PR_SET_PDEATHSIG``; elsewhere it runs on), and exits at once if the parent died
  before it could ask for that.
- ``on_started(pids)`` is called once, with every first worker's pid, slot order.

Strategy: fork, not spawn: the parent loads the configuration and host keys and runs
the store's migrations once, and every worker inherits them as they are, so no two
workers race to create a key or migrate a schema. The parent starts no event loop and
no thread before forking (and forks only from its main thread, the one whose death
``PR_SET_PDEATHSIG`` watches). SIGTERM, SIGINT and SIGCHLD are blocked across each
fork: the parent lets them in once the new pid is recorded (so a SIGTERM arriving just
then is forwarded to the new worker too), the worker once it has put back the default
handlers (so the parent's handler never runs in a worker).
"""

from __future__ import annotations

import contextlib
import ctypes
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
Address = tuple[int, int, int, tuple[object, ...]]  # family, type, proto, bound address

_HELD = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}  # blocked across a fork
_PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
# Loaded here, not in a worker just forked: nothing to look up or fail between fork and prctl.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` (the first address it resolves to).

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    if address[1] != 0:
        _check_free((family, kind, proto, address))
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _listen((family, kind, proto, address))
            socks.append(sock)
            # Port 0: the others take the port the first one was given.
            address = (address[0], sock.getsockname()[1], *address[2:])
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _check_free(where: Address) -> None:
    """Raise ``EADDRINUSE`` if anything listens on the address (see the contract)."""
    family, kind, proto, address = where
    probe = socket.socket(family, kind, proto)
    try:
        # Connections of a previous run in TIME_WAIT are nobody listening.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(address)
    finally:
        probe.close()


def _listen(where: Address) -> socket.socket:
    """One non-blocking ``SO_REUSEPORT`` socket listening on the address."""
    family, kind, proto, address = where
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _orphaned(parent: int) -> bool:
    """In a new worker: ask for SIGTERM when the parent dies; True if it already has."""
    if _LIBC is not None:
        # prctl is variadic and reads unsigned longs: pass them as such.
        args = (_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        _LIBC.prctl(*(ctypes.c_ulong(arg) for arg in args))
    # Dead before prctl: no signal will come, and the worker is someone else's child.
    return os.getppid() != parent


def _delay(quick_exits: int) -> float:
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (quick_exits - 1))


def run_workers(
    socks: list[socket.socket],
    child: Child,
    on_started: Callable[[list[int]], None] = lambda pids: None,
) -> int:
    """Run one worker per socket until SIGTERM or SIGINT; see the module contract."""
    # A slot's socket is closed when its worker dies and replaced when it starts again.
    socks = list(socks)
    where: list[Address] = [(s.family, s.type, s.proto, s.getsockname()) for s in socks]
    parent = os.getpid()
    pids: dict[int, int] = {}  # pid -> slot
    started: dict[int, float] = {}  # slot -> when its worker started
    quick_exits = [0] * len(socks)
    due: dict[int, float] = {}  # slot -> when to start it again
    stopping: list[int] = []  # the signals received

    def spawn(slot: int, first: bool) -> int:
        if socks[slot].fileno() == -1:
            socks[slot] = _listen(where[slot])
        sys.stdout.flush()
        sys.stderr.flush()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            socks[slot].close()  # nobody will accept on it
            raise
        if pid == 0:  # the worker
            status = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                orphaned = _orphaned(parent)
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                for other, sock in enumerate(socks):
                    if other != slot:
                        sock.close()
                status = 0 if orphaned else child(slot, socks[slot], first)
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
        if stopping:
            # The stop came before the fork (handled before the signals were held): the
            # new worker was not among those it reached.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stopping[-1])
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
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
            _reap(socks, pids, started, quick_exits, due, stopping)
            now = time.monotonic()
            for slot, when in sorted(due.items()):
                if stopping:
                    break  # no new worker once a stop has come
                if when <= now:
                    del due[slot]
                    try:
                        pid = spawn(slot, False)
                    except OSError as exc:  # the port taken meanwhile, or no fork
                        quick_exits[slot] += 1
                        delay = _delay(quick_exits[slot])
                        log.warning("worker %d cannot start again: %s; trying again in %.1f s",
                                    slot, exc, delay)
                        due[slot] = now + delay
                        continue
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
    socks: list[socket.socket],
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
        # Nobody accepts on it now: out of the kernel's choice for new connections.
        socks[slot].close()
        if stopping:
            continue
        lived = time.monotonic() - started[slot]
        quick_exits[slot] = quick_exits[slot] + 1 if lived < STEADY_SECONDS else 1
        delay = _delay(quick_exits[slot])
        code = os.waitstatus_to_exitcode(status)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        log.warning(
            "worker %d (pid %d) %s after %.1f s; starting it again in %.1f s",
            slot, pid, how, lived, delay,
        )
        due[slot] = time.monotonic() + delay

