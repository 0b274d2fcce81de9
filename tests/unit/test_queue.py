"""pylb.proxy.queue (FIFO, bound, cancel, expiry by deadline, slot dispatch) and the pure
slow-connect threshold of pylb.proxy.exchange."""

from __future__ import annotations

import asyncio

import pytest

from pylb.config.model import Address, Listen, ServerConf, Timeouts
from pylb.proxy.backend import Backend
from pylb.proxy.exchange import (
    SLOW_CONNECT_MAX,
    SLOW_CONNECT_MIN,
    SLOW_CONNECT_UNKNOWN,
    record_connect_time,
    slow_connect_after,
    usual_connect_time,
)
from pylb.proxy.queue import WaitQueue


class W:
    def __init__(self, name: str) -> None:
        self.name = name
        self.granted: object = None
        self.timed_out = False

    def queue_granted(self, grant: object) -> None:
        self.granted = grant

    def queue_timeout(self) -> None:
        self.timed_out = True


def test_fifo_bound_and_counters() -> None:
    q = WaitQueue(timeout=1.0, limit=2)
    a, b, c = W("a"), W("b"), W("c")
    ta = q.push(a, 0.0)
    tb = q.push(b, 0.1)
    assert ta is not None and tb is not None and (ta.ahead, tb.ahead) == (0, 1)
    assert q.push(c, 0.2) is None  # full: the caller answers at once
    assert (q.count, q.max, q.total) == (2, 2, 2)
    first = q.pop()
    assert first is ta and not first.live
    assert q.pop() is tb and q.pop() is None and q.count == 0


def test_cancel_is_skipped_and_frees_room() -> None:
    q = WaitQueue(timeout=1.0, limit=2)
    ta = q.push(W("a"), 0.0)
    tb = q.push(W("b"), 0.0)
    assert ta is not None and tb is not None
    q.cancel(ta)
    q.cancel(ta)  # idempotent
    assert q.count == 1
    assert q.push(W("c"), 0.0) is not None  # room again
    assert q.pop() is tb


def test_expire_follows_deadlines_in_fifo_order() -> None:
    q = WaitQueue(timeout=1.0)
    ts = [q.push(W(str(i)), i * 0.1) for i in range(5)]
    q.cancel(ts[1])  # type: ignore[arg-type]
    assert q.expire(1.05) == [ts[0]]
    assert q.expire(1.25) == [ts[2]]  # the cancelled one is skipped, not reported
    assert q.count == 2 and q.timeouts == 2
    assert q.peek() is ts[3]


@pytest.mark.parametrize(
    ("usual", "timeout", "expected"),
    [
        (None, 5.0, SLOW_CONNECT_UNKNOWN),
        (0.0001, 5.0, SLOW_CONNECT_MIN),  # loopback: the floor
        (0.05, 5.0, 0.5),  # 10 x the usual time
        (1.0, 5.0, SLOW_CONNECT_MAX),  # capped
        (0.0001, 0.2, None),  # would not come before timeout.connect: no race
        (None, 1.0, None),
    ],
)
def test_slow_connect_after(usual: float | None, timeout: float, expected: float | None) -> None:
    got = slow_connect_after(usual, timeout)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def _backend(maxconn: int | None = 1, queue: float = 5.0) -> Backend:
    servers = tuple(
        ServerConf(name=n, address=Address("127.0.0.1", 1000 + i), maxconn=maxconn)
        for i, n in enumerate("ab")
    )
    return Backend(Listen(name="x", binds=(), servers=servers, timeout=Timeouts(queue=queue)))


def test_usual_connect_time_falls_back_to_the_backend() -> None:
    be = _backend()
    a, b = be.servers
    assert usual_connect_time(a) is None
    record_connect_time(b, 0.010)
    assert usual_connect_time(a) == pytest.approx(0.010)  # peers' time until it has its own
    record_connect_time(a, 0.001)
    record_connect_time(a, 0.011)
    assert usual_connect_time(a) == pytest.approx(0.001 + 0.2 * 0.010)


