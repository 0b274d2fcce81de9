"""The VRRP speaker process: sockets, VIPs, timers and tracking around the pure FSM.

One process (ARCHITECTURE.md "Process model"): forked by the master, or run alone with
``python -m pylb.vrrp.speaker -c CONFIG``. A data plane that saturates its own loop
cannot delay an advert here.

Per instance: a `VrrpFsm` (decisions), an `ActionRunner` (VIPs, GARP, adverts, notify),
a `DropStats`. Shared: one raw `VrrpSocket` per (interface, family, unicast setup),
read with `loop.add_reader`, adverts dispatched by VRID; one `GarpSocket` per
interface; one rtnetlink channel; one `LinkWatcher`; one `Scheduler` (a heap of
instance deadlines and a single `call_at`).

Receive: `packet.decode` once, pick the instance by VRID (unknown VRIDs are judged, and
counted, by the socket's first instance: `packet.validate` then says VRID_UNKNOWN after
TTL, version and checksum), `packet.validate`, count the verdict (rate-limited log),
feed accepted adverts to the FSM.

Start: stale VIPs of every instance are removed, the link state is read (a tracked
link that is down puts the instance in FAULT before it starts), then `Startup`.

SIGTERM (ARCHITECTURE.md "Stopping a node that holds the VIP"): every instance gets
`Shutdown`. A MASTER sends priority 0 and keeps its VIPs (STOPPING) until the peer's
advert as master arrives or 3 advert intervals pass; then VIPs go, STOP notify runs,
and the process exits 0 once every instance is down and the notify scripts finished
(bounded). A second SIGTERM releases at once. Under `pylb run` the VIPs stay
`release_linger` seconds after the peer's advert, for the requests in flight.

SIGUSR2 (`pylb run` reload restarting the speaker): `hand_over()`, exit at once leaving
the VIPs and sending no priority 0; the successor, started with `resume`, finds them and
starts those instances as MASTER (`Startup(resume=True)`).

Sync groups: an instance's transition is applied to its group (`ON_TRANSITION`):
to MASTER -> members in BACKUP follow (`SyncMaster`); MASTER -> BACKUP -> members in
MASTER step down (`StepDown`); a member's fault is a fault of every member.

`show vrrp`: `snapshot()` (JSON-able), `show_vrrp_text()`; served on
`vrrp.control_socket` and written to `vrrp.state_file` after every transition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from typing import Any

from pylb.config.errors import ConfigError
from pylb.vrrp import packet
from pylb.vrrp.actions import ActionRunner
from pylb.vrrp.config import SyncGroup, VrrpConfig, load_vrrp_file
from pylb.vrrp.control import show_vrrp_text
from pylb.vrrp.fsm import VrrpFsm
from pylb.vrrp.garp import GarpPacer, GarpSocket, frames_for
from pylb.vrrp.notify import Notifier
from pylb.vrrp.scheduler import Scheduler, should_step_down
from pylb.vrrp.stats import DropStats
from pylb.vrrp.track import HealthMonitor, ScriptTracker, effect, tracked_interfaces
from pylb.vrrp.transport import Datagram, VrrpSocket
from pylb.vrrp.types import (
    AdvertReceived,
    Event,
    FaultOff,
    FaultOn,
    Notify,
    PriorityChanged,
    RemoveVips,
    Shutdown,
    Startup,
    State,
    StepDown,
    SyncMaster,
    effective_priority,
)
from pylb.vrrp.vip import LinkChange, LinkWatcher, Rtnl, VipManager

log = logging.getLogger("pylb.vrrp")

STOP_SLACK = 1.0  # beyond 3 advert intervals, before a stop releases regardless
NOTIFY_DRAIN = 5.0  # at exit: how long STOP notify scripts may still run


class Instance:
    """One VRRP instance at run time."""

    __slots__ = (
        "cfg",
        "delta",
        "fsm",
        "group",
        "own_faults",
        "runner",
        "scripts",
        "sock_key",
        "stats",
    )

    def __init__(self, cfg: Any, fsm: VrrpFsm, runner: ActionRunner, stats: DropStats) -> None:
        self.cfg = cfg
        self.fsm = fsm
        self.runner = runner
        self.stats = stats
        self.group: SyncGroup | None = None
        self.own_faults: tuple[str, ...] = ()
        self.delta = 0
        self.scripts: dict[str, bool] = {}
        self.sock_key: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        return self.cfg.name


class _SocketGroup:
    __slots__ = ("by_vrid", "first", "sock")

    def __init__(self, sock: VrrpSocket) -> None:
        self.sock = sock
        self.by_vrid: dict[int, Instance] = {}
        self.first: Instance | None = None


class Speaker:
    """All instances of one node; see the module docstring."""

    def __init__(
        self,
        conf: VrrpConfig,
        *,
        health_fd: int | None = None,
        control_path: str | None = None,
        state_file: str | None = None,
        release_linger: float = 0.0,
        resume: Collection[str] = (),
    ) -> None:
        self.conf = conf
        # reload handover: instances whose VIPs a predecessor left on purpose (see _build)
        self.resume = frozenset(resume)
        self._resuming: set[str] = set()
        self.keep_vips = False  # hand_over(): exit leaving the VIPs to the successor
        # stop: how long VIPs stay after the peer's advert as master (see _step)
        self.release_linger = release_linger
        self._lingering: dict[Instance, Any] = {}
        self.health_fd = health_fd
        self.control_path = control_path if control_path is not None else conf.control_socket
        self.state_file = state_file if state_file is not None else conf.state_file
        self.instances: list[Instance] = []
        self.by_name: dict[str, Instance] = {}
        self.sockets: dict[tuple[Any, ...], _SocketGroup] = {}
        self.garp_socks: dict[str, GarpSocket] = {}
        self.links: dict[str, bool] = {}
        self.proxy_healthy = True
        self.stopping = False
        self.stopped = asyncio.Event()
        self._loop: Any = None
        self._rtnl: Rtnl | None = None
        self._watcher: LinkWatcher | None = None
        self._health: HealthMonitor | None = None
        self._trackers: list[ScriptTracker] = []
        self._sched: Scheduler[Instance] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stop_handle: Any = None
        self._syncing = False
        self.notifier = Notifier(conf.notify_timeout)
        self.on_transition: list[Callable[[Instance, State, State, float], None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._sched = Scheduler(loop, self._fire, on_wakeup=self._check_lag)
        self._rtnl = Rtnl()
        groups = {m: g for g in self.conf.sync_groups for m in g.instances}
        for cfg in self.conf.instances:
            inst = self._build(cfg)
            inst.group = groups.get(cfg.name)
            self.instances.append(inst)
            self.by_name[cfg.name] = inst
        names = tracked_interfaces(self.conf.instances)
        self._watcher = LinkWatcher(names, self._rtnl)
        self.links = dict(self._watcher.state)
        self._watcher.start(loop, self._on_link)
        if self.health_fd is not None:
            self._health = HealthMonitor(
                loop, self.health_fd, self.conf.health_timeout, self._on_health
            )
        for inst in self.instances:
            for ts in inst.cfg.track.scripts:
                self._trackers.append(
                    ScriptTracker(loop, ts, lambda n, ok, i=inst: self._on_script(i, n, ok))
                )
        for group in self.sockets.values():
            group.sock.start(loop, lambda dg, g=group: self._on_datagram(g, dg))
        if self.control_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_path)
            self._server = await asyncio.start_unix_server(self._serve, path=self.control_path)
            os.chmod(self.control_path, 0o600)
        now = loop.time()
        for inst in self.instances:
            self._refresh_tracking(inst, now, initial=True)
        for inst in self.instances:
            self._step(inst, Startup(resume=inst.name in self._resuming), loop.time())
        self._write_state()
        log.info(
            "VRRP speaker started: %s",
            ", ".join(f"{i.name} (vrid {i.cfg.vrid} on {i.cfg.interface})" for i in self.instances),
        )

    def _build(self, cfg: Any) -> Instance:
        assert self._rtnl is not None and self._loop is not None
        vips = VipManager(cfg.interface, cfg.virtual_ipaddresses, self._rtnl)
        held = {a.ip for a in vips.held()}
        if cfg.name in self.resume and held and held >= {v.ip for v in cfg.virtual_ipaddresses}:
            # the previous speaker of this `pylb run` was MASTER and left its VIPs to us
            self._resuming.add(cfg.name)
            log.info("(%s) resuming as master with the VIPs handed over", cfg.name)
        else:
            vips.remove_stale()
        fam = int(cfg.family)
        if cfg.unicast is not None:
            key: tuple[Any, ...] = (cfg.interface, fam, cfg.unicast.src, cfg.unicast.peers)
        else:
            key = (cfg.interface, fam, None, ())
        group = self.sockets.get(key)
        if group is None:
            sock = VrrpSocket(
                cfg.interface,
                fam,
                src=cfg.unicast.src if cfg.unicast is not None else None,
                peers=cfg.unicast.peers if cfg.unicast is not None else (),
                exclude=cfg.addresses,
                rtnl=self._rtnl,
            )
            group = self.sockets[key] = _SocketGroup(sock)
        gsock = self.garp_socks.get(cfg.interface)
        if gsock is None:
            gsock = self.garp_socks[cfg.interface] = GarpSocket(cfg.interface)
        stats = DropStats()
        pacer = GarpPacer(
            self._loop,
            gsock,
            frames_for(cfg.virtual_ipaddresses, vips.link().mac),
            repeat=cfg.garp_master_repeat,
            delay=cfg.garp_master_delay,
            refresh=cfg.garp_master_refresh,
            on_send=lambda n, s=stats: s.count("garp_sent", n),
        )
        runner = ActionRunner(cfg, group.sock, vips, pacer, self.notifier, stats)
        inst = Instance(cfg, VrrpFsm(cfg, group.sock.src), runner, stats)
        inst.sock_key = key
        if cfg.vrid in group.by_vrid:  # config.py refuses this; keep the speaker safe
            raise ValueError(f"VRID {cfg.vrid} twice on {cfg.interface}")
        group.by_vrid[cfg.vrid] = inst
        if group.first is None:
            group.first = inst
        return inst

    def request_stop(self) -> None:
        """SIGTERM: the clean stop sequence; a second call releases at once."""
        loop = self._loop
        now = loop.time()
        if self.stopping:
            log.warning("second stop request: releasing the VIPs now")
            for inst in self.instances:
                self._step(inst, Shutdown(), now)
            self._flush_lingering()
            self._check_stopped()
            return
        self.stopping = True
        log.info("stopping: priority 0 sent, VIPs kept until a peer takes over")
        for inst in self.instances:
            self._step(inst, Shutdown(), now)
        bound = max((3 * i.cfg.advert_interval for i in self.instances), default=0.0)
        self._stop_handle = loop.call_later(bound + STOP_SLACK, self._force_stop)
        self._check_stopped()

    def hand_over(self) -> None:
        """SIGUSR2 from `pylb run`'s master at a reload that restarts the speaker: exit at
        once, sending no priority 0 and leaving the VIPs in place; the next speaker,
        started with `resume`, finds them and goes on as MASTER. The peer sees one advert
        interval or two missing, well inside its Master_Down_Interval."""
        if self.stopping:
            return
        log.info("handing over to the next speaker: VIPs kept, no priority 0")
        self.stopping = True
        self.keep_vips = True
        for inst in self.instances:
            if inst.runner.pacer is not None:
                inst.runner.pacer.stop()
        if self._sched is not None:
            self._sched.close()
        self._write_state()
        self.stopped.set()

    def _force_stop(self) -> None:
        self._stop_handle = None
        if not self.stopped.is_set():
            log.warning("stop: releasing what is still held after the bound")
            now = self._loop.time()
            for inst in self.instances:
                if inst.fsm.state is not State.INIT:
                    self._step(inst, Shutdown(), now)
            self._flush_lingering()
            self._check_stopped()

    def _check_stopped(self) -> None:
        if (
            self.stopping
            and not self._lingering
            and all(i.fsm.state is State.INIT for i in self.instances)
        ):
            self.stopped.set()

    def _release_late(self, inst: Instance, deferred: list[Any]) -> None:
        """End of a stop's linger: the VIPs go now (and the STOP notify runs)."""
        self._lingering.pop(inst, None)
        inst.runner.run(deferred)
        self._write_state()
        self._check_stopped()

    def _flush_lingering(self) -> None:
        for inst, (handle, deferred) in list(self._lingering.items()):
            handle.cancel()
            self._release_late(inst, deferred)

    async def close(self) -> None:
        """After the stop sequence (or on error): release everything, wait for notify."""
        if self._stop_handle is not None:
            self._stop_handle.cancel()
        for handle, _ in self._lingering.values():
            handle.cancel()  # the safety net below removes the VIPs
        self._lingering.clear()
        if self._sched is not None:
            self._sched.close()
        for inst in self.instances:  # idempotent safety net: never leave a VIP behind
            if inst.runner.pacer is not None:
                inst.runner.pacer.stop()
            if self.keep_vips:  # ... except for the successor (hand_over)
                continue
            with contextlib.suppress(OSError):
                inst.runner.vips.remove()
        self._write_state()
        await self.notifier.drain(NOTIFY_DRAIN)
        self.notifier.cancel()
        for t in self._trackers:
            t.close()
        if self._health is not None:
            self._health.close()
        if self._watcher is not None:
            self._watcher.close()
        for g in self.sockets.values():
            g.sock.close()
        for gs in self.garp_socks.values():
            gs.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_path or "")
        if self._rtnl is not None:
            self._rtnl.close()

    # ------------------------------------------------------------------ driving

    def _step(self, inst: Instance, event: Event, now: float) -> None:
        if self.keep_vips:  # handed over: the successor decides from now on
            return
        old = inst.fsm.state
        actions = inst.fsm.step(event, now)
        if (
            self.release_linger > 0
            and old is State.STOPPING
            and inst.fsm.state is State.INIT
            and isinstance(event, AdvertReceived)
        ):
            actions = self._linger(inst, actions)
        self._after(inst, old, actions, now)

    def _linger(self, inst: Instance, actions: list[Any]) -> list[Any]:
        """Stop under `pylb run`: the peer's advert as master has arrived, so its GARPs
        are moving the clients to it. A request already in flight here still needs the
        address to send its response from; removing the VIP at once would strand it (the
        kernel no longer sends from an address it does not hold, and the client times
        out). The VIPs stay `release_linger` seconds more (no GARP: the pacer stops now),
        then go; the process exits after that."""
        deferred = [a for a in actions if isinstance(a, RemoveVips | Notify)]
        if not deferred:
            return actions
        if inst.runner.pacer is not None:
            inst.runner.pacer.stop()
        handle = self._loop.call_later(self.release_linger, self._release_late, inst, deferred)
        self._lingering[inst] = (handle, deferred)
        log.info(
            "(%s) peer is master: VIPs kept %gs for requests in flight",
            inst.name,
            self.release_linger,
        )
        return [a for a in actions if not isinstance(a, RemoveVips | Notify)]

    def _fire(self, inst: Instance, now: float) -> None:
        if self.keep_vips:
            return
        old = inst.fsm.state
        actions = inst.fsm.poll(now)
        self._after(inst, old, actions, now)

    def _after(self, inst: Instance, old: State, actions: list[Any], now: float) -> None:
        inst.runner.run(actions)
        assert self._sched is not None
        self._sched.set(inst, inst.fsm.next_deadline())
        new = inst.fsm.state
        if new is not old:
            self._transition(inst, old, new, now)

    def _transition(self, inst: Instance, old: State, new: State, now: float) -> None:
        log.log(
            logging.WARNING if new in (State.FAULT, State.MASTER) else logging.INFO,
            "(%s) %s -> %s (priority %d)",
            inst.name,
            old.value,
            new.value,
            inst.fsm.priority,
        )
        for hook in self.on_transition:
            hook(inst, old, new, now)
        if not self.stopping:
            self._sync(inst, old, new, now)
        self._write_state()
        self._check_stopped()

    def _sync(self, inst: Instance, old: State, new: State, now: float) -> None:
        """ON_TRANSITION for sync groups (keepalived's VRRP_TSM, reduced to its rules)."""
        if inst.group is None or self._syncing:
            return
        self._syncing = True
        try:
            members = [self.by_name[m] for m in inst.group.instances if m != inst.name]
            if new is State.MASTER:
                for m in members:
                    self._step(m, SyncMaster(), now)
            elif old is State.MASTER and new is State.BACKUP:
                for m in members:
                    self._step(m, StepDown(f"sync group {inst.group.name}"), now)
            if State.FAULT in (old, new):
                for m in members:
                    self._refresh_tracking(m, now)
        finally:
            self._syncing = False

    def _check_lag(self, lag: float, now: float) -> None:
        """STYLE.md 5.7: a master woken too late may share the VIPs with a new master."""
        for inst in self.instances:
            if inst.fsm.state is State.MASTER and should_step_down(
                lag, inst.cfg.advert_interval, inst.cfg.version
            ):
                log.error(
                    "(%s) speaker ran %.3fs late: a backup may have taken over; stepping down",
                    inst.name,
                    lag,
                )
                inst.stats.count("late_step_down")
                self._step(inst, StepDown("scheduler lag"), now)

    # ------------------------------------------------------------------ receive

    def _on_datagram(self, group: _SocketGroup, dg: Datagram) -> None:
        now = self._loop.time()
        first = group.first
        assert first is not None
        data, fam, kw = dg.decode_args()
        try:
            adv = packet.decode(data, fam, **kw)
        except packet.PacketError as e:
            detail = f"from {dg.src}: {e}" if log.isEnabledFor(logging.INFO) else ""
            first.stats.record(e.verdict, now, first.name, detail)
            return
        inst = group.by_vrid.get(adv.vrid, first)
        verdict = packet.validate(adv, inst.cfg, own=group.sock.own)
        if verdict is not packet.Verdict.OK and log.isEnabledFor(logging.INFO):
            detail = f"from {adv.src} vrid {adv.vrid} ttl {adv.ttl} prio {adv.priority}"
            inst.stats.record(verdict, now, inst.name, detail)
        else:  # no detail string built when nobody would read it
            inst.stats.record(verdict, now, inst.name)
        if not verdict.accepted:
            return
        if adv.priority == 0:
            inst.stats.count("priority_zero_rcvd")
        self._step(inst, adv.event(), now)

    # ------------------------------------------------------------------ tracking

    def _on_link(self, change: LinkChange) -> None:
        log.warning("interface %s is %s", change.name, "up" if change.up else "down")
        self.links[change.name] = change.up
        now = self._loop.time()
        for inst in self.instances:
            self._refresh_tracking(inst, now)

    def _on_health(self, healthy: bool) -> None:
        log.warning("proxy is %s", "healthy" if healthy else "unhealthy")
        self.proxy_healthy = healthy
        now = self._loop.time()
        for inst in self.instances:
            self._refresh_tracking(inst, now)

    def _on_script(self, inst: Instance, name: str, ok: bool) -> None:
        inst.scripts[name] = ok
        self._refresh_tracking(inst, self._loop.time())

    def _faults(self, inst: Instance) -> tuple[str, ...]:
        faults = list(inst.own_faults)
        if inst.group is not None:
            for m in inst.group.instances:
                if m != inst.name and self.by_name[m].own_faults:
                    faults.append(f"sync group {inst.group.name}: {m} in fault")
        return tuple(faults)

    def _refresh_tracking(self, inst: Instance, now: float, *, initial: bool = False) -> None:
        """Re-apply the tracking rule; feed FaultOn/FaultOff/PriorityChanged on change."""
        eff = effect(inst.cfg, self.links, inst.scripts, self.proxy_healthy)
        group_changed = bool(eff.faults) != bool(inst.own_faults)
        inst.own_faults = eff.faults
        faults = self._faults(inst)
        if faults and not inst.fsm.fault:
            self._step(inst, FaultOn("; ".join(faults)), now)
        elif not faults and inst.fsm.fault:
            self._step(inst, FaultOff(), now)
        prio = effective_priority(inst.cfg.priority, eff.delta)
        inst.delta = eff.delta
        if prio != inst.fsm.priority:
            self._step(inst, PriorityChanged(prio), now)
        if group_changed and inst.group is not None and not self._syncing and not initial:
            self._syncing = True
            try:
                for m in inst.group.instances:
                    if m != inst.name:
                        self._refresh_tracking(self.by_name[m], now)
            finally:
                self._syncing = False

    # ------------------------------------------------------------------ show vrrp

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state of every instance (`show vrrp json`)."""
        now = self._loop.time() if self._loop is not None else time.monotonic()
        wall = time.time()
        out = []
        for inst in self.instances:
            s = inst.fsm.snapshot()
            last = s.get("last_transition")
            if isinstance(last, dict):
                ago = now - float(last["at"])
                last = {**last, "ago": ago, "wall": wall - ago}
            counters = inst.stats.snapshot()
            sock = self.sockets[inst.sock_key].sock
            counters["send_errors"] = sock.send_errors
            counters["dropped_foreign"] = sock.dropped_foreign
            counters["action_errors"] = inst.runner.errors
            s.update(
                interface=inst.cfg.interface,
                version=inst.cfg.version,
                effective_priority=inst.fsm.priority,
                delta=inst.delta,
                faults=list(self._faults(inst)),
                vips=[str(v) for v in inst.cfg.virtual_ipaddresses],
                last_transition=last,
                counters=counters,
            )
            out.append(s)
        snap: dict[str, Any] = {"pid": os.getpid(), "instances": out}
        if self._health is not None:
            snap["proxy"] = {
                "healthy": self.proxy_healthy,
                "critical_down": list(self._health.critical_down),
                "heartbeats": self._health.received,
            }
        if self._sched is not None:
            snap["scheduler"] = {
                "max_lag": self._sched.max_lag,
                "last_lag": self._sched.last_lag,
                "wakeups": self._sched.wakeups,
            }
        return snap

    def show_vrrp_text(self) -> str:
        return show_vrrp_text(self.snapshot())

    def _write_state(self) -> None:
        if not self.state_file or self._loop is None:
            return
        tmp = f"{self.state_file}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.snapshot(), f)
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.error("cannot write %s: %s", self.state_file, e)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The control socket is not the data path: Streams keep it short.
        try:
            line = await asyncio.wait_for(reader.readline(), 2.0)
            cmd = line.decode(errors="replace").strip()
            if cmd == "show vrrp json":
                answer = json.dumps(self.snapshot())
            elif cmd in ("show vrrp", ""):
                answer = self.show_vrrp_text()
            else:
                answer = f"unknown command {cmd!r}: show vrrp | show vrrp json\n"
            writer.write(answer.encode())
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()


# ---------------------------------------------------------------------- entry points


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """prctl(PR_SET_PDEATHSIG): if the master dies, stop cleanly (never SIGKILL: a
    killed speaker would leave its VIPs configured)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def run_speaker(
    conf: VrrpConfig,
    *,
    health_fd: int | None = None,
    control_path: str | None = None,
    state_file: str | None = None,
    ready_fd: int | None = None,
    master_pid: int | None = None,
    release_linger: float = 0.0,
    resume: Collection[str] = (),
) -> int:
    """Process entry point: run until SIGTERM (or SIGINT), stop cleanly, return 0.

    `health_fd`: read end of the master's heartbeat pipe (`track.send_heartbeat`).
    `ready_fd`: one byte is written once every instance has started (the master's
    readiness pipe). `master_pid`: stop cleanly if that parent dies (PDEATHSIG SIGTERM).
    `release_linger`: on a clean stop, seconds the VIPs stay after the peer's advert as
    master (`pylb run` passes `supervisor.STOP_LINGER`; the standalone speaker 0).
    `resume`: instance names whose VIPs the previous speaker handed over (SIGUSR2,
    `Speaker.hand_over`): if they are on the interface, those start as MASTER.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if master_pid is not None:
        _die_with_parent()
        if os.getppid() != master_pid:
            return 0

    async def main() -> int:
        speaker = Speaker(
            conf,
            health_fd=health_fd,
            control_path=control_path,
            state_file=state_file,
            release_linger=release_linger,
            resume=resume,
        )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, speaker.request_stop)
        loop.add_signal_handler(signal.SIGUSR2, speaker.hand_over)
        loop.add_signal_handler(signal.SIGINT, speaker.request_stop)
        # A master forks with signals blocked; one that arrived meanwhile comes now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            await speaker.start()
            if ready_fd is not None:
                os.write(ready_fd, b"R")
                os.close(ready_fd)
            await speaker.stopped.wait()
        finally:
            await speaker.close()
        log.info("VRRP speaker stopped")
        return 0

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pylb.vrrp.speaker", description="pylb's VRRP speaker, standalone"
    )
    ap.add_argument("-c", "--config", required=True, help="pylb YAML config (its vrrp: part)")
    ap.add_argument("--control", help="unix control socket (overrides vrrp.control_socket)")
    ap.add_argument("--state-file", help="JSON state file (overrides vrrp.state_file)")
    ap.add_argument("--health-fd", type=int, help="read end of a heartbeat pipe")
    ap.add_argument("-l", "--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        conf = load_vrrp_file(args.config)
    except ConfigError as e:
        print(e.report(), file=sys.stderr)
        return 1
    try:
        return run_speaker(
            conf, health_fd=args.health_fd, control_path=args.control, state_file=args.state_file
        )
    except OSError as e:  # no such interface, no raw-socket permission, ...
        log.error("VRRP speaker cannot run: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
