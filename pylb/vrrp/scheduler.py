"""One timer for every VRRP instance: a heap of (deadline, instance), one `call_at`.

keepalived keeps each instance's next deadline (`sands`) in a tree and waits for the
earliest one (STYLE.md 5.2). Here the heap holds `(deadline, seq, key)` entries and the
loop holds at most one handle, armed for the head. Moving a deadline pushes a new entry
and leaves the old one in the heap ("lazy deletion": `_current[key]` says which entry is
live), so a moved timer costs one push and no handle churn (STYLE.md "Habits" 2).

Every wakeup measures its lag: how much later than asked the loop ran us. A speaker
whose process was stopped or starved past the takeover window of its peers must assume
a backup already took over and step down rather than keep the VIPs beside the new master
(keepalived's `thread_timer_expired`, STYLE.md 5.7). `takeover_margin()` is that window.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from pylb.vrrp.timers import master_down_interval
from pylb.vrrp.types import PRIO_OWNER

K = TypeVar("K", bound=Hashable)

# A wakeup this much earlier than asked still counts as due (asyncio's clock resolution).
SLACK = 0.001


def takeover_margin(adver_int: float, version: int, peer_priority: int = PRIO_OWNER - 1) -> float:
    """How late a master's advert may be before a backup may already have taken over.

    A backup of `peer_priority` becomes master Master_Down_Interval after our last advert
    (RFC 5798 §6.4.2); our next advert is due `adver_int` after the last one, so a timer
    later than MDI - adver_int means the peer may hold the VIPs as well. The default
    peer is the most eager one possible (254): we seldom know the backups' priorities,
    since backups do not advertise.
    """
    return master_down_interval(peer_priority, adver_int, version) - adver_int


def should_step_down(lag: float, adver_int: float, version: int) -> bool:
    """True when a master woken `lag` seconds late must step down (see takeover_margin)."""
    return lag > takeover_margin(adver_int, version)


class Scheduler(Generic[K]):
    """Deadlines by key on one loop timer. `fire(key, now)` runs for each due key.

    `loop` needs `time()` and `call_at()` (an asyncio loop, or a fake one in tests).
    `on_wakeup(lag, now)` runs first on every wakeup, with how late it is.
    """

    __slots__ = (
        "_armed_at",
        "_current",
        "_handle",
        "_heap",
        "_loop",
        "_seq",
        "fire",
        "last_lag",
        "max_lag",
        "on_wakeup",
        "wakeups",
    )

    def __init__(
        self,
        loop: Any,
        fire: Callable[[K, float], None],
        *,
        on_wakeup: Callable[[float, float], None] | None = None,
    ) -> None:
        self._loop = loop
        self.fire = fire
        self.on_wakeup = on_wakeup
        self._heap: list[tuple[float, int, K]] = []
        self._current: dict[K, int] = {}  # key -> seq of its live heap entry
        self._seq = itertools.count()
        self._handle: Any = None
        self._armed_at: float | None = None
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._current)

    def deadline(self, key: K) -> float | None:
        seq = self._current.get(key)
        if seq is None:
            return None
        for d, s, _k in self._heap:  # only for inspection (tests, show vrrp)
            if s == seq:
                return d
        return None

    def set(self, key: K, deadline: float | None) -> None:
        """Give `key` this deadline (None: no timer). Replaces any previous one."""
        if deadline is None:
            self._current.pop(key, None)
            self._compact()
            return
        seq = next(self._seq)
        self._current[key] = seq
        heapq.heappush(self._heap, (deadline, seq, key))
        self._rearm()

    def cancel(self, key: K) -> None:
        self.set(key, None)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = None
        self._heap.clear()
        self._current.clear()

    # ------------------------------------------------------------------ internals

    def _live_head(self) -> tuple[float, int, K] | None:
        heap, cur = self._heap, self._current
        while heap:
            _d, seq, key = heap[0]
            if cur.get(key) == seq:
                return heap[0]
            heapq.heappop(heap)  # a moved or cancelled deadline
        return None

    def _compact(self) -> None:
        # Dead entries are dropped lazily; if they pile up (many moves) rebuild once.
        if len(self._heap) > 4 * len(self._current) + 16:
            self._heap = [e for e in self._heap if self._current.get(e[2]) == e[1]]
            heapq.heapify(self._heap)
        self._rearm()

    def _rearm(self) -> None:
        head = self._live_head()
        if head is None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
                self._armed_at = None
            return
        when = head[0]
        if self._handle is not None:
            if self._armed_at == when:
                return
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._wake)

    def _wake(self) -> None:
        asked = self._armed_at
        self._handle = None
        self._armed_at = None
        now = self._loop.time()
        lag = max(0.0, now - asked) if asked is not None else 0.0
        self.last_lag = lag
        self.max_lag = max(self.max_lag, lag)
        self.wakeups += 1
        if self.on_wakeup is not None:
            self.on_wakeup(lag, now)
        # Fire everything due; a fire() may set new deadlines (also due ones: a master
        # that answers at once), which this loop then picks up in deadline order.
        fired = 0
        while True:
            head = self._live_head()
            if head is None or head[0] > now + SLACK or fired > 10_000:
                break
            _d, _seq, key = heapq.heappop(self._heap)
            del self._current[key]
            fired += 1
            self.fire(key, now)
        self._rearm()
