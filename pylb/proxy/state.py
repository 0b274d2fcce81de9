"""Per-worker state handed to every protocol instance (uvicorn's ServerState habit):
nothing in the data plane is a module global, so tests can run several workers in one loop.

INTERFACE shared by the TCP relay (`pylb.proxy.tcp.TcpFrontend`), the HTTP proxy
(`pylb.proxy.frontend.HttpFrontend`) and the worker (`pylb.proxy.worker`):

- a frontend protocol is constructed as `Frontend(ctx: ListenContext)` (one per accepted
  connection) and adds itself to `ctx.worker.connections` on `connection_made`, removes
  itself on close;
- it implements `shutdown()` (graceful: finish what is in flight, then close; HTTP answers
  the current request with `Connection: close`) and `abort()` (close now);
- counters: `ctx.worker.actconn`, `ctx.feconn`, `ctx.backend.cur_conns` are incremented on
  accept and decremented on close; `server.take()/drop()` around a server session.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from pylb.config.model import Listen
from pylb.proxy.accesslog import AccessLog
from pylb.proxy.backend import Backend
from pylb.proxy.deadlines import Deadlines


class FrontendConn(Protocol):
    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(slots=True, eq=False)
class WorkerState:
    loop: asyncio.AbstractEventLoop
    access_log: AccessLog
    connections: set[Any] = field(default_factory=set)  # live FrontendConn objects
    backends: dict[str, Backend] = field(default_factory=dict)
    actconn: int = 0  # client connections in this worker (HAProxy %ac)
    maxconn: int = 20000
    draining: bool = False  # set at stop: answer with Connection: close
    # The one timer of every connection timeout in this worker (pylb.proxy.deadlines).
    deadlines: Deadlines = field(init=False)

    def __post_init__(self) -> None:
        self.deadlines = Deadlines(self.loop)


@dataclass(slots=True, eq=False)
class ListenContext:
    conf: Listen
    backend: Backend
    worker: WorkerState
    feconn: int = 0  # client connections on this listener (HAProxy %fc)
    total_conns: int = 0
    denied_conns: int = 0  # refused by maxconn
    # Connections accepted over this listener's maxconn, parked until one closes
    # (pylb.proxy.queue.WaitQueue, built on first use by the frontend).
    parked: Any = None
