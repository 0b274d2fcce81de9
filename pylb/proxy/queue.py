"""Waiting for a free slot: the backend's request queue and the listener's accept gate.

HAProxy never refuses work just because a limit is reached; it makes the work wait:

- a request whose server is at `maxconn` waits in a queue and is served as soon as a slot
  frees, or answered 503 after `timeout queue` (HAProxy queues per server when the request
  is bound to one, per backend otherwise; pylb keeps ONE FIFO per backend: the head of the
  queue goes to whichever server frees a slot first, which is what round-robin wants);
- a listener at its `maxconn` stops accepting, so new connections wait in the kernel's
  backlog instead of being reset. Neither asyncio nor uvloop can pause an accepting
  server, so pylb accepts and *parks* such connections (reading paused) in a FIFO of the
  same kind, and admits them one by one as the listener's connections close; a parked
  connection is closed after `timeout queue`, as the kernel's backlog would eventually
  give up on it.

Both are a `WaitQueue`: a bounded FIFO of `Ticket`s with ONE lazy timer for the whole
queue, not one per waiter. Every ticket of a queue has the same timeout, so FIFO order is
deadline order: the timer only ever needs the head's deadline. It is never cancelled: when
it fires early (the head it was armed for has left) it re-arms for the current head.
Leaving the queue (granted or cancelled) is O(1): a cancelled ticket is only flagged and
skipped when it reaches the head.

The structure is pure apart from that one timer: `push`, `pop`, `cancel`, `expire` take
the time as an argument and return what happened, so they are unit-tested with plain
objects; `BackendQueue.dispatch` applies the decision "who gets the freed slot" to
servers (reserving the slot with `server.take()` at once, then calling the waiter back on
the next loop iteration, so a waiter never runs inside the code that freed the slot).

Counters for stats (HAProxy's CSV): `count` (qcur), `max` (qmax), `total` (requests that
ever waited), `timeouts` (left by `timeout queue`), `limit` (the bound).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from pylb.balance.base import Balancer

if TYPE_CHECKING:
    from pylb.proxy.backend import Backend, Server

# Bound of a backend queue when the listener sets no `maxconn`. Every queued request holds
# a client connection, so the listener's maxconn (when set) bounds the queue by itself; this
# is the backstop for listeners without one (HAProxy's queues are unbounded by default).
DEFAULT_QUEUE_LIMIT = 10000


class Waiter(Protocol):
    """What waits in a queue: told once, either granted or timed out."""

    def queue_granted(self, grant: Any) -> None: ...

    def queue_timeout(self) -> None: ...


class Ticket:
    """One waiter's place in a queue. `live` is False once granted, cancelled or expired.
    `ahead`: how many were waiting when it entered (HAProxy's log field `backend_queue`)."""

    __slots__ = ("ahead", "deadline", "key", "live", "since", "waiter")

    def __init__(self, waiter: Waiter, since: float, deadline: float, key: Any, ahead: int):
        self.waiter = waiter
        self.since = since
        self.deadline = deadline
        self.key = key
        self.ahead = ahead
        self.live = True

    def __repr__(self) -> str:
        return f"<Ticket live={self.live} deadline={self.deadline:.3f}>"


class WaitQueue:
    """Bounded FIFO of tickets sharing one timeout, with one lazy timer. Loop thread only."""

    __slots__ = (
        "_loop",
        "_q",
        "_timer",
        "_timer_at",
        "count",
        "limit",
        "max",
        "timeout",
        "timeouts",
        "total",
    )

    def __init__(self, timeout: float, limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self.timeout = timeout
        self.limit = max(1, limit)
        self._q: deque[Ticket] = deque()
        self.count = 0  # live tickets (qcur)
        self.max = 0  # qmax
        self.total = 0
        self.timeouts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        return self.count

    # -- pure part -------------------------------------------------------------------------

    def push(self, waiter: Waiter, now: float, key: Any = None) -> Ticket | None:
        """Append `waiter`; None when the queue is full (the caller answers at once)."""
        if self.count >= self.limit:
            return None
        t = Ticket(waiter, now, now + self.timeout, key, self.count)
        self._q.append(t)
        self.count += 1
        self.total += 1
        if self.count > self.max:
            self.max = self.count
        return t

    def _trim(self) -> None:
        q = self._q
        while q and not q[0].live:
            q.popleft()

    def peek(self) -> Ticket | None:
        """The live head, or None."""
        self._trim()
        return self._q[0] if self._q else None

    def pop(self) -> Ticket | None:
        """Remove and return the live head (it is no longer live), or None."""
        self._trim()
        if not self._q:
            return None
        t = self._q.popleft()
        t.live = False
        self.count -= 1
        return t

    def cancel(self, ticket: Ticket) -> None:
        """The waiter left (client gone): O(1), the entry is skipped later."""
        if ticket.live:
            ticket.live = False
            self.count -= 1
            if not self.count:
                self._q.clear()

    def expire(self, now: float) -> list[Ticket]:
        """Remove and return the tickets whose deadline has passed (FIFO = deadline order)."""
        out: list[Ticket] = []
        q = self._q
        while q:
            t = q[0]
            if not t.live:
                q.popleft()
                continue
            if t.deadline > now:
                break
            q.popleft()
            t.live = False
            self.count -= 1
            self.timeouts += 1
            out.append(t)
        return out

    # -- the one timer ---------------------------------------------------------------------

    def wait(
        self, waiter: Waiter, loop: asyncio.AbstractEventLoop, key: Any = None
    ) -> Ticket | None:
        """`push` now and make sure the timer will see the new ticket's deadline."""
        t = self.push(waiter, loop.time(), key)
        if t is not None:
            self._loop = loop
            if self._timer is None:
                self._arm(t.deadline)
        return t

    def _arm(self, at: float) -> None:
        assert self._loop is not None
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        for t in self.expire(loop.time()):
            try:
                t.waiter.queue_timeout()
            except Exception:  # one broken waiter must not strand the others
                loop.call_exception_handler(
                    {"message": "queue timeout callback failed", "ticket": t}
                )
        head = self.peek()
        if head is not None:
            self._arm(head.deadline)

    def close(self) -> None:
        """Stop the timer (tests, reload); tickets are left as they are."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class BackendQueue(WaitQueue):
    """The requests of one backend waiting for a server slot (`Backend.queue`).

    Waiters get `queue_granted(server)` with the slot already taken for them
    (`server.take()`); a waiter that is gone by then must `server.drop()` it, which hands it
    on to the next one."""

    __slots__ = ("backend", "granted")

    def __init__(self, backend: Backend, timeout: float, limit: int) -> None:
        super().__init__(timeout, limit)
        self.backend = backend
        self.granted = 0

    def dispatch(self, freed: Server | None = None) -> int:
        """Give free slots to the head of the queue: `freed` first (the server whose
        session just ended), then whatever the balancer picks that has a slot. Called by
        `Server.drop()` and `Backend.server_changed()` when the queue is not empty.
        Returns how many waiters were granted."""
        n = 0
        loop = self._loop
        if loop is None:
            return 0
        while self.count:
            head = self.peek()
            assert head is not None
            srv = freed if freed is not None and _can_take(freed) else None
            if srv is None:
                picked = self.backend.pick(head.key)
                if picked is None or not _can_take(picked):
                    break
                srv = picked
            freed = None
            self.pop()
            srv.take()
            self.granted += 1
            n += 1
            loop.call_soon(_grant, head.waiter, srv)
        return n


def _can_take(server: Server) -> bool:
    return Balancer.eligible(server) and server.has_slot()


def _grant(waiter: Waiter, server: Server) -> None:
    waiter.queue_granted(server)


def backend_queue(backend: Backend) -> BackendQueue:
    """The queue `Backend.__init__` builds: `timeout.queue`, bounded by the listener's
    maxconn (each waiter holds one of its client connections) or DEFAULT_QUEUE_LIMIT."""
    conf = backend.conf
    return BackendQueue(backend, conf.timeout.queue, conf.maxconn or DEFAULT_QUEUE_LIMIT)


# -- listener maxconn: parking accepted connections ------------------------------------------


def park(ctx: Any, conn: Waiter, loop: asyncio.AbstractEventLoop) -> Ticket | None:
    """Park `conn`, accepted while its listener is at `maxconn` (`ListenContext.parked`,
    built here on first use: `timeout.queue`, bounded like the kernel backlog the listener
    asked for). None when that is full too: the caller refuses the connection."""
    gate = ctx.parked
    if gate is None:
        from pylb.proxy.listener import backlog_for

        conf = ctx.conf
        gate = ctx.parked = WaitQueue(conf.timeout.queue, backlog_for(conf.maxconn))
    return gate.wait(conn, loop)


def on_accept(ctx: Any, conn: Waiter, loop: asyncio.AbstractEventLoop) -> Ticket | bool:
    """What to do with `conn`, just accepted on `ctx`'s listener (HTTP and TCP alike):
    True to serve it now; a Ticket when it was parked because the listener is at its
    `maxconn` (HAProxy stops accepting and the client waits in the kernel's backlog; an
    asyncio server cannot pause, so the connection waits unread); False to refuse it (the
    worker is at its `maxconn`, or the parking is full too)."""
    worker = ctx.worker
    limit = ctx.conf.maxconn
    listener_full = limit is not None and ctx.feconn >= limit
    if worker.actconn >= worker.maxconn:
        return False
    if not listener_full:
        return True
    t = park(ctx, conn, loop)
    return False if t is None else t


def admit_next(ctx: Any) -> None:
    """A connection of the listener closed: admit the oldest parked one, if any (its
    `queue_granted(None)` registers it as a live connection)."""
    gate = ctx.parked
    if gate is not None and gate.count:
        t = gate.pop()
        if t is not None:
            t.waiter.queue_granted(None)
