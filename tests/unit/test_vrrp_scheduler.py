"""The one-timer deadline heap and the loop-lag step-down rule, on a fake loop."""

from __future__ import annotations

import ipaddress

import pytest

from pylb.vrrp.fsm import VrrpFsm
from pylb.vrrp.scheduler import Scheduler, should_step_down, takeover_margin
from pylb.vrrp.timers import master_down_interval
from pylb.vrrp.types import (
    InstanceConfig,
    Notify,
    NotifyKind,
    RemoveVips,
    Startup,
    State,
    StepDown,
    SyncMaster,
)


class Handle:
    __slots__ = ("cancelled", "cb", "when")

    def __init__(self, when: float, cb) -> None:
        self.when = when
        self.cb = cb
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """`time()` and `call_at()` only; `run_until(t)` fires due handles in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.handles: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb) -> Handle:
        h = Handle(when, cb)
        self.handles.append(h)
        return h

    @property
    def live(self) -> list[Handle]:
        return [h for h in self.handles if not h.cancelled]

    def run_until(self, t: float, *, late: float = 0.0) -> None:
        while True:
            due = sorted((h for h in self.live if h.when <= t), key=lambda h: h.when)
            if not due:
                self.now = t
                return
            h = due[0]
            h.cancelled = True  # a handle runs once
            self.now = h.when + late
            h.cb()


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


def test_one_handle_for_many_deadlines(loop: FakeLoop) -> None:
    fired: list[tuple[str, float]] = []
    s: Scheduler[str] = Scheduler(loop, lambda k, now: fired.append((k, now)))
    s.set("a", 3.0)
    s.set("b", 1.0)
    s.set("c", 2.0)
    assert len(loop.live) == 1 and loop.live[0].when == 1.0
    s.set("b", 5.0)  # moved later: the head is now c
    assert len(loop.live) == 1 and loop.live[0].when == 2.0
    s.cancel("c")
    assert [h.when for h in loop.live] == [3.0]
    loop.run_until(10.0)
    assert fired == [("a", 3.0), ("b", 5.0)]
    assert loop.live == [] and len(s) == 0


def test_equal_deadlines_fire_in_one_wakeup(loop: FakeLoop) -> None:
    fired: list[str] = []
    s: Scheduler[str] = Scheduler(loop, lambda k, now: fired.append(k))
    for k in "xyz":
        s.set(k, 1.0)
    loop.run_until(1.0)
    assert sorted(fired) == ["x", "y", "z"] and s.wakeups == 1


def test_fire_may_reschedule_itself(loop: FakeLoop) -> None:
    times: list[float] = []
    s: Scheduler[str] = Scheduler(loop, lambda k, now: (times.append(now), s.set(k, now + 1.0)))
    s.set("adv", 1.0)
    loop.run_until(4.5)
    assert times == [1.0, 2.0, 3.0, 4.0]
    assert s.deadline("adv") == 5.0


def test_lazy_deletion_stays_bounded(loop: FakeLoop) -> None:
    s: Scheduler[int] = Scheduler(loop, lambda k, now: None)
    for i in range(1000):
        s.set(i % 3, 100.0 + i)
    assert len(s._heap) < 4 * 3 + 16 + 1000  # compacted on cancel, lazily on pops
    for k in range(3):
        s.cancel(k)
    assert len(s._heap) <= 4 * 0 + 16 and loop.live == []


def test_lag_is_measured_on_every_wakeup(loop: FakeLoop) -> None:
    lags: list[float] = []
    s: Scheduler[str] = Scheduler(
        loop, lambda k, now: None, on_wakeup=lambda lag, now: lags.append(lag)
    )
    s.set("a", 1.0)
    loop.run_until(5.0, late=0.25)
    assert lags == [0.25] and s.max_lag == 0.25 and s.last_lag == 0.25


def test_takeover_margin_is_the_most_eager_backups_window() -> None:
    # priority 254 at 1 s, v2: MDI = 3 + 2/256; our advert was due after 1 s.
    assert takeover_margin(1.0, 2) == pytest.approx(2 + 2 / 256)
    assert takeover_margin(0.1, 3) == pytest.approx(master_down_interval(254, 0.1, 3) - 0.1)
    assert not should_step_down(0.5, 1.0, 2)
    assert should_step_down(2.1, 1.0, 2)
    assert should_step_down(0.25, 0.1, 3)


def _cfg(**kw) -> InstanceConfig:
    return InstanceConfig(
        name="VI_1",
        interface="eth0",
        vrid=51,
        virtual_ipaddresses=(ipaddress.ip_interface("192.0.2.100/24"),),
        **kw,
    )


def test_late_master_steps_down_through_the_fsm(loop: FakeLoop) -> None:
    """The speaker's rule, end to end on the fake loop: a master whose advert timer
    fires past the takeover margin gets StepDown -> BACKUP, VIPs removed."""
    fsm = VrrpFsm(_cfg(priority=255), ipaddress.ip_address("192.0.2.10"))
    actions: list = []

    def fire(key: str, now: float) -> None:
        actions.extend(fsm.poll(now))
        s.set(key, fsm.next_deadline())

    def on_wakeup(lag: float, now: float) -> None:
        if fsm.state is State.MASTER and should_step_down(lag, 1.0, 2):
            actions.extend(fsm.step(StepDown("lag"), now))
            s.set("i", fsm.next_deadline())

    s: Scheduler[str] = Scheduler(loop, fire, on_wakeup=on_wakeup)
    fsm.step(Startup(), 0.0)
    assert fsm.state is State.MASTER
    s.set("i", fsm.next_deadline())
    loop.run_until(3.0)  # on time: adverts only
    assert fsm.state is State.MASTER and s.max_lag == 0.0
    loop.run_until(4.0, late=2.5)  # the process was stopped: the 4 s advert ran at 6.5 s
    assert fsm.state is State.BACKUP
    assert RemoveVips() in actions and Notify(NotifyKind.BACKUP, 255) in actions


def test_stepdown_and_syncmaster_elsewhere_are_ignored() -> None:
    fsm = VrrpFsm(_cfg(priority=100), ipaddress.ip_address("192.0.2.10"))
    assert fsm.step(StepDown(), 0.0) == [] and fsm.state is State.INIT
    fsm.step(Startup(), 0.0)
    assert fsm.step(StepDown(), 0.1) == [] and fsm.state is State.BACKUP
    acts = fsm.step(SyncMaster(), 0.2)
    assert fsm.state is State.MASTER and acts[-1] == Notify(NotifyKind.MASTER, 100)
    assert fsm.step(SyncMaster(), 0.3) == [] and fsm.state is State.MASTER
