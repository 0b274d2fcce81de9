"""pylb.proxy.deadlines: the pure timer wheel (add, cancel, due, order, rounding) and its
one-handle shell (arming, re-add during firing, a raising callback, cancel during firing).

The shell is driven by a fake loop with a manual clock (the loop is injected), plus one
check on a real uvloop that an entry fires after its deadline, never before."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop
from hypothesis import given
from hypothesis import strategies as st

from pylb.proxy.deadlines import RES, Deadlines, Wheel


class Obj:
    """A wheel entry (hashable by identity, like a Protocol)."""

    def __init__(self, name: str = "", on_timer: Any = None) -> None:
        self.name = name
        self.fired = 0
        self.hook = on_timer

    def _on_timer(self) -> None:
        self.fired += 1
        if self.hook is not None:
            self.hook(self)

    def __repr__(self) -> str:
        return f"<Obj {self.name}>"


class Handle:
    def __init__(self, loop: FakeLoop, when: float, cb: Any) -> None:
        self.loop, self.when, self.cb = loop, when, cb
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """time() is set by the test; run_due() runs the handles whose time has come."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.handles: list[Handle] = []
        self.errors: list[dict[str, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Any) -> Handle:
        h = Handle(self, when, cb)
        self.handles.append(h)
        return h

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def armed(self) -> list[Handle]:
        return [h for h in self.handles if not h.cancelled]

    def advance(self, to: float) -> None:
        """Move the clock to `to`, running the handles due on the way, in order."""
        while True:
            due = sorted((h for h in self.armed() if h.when <= to), key=lambda h: h.when)
            if not due:
                break
            h = due[0]
            self.now = max(self.now, h.when)
            h.cancelled = True  # a handle runs once
            h.cb()
        self.now = to


# -- the pure wheel --------------------------------------------------------------------


def test_due_returns_passed_buckets_in_order() -> None:
    w = Wheel()
    a, b, c, d = Obj("a"), Obj("b"), Obj("c"), Obj("d")
    w.add(c, 3.0)
    w.add(a, 1.0)
    w.add(d, 9.0)
    w.add(b, 2.0)
    assert w.due(0.5) == []
    assert w.due(3.5) == [a, b, c]
    assert w.due(3.6) == []
    assert len(w) == 1
    assert w.due(100.0) == [d]
    assert len(w) == 0
    assert w.next_due() is None


def test_rounding_up_to_the_bucket_end() -> None:
    w = Wheel()
    a = Obj("a")
    w.add(a, 5.003)
    # Due once the whole bucket [5.00, 5.01) has passed: never before 5.003, and at most
    # one resolution after it.
    assert w.next_due() is not None
    assert 5.003 <= w.next_due() <= 5.003 + RES  # type: ignore[operator]
    assert w.due(5.003) == []  # same bucket: not all of it has passed
    assert w.due(5.003 + RES) == [a]


@given(
    whens=st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=1, max_size=30),
    now=st.floats(min_value=0.0, max_value=1e6),
)
def test_never_early_and_at_most_one_resolution_late(whens: list[float], now: float) -> None:
    w = Wheel()
    objs = [Obj(str(i)) for i in range(len(whens))]
    when_of = {}
    for o, t in zip(objs, whens, strict=True):
        w.add(o, t)
        when_of[o] = t
    fired = w.due(now)
    for o in fired:
        assert when_of[o] <= now
    for o in objs:
        if o not in fired:
            assert when_of[o] > now - RES * 1.01  # only the current bucket may wait


def test_exact_bucket_boundaries_are_not_early() -> None:
    w = Wheel()
    for k in range(1, 2000):
        t = k * RES
        o = Obj(str(k))
        w.add(o, t)
        assert w.due(t - 1e-9) == []
        assert w.due(t + RES * 1.001) == [o]