def test_freed_slot_goes_to_the_head_of_the_queue() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        be = _backend()
        a, b = be.servers
        a.take()
        b.take()
        w1, w2 = W("1"), W("2")
        be.queue.wait(w1, loop)
        be.queue.wait(w2, loop)
        a.drop()  # a slot of `a` frees: reserved for w1 at once, told next iteration
        assert a.cur_conns == 1 and be.queue.count == 1
        await asyncio.sleep(0)
        assert w1.granted is a and w2.granted is None
        a.oper_up = False
        be.server_changed(a)
        b.drop()  # `b` frees: w2
        await asyncio.sleep(0)
        assert w2.granted is b and be.queue.count == 0
        be.queue.close()

    asyncio.run(main())


def test_one_timer_expires_the_queue() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        be = _backend(queue=0.05)
        for s in be.servers:
            s.take()
        ws = [W(str(i)) for i in range(3)]
        for w in ws:
            be.queue.wait(w, loop)
        t0 = loop.time()
        while not all(w.timed_out for w in ws) and loop.time() - t0 < 2:
            await asyncio.sleep(0.01)
        assert all(w.timed_out for w in ws) and be.queue.count == 0
        assert be.queue.timeouts == 3

    asyncio.run(main())


def test_a_server_coming_up_takes_queued_requests() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        be = _backend()
        a, b = be.servers
        a.oper_up = False
        be.server_changed(a)
        b.take()  # the only usable server is full
        w = W("w")
        be.queue.wait(w, loop)
        a.oper_up = True
        be.server_changed(a)  # `a` is back: the queue is drained onto it
        await asyncio.sleep(0)
        assert w.granted is a and a.cur_conns == 1 and be.queue.count == 0
        be.queue.close()

    asyncio.run(main())


# -- on_accept: the admission decision shared by the HTTP and TCP listeners ---------------


class _Ctx:
    """What on_accept reads of a ListenContext (`parked` is built by park on first use)."""

    def __init__(self, *, actconn: int, wmax: int, feconn: int, maxconn: int | None) -> None:
        from types import SimpleNamespace

        self.worker = SimpleNamespace(actconn=actconn, maxconn=wmax)
        self.conf = SimpleNamespace(maxconn=maxconn, timeout=SimpleNamespace(queue=5.0))
        self.feconn = feconn
        self.parked: WaitQueue | None = None


def test_on_accept_serves_while_both_limits_have_room() -> None:
    from pylb.proxy.queue import on_accept

    loop = asyncio.new_event_loop()
    try:
        assert on_accept(_Ctx(actconn=0, wmax=10, feconn=0, maxconn=None), W("a"), loop) is True
        assert on_accept(_Ctx(actconn=3, wmax=10, feconn=2, maxconn=3), W("a"), loop) is True
    finally:
        loop.close()


def test_on_accept_refuses_at_the_workers_maxconn() -> None:
    from pylb.proxy.queue import on_accept

    loop = asyncio.new_event_loop()
    try:
        ctx = _Ctx(actconn=10, wmax=10, feconn=10, maxconn=10)
        assert on_accept(ctx, W("a"), loop) is False
        assert ctx.parked is None  # never parked: the worker itself is full
    finally:
        loop.close()


def test_on_accept_parks_at_the_listeners_maxconn_until_parking_is_full() -> None:
    from pylb.proxy.queue import Ticket, on_accept

    loop = asyncio.new_event_loop()
    try:
        ctx = _Ctx(actconn=2, wmax=10, feconn=2, maxconn=2)
        t = on_accept(ctx, W("a"), loop)
        assert isinstance(t, Ticket)
        assert ctx.parked is not None and ctx.parked.count == 1
        ctx.parked.limit = 1  # the parking (the listener's backlog) is full now
        assert on_accept(ctx, W("b"), loop) is False
        ctx.parked.cancel(t)
        assert ctx.parked.count == 0
    finally:
        loop.close()
