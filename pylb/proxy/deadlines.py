"""One timer per worker for every connection's timeouts (a bucketed timer wheel).

Why: a uvloop `TimerHandle` per connection (the handle, its context and the libuv timer)
costs ~590 B, a quarter of what an idle keep-alive connection costs (docs/performance.md).
Connection timeouts need no millisecond precision, so deadlines are rounded *up* into
buckets of `RES` seconds and a single `loop.call_at` is kept armed at the earliest
non-empty bucket. An entry then costs one slot in its bucket's dict (~40 B).

Two layers, HAProxy's wait-queue idea split the sans-IO way:

- `Wheel`: pure bookkeeping, no loop and no clock (unit-testable with plain numbers);
- `Deadlines(loop)`: the shell that keeps the one timer handle armed and fires entries.

Guarantees: an entry is never fired before its `when` (a bucket is due only once all of
its span has passed), and at most about one resolution (+1 ms of timer slack) after it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

RES = 0.01  # seconds per bucket: timeouts are seconds long, 10 ms late is invisible
_PER_S = 1.0 / RES
# The timer fires this much after a bucket's end: uvloop rounds delays to the millisecond
# and may wake up to 0.5 ms before `when`; firing early would find nothing due and spin.
_SLACK = 0.001

Token = dict  # the bucket an entry sits in (opaque to callers; see Wheel.add)


class Wheel:
    """Deadlines bucketed by `int(when / RES)`, popped in bucket order.

    A bucket is a dict (object -> None) shared by every entry of its tick, and it is what
    `add` returns as the entry's token: `cancel` is a dict pop, and a token costs the
    caller one pointer. A token goes stale once its entry fires (or its bucket is swept);
    cancelling with a stale token is a no-op.

    Invariant: a tick is in `_heap` iff it is a key of `_buckets`. A bucket emptied by
    `cancel` stays until it reaches the head (`next_due` drops it), so the heap never
    holds a tick twice and never needs a search.
    """

    __slots__ = ("_buckets", "_floor", "_heap")

    def __init__(self) -> None:
        self._buckets: dict[int, dict[Any, None]] = {}
        self._heap: list[int] = []
        # First tick not swept yet (see `sweep`): an entry added for an earlier tick goes
        # here instead, so it is due at the next sweep, never in the one running.
        self._floor = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, obj: Any, when: float) -> Token:
        """File `obj` (hashable, not already in the wheel) to be due at `when` (seconds)."""
        tick = int(when * _PER_S)
        if tick < self._floor:
            tick = self._floor
        b = self._buckets.get(tick)
        if b is None:
            b = self._buckets[tick] = {}
            heapq.heappush(self._heap, tick)
        b[obj] = None
        return b

    @staticmethod
    def cancel(obj: Any, token: Token | None) -> None:
        """Forget `obj`'s entry; idempotent (a stale or None token does nothing)."""
        if token is not None:
            token.pop(obj, None)

    def next_due(self) -> float | None:
        """When the earliest non-empty bucket becomes due (its end), None if none."""
        tick = self.next_tick()
        return None if tick is None else (tick + 1) * RES

    def next_tick(self) -> int | None:
        """The earliest non-empty bucket's tick (dropping emptied buckets at the head)."""
        heap = self._heap
        buckets = self._buckets
        while heap:
            tick = heap[0]
            if buckets[tick]:
                return tick
            del buckets[heapq.heappop(heap)]
        return None

    def head(self) -> int:
        """The earliest bucket's tick, empty or not (O(1)); the wheel must hold a bucket."""
        return self._heap[0]

    def sweep(self, now: float) -> int:
        """Start a sweep at `now`: returns the limit tick for `pop`. Buckets below it
        have all their span <= now (int() of a monotonic division is monotonic, so an
        entry with `when > now` always has a tick >= the limit: nothing fires early)."""
        limit = int(now * _PER_S)
        if limit > self._floor:
            self._floor = limit
        return self._floor

    def pop(self, limit: int) -> Any | None:
        """Remove and return one entry of a bucket below `limit`, earliest bucket first;
        None when none is left. One at a time, so an entry cancelled by the callback of
        another one in the same sweep is not fired."""
        heap = self._heap
        buckets = self._buckets
        while heap and heap[0] < limit:
            b = buckets[heap[0]]
            if b:
                return b.popitem()[0]  # LIFO within a bucket: O(1), and all are equal
            del buckets[heapq.heappop(heap)]
        return None

    def due(self, now: float) -> list[Any]:
        """Remove and return every entry due at `now`, in bucket order."""
        limit = self.sweep(now)
        out = []
        while (obj := self.pop(limit)) is not None:
            out.append(obj)
        return out


def _call_on_timer(obj: Any) -> None:
    obj._on_timer()


class Deadlines:
    """A worker's `Wheel` and the one timer handle that serves it.

    `add(obj, when)` returns a token for `cancel(obj, token)`; when `obj` is due,
    `fire(obj)` is called (by default `obj._on_timer()`) once, and the entry is gone: an
    object that wants another deadline adds itself again, from its callback if it likes.
    The handle is re-armed only when an entry lands in a bucket earlier than the armed
    one, or after firing; cancelled entries leave the handle alone (it fires, finds
    nothing, re-arms for the next bucket).
    """

    __slots__ = ("_armed_tick", "_fire", "_firing", "_loop", "_timer", "wheel")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fire: Callable[[Any], None] = _call_on_timer
    ) -> None:
        self._loop = loop
        self._fire = fire
        self.wheel = Wheel()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_tick = 0  # the bucket the handle fires for (while _timer is set)
        self._firing = False

    def add(self, obj: Any, when: float) -> Token:
        tok = self.wheel.add(obj, when)
        # _run re-arms once at its end; else only a new earliest bucket moves the handle
        # (the heap's head: O(1), and never later than the armed bucket while armed).
        if not self._firing and (self._timer is None or self.wheel.head() < self._armed_tick):
            self._arm()
        return tok

    cancel = staticmethod(Wheel.cancel)  # a dict pop: the handle is left alone (above)

    def close(self) -> None:
        """Stop the handle (worker shutdown); entries stay, and fire only if re-armed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        tick = self.wheel.next_tick()
        t = self._timer
        if tick is None:
            if t is not None:
                t.cancel()
                self._timer = None
            return
        if t is not None:
            if tick == self._armed_tick:
                return
            t.cancel()
        self._armed_tick = tick
        self._timer = self._loop.call_at((tick + 1) * RES + _SLACK, self._run)

    def _run(self) -> None:
        self._timer = None
        wheel = self.wheel
        fire = self._fire
        limit = wheel.sweep(self._loop.time())
        self._firing = True
        try:
            while (obj := wheel.pop(limit)) is not None:
                try:
                    fire(obj)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # as asyncio.Handle._run: report, go on
                    self._loop.call_exception_handler(
                        {
                            "message": f"Exception in deadline callback for {obj!r}",
                            "exception": exc,
                        }
                    )
        finally:
            self._firing = False
            self._arm()