def test_cancel_is_idempotent_and_stale_tokens_do_nothing() -> None:
    w = Wheel()
    a, b = Obj("a"), Obj("b")
    ta = w.add(a, 1.0)
    w.add(b, 1.0)
    w.cancel(a, ta)
    w.cancel(a, ta)
    w.cancel(a, None)
    assert w.due(2.0) == [b]
    # a token whose entry fired is stale: cancelling with it leaves a new entry alone
    tb_old = w.add(b, 3.0)
    assert w.due(4.0) == [b]
    w.add(b, 5.0)
    w.cancel(a, tb_old)
    w.cancel(b, tb_old)
    assert w.due(6.0) == [b]


def test_next_due_skips_emptied_buckets() -> None:
    w = Wheel()
    a, b = Obj("a"), Obj("b")
    ta = w.add(a, 1.0)
    w.add(b, 7.0)
    assert w.next_due() == (int(1.0 / RES) + 1) * RES
    w.cancel(a, ta)
    assert w.next_due() == (int(7.0 / RES) + 1) * RES
    # the emptied bucket is gone: the same tick can be filed again
    w.add(a, 1.0)
    assert w.due(2.0) == [a]


def test_add_behind_a_sweep_is_due_at_the_next_one() -> None:
    """An entry added while a sweep runs (a callback re-adding itself with a deadline
    already passed) must not be popped by that sweep, or it could loop forever."""
    w = Wheel()
    a = Obj("a")
    limit = w.sweep(10.0)
    w.add(a, 9.0)
    assert w.pop(limit) is None
    assert w.due(10.0 + RES) == [a]


def test_many_entries_share_few_buckets() -> None:
    w = Wheel()
    objs = [Obj() for _ in range(1000)]
    for i, o in enumerate(objs):
        w.add(o, 50.0 + i * 0.0001)  # 0.1 s of deadlines: ~10 buckets
    assert len(w._buckets) <= 11
    assert sorted(map(id, w.due(60.0))) == sorted(map(id, objs))


# -- the shell -------------------------------------------------------------------------


def test_one_handle_armed_at_the_earliest_bucket() -> None:
    loop = FakeLoop()
    dl = Deadlines(loop)  # type: ignore[arg-type]
    objs = [Obj(str(i)) for i in range(100)]
    for i, o in enumerate(objs):
        dl.add(o, 1005.0 + i * 0.05)  # later and later: the handle does not move
    assert len(loop.handles) == 1
    (h,) = loop.armed()
    assert 1005.0 < h.when <= 1005.0 + 2 * RES
    early = Obj("early")
    dl.add(early, 1002.0)  # a new earliest bucket moves the handle
    (h2,) = loop.armed()
    assert h.cancelled and 1002.0 < h2.when <= 1002.0 + 2 * RES
    loop.advance(1003.0)
    assert early.fired == 1 and all(o.fired == 0 for o in objs)
    (h3,) = loop.armed()  # re-armed after firing, for the next bucket
    assert 1005.0 < h3.when <= 1005.0 + 2 * RES
    loop.advance(1011.0)
    assert all(o.fired == 1 for o in objs)
    assert loop.armed() == []  # nothing left: no handle


def test_fires_never_before_the_deadline() -> None:
    loop = FakeLoop()
    seen: list[tuple[float, float]] = []
    when_of: dict[Obj, float] = {}
    dl = Deadlines(loop, fire=lambda o: seen.append((when_of[o], loop.time())))  # type: ignore[arg-type]
    whens = [1000.0 + k * 0.0037 for k in range(300)]
    for t in whens:
        o = Obj()
        when_of[o] = t
        dl.add(o, t)
    loop.advance(1010.0)
    assert len(seen) == len(whens)
    for when, at in seen:
        assert when <= at <= when + RES + 0.002


