"""A proxy worker: the whole data plane of one process on one event loop.

The master (`pylb.supervisor`) binds the listening sockets and forks; each worker process
calls `run_worker(config, sockets)`, which makes a uvloop loop (asyncio's when uvloop is
missing), builds a `Worker` and serves until SIGTERM, then drains. `pylb demo` and the
integration tests drive the same `Worker` inside an existing loop (`start()` /
`request_stop()` / `wait_stopped()`), so there is one code path for both.

What a worker owns (uvicorn's `Server` + `ServerState` split): the `WorkerState` every
protocol instance receives, one runtime `Backend` per `listen` block, one `ListenContext`
per `listen`, and one asyncio server per pre-bound socket whose protocol factory is the
listen's frontend class (`TcpFrontend` for `mode: tcp`, `HttpFrontend` for `mode: http`).

Stopping is a bounded sequence, in uvicorn's `Server.shutdown` order:
  1. `state.draining = True` (HTTP answers in-flight requests with `Connection: close`);
  2. stop accepting (close this worker's listening sockets; the master keeps its copies,
     so a reload's next generation keeps accepting on them);
  3. `shutdown()` every live connection: idle keep-alive ones close now, busy ones after
     their current request / when their TCP session ends;
  4. wait until none is left or `hard_stop_after` has passed;
  5. `abort()` what is left, close idle upstream connections.

Health checks (issue 3) start in `_start_checks()` and stop at the end of the drain.
Operations (issue 6): before accepting, a worker forked after a reload or a crash copies
the server state of a serving worker (`_inherit_state`, over the control sockets listed in
`WorkerControl`); once serving, every worker answers the runtime API on its private control
socket, and slot 0 serves the stats endpoints and the public admin socket (relaying to the
others: `pylb.admin.relay`). The VIP-aware stop order (keep accepting with `Connection:
close` until the VRRP peer has taken the VIP) is `soft_stop()` (SIGUSR1 from the master)
followed by `drain()` (SIGTERM).

Galera writer-pin (issue 5, docs/galera.md): before accepting, a worker restores each
writer-pin listener's writer from the state file (`_state_file`: global.state_dir or the
run directory) and joins the writer sync (`_start_writers`): its sibling workers and the
generation it replaces over unix datagram sockets (`sync_path`), and, in slot 0, the other
pylb nodes of `global.peers`, so that every worker of every node uses one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pylb.config.model import Config, Listen
from pylb.logsetup import NOTICE
from pylb.proxy.accesslog import AccessLog
from pylb.proxy.backend import Backend
from pylb.proxy.listener import backlog_for
from pylb.proxy.state import ListenContext, WorkerState

log = logging.getLogger("pylb.worker")

DRAIN_POLL = 0.05  # how often drain() looks whether the last connections are gone
# writer-pin (docs/galera.md): how long a starting worker waits for a peer's writer claim
# before serving (one round trip on a LAN or loopback; the choice by order stands after)
SYNC_WAIT = 0.5
WRITERS_FILE = "writers.json"  # the writer state file, in global.state_dir or the run dir
# HMAC key of the sibling-worker sync when no global.peers.key_file is set: the unix
# sockets are in the master's 0700 run directory, the file mode is the protection.
LOCAL_SYNC_KEY = b"pylb-local-writer-sync"
IDLE_CLOSE_GRACE = 1.0  # drain: keep-alive connections get a last request with Connection: close


@dataclass(frozen=True, slots=True)
class WorkerControl:
    """A forked worker's place among its siblings (from the master).

    `path`: this worker's private control socket (the runtime API, in the master's 0700
    run directory); `peers`: the other workers' of the same generation (slot 0 relays
    runtime commands to them, `pylb.admin.relay`); `state_from`: control sockets of
    serving workers to copy `show servers state` from before accepting (reload, restart)."""

    path: str
    index: int = 0
    workers: int = 1
    peers: tuple[str, ...] = ()
    state_from: tuple[str, ...] = ()


def sync_path(control_path: str) -> str:
    """The writer-sync unix datagram socket of the worker whose control socket is
    `control_path` (same directory, same generation and slot)."""
    base = control_path[:-5] if control_path.endswith(".sock") else control_path
    return base + ".sync"


def frontend_factory(mode: str) -> Callable[[ListenContext], Any]:
    """The frontend protocol class of a mode, imported on first use (a TCP-only config
    never imports the HTTP stack)."""
    if mode == "tcp":
        from pylb.proxy.tcp import TcpFrontend

        return TcpFrontend
    if mode == "http":
        from pylb.proxy.frontend import HttpFrontend

        return HttpFrontend
    raise ValueError(f"unknown mode {mode!r}")


class Worker:
    """The data plane of one process. Loop thread only."""

    def __init__(
        self,
        config: Config,
        sockets: Mapping[str, Sequence[socket.socket]],
        *,
        access_log: AccessLog | None = None,
        control: WorkerControl | None = None,
        stats_sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.control = control
        self.stats_sock = stats_sock  # global.stats.bind bound by the master (slot 0 only)
        self._access_log = access_log
        self.provider: Any = None  # pylb.admin.stats.WorkerProvider, built by start()
        self._ops: list[Any] = []  # stats server, public admin socket: closed at drain start
        self._control_server: Any = None  # private control socket: closed at the very end
        self.state: WorkerState | None = None
        self.contexts: dict[str, ListenContext] = {}
        self.servers: list[asyncio.base_events.Server] = []
        self.checkers: list[Any] = []  # pylb.health.scheduler.HealthChecker, one per backend
        self.peer_sync: Any = None  # pylb.galera.peers.PeerSync (writer-pin), when one runs
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self.started_at = 0.0

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the runtime state and start accepting on every socket."""
        loop = asyncio.get_running_loop()
        g = self.config.global_
        access_log = self._access_log
        if access_log is None:  # built here, after the fork: its buffers are this process's
            access_log = self._access_log = AccessLog.from_config(self.config)
        self.state = state = WorkerState(loop=loop, access_log=access_log, maxconn=g.maxconn)
        for lst in self.config.listens:
            backend = Backend(lst)
            state.backends[lst.name] = backend
            self.contexts[lst.name] = ListenContext(conf=lst, backend=backend, worker=state)
        inherited = await self._inherit_state()
        # Probes are built before accepting: a galera check's password_file is read here,
        # so an unreadable one fails the start instead of serving without checks.
        checkers = self._make_checkers()
        try:
            await self._start_writers()
            for lst in self.config.listens:
                await self._serve_listen(lst)
        except BaseException:
            self._close_servers()
            self._stop_writers()
            raise
        self._start_checks(inherited, checkers)
        self.started_at = time.monotonic()
        try:
            await self._start_ops()
        except BaseException:
            self._close_servers()
            self._close_ops()
            raise
        for lst in self.config.listens:
            log.log(NOTICE, "Proxy %s started.", lst.name)

    async def _inherit_state(self) -> dict[str, dict[str, int]]:
        """Before accepting: copy a serving worker's `show servers state` (reload or
        restart), so unchanged servers keep their health, admin state and runtime weight.
        Returns the health counters the new checks resume from."""
        control, state = self.control, self.state
        if control is None or not control.state_from or state is None:
            return {}
        from pylb.admin.commands import apply_servers_state
        from pylb.admin.relay import fetch_servers_state, inherited_health

        got = await fetch_servers_state(control.state_from)
        if got is None:
            log.warning("No server state from the previous workers: starting from the config")
            return {}
        text, source = got
        backends = list(state.backends.values())
        n = apply_servers_state(text, backends)
        log.info("Server state of %d server(s) taken over from %s", n, os.path.basename(source))
        return inherited_health(text, backends)

    async def _start_ops(self) -> None:
        """The private control socket (every worker), and on slot 0 the stats server and
        the public runtime API socket (relaying to the other workers)."""
        from pylb.admin.stats import WorkerProvider

        loop = asyncio.get_running_loop()
        g = self.config.global_
        control = self.control
        index = control.index if control is not None else 0
        workers = control.workers if control is not None else 1
        self.provider = provider = WorkerProvider(
            self, info={"workers": workers, "process_num": index + 1}
        )
        if self.config.vrrp is not None and control is not None:
            # `show vrrp`, the stats page and /metrics ask the master's VRRP speaker
            from pylb.vrrp.control import speaker_control_path, speaker_hook

            rundir = os.path.dirname(control.path)
            provider.vrrp_hook = speaker_hook(speaker_control_path(self.config.vrrp, rundir))
        if control is None and g.stats is None and g.admin_socket is None:
            return
        from pylb.admin.socket import start_admin_socket

        if control is not None:
            from pylb.admin.relay import local_handler

            self._control_server = await start_admin_socket(
                loop,
                control.path,
                provider,
                handler=lambda text: local_handler(provider, text),
                quiet=True,
            )
        if index != 0:
            return
        relay = None
        if control is not None and control.peers:
            from pylb.admin.relay import Relay

            peers = control.peers
            relay = Relay(provider, lambda: peers)
        if g.stats is not None:
            from pylb.admin.http import start_stats_server

            # The master bound it (like the listeners): old and new slot 0 share it across
            # a reload; the old one stops accepting on it when it drains.
            server = await start_stats_server(
                loop,
                g.stats,
                provider,
                sock=self.stats_sock,
                dynamic=relay.http_routes() if relay is not None else None,
            )
            self._ops.append(server)
            log.info("Stats listening on %s", g.stats.bind)
        if g.admin_socket is not None:
            handler = relay.handle if relay is not None else None
            self._ops.append(
                await start_admin_socket(loop, g.admin_socket, provider, handler=handler)
            )

    def _close_ops(self) -> None:
        ops, self._ops = self._ops, []
        for server in ops:
            server.close()

    async def _serve_listen(self, lst: Listen) -> None:
        loop = asyncio.get_running_loop()
        ctx = self.contexts[lst.name]
        cls = frontend_factory(lst.mode)
        # create_server() calls listen() again: pass the backlog the master chose, or
        # asyncio would shrink it to 100.
        backlog = backlog_for(lst.maxconn or self.config.global_.maxconn)
        for sock in self.sockets.get(lst.name, ()):
            server = await loop.create_server(lambda: cls(ctx), sock=sock, backlog=backlog)
            self.servers.append(server)

    def _make_checkers(self) -> list[Any]:
        """One `HealthChecker` per backend with checks (not started). Raises
        pylb.health.galera.SecretError for an unreadable password_file."""
        from pylb.health.scheduler import HealthChecker

        out = []
        for backend in self.state.backends.values() if self.state else ():
            try:
                checker = HealthChecker(backend)
            except Exception as e:
                log.critical("Backend %s: cannot build its health check: %s", backend.name, e)
                raise
            if checker.enabled:
                out.append(checker)
        return out

    def _start_checks(
        self,
        inherited: Mapping[str, Mapping[str, int]] | None = None,
        checkers: Sequence[Any] | None = None,
    ) -> None:
        """Active health checks (issue 3): one `HealthChecker` per backend, started once the
        listeners serve. A listen without a `health` block gets none (servers stay up).
        `inherited`: listener -> server -> health counter of the previous generation."""
        loop = asyncio.get_running_loop()
        for checker in self._make_checkers() if checkers is None else checkers:
            checker.start(loop, (inherited or {}).get(checker.backend.name))
            self.checkers.append(checker)

    # -- writer-pin: state file and sync (docs/galera.md, "Reload" and "Workers") ---------

    def _state_file(self) -> Path | None:
        """Where the writers are saved: global.state_dir, else the master's private run
        directory (survives reloads and worker restarts); None in-process without either."""
        g = self.config.global_
        if g.state_dir is not None:
            directory = g.state_dir
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as e:
                log.warning("global.state_dir %s: %s: the writer is not saved", directory, e)
                return None
        elif self.control is not None:
            directory = os.path.dirname(self.control.path)
        else:
            return None
        return Path(directory) / WRITERS_FILE

    async def _start_writers(self) -> None:
        """Before accepting: restore each writer-pin listener's writer from the state file
        (a reload or restart keeps the writer), then join the writer sync: the sibling
        workers of this node over unix datagram sockets in the run directory (all workers
        of a node use one writer), and slot 0 also the other pylb nodes (global.peers).
        A worker with someone to hear from waits up to SYNC_WAIT for their claim."""
        from pylb.galera.writer import WriterController, restore_writers

        state = self.state
        if state is None:
            return
        controllers = {
            name: b.writer
            for name, b in state.backends.items()
            if isinstance(b.writer, WriterController)
        }
        if not controllers:
            return
        control = self.control
        index = control.index if control is not None else 0
        path = self._state_file()
        if path is not None:
            restored = restore_writers(state.backends.values(), path)
            for name, server in restored.items():
                log.info("Writer of %s restored: %s", name, server)
            if index != 0:  # one writer of the file per node: slot 0 (they all agree)
                for ctl in controllers.values():
                    ctl.state_file = None
        sync = self._make_sync(controllers, index)
        if sync is None:
            return
        try:
            await sync.start(asyncio.get_running_loop())
        except OSError as e:
            if sync.bind is None:
                raise
            # Serving without the node mesh beats not serving: the writer is then
            # decided by this node alone (docs/galera.md, "Failure cases").
            log.error(
                "Writer sync: cannot bind global.peers.bind %s: %s; this node decides alone",
                sync.bind,
                e.strerror or e,
            )
            sync = self._make_sync(controllers, index, nodes=False)
            if sync is None:
                return
            await sync.start(asyncio.get_running_loop())
        self.peer_sync = sync
        external = any(not isinstance(p, str) for p in sync.peers)
        serving = control is not None and bool(control.state_from)
        if (external or serving) and not await sync.wait_synced(SYNC_WAIT):
            log.info("Writer sync: no peer answered within %gs, writer by order", SYNC_WAIT)

    def _make_sync(self, controllers: Mapping[str, Any], index: int, *, nodes: bool = True) -> Any:
        """The PeerSync of this worker, or None when it has nobody to sync with.
        `nodes`: slot 0 joins the other pylb nodes (global.peers)."""
        from pylb.galera.peers import PeerSync

        g = self.config.global_
        pc = g.peers
        control = self.control
        external = pc is not None and index == 0 and nodes
        if control is None and not external:
            return None  # in-process, no peers: nobody to sync with
        # Siblings of this generation, and the workers of the generation this one replaces
        # (still draining after a reload: they follow this generation's changes).
        siblings: list[str] = []
        if control is not None:
            for p in (*control.peers, *control.state_from):
                sp = sync_path(p)
                if p != control.path and sp not in siblings:
                    siblings.append(sp)
        key = LOCAL_SYNC_KEY
        if pc is not None and pc.key_file is not None:
            from pylb.health.galera import read_secret

            key = read_secret(pc.key_file).strip().encode()
        node = (pc.node if pc is not None else None) or socket.gethostname()
        # Unique per worker and generation ("lb01/g3-w1"): a member ignores its own name.
        name = (
            node if control is None else f"{node}/{os.path.basename(sync_path(control.path))[:-5]}"
        )
        peers: list[Any] = [addr for _, addr in pc.nodes] if external and pc else []
        return PeerSync(
            controllers,
            node=name,
            bind=pc.bind if external and pc else None,
            peers=[*peers, *siblings],
            key=key,
            interval=pc.interval if pc is not None else 1.0,
            local=sync_path(control.path) if control is not None else None,
            reuse_port=True,
        )

    def _stop_writers(self) -> None:
        sync, self.peer_sync = self.peer_sync, None
        if sync is not None:
            sync.stop()

    async def _stop_checks(self) -> None:
        checkers, self.checkers = self.checkers, []
        for checker in checkers:
            checker.stop()
        for checker in checkers:
            await checker.wait_stopped()

    # -- stop -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask `serve()` to drain and return; idempotent, safe from a signal handler."""
        self._stop.set()

    def soft_stop(self) -> None:
        """Keep accepting but close every connection after its current request."""
        if self.state is not None:
            self.state.draining = True

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let connections finish for at most `timeout` s, abort the rest."""
        state = self.state
        if state is None:
            return
        state.draining = True
        self._close_ops()  # the next generation's slot 0 serves stats and the runtime API
        if self.peer_sync is not None:
            # the next generation's slot 0 is the node's voice among the pylb nodes now;
            # this one keeps following its siblings until its last session ends
            self.peer_sync.close_external()
        for lst in self.config.listens:
            log.log(NOTICE, "Stopping proxy %s in %d ms.", lst.name, int(timeout * 1000))
        self._close_servers()
        # uvloop accepts and builds the protocol in one step but calls connection_made()
        # (where a frontend joins `state.connections`) on the next loop iteration: let
        # those run, or a connection accepted just before the close would be neither
        # shut down nor waited for, and die with the process.
        for _ in range(2):
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # HAProxy's `idle-close-on-response`: closing an idle keep-alive connection races
        # with the client's next request on it (sent before our FIN arrives: reset). For
        # IDLE_CLOSE_GRACE, connections only get `Connection: close` on their next
        # response, so busy keep-alive clients close cleanly themselves; then the rest.
        grace_end = min(deadline, loop.time() + IDLE_CLOSE_GRACE)
        while state.connections and loop.time() < grace_end:
            await asyncio.sleep(min(DRAIN_POLL, max(0.0, grace_end - loop.time())))
        for conn in list(state.connections):
            with contextlib.suppress(Exception):  # one broken connection must not stop the drain
                conn.shutdown()
        while state.connections and loop.time() < deadline:
            await asyncio.sleep(min(DRAIN_POLL, max(0.0, deadline - loop.time())))
        if state.connections:
            log.warning(
                "hard-stop-after reached: aborting %d connection(s)", len(state.connections)
            )
            for conn in list(state.connections):
                with contextlib.suppress(Exception):
                    conn.abort()
            await asyncio.sleep(0)  # let connection_lost callbacks run
        self._close_idle_upstreams()
        await self._stop_checks()  # checks ran until the last session ended
        for lst in self.config.listens:
            ctx = self.contexts[lst.name]
            log.log(
                NOTICE,
                "Proxy %s stopped (cumulated conns: FE: %d, BE: %d).",
                lst.name,
                ctx.total_conns,
                ctx.backend.total_conns,
            )

    def _close_servers(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()

    def _close_idle_upstreams(self) -> None:
        """Idle keep-alive connections to servers hold no request: close them."""
        if self.state is None:
            return
        from pylb.proxy.pool import close_idle

        for backend in self.state.backends.values():
            for srv in backend.servers:
                close_idle(srv)

    # -- run ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """start(), wait for request_stop(), drain within `hard_stop_after`."""
        try:
            if self.state is None:
                await self.start()
            await self._stop.wait()
            await self.drain(self.config.global_.hard_stop_after)
        finally:
            self._close_servers()
            self._close_ops()
            if self._control_server is not None:
                self._control_server.close()
                self._control_server = None
            for checker in self.checkers:  # not drained (an error): stop the timers anyway
                checker.stop()
            self._stop_writers()
            if self.state is not None:
                self.state.access_log.close()  # flushes the buffered lines
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(
    config: Config,
    sockets: Mapping[str, Sequence[socket.socket]],
    stop: asyncio.Event | None = None,
) -> Worker:
    """Run a worker in the running loop until `stop` is set (or forever), then drain."""
    worker = Worker(config, sockets)
    await worker.start()
    waiter = None
    if stop is not None:
        waiter = asyncio.ensure_future(stop.wait())
        waiter.add_done_callback(lambda _f: worker.request_stop())
    try:
        await worker.serve()
    finally:
        if waiter is not None:
            waiter.cancel()
    return worker


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the data plane's loop), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


PR_SET_PDEATHSIG = 1
UNBLOCK = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the master dies, so a SIGKILLed master leaves no
    orphaned worker holding the listening sockets (Linux prctl; no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def run_worker(
    config: Config,
    sockets: Mapping[str, Sequence[socket.socket]],
    *,
    master_pid: int | None = None,
    ready_fd: int | None = None,
    control: WorkerControl | None = None,
    stats_sock: socket.socket | None = None,
) -> int:
    """Process entry point of a forked worker: serve until SIGTERM, drain, return 0.

    `ready_fd`: the write end of the master's readiness pipe; one byte is written to it
    once every listener accepts, which is when the master announces the worker (and, on a
    reload, retires the previous generation).

    SIGINT and SIGHUP are ignored: Ctrl-C (or `systemctl kill`) reaches every process,
    and the master decides what a signal means (it sends SIGTERM to stop; reload is the
    master's job). SIGUSR1 from the master = soft stop (keep accepting, close every
    connection after its current response) while the VRRP speaker hands the VIP over.
    """
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    if master_pid is not None:
        die_with_parent()
        if os.getppid() != master_pid:  # the master died before prctl() took effect
            return 0

    async def main() -> None:
        worker = Worker(config, sockets, control=control, stats_sock=stats_sock)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, worker.soft_stop)
        # The master forks with signals blocked: a SIGTERM that arrived meanwhile is
        # pending and is delivered now, to the handler above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, UNBLOCK)
        await worker.start()
        if ready_fd is not None:
            os.write(ready_fd, b"R")
            os.close(ready_fd)
        await worker.serve()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    return 0
