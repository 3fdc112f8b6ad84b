"""The per-holder limits every worker shares, kept in PostgreSQL (issue 17).

With several worker processes (or machines) on one PostgreSQL store, a limit counted in
one process's memory would multiply by the number of workers. Those limits live here,
as rows, each decided by one SQL statement or one short transaction, so two workers can
never both get what only one may have. Strategy: the in-process checks stay the first,
cheap gate (:mod:`._quota`, :mod:`._guard`); these claims come second, on the way to
the upstream or the chat.

Contract:
- Every row names its *owner*: the store's id of the process that wrote it
  (``store.owner``), live as ``live_owners`` says (the store's one definition: its
  session advisory lock held, or lost for less than ``[storage] owner_grace_ms``, so a
  worker reconnecting keeps its rows). A row whose owner is not live counts for
  nothing and is taken over or deleted by the next claim: a worker killed with SIGKILL
  blocks nobody once its grace is over.
- :meth:`SharedLimits.claim_answer` takes the holder's one answer in flight (D1): a
  claim, or None when another live owner holds it. :meth:`release_answer` gives it back.
- :meth:`SharedLimits.take_prompt` takes one prompt of the holder's bucket (D2),
  refilled continuously (``refill`` seconds a prompt, at most ``capacity``), the refill
  computed in SQL on the database's clock. It returns ``(0.0, prompts left)`` when
  taken, else ``(seconds to wait, prompts now)``.
- :meth:`SharedLimits.hold` holds one of ``size`` upstream slots shared by every
  worker, for an ``async with`` block. Waiters queue first come, first served across all
  workers (in the order their rows were written); ``on_wait(ahead)`` says how many are
  ahead whenever that changes. They are woken by a NOTIFY when a slot is given back and
  look again every ``poll`` seconds regardless (a dead owner's slot frees no other way).
  A waiter gives up after ``timeout`` seconds (0: never) with :class:`ServerBusy`; a
  cancelled waiter leaves the queue.
- :meth:`SharedLimits.claim_seat` counts one session (``kind="session"``) or connection
  of a holder against ``most`` over every live worker: a :class:`Seat` to give back with
  :meth:`Seat.release`, or None over the cap.
- Releases run on every path, even a cancelled one: each is a task of its own that
  :meth:`close` waits for; :meth:`close` then deletes every row this owner still has.
  The end of a :meth:`hold` block, and a caller that awaits :meth:`settled`, wait for
  the release's first try, so whoever sees an answer end may claim again at once.
- A release that fails (the database briefly away, no pooled connection in time) is
  tried again, backing off from :data:`RETRY_FIRST` to :data:`RETRY_MOST` seconds, until
  it lands or :meth:`close` (which deletes the rows anyway) begins: a live owner never
  keeps a row it gave back. Every release is idempotent (a DELETE by id or claim).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from ._errors import ServerBusy

log = logging.getLogger("kindlessh.shared_limits")

# Seconds a reading of the live owners (and its stamp) serves the claims that follow.
LIVE_FOR = 0.5

# Seconds between tries of a release that failed, first and at most.
RETRY_FIRST, RETRY_MOST = 0.1, 5.0
CHANNEL = "kindlessh_limits"  # NOTIFY channel: an upstream slot was given back
_SLOT_LOCK = 0x6B6C5331  # pg_advisory_xact_lock key serialising the slot queue ("klS1")
_SEAT_LOCK = 0x6B6C5331 + 1  # first half of the per-holder seat lock key

# The tables are made by the migration m008_shared_limits (:mod:`._migrations`).


def busy_message(upstream: str, size: int, timeout: float) -> str:
    """The refusal when no upstream slot came free in time (one wording for both kinds)."""
    questions = "question" if size == 1 else "questions"
    return (
        f"The server is busy: {upstream} is already answering {size} "
        f"{questions} (the most it asks at once) and none ended within {timeout:g} s. "
        "Nothing was sent; /retry asks again."
    )


def _dead(table: str) -> str:
    """SQL true for a row of ``table`` whose owner was not live (see :meth:`_live`)."""
    return f"NOT ({table}.owner = ANY(%(live)s)) AND {table}.since < %(stamp)s"


class Seat:
    """One session or connection counted by :meth:`SharedLimits.claim_seat`."""

    def __init__(self, limits: SharedLimits, row: int) -> None:
        self._limits = limits
        self._row: int | None = row

    def release(self) -> None:
        """Give the seat back (idempotent; runs in the background, :meth:`close` waits)."""
        row, self._row = self._row, None
        if row is not None:
            self._limits.later(
                lambda: self._limits._execute("DELETE FROM limit_seats WHERE id = %s", (row,))
            )


T = TypeVar("T")


async def _kept(job: Coroutine[Any, Any, T], undo: Callable[[T], None]) -> T:
    """Run ``job`` to its end even if the caller is cancelled meanwhile; then what it
    claimed is given back by ``undo`` (a row must never outlive its claimer's interest)."""
    task = asyncio.ensure_future(job)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def done(finished: asyncio.Task[T]) -> None:
            if not finished.cancelled() and finished.exception() is None:
                undo(finished.result())

        task.add_done_callback(done)
        raise


class SharedLimits:
    """The shared limits of one worker process over one PostgreSQL pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        owner: str,
        live_owners: Callable[[], Awaitable[set[str]]],
        *,
        poll: float = 0.5,
        live_for: float = LIVE_FOR,
    ) -> None:
        self.pool = pool
        self.live_for = live_for
        self.owner = owner
        self.live_owners = live_owners
        self.poll = poll
        self._pending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._live_read: tuple[float, dict[str, Any]] | None = None  # (when, what)
        self._live_reading: asyncio.Future[dict[str, Any]] | None = None

    # ----- plumbing -------------------------------------------------------------------

    async def _live(self) -> dict[str, Any]:
        """The owners live now, and the time just before they were read: a row written
        after that time may be of an owner that started since, so only older rows of an
        owner not in the set are dead (an owner takes its lock before writing rows).

        Strategy: read at most once per ``live_for`` seconds (:data:`LIVE_FOR`), by one
        caller at a time (the others share its answer). Owners come and go rarely, and a
        stale answer errs
        safe: an owner dead since still counts for a moment (its grace is longer), and
        one started since writes its rows after the stamp, so they count. Read for every
        claim, it cost several pooled round trips a question, and under load those wait
        behind the answers' saves for a connection."""
        now = time.monotonic()
        if self._live_read is not None and now - self._live_read[0] < self.live_for:
            return dict(self._live_read[1])
        if self._live_reading is None:
            self._live_reading = asyncio.ensure_future(self._read_live())
        reading = self._live_reading
        try:
            params = await asyncio.shield(reading)
        finally:
            if reading.done() and self._live_reading is reading:
                self._live_reading = None
        return dict(params)

    async def _read_live(self) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT clock_timestamp()")
            (stamp,) = await cur.fetchone()
        live = await self.live_owners()
        live.add(self.owner)
        params = {"live": sorted(live), "stamp": stamp}
        self._live_read = (time.monotonic(), params)
        return params

    async def _execute(self, query: str, params: Any = None) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(query, params)

    def later(self, job: Callable[[], Awaitable[None]]) -> asyncio.Task[None] | None:
        """Run the release ``job()`` as a task of its own: a cancelled caller cannot stop
        it half done, and :meth:`close` waits for it. Returns the task of its first try;
        should that fail, it is tried again in the background (see the contract). None
        once closed (:meth:`close` deleted every row of this owner already)."""
        if self._closed:
            return None
        return self._try_release(job, 0.0)

    def _try_release(
        self, job: Callable[[], Awaitable[None]], delay: float
    ) -> asyncio.Task[None]:
        async def run() -> None:
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
                if self._closed:
                    return  # close() deletes this owner's rows itself
            try:
                await job()
            except Exception as exc:
                if self._closed:
                    log.warning("a shared limit could not be given back: %s", exc)
                    return
                wait = min(max(delay * 2, RETRY_FIRST), RETRY_MOST)
                log.warning("a shared limit could not be given back (%s); trying again "
                            "in %g s", " ".join(str(exc).split())[:200], wait)  # fmt: skip
                self._try_release(job, wait)

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    @staticmethod
    async def settled(task: asyncio.Task[None] | None) -> None:
        """Wait for a release begun by :meth:`later`; cancelling the wait leaves the
        release running."""
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        """Wait for every release, stop listening, and delete this owner's rows."""
        self._closed = True
        self._closing.set()  # releases still failing stop trying: the rows go below
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None
        while self._pending:  # a try failing meanwhile adds no other
            await asyncio.wait(set(self._pending))
        try:
            async with self.pool.connection() as conn:
                for table in ("limit_answers", "limit_slots", "limit_seats"):
                    await conn.execute(f"DELETE FROM {table} WHERE owner = %s", (self.owner,))
                await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        except Exception:
            # The store is closing too: its lock goes with it, and so do these rows' worth.
            log.warning("could not clear this worker's shared limits; they lapse with it")

    # ----- one answer at a time per holder (D1) ---------------------------------------

    async def claim_answer(self, holder: str) -> str | None:
        def undo(claim: str | None) -> None:
            if claim is not None:
                self.release_answer(holder, claim)

        return await _kept(self._claim_answer(holder), undo)

    async def _claim_answer(self, holder: str) -> str | None:
        """Take ``holder``'s one answer in flight: the claim to give back, or None when
        another live owner has it.

        The caller's in-process gate lets one answer per holder through at a time, so a
        row this owner still has is one whose release has not landed yet: it is taken
        over (and that release, naming its own claim, leaves the new one alone)."""
        params = await self._live()
        claim = uuid.uuid4().hex
        params.update(holder=holder, owner=self.owner, claim=claim)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""
                INSERT INTO limit_answers AS a (holder, owner, claim, since)
                VALUES (%(holder)s, %(owner)s, %(claim)s, clock_timestamp())
                ON CONFLICT (holder) DO UPDATE
                    SET owner = excluded.owner, claim = excluded.claim,
                        since = excluded.since
                    WHERE a.owner = %(owner)s OR ({_dead("a")})
                RETURNING 1
                """,
                params,
            )
            return claim if await cur.fetchone() is not None else None

    def release_answer(self, holder: str, claim: str) -> asyncio.Task[None] | None:
        """Give back ``holder``'s answer ``claim`` (in the background; see :meth:`later`)."""
        return self.later(
            lambda: self._execute(
                "DELETE FROM limit_answers WHERE holder = %s AND claim = %s", (holder, claim)
            )
        )

    # ----- the prompt bucket (D2) -----------------------------------------------------

    async def take_prompt(
        self, holder: str, capacity: int, refill: float
    ) -> tuple[float, float]:
        """Take one prompt: ``(0.0, prompts left)``, or ``(seconds to wait, prompts)``."""
        params = {"holder": holder, "cap": float(capacity), "refill": refill}
        # The refill as of now: never negative (another worker's clock_timestamp may
        # have written a later ``at`` than this statement's), never past the capacity.
        filled = (
            "LEAST(%(cap)s, b.tokens + GREATEST(0, "
            "EXTRACT(EPOCH FROM clock_timestamp() - b.at)) / %(refill)s)"
        )
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""
                INSERT INTO limit_buckets AS b (holder, tokens, at)
                VALUES (%(holder)s, %(cap)s - 1, clock_timestamp())
                ON CONFLICT (holder) DO UPDATE
                    SET tokens = {filled} - 1, at = clock_timestamp()
                    WHERE {filled} >= 1 - 1e-9
                RETURNING tokens
                """,
                params,
            )
            row = await cur.fetchone()
            if row is not None:
                return 0.0, float(row[0])
            cur = await conn.execute(
                f"SELECT {filled} FROM limit_buckets AS b WHERE holder = %(holder)s", params
            )
            row = await cur.fetchone()
        tokens = float(row[0]) if row is not None else float(capacity)
        return max(0.0, (1 - tokens) * refill), tokens

    # ----- the upstream slots shared by every worker ---------------------------------

    @contextlib.asynccontextmanager
    async def hold(
        self,
        size: int,
        timeout: float,
        on_wait: Callable[[int], None],
        upstream: str = "the model",
    ) -> AsyncIterator[None]:
        """Hold one of ``size`` upstream slots for the block (see the contract).

        Raises:
            ServerBusy: no slot came free within ``timeout`` seconds.
        """
        def undo(row: int) -> None:
            self.later(lambda: self._give_back(row))

        slot = await _kept(self._enqueue(), undo)
        try:
            await self._queue(slot, size, timeout, on_wait, upstream)
            yield
        finally:
            # Given back before the block's end is seen: the next waiter may go at once.
            await self.settled(self.later(lambda: self._give_back(slot)))

    async def _enqueue(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO limit_slots (owner) VALUES (%s) RETURNING id", (self.owner,)
            )
            (row,) = await cur.fetchone()
        return int(row)

    async def _give_back(self, slot: int) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM limit_slots WHERE id = %s", (slot,))
            await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    async def _queue(
        self, slot: int, size: int, timeout: float,
        on_wait: Callable[[int], None], upstream: str,
    ) -> None:
        deadline = time.monotonic() + timeout if timeout else None
        told = -1
        while True:
            self._wake.clear()
            ahead = await self._try(slot, size)
            if ahead is None:
                return
            if ahead != told:
                told = ahead
                on_wait(ahead)
            self._listen()
            wait = self.poll
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerBusy(busy_message(upstream, size, timeout))
                wait = min(wait, left)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _try(self, slot: int, size: int) -> int | None:
        """Take the slot if its turn has come (None), else how many are ahead of it."""
        params = await self._live()
        # Strategy: one statement (m011's function), so the lock ordering the queue is
        # held for that statement alone: held across round trips, a busy worker's slow
        # event loop would keep every other worker's questions (and its pool) waiting.
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT kindlessh_take_slot(%s, %s, %s, %s, %s)",
                (slot, size, params["live"], params["stamp"], _SLOT_LOCK),
            )
            (ahead,) = await cur.fetchone()
        return None if ahead is None else int(ahead)

    def _listen(self) -> None:
        if self._listener is None and not self._closed:
            self._listener = asyncio.get_running_loop().create_task(self._listening())

    async def _listening(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    str(self.pool.conninfo), autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Polling still runs; try listening again a little later.
                log.warning("lost the shared limits' NOTIFY connection; retrying")
                await asyncio.sleep(1.0)

    # ----- sessions and connections per holder ----------------------------------------

    async def claim_seat(self, holder: str, kind: str, most: int) -> Seat | None:
        """Count one more ``kind`` for ``holder`` over every live worker: a seat, or
        None when ``most`` are open already."""

        def undo(seat: Seat | None) -> None:
            if seat is not None:
                seat.release()

        return await _kept(self._claim_seat(holder, kind, most), undo)

    async def _claim_seat(self, holder: str, kind: str, most: int) -> Seat | None:
        params = await self._live()
        # One statement (m011's function): the holder's lock is held for it alone.
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT kindlessh_take_seat(%s, %s, %s, %s, %s, %s, %s)",
                (holder, kind, self.owner, most, params["live"], params["stamp"], _SEAT_LOCK),
            )
            (row,) = await cur.fetchone()
        return None if row is None else Seat(self, int(row))