def test_callback_re_adding_itself_fires_again_later() -> None:
    loop = FakeLoop()
    dl = Deadlines(loop)  # type: ignore[arg-type]
    times: list[float] = []

    def again(o: Obj) -> None:
        times.append(loop.time())
        if o.fired < 3:
            dl.add(o, loop.time())  # already due: must wait for the next sweep

    a = Obj("a", again)
    dl.add(a, 1001.0)
    loop.advance(1002.0)
    assert a.fired == 3
    assert times[0] >= 1001.0 and times[1] > times[0] and times[2] > times[1]
    assert times[2] - times[0] <= 3 * (RES + 0.002)
    assert loop.armed() == []


def test_raising_callback_does_not_stop_the_others() -> None:
    loop = FakeLoop()
    dl = Deadlines(loop)  # type: ignore[arg-type]

    def boom(o: Obj) -> None:
        raise ValueError("boom")

    objs = [Obj(str(i)) for i in range(5)]
    bad = Obj("bad", boom)
    for o in objs[:2]:
        dl.add(o, 1001.0)
    dl.add(bad, 1001.0)
    for o in objs[2:]:
        dl.add(o, 1001.0)
    later = Obj("later")
    dl.add(later, 1004.0)
    loop.advance(1002.0)
    assert all(o.fired == 1 for o in objs) and bad.fired == 1
    assert len(loop.errors) == 1
    assert isinstance(loop.errors[0]["exception"], ValueError)
    assert "bad" in loop.errors[0]["message"]
    loop.advance(1005.0)  # the handle was re-armed despite the exception
    assert later.fired == 1


def test_cancel_during_firing_skips_the_entry() -> None:
    loop = FakeLoop()
    dl = Deadlines(loop)  # type: ignore[arg-type]
    tokens: dict[str, Any] = {}
    a = Obj("a")
    b = Obj("b")

    def cancel_the_other(o: Obj) -> None:
        other = b if o is a else a
        dl.cancel(other, tokens[other.name])

    a.hook = b.hook = cancel_the_other
    tokens["a"] = dl.add(a, 1001.0)
    tokens["b"] = dl.add(b, 1001.0)
    loop.advance(1002.0)
    assert a.fired + b.fired == 1


def test_cancelled_entries_leave_the_handle_to_find_nothing() -> None:
    loop = FakeLoop()
    dl = Deadlines(loop)  # type: ignore[arg-type]
    a, b = Obj("a"), Obj("b")
    ta = dl.add(a, 1001.0)
    dl.add(b, 1003.0)
    dl.cancel(a, ta)
    assert len(loop.handles) == 1  # no re-arm on cancel
    loop.advance(1002.0)
    assert a.fired == 0
    (h,) = loop.armed()
    assert h.when > 1003.0
    loop.advance(1004.0)
    assert b.fired == 1


def test_close_stops_the_handle() -> None:
    loop = FakeLoop()
    dl = Deadlines(loop)  # type: ignore[arg-type]
    dl.add(Obj(), 1001.0)
    dl.close()
    assert loop.armed() == []


async def _on_real_loop() -> list[tuple[float, float]]:
    loop = asyncio.get_running_loop()
    got: list[tuple[float, float]] = []
    done = loop.create_future()
    whens: list[float] = []

    def fire(o: Obj) -> None:
        got.append((o.when, loop.time()))  # type: ignore[attr-defined]
        if len(got) == len(whens) and not done.done():
            done.set_result(None)

    dl = Deadlines(loop, fire=fire)
    start = loop.time()
    for k in range(20):
        o = Obj(str(k))
        o.when = start + 0.02 + k * 0.0071  # type: ignore[attr-defined]
        whens.append(o.when)  # type: ignore[attr-defined]
        dl.add(o, o.when)  # type: ignore[attr-defined]
    await asyncio.wait_for(done, 10.0)
    return got


def test_real_uvloop_fires_after_the_deadline() -> None:
    got = uvloop.run(_on_real_loop())
    assert len(got) == 20
    for when, at in got:
        assert at >= when  # never early; lateness depends on the machine's load
