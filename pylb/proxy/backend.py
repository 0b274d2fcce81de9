"""Runtime state of a listener's servers: what health checks, the balancer, the data plane
and the stats page share. Config objects stay frozen; everything that changes is here.

Operational state (from health checks) and administrative state (from the operator) are
kept apart, as HAProxy's srv_state and srv_admin are: a server takes new traffic only when
both allow it.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

from pylb.config.model import Listen, ServerConf

if TYPE_CHECKING:
    from pylb.balance.base import Balancer
    from pylb.health.types import CheckHandle, CheckStatus


class AdminState(enum.Enum):
    READY = "ready"
    DRAIN = "drain"  # no new sessions, existing ones finish
    MAINT = "maint"  # no traffic, checks stopped


class Server:
    """One server of one backend, loop thread only."""

    __slots__ = (
        "address",
        "admin",
        "backend",
        "backup",
        "bytes_in",
        "bytes_out",
        "check",
        "check_code",
        "check_desc",
        "check_duration",
        "check_status",
        "conf",
        "connect_ewma",
        "cur_conns",
        "failed_conns",
        "idle",
        "key",
        "last_change",
        "max_conns",
        "name",
        "oper_up",
        "redispatches",
        "resp_errors",
        "retries",
        "sessions",
        "total_conns",
        "weight",
    )

    def __init__(self, conf: ServerConf, backend: Backend) -> None:
        self.conf = conf
        self.backend = backend
        self.name = conf.name
        self.address = conf.address
        self.key = str(conf.address)
        self.weight = conf.weight
        self.backup = conf.backup
        self.admin = AdminState.MAINT if conf.disabled else AdminState.READY
        self.oper_up = True  # without active checks a server is assumed up (HAProxy)
        self.last_change = time.time()
        self.check_desc = ""  # info of the last check ("Connection refused", "Service Unavailable")
        # Set by pylb.health (issue 3): the running check's handle (passive observation goes
        # through it; None = no active check), last CheckStatus, HTTP code, duration (s).
        self.check: CheckHandle | None = None
        self.check_status: CheckStatus | None = None
        self.check_code: int | None = None
        self.check_duration: float | None = None
        self.cur_conns = 0
        self.max_conns = 0
        self.total_conns = 0
        self.failed_conns = 0  # connect errors (HAProxy econ)
        self.resp_errors = 0  # eresp
        self.retries = 0
        self.redispatches = 0
        self.bytes_in = 0  # client -> server
        self.bytes_out = 0  # server -> client
        self.idle: list = []  # idle keep-alive upstream connections (HTTP pool)
        # Usual connect time (s, EWMA of successful connects; None = no sample yet): a
        # connect taking far longer is a crash signal (pylb.proxy.exchange.slow_connect_after).
        self.connect_ewma: float | None = None
        # TCP sessions on this server (connecting or established), so they can be ended at
        # once when the server must stop taking traffic (HAProxy's `on-marked-down
        # shutdown-sessions`; writer-pin on every writer change). Each has `server_gone()`.
        self.sessions: set[Any] = set()

    @property
    def usable(self) -> bool:
        return self.oper_up and self.admin is AdminState.READY

    def has_slot(self) -> bool:
        m = self.conf.maxconn
        return m is None or self.cur_conns < m

    def take(self) -> None:
        self.cur_conns += 1
        self.total_conns += 1
        if self.cur_conns > self.max_conns:
            self.max_conns = self.cur_conns

    def drop(self) -> None:
        self.cur_conns -= 1
        q = self.backend.queue
        if q.count:  # a slot freed: the head of the backend's queue takes it
            q.dispatch(self)

    def shutdown_sessions(self) -> int:
        """End every session registered on this server now (a connecting one may be
        redispatched by its frontend: nothing was sent yet). Returns how many there were."""
        sessions = list(self.sessions)
        for sess in sessions:
            sess.server_gone(self)
        return len(sessions)

    def __repr__(self) -> str:
        return (
            f"<Server {self.backend.name}/{self.name} {self.key} up={self.oper_up} "
            f"{self.admin.value}>"
        )


class Backend:
    """The backend half of a `listen` block: servers, balancer, counters."""

    __slots__ = (
        "balancer",
        "bytes_in",
        "bytes_out",
        "conf",
        "cur_conns",
        "denied",
        "max_conns",
        "name",
        "queue",
        "servers",
        "total_conns",
        "writer",
    )

    def __init__(self, conf: Listen) -> None:
        from pylb.balance.registry import make_balancer

        self.conf = conf
        self.name = conf.name
        self.servers = [Server(s, self) for s in conf.servers]
        self.balancer: Balancer = make_balancer(
            conf.balance, self.servers, allbackups=conf.allbackups, failback=conf.failback
        )
        # writer-pin: the controller that applies writer changes (closes the old writer's
        # sessions, logs, peers); None for other algorithms. pylb.galera.writer.
        self.writer: Any = None
        if conf.balance == "writer-pin":
            from pylb.galera.writer import WriterController

            self.writer = WriterController(self)
        from pylb.proxy.queue import backend_queue

        # Requests waiting for a server slot (maxconn), `timeout.queue`: pylb.proxy.queue.
        self.queue = backend_queue(self)
        self.cur_conns = 0  # frontend sessions
        self.max_conns = 0
        self.total_conns = 0
        self.denied = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def server(self, name: str) -> Server:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def server_changed(self, server: Server) -> None:
        """Call after changing a server's oper_up / admin / weight."""
        server.last_change = time.time()
        self.balancer.update()
        if self.queue.count:  # a server (back) up may take queued requests
            self.queue.dispatch()

    def pick(self, key: bytes | None = None, avoid: tuple[Server, ...] = ()) -> Server | None:
        return self.balancer.pick(key, avoid)  # type: ignore[return-value]  # Server is a Candidate

    def usable_count(self) -> tuple[int, int]:
        """(active, backup) servers usable now: the numbers HAProxy's DOWN message prints."""
        act = sum(1 for s in self.servers if s.usable and not s.backup)
        bck = sum(1 for s in self.servers if s.usable and s.backup)
        return act, bck
