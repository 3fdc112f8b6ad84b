"""Protecting the upstream quota: how often, how much, and how many at once (DESIGN §4 D1-D5).

Contract:
- :meth:`UserQuota.admit` is asked, synchronously, before a question goes anywhere. It
  refuses, with a message for the reader and nothing spent, when
  - one of the user's answers is already coming, on any connection or conversation (D1,
    :class:`InputRejected`);
  - the user's daily token budget is spent (D3, :class:`BudgetExceeded`, saying when it
    resets);
  - the user's prompt bucket is empty (D2, :class:`BudgetExceeded`, saying how long to
    wait).
  Otherwise it takes one prompt from the bucket and returns a :class:`Ticket`: the user's
  one answer in flight, until :meth:`Ticket.finish` (idempotent) gives back its usage.
- Buckets hold ``prompts`` and regain one every ``refill_seconds``, continuously.
- Every limit here belongs to a *holder* (:mod:`._holders`), not to the name typed: a
  user with their own keys file, or one key of the shared ``authorized_keys`` whatever
  names it logs in as. "User" below means holder.
- Daily tokens are input + output + thinking (:attr:`Usage.counted`), per UTC day. The
  store's ledger is the record, summed by holder, and survives restarts:
  :meth:`Quota.load` reads a holder's total for today once (every connection calls it);
  from then on each finished answer adds its usage in memory, as the recorder adds it to
  the ledger. A user never loaded is refused. The answer that crosses the budget is
  finished; with one answer per user the overshoot is at most that answer.
- :meth:`Ticket.slot` holds one of ``max_upstream`` slots shared by every user around the
  upstream request. Waiters queue first come, first served; ``on_wait(ahead)`` tells each
  how many are ahead whenever that changes. A waiter gives up after ``queue_timeout``
  seconds (0: never) with :class:`ServerBusy`; a cancelled waiter (Ctrl-C) leaves the
  queue and never holds a slot.
- ``clock`` (monotonic seconds) and ``now`` (aware UTC time) are plain attributes so tests
  can replace them.
- With a :class:`~kindlessh._shared_limits.SharedLimits` (``shared``: the store is
  PostgreSQL, and several workers may serve one holder), :meth:`admit` stays the first,
  in-process gate (one answer per holder in this process, the day's budget as this
  process counted it) and takes no prompt; the limits every worker shares are claimed in
  the database by :meth:`Ticket.slot`, on the answer's path before anything goes
  upstream, in this order: the holder's one answer in flight (D1, refused with the same
  :class:`InputRejected`), the day's tokens as the ledger sums them over every worker,
  one prompt of the shared bucket (D2), then one of the ``max_upstream`` slots shared
  by every worker. A refusal raises out of the ``async with`` with nothing sent; the
  answer's claim is given back however the block ends. The bucket ``status`` shows is
  this process's copy of the shared one, as of its last prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ._config import QuotaConfig
from ._durations import span
from ._errors import BudgetExceeded, InputRejected, ServerBusy
from ._provider import Usage
from ._shared_limits import SharedLimits, busy_message
from ._sqlite import utcnow
from ._store import Store

ONE_AT_A_TIME = (
    "An answer to another of your questions is still coming (one at a time per "
    "person); wait for it, or stop it there with Ctrl-C."
)
MAX_IDLE_BUCKETS = 1000  # full buckets kept before they are forgotten (a full one is new)


def day_start(when: datetime) -> datetime:
    """The start of ``when``'s day in UTC, when the daily budget resets."""
    return when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class Bucket:
    """A token bucket of ``capacity`` prompts, regaining one every ``refill`` seconds."""

    def __init__(self, capacity: int, refill: float, now: float) -> None:
        self.capacity = capacity
        self.refill = refill
        self.tokens = float(capacity)
        self._at = now

    def _fill(self, now: float) -> None:
        if now > self._at:
            self.tokens = min(self.capacity, self.tokens + (now - self._at) / self.refill)
        self._at = max(self._at, now)

    def wait(self, now: float) -> float:
        """Seconds until a prompt may be taken; 0 when one may be taken now."""
        self._fill(now)
        # A hair of slack: 10 s of refill must count as a whole prompt despite rounding.
        return 0.0 if self.tokens >= 1 - 1e-9 else (1 - self.tokens) * self.refill

    def take(self, now: float) -> None:
        """Spend one prompt (check :meth:`wait` first)."""
        self._fill(now)
        self.tokens = max(0.0, self.tokens - 1)

    def available(self, now: float) -> int:
        """Whole prompts that may be taken now."""
        self._fill(now)
        return int(self.tokens + 1e-9)

    def full(self, now: float) -> bool:
        """True when the bucket is as good as new (and may be forgotten)."""
        self._fill(now)
        return self.tokens >= self.capacity


