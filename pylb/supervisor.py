"""The master process of `pylb run`: config, listening sockets, children, signals.

HAProxy's master-worker model: the master validates the config, binds every listening
socket, then forks the children and never touches client traffic. The children are

- `workers` proxy workers (`pylb.proxy.worker.run_worker`), worker slot `i` serving the
  slot-`i` sockets of `ListenerSet` (SO_REUSEPORT: the kernel spreads connections);
- the VRRP speaker (issue 4): `_spawn_vrrp()` is where it will be forked, as one more
  child kind restarted by the same code.

Why the master has no asyncio loop: it forks at any time (restart after a crash, reload),
and a child forked from a process with a running loop inherits its epoll fd, its signal
wakeup pipe and its pending callbacks. The master's own loop is instead a plain
`select()` on the `signal.set_wakeup_fd` pipe: signal handlers only wake it up, and every
decision (reap, restart, stop) runs in ordinary code, never inside a handler.

Signals:
- SIGTERM, SIGINT, SIGUSR1 (HAProxy's soft-stop signal): graceful stop. SIGTERM to every
  child (a worker drains within `hard_stop_after` and exits 0), the master closes its
  copies of the listeners, waits for the children (SIGKILL after `hard_stop_after` + 5 s),
  exits 0. A second such signal kills the children at once.
- SIGCHLD: reap; a child that died while not stopping is restarted with backoff (0.1 s
  doubling to 5 s; reset after it ran a stable minute) and logged.
- SIGHUP: reload (`reload()`): the file is validated again; a bad one is rejected with its
  FILE:LINE:COL errors logged and the running workers keep serving; a good one gets a new
  generation of workers on the same listening sockets (each copies the old workers' server
  state before it accepts), and the old generation drains once every new worker has
  reported (readiness pipe) that it serves.

systemd (`Type=notify`): READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1 (only while the
workers are alive) go to $NOTIFY_SOCKET from the master (`pylb.sdnotify`). The master also
binds `global.stats.bind` (served by worker slot 0) and makes the private run directory of
the workers' control sockets (`control_path`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pylb.config.model import Address, Config
from pylb.logsetup import NOTICE
from pylb.proxy.listener import ListenerSet, bind_host, bind_socket
from pylb.sdnotify import SdNotifier, Watchdog, watchdog_interval

if TYPE_CHECKING:
    from pylb.proxy.worker import WorkerControl
    from pylb.vrrp.heartbeat import Heartbeat

log = logging.getLogger("pylb.master")

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
STABLE_AFTER = 60.0  # a child that ran this long is healthy again: backoff restarts at min
KILL_GRACE = 5.0  # after hard_stop_after, before SIGKILL
VIP_RELEASE_MAX = 5.0  # stop: longest wait for the VRRP speaker to hand the VIPs over
# stop: the speaker keeps the VIPs this long after the peer's advert as master, so the
# requests in flight here can still send their responses (docs/vrrp.md)
STOP_LINGER = 0.5


def control_path(rundir: str, generation: int, index: int) -> str:
    """The private control socket of worker `index` of `generation` (in the master's
    0700 run directory): the runtime API without the relay, used by slot 0 to reach its
    peers and by a starting worker to copy a serving worker's server state."""
    return os.path.join(rundir, f"g{generation}-w{index}.sock")


HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


def next_backoff(current: float, ran_for: float) -> float:
    """The delay before restarting a child that died after running `ran_for` seconds,
    given the delay used last time (`current`, 0 for none): pure, unit-testable."""
    if ran_for >= STABLE_AFTER or current <= 0:
        return BACKOFF_MIN
    return min(BACKOFF_MAX, current * 2)


def describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


@dataclass(slots=True)
class Slot:
    """One child the master keeps alive: a worker slot (or, later, the VRRP speaker)."""

    kind: str
    index: int
    pid: int = 0
    started: float = 0.0
    backoff: float = 0.0  # delay used for the last restart
    restart_at: float | None = None  # monotonic time of a pending restart
    generation: int = 0  # config generation (incremented by each reload)
    ready: bool = False  # the child reported that it serves
    ready_fd: int = -1  # read end of the child's readiness pipe, until it reports
    kill_at: float | None = None  # retiring child: SIGKILL if still alive then


