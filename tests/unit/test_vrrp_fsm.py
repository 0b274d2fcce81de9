"""The VRRP state machine with a fake clock: every `now` is chosen by the test."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylb.vrrp.fsm import ARMED_IN, TRANSITIONS, IllegalTransition, VrrpFsm, render_dot
from pylb.vrrp.timers import master_down_interval, skew_time
from pylb.vrrp.types import (
    EVENT_TYPES,
    TIMER_EVENTS,
    AddVips,
    AdverTimerFired,
    AdvertReceived,
    CancelTimer,
    FaultOff,
    FaultOn,
    InstanceConfig,
    MasterDownTimerFired,
    Notify,
    NotifyKind,
    PriorityChanged,
    RemoveVips,
    SendAdvert,
    SendGratuitous,
    SetTimer,
    Shutdown,
    Startup,
    State,
    TimerKind,
)

ip = ipaddress.ip_address
VIP4 = (ipaddress.ip_interface("192.0.2.100/24"),)
VIP6 = (ipaddress.ip_interface("2001:db8::100/64"),)
ME = ip("192.0.2.10")
PEER_LOW = ip("192.0.2.9")  # lower as an integer, higher as a string ("9" > "1")
PEER_HIGH = ip("192.0.2.11")


def cfg(**kw: object) -> InstanceConfig:
    base: dict[str, object] = dict(
        name="VI_1", interface="eth0", vrid=51, virtual_ipaddresses=VIP4, priority=100
    )
    base.update(kw)
    return InstanceConfig(**base)  # type: ignore[arg-type]


def started(c: InstanceConfig | None = None, me: ipaddress._BaseAddress = ME) -> VrrpFsm:
    m = VrrpFsm(c or cfg(), me)  # type: ignore[arg-type]
    m.step(Startup(), 0.0)
    return m


def master_at(t: float, c: InstanceConfig | None = None) -> VrrpFsm:
    """A machine that became master by timeout; returns it at time `t` >= MDI."""
    m = started(c)
    m.poll(m.next_deadline())  # type: ignore[arg-type]
    assert m.state is State.MASTER
    return m


def adv(prio: int, src: ipaddress._BaseAddress = PEER_LOW, interval: float = 1.0):
    return AdvertReceived(prio, src, interval)  # type: ignore[arg-type]


MDI_100 = master_down_interval(100, 1.0, 2)  # 3.609375


# ------------------------------------------------------------------ startup


def test_startup_backup_then_master_after_mdi() -> None:
    m = VrrpFsm(cfg(), ME)
    acts = m.step(Startup(), 10.0)
    assert m.state is State.BACKUP
    assert acts == [SetTimer(TimerKind.MASTER_DOWN, 10.0 + MDI_100), Notify(NotifyKind.BACKUP, 100)]
    assert m.next_deadline() == 10.0 + MDI_100
    assert m.poll(10.0 + MDI_100 - 0.01) == []
    assert m.state is State.BACKUP
    acts = m.poll(10.0 + MDI_100)
    assert m.state is State.MASTER
    # keepalived's order: advert first, then addresses, GARP, timer, notify.
    assert acts == [
        SendAdvert(100),
        AddVips(),
        SendGratuitous(),
        SetTimer(TimerKind.ADVER, 11.0 + MDI_100),
        Notify(NotifyKind.MASTER, 100),
    ]
    assert m.last_transition == (10.0 + MDI_100, State.BACKUP, State.MASTER)
    # The master then adverts every interval.
    assert m.poll(11.0 + MDI_100) == [SendAdvert(100), SetTimer(TimerKind.ADVER, 12.0 + MDI_100)]


def test_owner_255_is_master_at_once() -> None:
    m = VrrpFsm(cfg(priority=255), ME)
    acts = m.step(Startup(), 0.0)
    assert m.state is State.MASTER
    assert acts[:3] == [SendAdvert(255), AddVips(), SendGratuitous()]
    assert Notify(NotifyKind.MASTER, 255) in acts


def test_backup_following_master_never_times_out() -> None:
    m = started()
    for t in range(1, 30):
        acts = m.step(adv(150, PEER_HIGH), float(t))
        assert acts == [SetTimer(TimerKind.MASTER_DOWN, t + MDI_100)]
        assert m.poll(float(t) + 0.5) == []
    assert m.state is State.BACKUP
    assert m.master_ip == PEER_HIGH and m.master_priority == 150


# ------------------------------------------------------------------ preemption


def test_preempt_discards_lower_master_and_takes_over() -> None:
    m = started(cfg(priority=150))
    mdi = master_down_interval(150, 1.0, 2)
    for t in (1.0, 2.0, 3.0):
        assert m.step(adv(100), t) == []  # discarded: the timer keeps running
    assert m.master_ip == PEER_LOW  # recorded for show vrrp, as keepalived does
    acts = m.poll(mdi)
    assert m.state is State.MASTER and SendAdvert(150) in acts


def test_nopreempt_keeps_lower_master() -> None:
    m = started(cfg(priority=150, preempt=False))
    for t in range(1, 20):
        assert m.step(adv(100), float(t)) != []
        m.poll(float(t) + 0.9)
    assert m.state is State.BACKUP


def test_nopreempt_does_not_bind_the_owner() -> None:
    m = VrrpFsm(cfg(priority=255, preempt=False), ME)
    m.step(Startup(), 0.0)
    assert m.state is State.MASTER
    assert m.step(adv(100), 1.0) == [SendAdvert(255)]  # answers, stays master


def test_preempt_delay_obeys_lower_master_until_delay_passed() -> None:
    m = started(cfg(priority=150, preempt_delay=5.0))
    mdi = master_down_interval(150, 1.0, 2)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):  # first lower advert at 1 s: delay ends at 6 s
        assert m.step(adv(100), t) == [SetTimer(TimerKind.MASTER_DOWN, t + mdi)]
    for t in (6.0, 7.0, 8.0):
        assert m.step(adv(100), t) == []  # delay over: discard, let the timer run out
        m.poll(t + 0.4)  # the last obeyed advert (5 s) + MDI = 8.414 s
        assert m.state is State.BACKUP
    m.poll(5.0 + mdi)
    assert m.state is State.MASTER


def test_preempt_delay_restarts_after_a_higher_master() -> None:
    m = started(cfg(priority=150, preempt_delay=5.0))
    m.step(adv(100), 1.0)  # delay runs until 6
    m.step(adv(200, PEER_HIGH), 2.0)  # a better master: delay cleared
    assert m.preempt_at is None
    m.step(adv(100), 7.0)  # the lower one again: a new delay, until 12
    assert m.preempt_at == 12.0
    assert m.step(adv(100), 8.0) != []


# ------------------------------------------------------------------ master receiving


def test_higher_priority_advert_demotes_master() -> None:
    m = master_at(MDI_100)
    now = MDI_100 + 0.5
    acts = m.step(adv(150, PEER_HIGH), now)
    assert m.state is State.BACKUP
    assert acts == [
        CancelTimer(TimerKind.ADVER),
        RemoveVips(),
        SetTimer(TimerKind.MASTER_DOWN, now + MDI_100),
        Notify(NotifyKind.BACKUP, 100),
    ]


def test_lower_priority_advert_is_answered_at_once() -> None:
    m = master_at(MDI_100)
    assert m.step(adv(50), MDI_100 + 0.2) == [SendAdvert(100)]
    assert m.state is State.MASTER


def test_lower_prio_no_advert_stays_quiet() -> None:
    m = master_at(MDI_100, cfg(lower_prio_no_advert=True))
    assert m.step(adv(50), MDI_100 + 0.2) == []


def test_tie_broken_by_higher_address_as_integer() -> None:
    # 192.0.2.11 > 192.0.2.10 as integers: the peer wins.
    m = master_at(MDI_100)
    m.step(adv(100, PEER_HIGH), 5.0)
    assert m.state is State.BACKUP
    # 192.0.2.9 < 192.0.2.10 as integers (a string compare would say the opposite).
    m = master_at(MDI_100)
    assert m.step(adv(100, PEER_LOW), 5.0) == [SendAdvert(100)]
    assert m.state is State.MASTER


def test_tie_break_ipv6() -> None:
    c = cfg(version=3, virtual_ipaddresses=VIP6)
    me6 = ip("fe80::a")
    m = VrrpFsm(c, me6)
    m.step(Startup(), 0.0)
    m.poll(m.next_deadline())  # type: ignore[arg-type]
    assert m.state is State.MASTER
    m.step(adv(100, ip("fe80::9")), 5.0)
    assert m.state is State.MASTER
    m.step(adv(100, ip("fe80::1:0")), 5.5)  # 0x10000 > 0xa
    assert m.state is State.BACKUP


def test_master_answers_priority_zero_and_restarts_interval() -> None:
    m = master_at(MDI_100)
    acts = m.step(adv(0), 4.0)
    assert acts == [SendAdvert(100), SetTimer(TimerKind.ADVER, 5.0)]


# ------------------------------------------------------------------ priority 0, v3 learning


def test_priority_zero_means_skew_takeover() -> None:
    m = started()
    m.step(adv(150, PEER_HIGH), 1.0)
    acts = m.step(adv(0, PEER_HIGH), 2.0)
    skew = skew_time(100, 1.0, 2)
    assert acts == [SetTimer(TimerKind.MASTER_DOWN, 2.0 + skew)]
    m.poll(2.0 + skew)
    assert m.state is State.MASTER


def test_v3_backup_learns_master_interval() -> None:
    m = started(cfg(version=3, advert_interval=1.0))
    acts = m.step(adv(150, PEER_HIGH, interval=0.1), 1.0)
    assert m.master_adver_int == 0.1
    assert acts == [SetTimer(TimerKind.MASTER_DOWN, 1.0 + master_down_interval(100, 0.1, 3))]
    # The skew on priority 0 uses the learned interval too.
    acts = m.step(adv(0, PEER_HIGH, interval=0.1), 1.05)
    assert acts == [SetTimer(TimerKind.MASTER_DOWN, 1.05 + skew_time(100, 0.1, 3))]


def test_v2_backup_keeps_its_own_interval() -> None:
    m = started(cfg(version=2, advert_interval=1.0))
    m.step(adv(150, PEER_HIGH, interval=2.0), 1.0)
    assert m.master_adver_int == 1.0


# ------------------------------------------------------------------ fault


def test_fault_on_master_sends_zero_and_drops_vips() -> None:
    m = master_at(MDI_100)
    acts = m.step(FaultOn("eth0 down"), 5.0)
    assert m.state is State.FAULT
    assert acts == [
        CancelTimer(TimerKind.ADVER),
        SendAdvert(0),
        RemoveVips(),
        Notify(NotifyKind.FAULT, 100),
    ]
    assert m.next_deadline() is None
    assert m.step(adv(150, PEER_HIGH), 6.0) == []  # ignored while in fault
    acts = m.step(FaultOff(), 7.0)
    assert m.state is State.BACKUP
    assert acts == [SetTimer(TimerKind.MASTER_DOWN, 7.0 + MDI_100), Notify(NotifyKind.BACKUP, 100)]


def test_fault_backup_and_owner_recovery() -> None:
    m = started()
    acts = m.step(FaultOn(), 1.0)
    assert acts == [CancelTimer(TimerKind.MASTER_DOWN), Notify(NotifyKind.FAULT, 100)]
    o = VrrpFsm(cfg(priority=255), ME)
    o.step(Startup(), 0.0)
    o.step(FaultOn(), 1.0)
    o.step(FaultOff(), 2.0)
    assert o.state is State.MASTER


def test_fault_before_startup_starts_in_fault() -> None:
    m = VrrpFsm(cfg(), ME)
    m.step(FaultOn(), 0.0)
    assert m.state is State.INIT
    assert m.step(Startup(), 0.1) == [Notify(NotifyKind.FAULT, 100)]
    assert m.state is State.FAULT


# ------------------------------------------------------------------ shutdown


def test_master_shutdown_keeps_vips_until_peer_takes_over() -> None:
    m = master_at(MDI_100)
    t = 10.0
    acts = m.step(Shutdown(), t)
    assert m.state is State.STOPPING and m.holds_vips
    assert acts == [
        SendAdvert(0),
        SetTimer(TimerKind.ADVER, t + 1.0),
        SetTimer(TimerKind.STOP, t + 3.0),
    ]
    assert RemoveVips() not in acts
    # Priority 0 is repeated while waiting, in case the first one was lost.
    assert m.poll(t + 1.0) == [SendAdvert(0), SetTimer(TimerKind.ADVER, t + 2.0)]
    # A priority-0 advert from someone else is not a takeover.
    assert m.step(adv(0, PEER_HIGH), t + 1.2) == []
    # The peer's advert as master: now the VIPs go.
    acts = m.step(adv(100, PEER_HIGH), t + 1.6)
    assert m.state is State.INIT and not m.holds_vips
    assert acts == [
        CancelTimer(TimerKind.ADVER),
        CancelTimer(TimerKind.STOP),
        RemoveVips(),
        Notify(NotifyKind.STOP, 100),
    ]
    assert m.next_deadline() is None


def test_master_shutdown_bounded_without_peer() -> None:
    m = master_at(MDI_100)
    acts = m.step(Shutdown(), 10.0)
    for t in (11.0, 12.0, 13.0):
        acts += m.poll(t)
    assert m.state is State.INIT
    assert RemoveVips() in acts and Notify(NotifyKind.STOP, 100) in acts
    assert [a for a in acts if isinstance(a, SendAdvert)] == [SendAdvert(0)] * 4


def test_second_shutdown_releases_at_once() -> None:
    m = master_at(MDI_100)
    m.step(Shutdown(), 10.0)
    assert RemoveVips() in m.step(Shutdown(), 10.1)
    assert m.state is State.INIT


def test_backup_and_fault_shutdown() -> None:
    m = started()
    assert m.step(Shutdown(), 1.0) == [
        CancelTimer(TimerKind.MASTER_DOWN),
        Notify(NotifyKind.STOP, 100),
    ]
    assert m.state is State.INIT
    m.step(Startup(), 2.0)  # a stopped instance can start again
    assert m.state is State.BACKUP
    m.step(FaultOn(), 3.0)
    assert m.step(Shutdown(), 4.0) == [Notify(NotifyKind.STOP, 100)]


# ------------------------------------------------------------------ table discipline


def test_illegal_transition_raises_and_keeps_state() -> None:
    m = master_at(MDI_100)
    with pytest.raises(IllegalTransition):
        m.step(Startup(), 5.0)
    assert m.state is State.MASTER


def test_stale_timer_events_are_ignored() -> None:
    m = started()
    assert m.step(MasterDownTimerFired(), 1.0) == []  # not due yet
    assert m.step(AdverTimerFired(), 1.0) == []  # not armed in BACKUP
    assert m.state is State.BACKUP


def test_priority_change_rejects_zero() -> None:
    with pytest.raises(ValueError):
        PriorityChanged(0)


def test_priority_change_as_master_is_advertised() -> None:
    m = master_at(MDI_100)
    assert m.step(PriorityChanged(50), 5.0) == [SendAdvert(50)]
    assert m.step(PriorityChanged(50), 5.1) == []
    m.step(adv(100, PEER_LOW), 5.5)  # now the lower-addressed peer beats us
    assert m.state is State.BACKUP


def test_every_rule_names_real_methods() -> None:
    for (_state, etype), rules in TRANSITIONS.items():
        assert etype in EVENT_TYPES
        assert rules[-1].when is None, "the last rule of a key must be unguarded"
        for r in rules:
            assert callable(getattr(VrrpFsm, r.do))
            assert r.when is None or callable(getattr(VrrpFsm, r.when))


def test_committed_dot_matches_table() -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "vrrp-fsm.dot"
    assert path.read_text() == render_dot(), "run: python -m pylb.vrrp.fsm > docs/vrrp-fsm.dot"


# ------------------------------------------------------------------ two and three nodes


@dataclass
class Sim:
    """Nodes on a lossless wire with 1 ms latency; every SendAdvert reaches all others."""

    nodes: dict[str, VrrpFsm]
    now: float = 0.0
    wire: list[tuple[float, str, AdvertReceived]] = field(default_factory=list)
    holders: dict[str, bool] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)  # crashed or link down: deaf and mute

    def apply(self, name: str, acts: list) -> None:
        m = self.nodes[name]
        for a in acts:
            if isinstance(a, SendAdvert):
                if name in self.cut:
                    continue
                ev = AdvertReceived(a.priority, m.primary_ip, m.cfg.advert_interval)
                at = self.now + 0.001
                self.wire += [(at, other, ev) for other in self.nodes if other != name]
            elif isinstance(a, AddVips):
                self.holders[name] = True
            elif isinstance(a, RemoveVips):
                self.holders[name] = False

    def step(self, name: str, ev: object) -> None:
        self.apply(name, self.nodes[name].step(ev, self.now))  # type: ignore[arg-type]

    def run_until(self, t_end: float) -> None:
        # A broken machine can ping-pong adverts every millisecond; fail fast instead
        # of letting hypothesis shrink 30 000-event runs for minutes.
        for _ in range(1000):
            times = [d for m in self.nodes.values() if (d := m.next_deadline()) is not None]
            times += [w[0] for w in self.wire]
            t = min(times, default=t_end + 1)
            if t > t_end:
                self.now = t_end
                return
            self.now = t
            due = [w for w in self.wire if w[0] <= t]
            self.wire = [w for w in self.wire if w[0] > t]
            for _, name, ev in due:
                if name not in self.cut:
                    self.step(name, ev)
            for name, m in self.nodes.items():
                self.apply(name, m.poll(t))
        raise AssertionError(f"no quiet network by {t_end}: an advert storm")

    def masters(self) -> list[str]:
        return sorted(n for n, held in self.holders.items() if held)


def _sim(*prios: int, **kw: object) -> Sim:
    nodes = {
        f"n{i}": VrrpFsm(cfg(priority=p, **kw), ip(f"192.0.2.{i + 1}")) for i, p in enumerate(prios)
    }
    s = Sim(nodes)
    for name in nodes:
        s.step(name, Startup())
    return s


def test_three_nodes_elect_highest_and_fail_over() -> None:
    s = _sim(100, 150, 120)
    s.run_until(10.0)
    assert s.masters() == ["n1"]
    # Clean stop of the master: n2 (next best) takes over after its skew, n1 then lets go.
    t_stop = s.now
    s.step("n1", Shutdown())
    s.run_until(t_stop + skew_time(120, 1.0, 2) + 0.01)
    assert s.nodes["n2"].state is State.MASTER
    s.run_until(t_stop + 1.0)
    assert s.masters() == ["n2"] and s.nodes["n1"].state is State.INIT
    # Restart of n1 with preempt: it takes the VIP back.
    s.step("n1", Startup())
    s.run_until(s.now + 10.0)
    assert s.masters() == ["n1"]


def test_equal_priorities_converge_on_highest_address() -> None:
    s = _sim(100, 100, 100)
    s.run_until(10.0)
    # All three time out together; the highest address wins the ties.
    assert s.masters() == ["n2"]


# ------------------------------------------------------------------ hypothesis

ADDRS = [ip("192.0.2.5"), ME, ip("192.0.2.200")]
event_st = st.one_of(
    st.just(Startup()),
    st.just(Shutdown()),
    st.just(FaultOn()),
    st.just(FaultOff()),
    st.builds(PriorityChanged, st.integers(1, 255)),
    st.builds(
        AdvertReceived,
        st.integers(0, 255),
        st.sampled_from(ADDRS),
        st.sampled_from([0.1, 1.0, 2.0]),
    ),
    st.builds(lambda dt: ("tick", dt), st.floats(0.0, 5.0)),
)


@settings(max_examples=300, deadline=None)
@given(
    priority=st.integers(1, 255),
    version=st.sampled_from([2, 3]),
    preempt=st.booleans(),
    delay=st.sampled_from([0.0, 2.0]),
    events=st.lists(event_st, max_size=60),
)
def test_random_sequences_keep_invariants(priority, version, preempt, delay, events) -> None:
    m = VrrpFsm(cfg(priority=priority, version=version, preempt=preempt, preempt_delay=delay), ME)
    now, held = 0.0, False

    def one_at_a_time():
        """Ticks become the due timer events, earliest first, so each step is checked."""
        nonlocal now
        for ev in events:
            if not isinstance(ev, tuple):
                yield ev
                continue
            now += ev[1]
            while (d := m.next_deadline()) is not None and d <= now:
                kind = min(m.deadlines, key=lambda k: (m.deadlines[k], k.value))
                yield TIMER_EVENTS[kind]()

    for ev in one_at_a_time():
        before = m.state
        try:
            acts = m.step(ev, now)
        except IllegalTransition:
            assert isinstance(ev, Startup) and before is not State.INIT
            assert m.state is before
            continue
        for a in acts:
            if isinstance(a, AddVips):
                assert not held, "VIPs added twice"
                held = True
            elif isinstance(a, RemoveVips):
                assert held, "VIPs removed while not held"
                held = False
            elif isinstance(a, SendAdvert):
                if a.priority == 0:
                    assert m.state in (State.STOPPING, State.FAULT)
                else:
                    assert m.state is State.MASTER and a.priority == m.priority
        # VIPs are held exactly while the machine is MASTER (or STOPPING, still master).
        assert held == m.holds_vips == (m.state in (State.MASTER, State.STOPPING))
        assert set(m.deadlines) <= ARMED_IN[m.state]
        if m.state is State.BACKUP:
            assert TimerKind.MASTER_DOWN in m.deadlines
        if m.state in (State.MASTER, State.STOPPING):
            assert TimerKind.ADVER in m.deadlines
        notes = [a.state for a in acts if isinstance(a, Notify)]
        if m.state is not before:
            want = {
                State.MASTER: NotifyKind.MASTER,
                State.BACKUP: NotifyKind.BACKUP,
                State.FAULT: NotifyKind.FAULT,
                State.INIT: NotifyKind.STOP,
            }.get(m.state)
            assert notes == ([want] if want else [])
        else:
            assert notes == []


def test_snapshot_for_show_vrrp() -> None:
    m = master_at(MDI_100)
    snap = m.snapshot()
    assert snap["state"] == "MASTER" and snap["master_ip"] == "192.0.2.10"
    assert snap["last_transition"] == {"at": MDI_100, "from": "BACKUP", "to": "MASTER"}
    assert snap["transitions"] == 2  # INIT -> BACKUP -> MASTER


node_op = st.one_of(
    st.tuples(st.sampled_from(["crash", "start", "stop", "fault", "unfault"]), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.floats(0.0, 5.0)),
)


@settings(max_examples=150, deadline=None)
@given(
    prios=st.lists(st.sampled_from([1, 100, 100, 150, 254, 255]), min_size=2, max_size=3),
    preempt=st.lists(st.booleans(), min_size=3, max_size=3),
    version=st.sampled_from([2, 3]),
    ops=st.lists(node_op, max_size=25),
)
def test_random_cluster_converges_to_one_holder(prios, preempt, version, ops) -> None:
    """Crashes, restarts, clean stops and link faults in any order: once the network
    is quiet, exactly one reachable node is MASTER and only it holds the VIPs."""
    names = [f"n{i}" for i in range(len(prios))]

    def fresh(i: int) -> VrrpFsm:
        c = cfg(priority=prios[i], preempt=preempt[i], version=version)
        return VrrpFsm(c, ip(f"192.0.2.{i + 1}"))

    s = Sim({n: fresh(i) for i, n in enumerate(names)})
    crashed: set[str] = set()
    link_down: set[str] = set()
    for n in names:
        s.step(n, Startup())
    for op, arg in ops:
        if op == "wait":
            s.run_until(s.now + arg)
            continue
        i = arg % len(names)
        n = names[i]
        if op == "crash" and n not in crashed:
            crashed.add(n)
            s.cut.add(n)
            s.holders[n] = False  # a crashed machine's addresses go with it
            s.nodes[n] = fresh(i)
        elif op == "start" and s.nodes[n].state is State.INIT:
            crashed.discard(n)
            if n in link_down:
                s.step(n, FaultOn())  # the restarted speaker finds its link down
            else:
                s.cut.discard(n)
            s.step(n, Startup())
        elif op == "stop" and n not in crashed:
            s.step(n, Shutdown())
        elif op == "fault" and n not in crashed and n not in link_down:
            link_down.add(n)
            s.cut.add(n)
            s.step(n, FaultOn())
        elif op == "unfault" and n in link_down:
            link_down.discard(n)
            if n not in crashed:
                s.cut.discard(n)
                s.step(n, FaultOff())
    s.run_until(s.now + 30.0)
    live = [n for n in names if n not in s.cut and s.nodes[n].state is not State.INIT]
    masters = [n for n in names if s.nodes[n].state is State.MASTER]
    assert all(s.nodes[n].state is not State.STOPPING for n in names)
    if live:
        assert len(masters) == 1 and masters[0] in live, (masters, live)
        assert s.masters() == masters
    else:
        assert s.masters() == masters == []
