"""Running the active checks of one backend, applying verdicts, logging state changes.

Scheduling choice: one loop timer per server (`loop.call_at` at the state's due time) and
one short task per check run. The event loop's own timer heap is the heap: there is no
long-lived coroutine per server and no polling. A run is one coroutine
(connect -> send -> expect -> classify, `probes.py`) with its own deadline; when it ends the
result goes to the pure state machine (`state.py`), which returns the transition (if any)
and the next due time, and the timer is armed again. A timer is only cancelled when passive
observation brings a check forward (rare) or at stop.

First checks are spread over one `inter` by server position plus jitter, and every later
interval is jittered by ±`spread` (HAProxy `spread-checks`), so checks of many servers and
of several workers drift apart instead of hitting backends in bursts.

Verdicts are applied to `Server.oper_up` through `Backend.server_changed()` (the balancer
rebuilds its group), and logged in HAProxy's words and levels, so existing alerting keeps
working:

    Server api/ctl02 is DOWN, reason: Layer4 connection problem, info: "Connection refused",
        check duration: 0ms. 2 active and 0 backup servers left. 0 sessions active,
        0 requeued, 0 remaining in queue.                                  (alert -> CRITICAL)
    Server api/ctl02 is UP, reason: Layer7 check passed, code: 200, check duration: 1ms.
        3 active and 0 backup servers online. 0 sessions requeued, 0 total in queue.
                                                                           (notice -> 25)
    backend api has no server available!                                  (emerg -> CRITICAL)
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace

from pylb.config.model import Address, Health, Listen
from pylb.health.passive import ObservePolicy, Observer
from pylb.health.probes import Probe, make_probe, probe_factory
from pylb.health.state import CheckState
from pylb.health.types import (
    CheckResult,
    CheckStatus,
    InitState,
    Observation,
    OnError,
    Step,
    Transition,
)
from pylb.proxy.backend import AdminState, Backend, Server

log = logging.getLogger("pylb.health")

NOTICE = 25  # syslog notice, as pylb.logsetup.NOTICE: HAProxy logs "is UP" at notice
DEFAULT_SPREAD = 0.05  # ±5% per interval: enough to desynchronise, invisible to operators


def check_address(server: Server) -> Address:
    """Where the check goes: the server's address with `check_address` / `check_port`
    overrides (a service whose health endpoint listens elsewhere)."""
    conf = server.conf
    host = conf.check_address or conf.address.host
    port = conf.check_port or conf.address.port
    return Address(host, port)


def check_timeout(health: Health, connect_timeout: float) -> float:
    """A check's whole deadline: `timeout` if set, else min(inter, timeout connect), so a
    check never outlives its interval and never waits longer than a real connect would."""
    p = health.params
    return p.timeout if p.timeout is not None else min(p.inter, connect_timeout)


# writer-pin: one observed connect failure to the writer takes it down at once, so the
# writer moves (and the failed session is redispatched to the new one) in the same client
# attempt instead of after `fall` checks: a Galera writer that refuses or times out is
# replaced within one connect, and only a passing active check series (`rise`) brings it
# back (pylb.galera.writer; docs/galera.md).
WRITER_PIN_POLICY = ObservePolicy(error_limit=1, on_error=OnError.MARK_DOWN)


def default_policy(conf: Listen) -> ObservePolicy:
    """The passive-observation policy of a listener: HAProxy's fail-check by default,
    mark-down for writer-pin (a second writer must never be tried while the first one
    is believed alive)."""
    return WRITER_PIN_POLICY if conf.balance == "writer-pin" else ObservePolicy()


class ServerCheck:
    """The running check of one server: its state, timer and current run.

    Set on `Server.check` while running; passive observation calls `observe()` on it.
    Loop thread only.
    """

    __slots__ = (
        "_task",
        "_timer",
        "address",
        "checker",
        "observer",
        "position",
        "server",
        "state",
        "timeout",
    )

    def __init__(self, checker: HealthChecker, server: Server, position: int) -> None:
        self.checker = checker
        self.server = server
        self.position = position
        self.address = check_address(server)
        params = server.conf.check_params(checker.health.params)
        self.state = CheckState(params, init=checker.init, spread=checker.spread)
        self.timeout = (
            checker.timeout
            if params is checker.health.params
            else check_timeout(
                replace(checker.health, params=params), server.backend.conf.timeout.connect
            )
        )
        self.observer = Observer(checker.policy)
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """A probe is in flight now."""
        return self._task is not None

    # -- timer ------------------------------------------------------------------------

    def _arm(self) -> None:
        loop = self.checker.loop
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self.state.due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        checker = self.checker
        if checker.stopped:
            return
        if self.server.admin is AdminState.MAINT:
            # Checks pause in maintenance (HAProxy): keep the state, look again later.
            self.state.reschedule(checker.loop.time(), checker.rng())
            self._arm()
            return
        self._task = checker.loop.create_task(
            self._run(), name=f"check {checker.backend.name}/{self.server.name}"
        )

    async def _run(self) -> None:
        checker = self.checker
        try:
            result = await checker.probe(checker.loop, self.address, self.timeout)
        except Exception as e:  # a probe bug must not silently end this server's checks
            log.exception("check of %s/%s crashed", checker.backend.name, self.server.name)
            result = CheckResult.of(CheckStatus.SOCKERR, info=f"check error: {e!r}")
        finally:
            self._task = None
        if checker.stopped:
            return
        try:
            self._record(result)
            if result.passed:
                self.observer.reset()
            step = self.state.feed(result, checker.loop.time(), checker.rng())
            checker.apply(self, step)
        except Exception:  # e.g. a balancer bug in server_changed(): keep checking anyway
            log.exception(
                "applying the check of %s/%s failed", checker.backend.name, self.server.name
            )
            self.state.reschedule(checker.loop.time(), checker.rng())
        self._arm()

    def _record(self, result: CheckResult) -> None:
        s = self.server
        s.check_status = result.status
        s.check_code = result.code
        s.check_desc = result.info
        s.check_duration = result.duration

    # -- passive observation (CheckHandle) ----------------------------------------------

    def observe(self, obs: Observation, info: str = "") -> None:
        """Real traffic saw `obs` on this server: maybe a failed check now, and the next
        active check brought forward."""
        if obs is Observation.CONNECT_OK and not self.observer.consecutive:
            return  # hot path: the usual successful connect costs nothing more
        checker = self.checker
        if checker.stopped or self.server.admin is AdminState.MAINT:
            return
        decided = self.observer.decide(obs, info)
        if decided is None:
            return
        mode, result = decided
        before = self.state.due
        self._record(result)
        step = self.state.observe_error(result, checker.loop.time(), mode)
        checker.apply(self, step)
        if self._task is None and step.due < before:
            self._arm()

    def start(self, now: float, count: int) -> None:
        self.state.start(now, self.position, count, self.checker.rng())
        self._arm()

    def cancel(self) -> asyncio.Task[None] | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None:
            task.cancel()
        return task


class HealthChecker:
    """Active (and passive) checks of one backend's servers.

    Lifecycle: `start(loop)` once; `stop()` cancels every timer and probe (idempotent);
    `await wait_stopped()` waits until the cancelled probes have closed their sockets.
    A backend without a `health` block (or `type: none`) gets no checks: its servers stay
    up, as in HAProxy without `check`. Servers with `check: false` are not checked either.
    """

    __slots__ = (
        "_tasks",
        "backend",
        "checks",
        "health",
        "init",
        "loop",
        "policy",
        "probe",
        "rng",
        "spread",
        "stopped",
        "timeout",
    )

    def __init__(
        self,
        backend: Backend,
        *,
        spread: float = DEFAULT_SPREAD,
        init: InitState = InitState.UP,
        policy: ObservePolicy | None = None,
        rng: Callable[[], float] = random.random,
        probe: Probe | None = None,
    ) -> None:
        self.backend = backend
        conf = backend.conf
        self.health = conf.health if conf.health is not None else Health(type="none")
        self.spread = spread
        self.init = init
        self.policy = policy or default_policy(conf)
        self.rng = rng
        self.probe = probe or make_probe(self.health)
        self.timeout = check_timeout(self.health, conf.timeout.connect)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped = False
        self.checks: list[ServerCheck] = []
        self._tasks: list[asyncio.Task[None]] = []
        if self.health.type != "none":
            targets = [s for s in backend.servers if s.conf.check]
            self.checks = [ServerCheck(self, s, i) for i, s in enumerate(targets)]

    @property
    def enabled(self) -> bool:
        return bool(self.checks)

    def start(
        self, loop: asyncio.AbstractEventLoop, inherited: Mapping[str, int] | None = None
    ) -> None:
        """Attach to the servers and schedule the first checks (spread over one inter).

        `inherited`: server name -> health counter carried over from the previous
        generation at a reload (`show servers state`): such a server resumes where its
        old check was instead of at `init-state` (clamped to this rise/fall)."""
        if self.loop is not None:
            raise RuntimeError("HealthChecker already started")
        self.loop = loop
        if not self.checks:
            return
        if probe_factory(self.health.type) is None:
            log.warning(
                "backend %s: health type %r has no probe yet; checking TCP connect only.",
                self.backend.name,
                self.health.type,
            )
        now = loop.time()
        for sc in self.checks:
            if inherited and sc.server.name in inherited:
                st = sc.state
                st.health = max(0, min(inherited[sc.server.name], st.rise + st.fall - 1))
            init_up = sc.state.up
            if sc.server.oper_up != init_up:
                sc.server.oper_up = init_up
                self.backend.server_changed(sc.server)
            sc.server.check = sc
            sc.start(now, len(self.checks))

    def stop(self) -> None:
        """Cancel every timer and running probe; detach from the servers. Idempotent.
        Server states stay as they are (a reload's new checker may take them over)."""
        if self.stopped:
            return
        self.stopped = True
        for sc in self.checks:
            task = sc.cancel()
            if task is not None:
                self._tasks.append(task)
            if sc.server.check is sc:
                sc.server.check = None

    async def wait_stopped(self) -> None:
        """After `stop()`: wait for cancelled probes to finish closing their sockets."""
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- applying verdicts --------------------------------------------------------------

    def apply(self, sc: ServerCheck, step: Step) -> None:
        """Apply a state machine step: flip the server, log as HAProxy does."""
        tr = step.transition
        if tr is None:
            if step.reported and log.isEnabledFor(logging.DEBUG):
                log.debug("%s", self._progress_message(sc, step))
            return
        before_act, before_bck = self.backend.usable_count()
        sc.server.oper_up = tr.up
        self.backend.server_changed(sc.server)
        act, bck = self.backend.usable_count()
        level = NOTICE if tr.up else logging.CRITICAL
        if log.isEnabledFor(level):
            log.log(level, "%s", transition_message(sc.server, tr, act, bck))
        if not tr.up and act + bck == 0 and before_act + before_bck > 0:
            log.critical("backend %s has no server available!", self.backend.name)

    def _progress_message(self, sc: ServerCheck, step: Step) -> str:
        """HAProxy's `log-health-checks` line for a result that moved the counter without
        a flip: "Health check for server api/ctl02 failed, reason: ..., status: 2/3 UP."."""
        st, server = sc.state, sc.server
        if st.up:
            status = f"{st.health - st.rise + 1}/{st.fall} UP"
        else:
            status = f"{st.health}/{st.rise} DOWN"
        last = server.check_status
        verdict = "succeeded" if last is not None and last.passed else "failed"
        reason = CheckResult(
            last or CheckStatus.UNKNOWN,
            verdict == "succeeded",
            server.check_code,
            server.check_desc,
            server.check_duration,
        ).reason()
        prefix = "backup " if server.backup else ""
        return (
            f"Health check for {prefix}server {self.backend.name}/{server.name} "
            f"{verdict}, {reason}, status: {status}."
        )


def transition_message(server: Server, tr: Transition, act: int, bck: int) -> str:
    """The UP/DOWN line as HAProxy's srv_update_status() writes it (without the final
    newline). Queue numbers are 0 until the queue (issue 3 point 4) reports them."""
    prefix = "Backup " if server.backup else ""
    head = f"{prefix}Server {server.backend.name}/{server.name}"
    reason = tr.result.reason()
    if tr.up:
        return (
            f"{head} is UP, {reason}. {act} active and {bck} backup servers online. "
            f"0 sessions requeued, {server.backend.queue.count} total in queue."
        )
    return (
        f"{head} is DOWN, {reason}. {act} active and {bck} backup servers left. "
        f"{server.cur_conns} sessions active, 0 requeued, "
        f"{server.backend.queue.count} remaining in queue."
    )