class Master:
    """`pylb run`'s master. `run()` blocks until stopped and returns the exit code.

    Children: `slots` (the current generation), `superseded` (older generations still
    serving until the current one is ready, after a reload) and `retiring` (told to
    drain, not restarted)."""

    def __init__(self, config: Config, path: str | None = None) -> None:
        self.config = config
        self.path = path
        self.listeners = ListenerSet()
        self.slots: list[Slot] = []
        self.superseded: list[tuple[Slot, float]] = []  # (slot, its hard_stop_after)
        self.retiring: list[Slot] = []
        self.generation = 0
        self.announced = -1  # the last generation whose readiness was announced
        self.stopping = False
        self.stop_deadline = 0.0
        self._wake_r = -1
        self._wake_w = -1
        self._old_handlers: dict[int, object] = {}
        self.pid = os.getpid()
        # systemd: NOTIFY_SOCKET / WATCHDOG_USEC are for the master only (NotifyAccess=main);
        # removed from the environment so children and scripts do not inherit them.
        interval = watchdog_interval()  # read before from_env() unsets the variables
        self.sd = SdNotifier.from_env(unset=True)
        self.watchdog = Watchdog(interval, time.monotonic())
        self.rundir = ""  # private 0700 directory of the workers' control sockets
        self.stats_sock: socket.socket | None = None  # global.stats.bind, served by slot 0
        self.vrrp: Slot | None = None  # the VRRP speaker (issue 4), when one runs
        self.vip_release_until: float | None = None  # stop phase 1: waiting for the speaker
        self.hb: Heartbeat | None = None  # the speaker's heartbeat pipe (write end)
        self._hb_r = -1  # its read end, between pipe() and fork() only
        self._vrrp_next = False  # reload: a new speaker starts once the old one has exited
        self._vrrp_resume: tuple[str, ...] = ()  # ... and resumes these instances as MASTER

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._preload(self.config)
        except ImportError as e:
            print(f"pylb: cannot load the data plane: {e}", file=sys.stderr)
            return 1
        raise_fd_limit(self.config)
        try:
            self.listeners.sync(self.config)
            self._sync_stats(self.config)
        except OSError as e:
            log.critical("Starting proxies: %s", e.strerror or e)
            print(f"pylb: {e.strerror or e}", file=sys.stderr)
            return 1
        self._install_signals()
        try:
            # systemd's RuntimeDirectory= (a ':'-separated list when several are set)
            runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
            self.rundir = tempfile.mkdtemp(prefix="pylb-", dir=runtime)
            self.slots = [Slot("worker", i) for i in range(max(1, self.config.global_.workers))]
            for slot in self.slots:
                self._spawn(slot)
            self._spawn_vrrp()
            self._loop()
        finally:
            self._kill_all(signal.SIGKILL)
            for slot in self._all_children():
                self._close_ready(slot)
            self.listeners.close()
            self._close_stats()
            if self.hb is not None:
                self.hb.close()
            self._restore_signals()
            self.sd.close()
            if self.rundir:
                shutil.rmtree(self.rundir, ignore_errors=True)
        log.log(NOTICE, "Master exits with code 0")
        return 0

    def _preload(self, config: Config) -> None:
        """Import the data plane's modules (no loop, no sockets) before forking: a broken
        install fails here once instead of in a restart loop, and every (re)started worker
        shares the imported code copy-on-write instead of importing it again."""
        from pylb.proxy.worker import frontend_factory

        with contextlib.suppress(ImportError):  # the worker falls back to asyncio's loop
            import uvloop  # noqa: F401  # imported for the children, see above
        for mode in {lst.mode for lst in config.listens}:
            frontend_factory(mode)

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            timeout = self._next_timeout(now)
            waiting = {s.ready_fd: s for s in self._all_children() if s.ready_fd >= 0}
            hb_fds = self.hb.read_fds() if self.hb is not None else []
            try:
                ready, _, _ = select.select([self._wake_r, *waiting, *hb_fds], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
                ready = []
            for fd in ready:
                if fd == self._wake_r:
                    for signum in self._read_signals():
                        self._on_signal(signum)
                elif fd in waiting:
                    self._on_ready(waiting[fd])
                elif self.hb is not None:
                    self.hb.on_readable(fd)
            self._reap()
            now = time.monotonic()
            self._vrrp_tick(now)
            # WATCHDOG=1 only while the workers are alive (`_healthy`): a master whose
            # workers keep dying gets restarted by systemd.
            if self.watchdog.tick(now, self._healthy()):
                self.sd.watchdog()
            self._check_generation_ready()
            for old in self.retiring:
                if old.kill_at is not None and now >= old.kill_at:
                    log.warning(
                        "Old %s %d still running after hard-stop-after: killed", old.kind, old.pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(old.pid, signal.SIGKILL)
                    old.kill_at = None
            if self.stopping:
                if self._vips_released(now):
                    self._stop_workers()
                if not any(s.pid for s in self._all_children()):
                    return
                if now >= self.stop_deadline:
                    log.warning("hard-stop-after passed: killing remaining children")
                    self._kill_all(signal.SIGKILL)
                    self.stop_deadline = now + KILL_GRACE
                continue
            for slot in self._kept():
                if slot.pid == 0 and slot.restart_at is not None and now >= slot.restart_at:
                    try:
                        self._spawn(slot)
                    except OSError as e:  # fork failed (EAGAIN, ENOMEM): try again later
                        slot.backoff = next_backoff(slot.backoff, 0.0)
                        slot.restart_at = now + slot.backoff
                        log.error(
                            "Cannot start %s: %s, retrying in %.1f s", slot.kind, e, slot.backoff
                        )

    def _next_timeout(self, now: float) -> float | None:
        due = [s.kill_at for s in self.retiring if s.kill_at is not None]
        wd = self.watchdog.timeout(now)
        if wd is not None:
            due.append(now + wd)
        if self.vip_release_until is not None:
            due.append(self.vip_release_until)
        if self.hb is not None and self.vrrp is not None and self.vrrp.pid:
            due.append(now + self.hb.timeout(now))
        if self.stopping:
            due.append(self.stop_deadline)
        else:
            due += [s.restart_at for s in self._kept() if s.pid == 0 and s.restart_at is not None]
        return max(0.0, min(due) - now) if due else None

    def _sync_stats(self, config: Config) -> None:
        """Bind `global.stats.bind` in the master, like the listeners: a busy port fails
        the start (or the reload) instead of a worker's restart loop, and the socket
        outlives slot 0 across restarts and reloads. OSError leaves the old one."""
        stats = config.global_.stats
        old = self.stats_sock
        if old is not None and stats is not None:
            host, port = old.getsockname()[:2]
            if stats.bind == Address(host, port) or (
                stats.bind.port == port and bind_host(stats.bind.host) == host
            ):
                return
        new = bind_socket(stats.bind, backlog=64) if stats is not None else None
        self.stats_sock = new
        if old is not None:
            old.close()

    def _close_stats(self) -> None:
        if self.stats_sock is not None:
            self.stats_sock.close()
            self.stats_sock = None

    def _healthy(self) -> bool:
        """What WATCHDOG=1 vouches for: every worker of the current generation is alive,
        or, while a new generation starts (or keeps failing to), the previous one still
        serves; and always while stopping (the stop has its own deadline)."""
        if self.stopping or all(s.pid for s in self.slots):
            return True
        return any(s.pid and s.ready for s, _ in self.superseded)

    def _kept(self) -> list[Slot]:
        """The children restarted when they die: the current workers and the speaker."""
        return [*self.slots, self.vrrp] if self.vrrp is not None else self.slots

    def _all_children(self) -> list[Slot]:
        vrrp = [self.vrrp] if self.vrrp is not None else []
        return [*self.slots, *(s for s, _ in self.superseded), *self.retiring, *vrrp]

    # -- readiness --------------------------------------------------------------------------

    def _on_ready(self, slot: Slot) -> None:
        """The child wrote its readiness byte (it serves), or closed the pipe (it died
        before that; _reap() handles the death)."""
        try:
            data = os.read(slot.ready_fd, 16)
        except BlockingIOError:  # pragma: no cover - select said readable
            return
        self._close_ready(slot)
        if data:
            slot.ready = True

    def _close_ready(self, slot: Slot) -> None:
        if slot.ready_fd >= 0:
            os.close(slot.ready_fd)
            slot.ready_fd = -1

    def _check_generation_ready(self) -> None:
        """Once every worker of the current generation serves: announce it (start) or
        retire the generations it replaces (reload). Until then the old ones keep serving,
        so a new generation that cannot start never leaves the listeners unserved."""
        if self.stopping or self.announced == self.generation:
            return
        if not all(s.ready and s.pid for s in self.slots):
            return
        self.announced = self.generation
        if self.generation == 0:
            log.log(NOTICE, "Loading success. %d worker(s) started.", len(self.slots))
            self._notify("READY=1")
            return
        log.log(NOTICE, "Loading success.")
        superseded, self.superseded = self.superseded, []
        for slot, hard_stop_after in superseded:
            self._retire(slot, hard_stop_after)
        log.log(
            NOTICE,
            "Reload done: generation %d, %d worker(s) serving, %d old draining",
            self.generation,
            len(self.slots),
            len(self.retiring),
        )
        self._notify("READY=1")

    # -- children ---------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        """Fork one child for `slot`. The child never returns into the master's code."""
        slot.restart_at = None
        slot.ready = False
        self._close_ready(slot)
        for stream in (sys.stdout, sys.stderr):  # buffered output would be written twice
            stream.flush()
        if slot.kind == "vrrp":
            self._open_heartbeat()
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        # Signals stay blocked across the fork: the parent gets them after fork() returns,
        # and the child only once its own handlers are in place (run_worker unblocks them),
        # so a SIGTERM sent to the whole group (systemd's KillMode=control-group) neither
        # reaches the master's pipe through the child nor kills a half-started worker.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_r)
            os.close(ready_w)
            self._close_hb_reader()
            raise
        if pid == 0:  # pragma: no cover - runs in the child (covered by integration tests)
            code = 1
            try:
                os.close(ready_r)
                self._child_reset()
                code = self._child_main(slot, ready_w)
            except BaseException:
                log.exception("%s %d crashed", slot.kind, os.getpid())
            finally:
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(ready_w)
        self._close_hb_reader()  # the speaker's end (no-op for a worker)
        os.set_blocking(ready_r, False)
        slot.ready_fd = ready_r
        slot.pid = pid
        slot.generation = self.generation
        slot.started = time.monotonic()
        log.info("Started %s %d (slot %d)", slot.kind, pid, slot.index)

    def _child_reset(self) -> None:
        """In a fresh child: forget the master's signal plumbing and pipes (signals are
        still blocked; the child's main unblocks them once its handlers are installed)."""
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for other in self._all_children():
            if other.ready_fd >= 0:
                os.close(other.ready_fd)
        if self.hb is not None:  # the master's end of the heartbeat pipe and its poll
            self.hb.close()
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)

    def _child_main(self, slot: Slot, ready_fd: int) -> int:
        if slot.kind == "worker":
            from pylb.proxy.worker import run_worker

            mine = self.listeners.for_slot(slot.index)
            keep = {id(s) for socks in mine.values() for s in socks}
            for s in self.listeners.all_sockets():  # other slots' sockets are not ours
                if id(s) not in keep:
                    s.close()
            if self.stats_sock is not None and slot.index != 0:
                self.stats_sock.close()  # slot 0 serves the stats
            return run_worker(
                self.config,
                mine,
                master_pid=self.pid,
                ready_fd=ready_fd,
                control=self._control_for(slot),
                stats_sock=self.stats_sock if slot.index == 0 else None,
            )
        if slot.kind == "vrrp":
            return self._speaker_main(ready_fd)
        raise RuntimeError(f"unknown child kind {slot.kind!r}")

    def _control_for(self, slot: Slot) -> WorkerControl | None:
        """What worker `slot` needs to talk to its siblings: its own control socket path,
        its peers' (slot 0 relays runtime commands to them) and where to copy the server
        state from at start (`_state_sources`)."""
        from pylb.proxy.worker import WorkerControl

        if not self.rundir:
            return None
        n = len(self.slots)
        return WorkerControl(
            path=control_path(self.rundir, self.generation, slot.index),
            index=slot.index,
            workers=n,
            peers=tuple(
                control_path(self.rundir, self.generation, i) for i in range(n) if i != slot.index
            ),
            state_from=self._state_sources(slot),
        )

    def _state_sources(self, slot: Slot) -> tuple[str, ...]:
        """Control sockets a starting worker asks for `show servers state`, best first:
        a serving sibling of its own generation (restart after a crash), then the same
        slot of the generation it replaces, then any other worker of that generation
        (reload). HAProxy's `load-server-state-from-file`, without the file."""
        out = [
            control_path(self.rundir, s.generation, s.index)
            for s in self.slots
            if s is not slot and s.pid and s.ready
        ]
        old = sorted(
            (s for s, _ in self.superseded if s.pid and s.ready),
            key=lambda s: (-s.generation, s.index != slot.index, s.index),
        )
        out += [control_path(self.rundir, s.generation, s.index) for s in old]
        return tuple(out)

    # -- VRRP speaker (issue 4, docs/vrrp.md "Running under pylb run") --------------------

    def _spawn_vrrp(self) -> None:
        """Fork the VRRP speaker as `Slot("vrrp", 0)` when `config.vrrp` is set, with a
        heartbeat pipe from the master (the proxy's health lowers its priority). It is
        restarted with backoff like a worker when it dies (`_kept`)."""
        if self.config.vrrp is None or not self.rundir:
            return
        try:
            # Imported here, once, before the fork (scapy, pyroute2: ~0.6 s): a restarted
            # speaker then starts in milliseconds, well inside the peer's
            # Master_Down_Interval at a reload handover. The pages are shared with it.
            import pylb.vrrp.speaker  # noqa: F401
        except ImportError as e:
            log.error("Cannot load the VRRP speaker: %s", e)
            return
        self.vrrp = Slot("vrrp", 0)
        try:
            self._spawn(self.vrrp)
        except OSError as e:  # fork failed: the restart loop tries again
            self.vrrp.backoff = next_backoff(0.0, 0.0)
            self.vrrp.restart_at = time.monotonic() + self.vrrp.backoff
            log.error("Cannot start the VRRP speaker: %s", e)

    def _open_heartbeat(self) -> None:
        """A fresh heartbeat pipe for a speaker about to be forked (the previous one's
        read end died with it). The master's end is non-blocking: a speaker that does
        not read never blocks the master (`track.send_heartbeat` drops the beat)."""
        from pylb.vrrp.heartbeat import Heartbeat

        if self.hb is not None:
            self.hb.close()
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(w, False)
        self._close_hb_reader()
        self._hb_r = r
        self.hb = Heartbeat(w, time.monotonic())

    def _close_hb_reader(self) -> None:
        if self._hb_r >= 0:
            os.close(self._hb_r)
            self._hb_r = -1

    def _speaker_main(self, ready_fd: int) -> int:
        """In the forked speaker: drop what belongs to the data plane, run the speaker."""
        from pylb.vrrp.config import from_config
        from pylb.vrrp.control import speaker_control_path
        from pylb.vrrp.speaker import run_speaker

        for s in self.listeners.all_sockets():  # a listener kept open here would outlive
            s.close()  # its removal by a reload: the kernel would queue connections to it
        if self.stats_sock is not None:
            self.stats_sock.close()
        health_r, self._hb_r = self._hb_r, -1
        # SIGUSR1 is the workers' soft stop, never the speaker's; SIGCHLD must reach the
        # loop's child watcher (notify and track scripts), and the mask is inherited by
        # those scripts. run_speaker unblocks SIGTERM/SIGINT once its handlers are set.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1})
        conf = from_config(self.config)
        if conf is None:  # pragma: no cover - _spawn_vrrp checked config.vrrp
            return 1
        try:
            return run_speaker(
                conf,
                health_fd=health_r,
                control_path=speaker_control_path(self.config.vrrp, self.rundir),
                ready_fd=ready_fd,
                master_pid=self.pid,
                release_linger=STOP_LINGER,
                resume=self._vrrp_resume,
            )
        except OSError as e:  # no such interface, no CAP_NET_RAW/NET_ADMIN, ...
            log.error("VRRP speaker cannot run: %s", e)
            return 1

    def _proxy_healthy(self) -> bool:
        """The heartbeat's `healthy`: every worker of the serving generation is alive and
        accepts (the current one, or while it starts after a reload, the previous one)."""
        if self.slots and all(s.pid and s.ready for s in self.slots):
            return True
        return bool(self.superseded) and all(s.pid and s.ready for s, _ in self.superseded)

    def _health_source(self) -> str | None:
        """Worker 0's control socket, of the serving generation (None: nobody serves)."""
        for slot in [*self.slots, *(s for s, _ in self.superseded)]:
            if slot.index == 0 and slot.pid and slot.ready:
                return control_path(self.rundir, slot.generation, 0)
        return None

    def _vrrp_tick(self, now: float) -> None:
        """Once per loop: the heartbeat when due, and a reload's new speaker once the
        old one has exited (never two speakers of one node on the same VRIDs)."""
        if self._vrrp_next and not any(s.kind == "vrrp" for s in self.retiring):
            self._vrrp_next = False
            if not self.stopping:
                self._spawn_vrrp()
            self._vrrp_resume = ()  # for that first start only: a later restart is a crash
        if self.hb is None or self.vrrp is None or not self.vrrp.pid:
            return
        if self.announced < 0:  # no worker serves yet: the speaker's own timeout decides
            return
        self.hb.tick(now, self._proxy_healthy(), self._health_source())

    def _reload_vrrp(self, old: dict | None, new: dict | None) -> None:
        """Reload: an unchanged `vrrp:` section keeps the speaker running (its state,
        VIPs and counters); a changed one restarts it (keepalived applies a diff; pylb
        does not), and the new speaker starts only once the old one has exited.

        When every old instance is still there with the same interface, VRID, family
        and VIPs (a priority, interval, tracking or notify change), the old speaker is
        told to hand over (SIGUSR2: exit at once, no priority 0, VIPs left in place) and
        the new one resumes those instances as MASTER where it finds their VIPs: the VIP
        does not move. Otherwise (an instance or VIP removed or moved) the old speaker
        gets the clean stop (priority 0, VIPs kept until a peer is master) and the new
        one removes any VIP left behind (`VipManager.remove_stale`)."""
        if old == new and (new is None or self.vrrp is not None):
            return
        self._vrrp_resume = ()
        if self.vrrp is not None:
            slot, self.vrrp = self.vrrp, None
            if slot.pid:
                keep = _handover_instances(old, new) if slot.ready else None
                log.log(
                    NOTICE,
                    "vrrp section changed: restarting the VRRP speaker (%s)",
                    "VIPs handed over" if keep is not None else "clean stop",
                )
                slot.kill_at = time.monotonic() + self._vip_release_max() + KILL_GRACE
                self.retiring.append(slot)
                if keep is not None:
                    self._vrrp_resume = keep
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGUSR2 if keep is not None else signal.SIGTERM)
        if new is not None:
            self._vrrp_next = True

    def _vip_release_max(self) -> float:
        """Stop phase 1's bound: the speaker's own (3 advert intervals + its slack) and
        a margin, never less than VIP_RELEASE_MAX."""
        from pylb.config.errors import ConfigError
        from pylb.vrrp.config import from_config

        try:
            conf = from_config(self.config)
        except ConfigError:  # pragma: no cover - validated at load
            conf = None
        longest = max((i.advert_interval for i in conf.instances), default=1.0) if conf else 1.0
        return max(VIP_RELEASE_MAX, 3 * longest + 2.0)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            what = describe_status(status)
            old = next((s for s in self.retiring if s.pid == pid), None)
            if old is None:
                entry = next((e for e in self.superseded if e[0].pid == pid), None)
                if entry is not None:
                    self.superseded.remove(entry)
                    old = entry[0]
            if old is not None:
                if old in self.retiring:
                    self.retiring.remove(old)
                self._close_ready(old)
                old.pid = 0
                log.info("Old %s %d (generation %d) %s", old.kind, pid, old.generation, what)
                continue
            slot = next((s for s in self._kept() if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            slot.ready = False
            self._close_ready(slot)
            if self.stopping:
                log.info("%s %d %s", slot.kind.capitalize(), pid, what)
                continue
            ran = time.monotonic() - slot.started
            slot.backoff = next_backoff(slot.backoff, ran)
            slot.restart_at = time.monotonic() + slot.backoff
            log.error(
                "%s %d %s, restarting in %.1f s",
                slot.kind.capitalize(),
                pid,
                what,
                slot.backoff,
            )

    def _kill_all(self, sig: int) -> None:
        for slot in self._all_children():
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)

    # -- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in HANDLED:
            # The handler does nothing: the wakeup fd carries the signal number to _loop().
            self._old_handlers[sig] = signal.signal(sig, _noop_handler)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)  # type: ignore[arg-type]  # what signal() returned
        self._old_handlers.clear()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _read_signals(self) -> list[int]:
        out: list[int] = []
        while True:
            try:
                data = os.read(self._wake_r, 512)
            except BlockingIOError:
                return out
            except OSError as e:  # pragma: no cover
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return out
            out.extend(data)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            # SIGUSR1 is HAProxy's soft stop; pylb's SIGTERM already is one.
            self.stop(signal.Signals(signum).name)
        elif signum == signal.SIGHUP:
            self.reload()
        # SIGCHLD: _loop() reaps after every wakeup

    def stop(self, why: str = "") -> None:
        """Graceful stop: workers drain within hard_stop_after; a second call kills them.

        Order (ARCHITECTURE.md "Stopping a node that holds the VIP"): with a VRRP speaker,
        phase 1 first: the workers soft-stop (SIGUSR1: keep accepting, every response
        `Connection: close`) while the speaker (SIGTERM) sends priority 0 and removes its
        VIPs once the peer is master; when it has exited, or after VIP_RELEASE_MAX, phase 2
        (`_stop_workers`): stop accepting and drain. Without a speaker phase 2 runs at
        once."""
        if self.stopping:
            log.warning("%s again: killing the children now", why or "stop")
            self._kill_all(signal.SIGKILL)
            return
        self.stopping = True
        log.log(
            NOTICE,
            "%s received: stopping (hard-stop-after %gs)",
            why or "stop",
            self.config.global_.hard_stop_after,
        )
        self._notify("STOPPING=1")
        for slot in self._kept():
            slot.restart_at = None
        release = self._vip_release_max() if self.vrrp is not None else VIP_RELEASE_MAX
        self.stop_deadline = (
            time.monotonic() + release + self.config.global_.hard_stop_after + KILL_GRACE
        )
        if self.vrrp is not None and self.vrrp.pid:
            for slot in self._all_children():
                if slot is not self.vrrp and slot.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGUSR1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.vrrp.pid, signal.SIGTERM)
            self.vip_release_until = time.monotonic() + release
            return
        self._stop_workers()

    def _vips_released(self, now: float) -> bool:
        """Stop phase 1 is over: the speaker has exited (its VIPs are gone) or took longer
        than VIP_RELEASE_MAX (the workers must not wait forever for it)."""
        if self.vip_release_until is None:
            return False
        return now >= self.vip_release_until or self.vrrp is None or not self.vrrp.pid

    def _stop_workers(self) -> None:
        """Stop phase 2: every worker drains (SIGTERM) and the listeners close."""
        self.vip_release_until = None
        self._kill_all(signal.SIGTERM)
        # The master's copies of the listeners go now; each worker closes its own when it
        # starts draining, and then the kernel refuses new connections.
        self.listeners.close()
        self._close_stats()
        self.stop_deadline = time.monotonic() + self.config.global_.hard_stop_after + KILL_GRACE

    def reload(self) -> bool:
        """SIGHUP: validate the file again; if it is good, bind what it adds (the sockets of
        unchanged addresses stay the same objects) and fork a new generation of workers on
        them. The old generation keeps serving until every new worker reports that it
        serves; then it is told to drain (SIGTERM) within its `hard_stop_after`. A bad file
        is rejected with its FILE:LINE:COL errors and the running generation keeps serving.

        No connection is refused meanwhile: each listening socket stays open in the master
        throughout, and old and new workers of a slot accept from the same socket.
        Server state: each new worker copies `show servers state` from a serving worker of
        the old generation over its control socket before it accepts (`_state_sources`),
        so unchanged servers keep their health, admin state and runtime weight.
        systemd: RELOADING=1 now, READY=1 once the new generation serves (or at once when
        the file is rejected)."""
        if self.stopping or self.path is None:
            return False
        from pylb.config.load import ConfigError, load_config_with_warnings
        from pylb.logsetup import setup_logging

        log.log(NOTICE, "Reloading configuration from %s", self.path)
        self._notify("RELOADING=1")
        try:
            new, warnings = load_config_with_warnings(self.path, files=True)
            self._preload(new)
            self._sync_stats(new)
            self.listeners.sync(new)
        except ImportError as e:
            log.error("Reload rejected, keeping the running configuration: %s", e)
            self._notify("READY=1")
            return False
        except ConfigError as e:
            log.error("Reload rejected, keeping the running configuration:\n%s", e.report())
            self._notify("READY=1")
            return False
        except OSError as e:
            log.error("Reload rejected, keeping the running configuration: %s", e.strerror or e)
            self._notify("READY=1")
            return False
        for w in warnings:
            log.warning("%s", w)
        hard_stop = self.config.global_.hard_stop_after
        for slot in self.slots:  # they serve until the new generation does
            slot.restart_at = None
            if slot.pid:
                self.superseded.append((slot, hard_stop))
        old_vrrp, self.config = self.config.vrrp, new
        self._reload_vrrp(old_vrrp, new.vrrp)
        try:
            setup_logging(new.global_.log)
        except (OSError, ValueError) as e:  # keep the previous target
            log.error("global.log: %s (keeping the previous log target)", e)
        self.generation += 1
        self.slots = [Slot("worker", i) for i in range(max(1, new.global_.workers))]
        for slot in self.slots:
            self._spawn(slot)
        return True

    def _retire(self, slot: Slot, hard_stop_after: float) -> None:
        """Tell a child of a previous generation to drain (it is not restarted)."""
        slot.kill_at = time.monotonic() + hard_stop_after + KILL_GRACE
        self.retiring.append(slot)
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.pid, signal.SIGTERM)

    def _notify(self, state: str) -> None:
        """sd_notify(state) to $NOTIFY_SOCKET: READY=1, RELOADING=1 or STOPPING=1 (a no-op
        when not run by systemd)."""
        workers = len(self.slots)
        if state == "READY=1":
            self.sd.ready(f"generation {self.generation}, {workers} worker(s) serving")
        elif state == "RELOADING=1":
            self.sd.reloading("reloading")
        elif state == "STOPPING=1":
            self.sd.stopping("draining")
        else:  # pragma: no cover - the three above are the only callers
            self.sd.send(state)