@dataclass
class _Waiter:
    future: asyncio.Future[None]
    on_wait: Callable[[int], None]
    ahead: int = -1


class Slots:
    """At most ``size`` holders at once; the others queue in order (see the contract)."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self.busy = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """How many are queued."""
        return len(self._queue)

    @contextlib.asynccontextmanager
    async def hold(
        self, on_wait: Callable[[int], None], upstream: str = "the model"
    ) -> AsyncIterator[None]:
        """Hold a slot for the ``async with`` block, queueing for one if none is free.
        ``upstream`` names what the slots are for in the refusal (the provider's name).

        Raises:
            ServerBusy: no slot came free within ``timeout`` seconds.
        """
        await self._acquire(on_wait, upstream)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, on_wait: Callable[[int], None], upstream: str) -> None:
        if self.busy < self.size and not self._queue:
            self.busy += 1
            return
        waiter = _Waiter(asyncio.get_running_loop().create_future(), on_wait)
        self._queue.append(waiter)
        self._announce()
        try:
            async with asyncio.timeout(self.timeout or None):
                await waiter.future
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release()  # handed a slot as it gave up: pass the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
                self._announce()
            if isinstance(exc, TimeoutError):
                raise ServerBusy(busy_message(upstream, self.size, self.timeout)) from None
            raise

    def _release(self) -> None:
        # Strategy: hand the slot straight to the first waiter, never back to the pool,
        # so a newcomer cannot overtake the queue between the release and the wake-up.
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                self._announce()
                return
        self.busy -= 1

    def _announce(self) -> None:
        for ahead, waiter in enumerate(self._queue):
            if waiter.ahead != ahead:
                waiter.ahead = ahead
                waiter.on_wait(ahead)


@dataclass(frozen=True)
class UsageStatus:
    """One user's limits as they stand (for ``/usage``)."""

    prompts_now: int | None  # None: no limit on prompts
    daily_tokens: int  # 0: no daily limit
    resets_at: datetime
    resets_in: float  # seconds
    prompts: int  # the bucket's capacity; 0: no limit on prompts
    refill_seconds: float  # one prompt comes back every this many seconds


class Quota:
    """The limits of every holder of one server, and the shared upstream slots."""

    def __init__(
        self, config: QuotaConfig, store: Store, shared: SharedLimits | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.shared = shared
        self.clock: Callable[[], float] = time.monotonic
        self.now: Callable[[], datetime] = utcnow
        self.slots = Slots(config.max_upstream, config.queue_timeout)
        self._buckets: dict[str, Bucket] = {}
        self._used: dict[str, tuple[date, int]] = {}  # holder -> (UTC day, tokens that day)
        self._in_flight: set[str] = set()

    def of(self, holder: str) -> UserQuota:
        """``user``'s view of the limits, for one conversation."""
        return UserQuota(self, holder)

    async def load(self, holder: str) -> None:
        """Read ``user``'s tokens of today from the store, unless known already."""
        today = self._today()
        if self._used.get(holder, (None, 0))[0] == today:
            return
        used = await self.store.tokens_used(holder, day_start(self.now()))
        # Another connection's load may have landed while this one read: keep that one.
        if self._used.get(holder, (None, 0))[0] != today:
            self._used[holder] = (today, used)

    def _today(self) -> date:
        return self.now().astimezone(UTC).date()

    def tokens_today(self, holder: str) -> int | None:
        """``user``'s tokens of today, None if never loaded."""
        entry = self._used.get(holder)
        if entry is None:
            return None
        day, used = entry
        # Loaded on an earlier day: today started at 0, and every answer of today was
        # admitted, and so counted, after this entry was last touched.
        return used if day == self._today() else 0

    def _bucket(self, holder: str) -> Bucket:
        bucket = self._buckets.get(holder)
        if bucket is None:
            now = self.clock()
            if len(self._buckets) >= MAX_IDLE_BUCKETS:
                for name in [n for n, b in self._buckets.items() if b.full(now)]:
                    del self._buckets[name]
            bucket = Bucket(self.config.prompts, self.config.refill_seconds, now)
            self._buckets[holder] = bucket
        return bucket

    def _resets(self) -> tuple[datetime, float]:
        now = self.now()
        resets_at = day_start(now) + timedelta(days=1)
        return resets_at, (resets_at - now).total_seconds()

    def admit(self, holder: str) -> Ticket:
        """See :meth:`UserQuota.admit`."""
        if holder in self._in_flight:
            raise InputRejected(ONE_AT_A_TIME)
        budget = self.config.daily_tokens
        used = self.tokens_today(holder)
        if budget and used is None:
            raise InputRejected("Your usage of today is still being counted; ask again.")
        if budget and used is not None and used >= budget:
            raise self._spent()
        if self.config.prompts and self.shared is None:
            bucket = self._bucket(holder)
            wait = bucket.wait(self.clock())
            if wait:
                raise BudgetExceeded(f"Slow down: you can ask again in {span(wait)}.")
            bucket.take(self.clock())
        self._in_flight.add(holder)
        return Ticket(self, holder, self._today())

    def _spent(self) -> BudgetExceeded:
        budget = self.config.daily_tokens
        resets_at, resets_in = self._resets()
        return BudgetExceeded(
            f"You have used today's {budget:,} tokens. The budget resets at "
            f"{resets_at:%H:%M} UTC, in {span(resets_in)}."
        )

    @contextlib.asynccontextmanager
    async def _shared_slot(
        self, shared: SharedLimits, holder: str, on_wait: Callable[[int], None],
        upstream: str,
    ) -> AsyncIterator[None]:
        """The limits every worker shares, claimed in order (see the contract)."""
        claim = await shared.claim_answer(holder)
        if claim is None:
            raise InputRejected(ONE_AT_A_TIME)
        try:
            cfg = self.config
            if cfg.daily_tokens:
                used = await self.store.tokens_used(holder, day_start(self.now()))
                self._used[holder] = (self._today(), used)
                if used >= cfg.daily_tokens:
                    raise self._spent()
            if cfg.prompts:
                wait, tokens = await shared.take_prompt(
                    holder, cfg.prompts, cfg.refill_seconds
                )
                bucket = self._bucket(holder)
                bucket.tokens, bucket._at = tokens, self.clock()  # /usage shows this copy
                if wait:
                    raise BudgetExceeded(f"Slow down: you can ask again in {span(wait)}.")
            async with shared.hold(cfg.max_upstream, cfg.queue_timeout, on_wait, upstream):
                yield
        finally:
            # Landed before the answer's end is shown: the holder may ask on any worker.
            await shared.settled(shared.release_answer(holder, claim))

    def _finish(self, ticket: Ticket, usage: Usage | None) -> None:
        self._in_flight.discard(ticket.holder)
        if usage is None:
            return
        tokens = usage.counted  # as the store's ledger counts them
        day, used = self._used.get(ticket.holder, (ticket.day, 0))
        if day == ticket.day:
            self._used[ticket.holder] = (day, used + tokens)
        elif day < ticket.day:  # the first answer admitted on a new day
            self._used[ticket.holder] = (ticket.day, tokens)

    def status(self, holder: str) -> UsageStatus:
        """``user``'s limits now."""
        resets_at, resets_in = self._resets()
        prompts = self._bucket(holder).available(self.clock()) if self.config.prompts else None
        return UsageStatus(
            prompts_now=prompts,
            daily_tokens=self.config.daily_tokens,
            resets_at=resets_at,
            resets_in=resets_in,
            prompts=self.config.prompts,
            refill_seconds=self.config.refill_seconds,
        )


class UserQuota:
    """One user's limits, as one conversation sees them."""

    def __init__(self, quota: Quota, holder: str) -> None:
        self.quota = quota
        self.holder = holder

    def admit(self) -> Ticket:
        """Let one question of this holder go ahead (see the module contract).

        Raises:
            InputRejected: an answer of the holder is already coming, or the day's usage is
                not known yet.
            BudgetExceeded: the daily budget is spent, or the prompt bucket is empty.
        """
        return self.quota.admit(self.holder)


class Ticket:
    """One admitted question: the user's answer in flight."""

    def __init__(self, quota: Quota, holder: str, day: date) -> None:
        self.quota = quota
        self.holder = holder
        self.day = day
        self.finished = False

    def slot(
        self, on_wait: Callable[[int], None], upstream: str
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the shared upstream slots, for an ``async with`` block; ``upstream`` is
        the provider's name, for the message when none comes free. With shared limits,
        the database's claims come first (see the module contract)."""
        shared = self.quota.shared
        if shared is not None:
            return self.quota._shared_slot(shared, self.holder, on_wait, upstream)
        return self.quota.slots.hold(on_wait, upstream)

    def finish(self, usage: Usage | None) -> None:
        """The answer ended: count ``usage`` and let the holder ask again. Idempotent."""
        if not self.finished:
            self.finished = True
            self.quota._finish(self, usage)
