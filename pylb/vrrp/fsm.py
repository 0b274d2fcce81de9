"""The VRRP state machine of RFC 5798 §6.4 (and RFC 3768 §6.4), as a pure class.

No sockets and no clock: the I/O shell feeds events with the current time (`step`) and
executes the returned actions in order; it fires timers by calling `poll(now)` at
`next_deadline()` (one deadline per instance, as keepalived's `sands`). Every rule is in
`TRANSITIONS`, keyed by (state, event type) (h11's habit, STYLE.md 1.1); a missing key is
an `IllegalTransition` (a shell bug), and nothing outside `step` assigns `.state`.

::

                   Startup [owner: priority 255]
        +-------------------------------------------------+
        |                                                 v
     +------+  Startup   +--------+  master down timer  +--------+ --+ advert timer:
     | INIT | ---------> | BACKUP | ------------------> | MASTER |   | send advert
     +------+ <--------- +--------+ <------------------ +--------+ <-+
       ^  ^   Shutdown     |   ^     better advert         |   |
       |  |                |   |                           |   | Shutdown: send
       |  |       FaultOn  |   | FaultOff       FaultOn:   |   | priority 0, keep
       |  |                v   | (owner: MASTER) prio 0,   |   v the VIPs
       |  |  Shutdown   +-------+   VIPs removed           |  +----------+ --+ advert timer:
       |  +------------ | FAULT | <------------------------+  | STOPPING |   | priority 0
       |                +-------+                             +----------+ <-+ again
       |                                                           |
       +-----------------------------------------------------------+
          peer's advert as master, stop timer (3 intervals), second Shutdown
          or FaultOn: VIPs removed, notify STOP

A "better advert" has a higher priority, or the same priority and a higher primary
address (RFC 5798 §6.4.3, compared as integers).

Backup receiving an advert (RFC 5798 §6.4.2): priority 0 -> Master_Down_Timer =
Skew_Time; preempt off, or priority >= ours, or inside preempt_delay -> accept it as
master (learn Master_Adver_Interval in v3, reset the timer to Master_Down_Interval);
otherwise discard it, so the timer runs out and we preempt. Master receiving an advert
(§6.4.3): priority 0 -> answer at once; a better one -> Backup; a worse one -> answer at
once (keepalived's default, `lower_prio_no_advert` turns it off).

STOPPING is pylb's change to the RFC's Master Shutdown (ARCHITECTURE.md "Stopping a node"):
the priority-0 advert is sent but the VIPs stay until the peer's advert as master is seen
or three advert intervals pass, so no connection is refused while clients still reach us.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pylb.vrrp.timers import master_down_interval, skew_time
from pylb.vrrp.types import (
    PRIO_OWNER,
    PRIO_STOP,
    TIMER_EVENTS,
    Action,
    AddVips,
    AdverTimerFired,
    AdvertReceived,
    CancelTimer,
    Event,
    FaultOff,
    FaultOn,
    InstanceConfig,
    IPAddress,
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
    StepDown,
    StopTimerFired,
    SyncMaster,
    TimerKind,
)

# asyncio may run a call_at callback up to its clock resolution early; a timer event
# that arrives within this slack of its deadline counts as due.
TIMER_SLACK = 0.001
# ARCHITECTURE.md: after priority 0, hold the VIPs at most this many advert intervals.
STOP_HOLD_INTERVALS = 3


class IllegalTransition(Exception):
    """An event the current state has no rule for: a bug in whoever fed it."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One outcome of (state, event): if `when` holds, run `do` and go to `target`.

    `when` and `do` name methods of `VrrpFsm`, so the table stays plain data that
    `render_dot` can draw. Rules of one key are tried in order; `when=None` is "else".
    """

    target: State
    do: str
    when: str | None = None
    label: str = ""


S = State
_IGNORE = "_ignore"
# Handlers that only record a fact and never act: `render_dot` leaves their loops out.
_BOOKKEEPING = frozenset({_IGNORE, "_set_priority", "_mark_fault", "_clear_fault"})

TRANSITIONS: dict[tuple[State, type], tuple[Rule, ...]] = {
    # -- Initialize (RFC 5798 §6.4.1)
    (S.INIT, Startup): (
        Rule(S.FAULT, "_enter_fault", "_in_fault", "tracked interface down"),
        Rule(S.MASTER, "_become_master", "_is_owner", "owner (255)"),
        Rule(S.MASTER, "_become_master", "_resumes", "resume (reload)"),
        Rule(S.BACKUP, "_become_backup"),
    ),
    (S.INIT, Shutdown): (Rule(S.INIT, _IGNORE),),
    (S.INIT, AdvertReceived): (Rule(S.INIT, _IGNORE),),
    (S.INIT, FaultOn): (Rule(S.INIT, "_mark_fault"),),
    (S.INIT, FaultOff): (Rule(S.INIT, "_clear_fault"),),
    (S.INIT, PriorityChanged): (Rule(S.INIT, "_set_priority"),),
    # -- Backup (RFC 5798 §6.4.2)
    (S.BACKUP, Shutdown): (Rule(S.INIT, "_stop_quietly"),),
    (S.BACKUP, MasterDownTimerFired): (Rule(S.MASTER, "_become_master"),),
    (S.BACKUP, AdvertReceived): (
        Rule(S.BACKUP, "_arm_skew", "_adv_prio_zero", "priority 0: timer = Skew_Time"),
        Rule(S.BACKUP, "_follow_master", "_backup_accepts", "accepted: timer = MDI"),
        Rule(S.BACKUP, "_discard_lower", None, "lower, preempting: discard"),
    ),
    (S.BACKUP, FaultOn): (Rule(S.FAULT, "_enter_fault"),),
    (S.BACKUP, FaultOff): (Rule(S.BACKUP, "_clear_fault"),),
    (S.BACKUP, PriorityChanged): (Rule(S.BACKUP, "_set_priority"),),
    # -- Master (RFC 5798 §6.4.3)
    (S.MASTER, Shutdown): (Rule(S.STOPPING, "_begin_stop", None, "send priority 0"),),
    (S.MASTER, AdverTimerFired): (Rule(S.MASTER, "_send_periodic"),),
    (S.MASTER, AdvertReceived): (
        Rule(S.MASTER, "_answer_advert", "_adv_prio_zero", "priority 0: answer"),
        Rule(S.BACKUP, "_step_down", "_adv_beats_us", "higher priority, or equal + higher IP"),
        Rule(S.MASTER, "_answer_lower", None, "lower: answer"),
    ),
    (S.MASTER, FaultOn): (Rule(S.FAULT, "_master_fault", None, "send priority 0"),),
    (S.MASTER, FaultOff): (Rule(S.MASTER, "_clear_fault"),),
    (S.MASTER, PriorityChanged): (Rule(S.MASTER, "_master_priority"),),
    # -- Stopping (pylb: a Master that sent priority 0 and still holds the VIPs)
    (S.STOPPING, AdvertReceived): (
        Rule(S.STOPPING, _IGNORE, "_adv_prio_zero"),
        Rule(S.INIT, "_release", None, "peer is master"),
    ),
    (S.STOPPING, AdverTimerFired): (Rule(S.STOPPING, "_resend_zero"),),
    (S.STOPPING, StopTimerFired): (Rule(S.INIT, "_release"),),
    (S.STOPPING, Shutdown): (Rule(S.INIT, "_release", None, "second stop"),),
    (S.STOPPING, FaultOn): (Rule(S.INIT, "_release_fault"),),
    (S.STOPPING, FaultOff): (Rule(S.STOPPING, "_clear_fault"),),
    (S.STOPPING, PriorityChanged): (Rule(S.STOPPING, "_set_priority"),),
    # -- Fault (keepalived: a tracked interface is down)
    (S.FAULT, FaultOff): (
        Rule(S.MASTER, "_become_master", "_is_owner", "owner (255)"),
        Rule(S.BACKUP, "_become_backup"),
    ),
    (S.FAULT, FaultOn): (Rule(S.FAULT, _IGNORE),),
    (S.FAULT, AdvertReceived): (Rule(S.FAULT, _IGNORE),),
    (S.FAULT, Shutdown): (Rule(S.INIT, "_stop_quietly"),),
    (S.FAULT, PriorityChanged): (Rule(S.FAULT, "_set_priority"),),
    # -- pylb: forced moves (scheduler lag, sync groups); ignored where they mean nothing
    (S.MASTER, StepDown): (Rule(S.BACKUP, "_yield_master", None, "late timer / sync"),),
    (S.BACKUP, SyncMaster): (Rule(S.MASTER, "_become_master", None, "sync group"),),
    **{(s, StepDown): (Rule(s, _IGNORE),) for s in (S.INIT, S.BACKUP, S.FAULT, S.STOPPING)},
    **{(s, SyncMaster): (Rule(s, _IGNORE),) for s in (S.INIT, S.MASTER, S.FAULT, S.STOPPING)},
}

# Which timers may be armed in each state: the shell and the tests can rely on it.
ARMED_IN: dict[State, frozenset[TimerKind]] = {
    S.INIT: frozenset(),
    S.FAULT: frozenset(),
    S.BACKUP: frozenset({TimerKind.MASTER_DOWN}),
    S.MASTER: frozenset({TimerKind.ADVER}),
    S.STOPPING: frozenset({TimerKind.ADVER, TimerKind.STOP}),
}
HOLDS_VIPS: frozenset[State] = frozenset({S.MASTER, S.STOPPING})


class VrrpFsm:
    """One VRRP instance's decisions. `step(event, now)` returns what to do, in order.

    `primary_ip` is the address our adverts come from (the interface's primary address,
    or `unicast.src`): it breaks ties between equal priorities (RFC 5798 §6.4.3).
    """

    __slots__ = (
        "cfg",
        "deadlines",
        "fault",
        "last_transition",
        "master_adver_int",
        "master_ip",
        "master_priority",
        "preempt_at",
        "primary_ip",
        "priority",
        "state",
        "transitions",
    )

    def __init__(
        self, cfg: InstanceConfig, primary_ip: IPAddress, *, priority: int | None = None
    ) -> None:
        self.cfg = cfg
        self.primary_ip = primary_ip
        self.priority = cfg.priority if priority is None else priority
        self.state = State.INIT
        self.master_adver_int = cfg.advert_interval
        self.master_ip: IPAddress | None = None
        self.master_priority: int | None = None
        self.preempt_at: float | None = None
        self.fault = False
        self.deadlines: dict[TimerKind, float] = {}
        self.last_transition: tuple[float, State, State] | None = None
        self.transitions = 0

    # ------------------------------------------------------------------ driving

    def step(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time `now` (seconds, the shell's monotonic clock)."""
        kind = _TIMER_KIND.get(type(event))
        if kind is not None:
            deadline = self.deadlines.get(kind)
            if deadline is None or deadline > now + TIMER_SLACK:
                return []  # stale: the timer was moved or cancelled after it was queued
        rules = TRANSITIONS.get((self.state, type(event)))
        if rules is None:
            raise IllegalTransition(f"{type(event).__name__} in state {self.state.value}")
        if kind is not None:
            del self.deadlines[kind]  # it fired; the handler re-arms it if it wants
        for rule in rules:
            if rule.when is None or getattr(self, rule.when)(event, now):
                break
        else:  # every rule guarded and none held: the table is incomplete
            raise IllegalTransition(f"no rule matched {event!r} in state {self.state.value}")
        do: Callable[[Event, float], list[Action]] = getattr(self, rule.do)
        actions = do(event, now)
        old = self.state
        if rule.target is not old:
            self.state = rule.target
            self.last_transition = (now, old, rule.target)
            self.transitions += 1
        return actions

    def next_deadline(self) -> float | None:
        """Earliest armed timer: the shell keeps one `call_at` for it."""
        return min(self.deadlines.values(), default=None)

    def poll(self, now: float) -> list[Action]:
        """Fire every timer due at `now`, earliest first."""
        actions: list[Action] = []
        while True:
            due = [(d, k.value, k) for k, d in self.deadlines.items() if d <= now + TIMER_SLACK]
            if not due:
                return actions
            _, _, kind = min(due)
            actions += self.step(TIMER_EVENTS[kind](), now)

    @property
    def holds_vips(self) -> bool:
        return self.state in HOLDS_VIPS

    def snapshot(self) -> dict[str, object]:
        """Plain data for `pylb ctl show vrrp` (the drop counters live in `stats`)."""
        last = self.last_transition
        return {
            "name": self.cfg.name,
            "vrid": self.cfg.vrid,
            "state": self.state.value,
            "priority": self.priority,
            "base_priority": self.cfg.priority,
            "master_ip": None if self.master_ip is None else str(self.master_ip),
            "master_priority": self.master_priority,
            "master_adver_int": self.master_adver_int,
            "fault": self.fault,
            "transitions": self.transitions,
            "last_transition": None
            if last is None
            else {"at": last[0], "from": last[1].value, "to": last[2].value},
        }

    # ------------------------------------------------------------------ guards

    def _is_owner(self, ev: Event, now: float) -> bool:
        return self.priority == PRIO_OWNER

    def _in_fault(self, ev: Event, now: float) -> bool:
        return self.fault

    def _resumes(self, ev: Startup, now: float) -> bool:
        return ev.resume

    def _adv_prio_zero(self, ev: AdvertReceived, now: float) -> bool:
        return ev.priority == PRIO_STOP

    def _backup_accepts(self, ev: AdvertReceived, now: float) -> bool:
        """RFC 5798 §6.4.2 "Preempt_Mode is False, or priority >= local", plus
        keepalived's preempt_delay: a lower master is obeyed until the delay, started
        when it was first seen, has passed. The owner always preempts (§6.1)."""
        if ev.priority >= self.priority:
            return True
        if self.priority == PRIO_OWNER:
            return False
        if not self.cfg.preempt:
            return True
        return self.cfg.preempt_delay > 0 and (self.preempt_at is None or now < self.preempt_at)

    def _adv_beats_us(self, ev: AdvertReceived, now: float) -> bool:
        """RFC 5798 §6.4.3: higher priority, or equal priority and a higher primary
        address, compared as unsigned integers (v4 and v6 alike)."""
        if ev.priority != self.priority:
            return ev.priority > self.priority
        return int(ev.src_ip) > int(self.primary_ip)

    # ------------------------------------------------------------------ timers

    def _arm(self, kind: TimerKind, deadline: float) -> SetTimer:
        self.deadlines[kind] = deadline
        return SetTimer(kind, deadline)

    def _cancel_all(self) -> list[Action]:
        cancels: list[Action] = [CancelTimer(k) for k in sorted(self.deadlines, key=_kind_order)]
        self.deadlines.clear()
        return cancels

    def _mdi(self) -> float:
        return master_down_interval(self.priority, self.master_adver_int, self.cfg.version)

    def _learn_master(self, ev: AdvertReceived) -> None:
        # v2 adverts with another interval never get here (packet.validate: INTERVAL).
        if self.cfg.version == 3:
            self.master_adver_int = ev.max_adver_int
        self.master_ip = ev.src_ip
        self.master_priority = ev.priority

    # ------------------------------------------------------------------ handlers

    def _ignore(self, ev: Event, now: float) -> list[Action]:
        return []

    def _mark_fault(self, ev: Event, now: float) -> list[Action]:
        self.fault = True
        return []

    def _clear_fault(self, ev: Event, now: float) -> list[Action]:
        self.fault = False
        return []

    def _set_priority(self, ev: PriorityChanged, now: float) -> list[Action]:
        self.priority = ev.priority
        return []

    def _become_master(self, ev: Event, now: float) -> list[Action]:
        # keepalived vrrp_state_master_tx: advert first, so the old master drops the
        # VIPs before our gratuitous ARPs; then addresses, GARP, notify.
        self.fault = False
        self.preempt_at = None
        self.master_ip = self.primary_ip
        self.master_priority = self.priority
        acts = self._cancel_all()
        acts += [SendAdvert(self.priority), AddVips(), SendGratuitous()]
        acts.append(self._arm(TimerKind.ADVER, now + self.cfg.advert_interval))
        acts.append(Notify(NotifyKind.MASTER, self.priority))
        return acts

    def _become_backup(self, ev: Event, now: float) -> list[Action]:
        self.fault = False
        self.preempt_at = None
        self.master_ip = None
        self.master_priority = None
        self.master_adver_int = self.cfg.advert_interval  # RFC 5798 §6.4.1
        acts = self._cancel_all()
        acts.append(self._arm(TimerKind.MASTER_DOWN, now + self._mdi()))
        acts.append(Notify(NotifyKind.BACKUP, self.priority))
        return acts

    def _enter_fault(self, ev: Event, now: float) -> list[Action]:
        self.fault = True
        acts = self._cancel_all()
        acts.append(Notify(NotifyKind.FAULT, self.priority))
        return acts

    def _stop_quietly(self, ev: Event, now: float) -> list[Action]:
        acts = self._cancel_all()
        acts.append(Notify(NotifyKind.STOP, self.priority))
        return acts

    def _arm_skew(self, ev: AdvertReceived, now: float) -> list[Action]:
        """The master said goodbye: take over after Skew_Time, not the full MDI."""
        skew = skew_time(self.priority, self.master_adver_int, self.cfg.version)
        return [self._arm(TimerKind.MASTER_DOWN, now + skew)]

    def _follow_master(self, ev: AdvertReceived, now: float) -> list[Action]:
        self._learn_master(ev)
        if self.cfg.preempt_delay > 0:
            if ev.priority >= self.priority:
                self.preempt_at = None
            elif self.preempt_at is None:
                self.preempt_at = now + self.cfg.preempt_delay
        return [self._arm(TimerKind.MASTER_DOWN, now + self._mdi())]

    def _discard_lower(self, ev: AdvertReceived, now: float) -> list[Action]:
        # keepalived still records who claims to be master, for `show vrrp`.
        self.master_ip = ev.src_ip
        self.master_priority = ev.priority
        return []

    def _send_periodic(self, ev: Event, now: float) -> list[Action]:
        return [
            SendAdvert(self.priority),
            self._arm(TimerKind.ADVER, now + self.cfg.advert_interval),
        ]

    _answer_advert = _send_periodic  # priority 0 seen: advert now, restart the interval

    def _answer_lower(self, ev: AdvertReceived, now: float) -> list[Action]:
        if self.cfg.lower_prio_no_advert:
            return []
        return [SendAdvert(self.priority)]

    def _step_down(self, ev: AdvertReceived, now: float) -> list[Action]:
        self._learn_master(ev)
        acts = self._cancel_all()
        acts.append(RemoveVips())
        acts.append(self._arm(TimerKind.MASTER_DOWN, now + self._mdi()))
        acts.append(Notify(NotifyKind.BACKUP, self.priority))
        return acts

    def _yield_master(self, ev: Event, now: float) -> list[Action]:
        """Like `_step_down` without a new master to learn: VIPs off, wait as BACKUP
        for a full Master_Down_Interval (a live peer's advert arrives well before)."""
        self.master_ip = None
        self.master_priority = None
        acts = self._cancel_all()
        acts.append(RemoveVips())
        acts.append(self._arm(TimerKind.MASTER_DOWN, now + self._mdi()))
        acts.append(Notify(NotifyKind.BACKUP, self.priority))
        return acts

    def _master_fault(self, ev: Event, now: float) -> list[Action]:
        self.fault = True
        acts = self._cancel_all()
        acts += [SendAdvert(PRIO_STOP), RemoveVips(), Notify(NotifyKind.FAULT, self.priority)]
        return acts

    def _master_priority(self, ev: PriorityChanged, now: float) -> list[Action]:
        changed = ev.priority != self.priority
        self.priority = ev.priority
        self.master_priority = ev.priority
        # Tell the backups now: a preempting backup then sees the lower priority at once.
        return [SendAdvert(self.priority)] if changed else []

    def _begin_stop(self, ev: Event, now: float) -> list[Action]:
        adv = self.cfg.advert_interval
        return [
            SendAdvert(PRIO_STOP),
            self._arm(TimerKind.ADVER, now + adv),
            self._arm(TimerKind.STOP, now + STOP_HOLD_INTERVALS * adv),
        ]

    def _resend_zero(self, ev: Event, now: float) -> list[Action]:
        # A lost priority-0 advert would cost the backup a whole MDI; repeat it.
        return [SendAdvert(PRIO_STOP), self._arm(TimerKind.ADVER, now + self.cfg.advert_interval)]

    def _release(self, ev: Event, now: float) -> list[Action]:
        acts = self._cancel_all()
        acts += [RemoveVips(), Notify(NotifyKind.STOP, self.priority)]
        return acts

    def _release_fault(self, ev: Event, now: float) -> list[Action]:
        self.fault = True
        return self._release(ev, now)


_TIMER_KIND: dict[type, TimerKind] = {v: k for k, v in TIMER_EVENTS.items()}


def _kind_order(kind: TimerKind) -> str:
    return kind.value


def render_dot() -> str:
    """Graphviz source of `TRANSITIONS` (docs/vrrp-fsm.dot; a test keeps it current).

    Self-loops that only record a fact (`_BOOKKEEPING`) are left out: nothing happens.
    """
    lines = [
        "// Generated by pylb.vrrp.fsm.render_dot() from TRANSITIONS; do not edit.",
        "digraph vrrp_fsm {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    lines += [f"  {s.value};" for s in State]
    for (state, etype), rules in TRANSITIONS.items():
        for rule in rules:
            if rule.target is state and rule.do in _BOOKKEEPING:
                continue
            label = etype.__name__ + (f"\\n[{rule.label}]" if rule.label else "")
            lines.append(f'  {state.value} -> {rule.target.value} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m pylb.vrrp.fsm > docs/vrrp-fsm.dot
    print(render_dot(), end="")