def _handover_instances(old: dict | None, new: dict | None) -> tuple[str, ...] | None:
    """The instance names a restarting speaker may hand over to its successor, or None
    when it must not: some old instance is gone or has another interface, VRID, family
    or VIP set in the new section (its VIPs would be left to nobody). Pure."""
    from pylb.vrrp.config import check_vrrp

    if old is None or new is None:
        return None
    before, _ = check_vrrp(old)
    after, _ = check_vrrp(new)
    if before is None or after is None:
        return None

    def key(i: Any) -> tuple[Any, ...]:
        return (i.interface, i.vrid, int(i.family), frozenset(i.virtual_ipaddresses))

    now = {i.name: key(i) for i in after.instances}
    if any(now.get(i.name) != key(i) for i in before.instances):
        return None
    return tuple(i.name for i in before.instances)


def fds_needed(config: Config) -> int:
    """File descriptors a worker may need at `global.maxconn`: a client and a server
    socket per session, plus listeners and a margin for logs, checks and the loop."""
    binds = sum(len(lst.binds) for lst in config.listens)
    return 2 * config.global_.maxconn + binds + 64


def raise_fd_limit(config: Config) -> None:
    """Raise the soft RLIMIT_NOFILE towards what `maxconn` needs (children inherit it);
    warn when the hard limit is too low, instead of failing at the 1025th connection."""
    import resource

    need = fds_needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "global.maxconn %d needs about %d file descriptors but the limit is %d: "
            "raise LimitNOFILE / ulimit -n or lower maxconn",
            config.global_.maxconn,
            need,
            soft,
        )


def _noop_handler(signum: int, frame: object) -> None:
    """Installed so the signal is delivered (and written to the wakeup fd), not acted on."""


def run_master(path: str) -> int:
    """`pylb run -c PATH`: load and validate, then run the master until stopped."""
    from pylb.config.load import ConfigError, load_config_with_warnings
    from pylb.logsetup import setup_logging

    try:
        config, warnings = load_config_with_warnings(path, files=True)
    except ConfigError as e:
        print(e.report(), file=sys.stderr)  # every diagnostic, FILE:LINE:COL: error: ...
        return 1
    except OSError as e:
        print(f"{path}: error: {e.strerror or e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(str(w), file=sys.stderr)
    try:
        setup_logging(config.global_.log)
    except (OSError, ValueError) as e:
        print(f"{path}: error: global.log: {e}", file=sys.stderr)
        return 1
    return Master(config, path).run()
