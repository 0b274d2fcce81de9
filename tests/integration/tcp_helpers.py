"""Helpers for the TCP relay and connect tests: loop runners, small loopback backends.

Tests are plain (sync) functions that take the `run` fixture: it runs a coroutine to the
end on a fresh loop of each kind (asyncio's default and uvloop) under a hard deadline, so
a hung test fails instead of hanging the suite. This keeps the loop parametrisation local
to these tests (no shared conftest change needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from pylb.config.model import Address, Listen, ServerConf, Timeouts
from pylb.proxy.accesslog import AccessLog, TcpLogRecord
from pylb.proxy.backend import Backend
from pylb.proxy.state import ListenContext, WorkerState
from pylb.proxy.tcp import TcpFrontend

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

TEST_DEADLINE = 30.0  # seconds: a test that takes longer is hung, not slow


@pytest.fixture(name="run", params=list(LOOP_FACTORIES))
def run_fixture(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """`run(coro)`: run `coro` on a fresh loop of the parametrised kind, bounded in time."""
    factory = LOOP_FACTORIES[request.param]
    with asyncio.Runner(loop_factory=factory) as runner:

        def _run(coro: Coroutine[Any, Any, Any]) -> Any:
            async def bounded() -> Any:
                async with asyncio.timeout(TEST_DEADLINE):
                    return await coro

            return runner.run(bounded())

        yield _run


def open_fds() -> int:
    """Open fds of this process; collects garbage first so that sockets dropped (not
    closed) by earlier tests do not vanish in the middle of a measurement."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll `cond` (cheap, in-process state) until true or fail after `timeout`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"condition not reached within {timeout}s: {what or cond}")
        await asyncio.sleep(0.005)


# -- a connect that hangs on loopback ---------------------------------------------------


@contextlib.contextmanager
def blackhole() -> Iterator[Address]:
    """An address on 127.0.0.1 whose connects hang (SYNs dropped), without external hosts.

    A listener with backlog 0 that never accepts: Linux keeps one completed connection in
    its accept queue and drops SYNs while it is full, so further connects neither succeed
    nor get refused until the client's own timeout. We fill the queue with blocking
    connects until one times out, which proves the queue is full."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        addr = ls.getsockname()
        for _ in range(8):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(c)
            c.settimeout(0.2)
            try:
                c.connect(addr)
            except TimeoutError:
                break
        else:
            pytest.skip("could not fill a listen backlog on loopback (SYNs are not dropped)")
        yield Address(addr[0], addr[1])
    finally:
        for c in fillers:
            c.close()
        ls.close()


def closed_port() -> Address:
    """A loopback port with nothing listening (connects are refused at once)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound but never listened: the port stays free and refuses connects
    return Address("127.0.0.1", port)


# -- small backends (asyncio Protocols on the test loop) ---------------------------------


class BackendServer:
    """A listening server whose connections are handled by `proto_factory`; records the
    protocols so tests can inspect what each connection saw."""

    def __init__(self, proto_factory: Callable[[BackendServer], asyncio.Protocol]) -> None:
        self.proto_factory = proto_factory
        self.server: asyncio.base_events.Server | None = None
        self.conns: list[Any] = []
        self.address = Address("127.0.0.1", 0)

    async def start(self, host: str = "127.0.0.1") -> BackendServer:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            p = self.proto_factory(self)
            self.conns.append(p)
            return p

        self.server = await loop.create_server(factory, host, 0)
        sockname = self.server.sockets[0].getsockname()
        self.address = Address(sockname[0], sockname[1])
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for p in self.conns:
                tr = getattr(p, "transport", None)
                if tr is not None and not tr.is_closing():
                    tr.abort()
            await self.server.wait_closed()
            self.server = None


class Echo(asyncio.Protocol):
    """Echoes everything; on EOF, half-closes back (keeps the session half-open)."""

    def __init__(self, owner: BackendServer) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.saw_eof = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        if not self.saw_eof.done():
            self.saw_eof.set_result(True)
        assert self.transport is not None
        self.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class RequestThenReply(asyncio.Protocol):
    """Reads until the client's EOF, then sends `reply` and closes: what a client doing
    `shutdown(SHUT_WR)` after its request expects (the TCP half-close test)."""

    reply = b"R" * 300_000

    def __init__(self, owner: BackendServer) -> None:
        self.transport: asyncio.Transport | None = None
        self.request = bytearray()
        self.saw_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.request += data

    def eof_received(self) -> bool:
        self.saw_eof = True
        assert self.transport is not None
        self.transport.write(hashlib.sha256(self.request).hexdigest().encode() + b"\n")
        self.transport.write(self.reply)
        self.transport.close()
        return True


class GreetThenHalfClose(asyncio.Protocol):
    """Sends a greeting and half-closes at once, then records what it still receives from
    the client until the client's EOF (the server half-close test)."""

    greeting = b"hello from server\n"

    def __init__(self, owner: BackendServer) -> None:
        self.transport: asyncio.Transport | None = None
        self.after_eof = bytearray()
        self.client_eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.greeting)  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.after_eof += data

    def eof_received(self) -> bool:
        if not self.client_eof.done():
            self.client_eof.set_result(bytes(self.after_eof))
        return False


class Source(asyncio.Protocol):
    """Sends `total` bytes of a deterministic pattern as fast as the transport takes them
    (honouring its own pause_writing), then closes. Records the sha256 of what it sent."""

    total = 64 * 1024 * 1024
    chunk = 256 * 1024

    def __init__(self, owner: BackendServer) -> None:
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.paused = False
        self.digest = hashlib.sha256()
        self.done = asyncio.get_running_loop().create_future()
        self._block = bytes(range(256)) * (self.chunk // 256)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._pump()

    def _pump(self) -> None:
        tr = self.transport
        assert tr is not None
        while not self.paused and self.sent < self.total and not tr.is_closing():
            n = min(self.chunk, self.total - self.sent)
            block = self._block if n == self.chunk else self._block[:n]
            self.digest.update(block)
            tr.write(block)
            self.sent += n
        if self.sent >= self.total and not tr.is_closing():
            tr.close()
            if not self.done.done():
                self.done.set_result(self.digest.hexdigest())

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(f"lost after {self.sent} bytes: {exc}")  # never a digest


class Silent(asyncio.Protocol):
    """Accepts and never sends: for idle-timeout tests. Records when it is closed."""

    def __init__(self, owner: BackendServer) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Stalled(Silent):
    """Accepts and never reads (a server that stopped draining its socket)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # uvloop (0.23) ignores pause_reading() called inside connection_made of an
        # accepted connection (it starts reading afterwards): pause on the next turn.
        asyncio.get_running_loop().call_soon(transport.pause_reading)  # type: ignore[attr-defined]


class ResetOnData(Silent):
    """Answers the first bytes with an RST."""

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        reset(self.transport)


# -- client side -------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """A test client that records what it receives and can read slowly (paused reading)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.keep = True  # False: only count and hash (big transfers)
        self.count = 0
        self.digest = hashlib.sha256()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.on_data: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        if self.keep:
            self.data += data
        else:
            self.digest.update(data)
        if self.on_data is not None:
            self.on_data()

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(True)
        return True  # keep our write side open: the half-close tests want it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(False)
        if not self.lost.done():
            self.lost.set_result(exc)


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or impatient client does; a plain
    `abort()` still sends a FIN."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def connect_client(address: Address) -> Client:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Client, address.host, address.port)
    return proto


async def until(aw: Awaitable[Any], timeout: float = 5.0) -> Any:
    async with asyncio.timeout(timeout):
        return await aw


def listen_conf(
    servers: list[Address],
    *,
    name: str = "tcp_test",
    retries: int = 3,
    redispatch: bool = True,
    maxconn: int | None = None,
    timeout: Timeouts | None = None,
    balance: str = "roundrobin",
) -> Listen:
    return Listen(
        name=name,
        binds=(Address("127.0.0.1", 0),),
        servers=tuple(ServerConf(name=f"s{i + 1}", address=a) for i, a in enumerate(servers)),
        mode="tcp",
        balance=balance,
        retries=retries,
        redispatch=redispatch,
        maxconn=maxconn,
        timeout=timeout or Timeouts(connect=2.0, client=10.0, server=10.0, tunnel=10.0),
    )


# -- the proxy under test ----------------------------------------------------------------


class DisabledLog(AccessLog):
    """The access log of `log: {target: none}`: no record is ever built."""

    enabled = False


class RecordingLog(AccessLog):
    """An enabled access log that keeps the records (termination states, timers)."""

    enabled = True

    def __init__(self) -> None:
        self.records: list[TcpLogRecord] = []

    def tcp(self, rec: TcpLogRecord) -> None:
        self.records.append(rec)


class TcpProxy:
    """A TCP-mode listener in the test's loop: Backend + WorkerState + ListenContext +
    `loop.create_server(lambda: TcpFrontend(ctx))`, as the worker builds it."""

    def __init__(self, conf: Listen, log: AccessLog | None = None) -> None:
        self.conf = conf
        self.log = log if log is not None else RecordingLog()
        self.ctx: ListenContext | None = None
        self.server: asyncio.base_events.Server | None = None
        self.address = Address("127.0.0.1", 0)

    async def start(self, *, worker_maxconn: int = 20000) -> TcpProxy:
        loop = asyncio.get_running_loop()
        worker = WorkerState(loop=loop, access_log=self.log, maxconn=worker_maxconn)
        backend = Backend(self.conf)
        worker.backends[backend.name] = backend
        self.ctx = ctx = ListenContext(conf=self.conf, backend=backend, worker=worker)
        self.server = await loop.create_server(lambda: TcpFrontend(ctx), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.address = Address("127.0.0.1", port)
        return self

    def address_tuple(self) -> tuple[str, int]:
        return self.address.host, self.address.port

    @property
    def sessions(self) -> list[TcpFrontend]:
        assert self.ctx is not None
        return list(self.ctx.worker.connections)

    @property
    def records(self) -> list[TcpLogRecord]:
        assert isinstance(self.log, RecordingLog)
        return self.log.records

    def idle(self) -> bool:
        """No session left and every counter back to zero."""
        ctx = self.ctx
        assert ctx is not None
        return (
            not ctx.worker.connections
            and ctx.worker.actconn == 0
            and ctx.feconn == 0
            and ctx.backend.cur_conns == 0
            and all(s.cur_conns == 0 for s in ctx.backend.servers)
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            assert self.ctx is not None
            for conn in list(self.ctx.worker.connections):
                conn.abort()
            await self.server.wait_closed()
            self.server = None


@contextlib.asynccontextmanager
async def proxy_with(
    backends: list[BackendServer] | None = None, conf: Listen | None = None, **kw: Any
) -> AsyncIterator[TcpProxy]:
    """Start `backends` and a proxy over them (or over `conf`); close all at the end."""
    backends = backends or []
    started: list[BackendServer] = []
    proxy: TcpProxy | None = None
    try:
        for b in backends:
            started.append(await b.start())
        if conf is None:
            conf = listen_conf([b.address for b in started], **kw)
        proxy = await TcpProxy(conf).start()
        yield proxy
    finally:
        if proxy is not None:
            await proxy.close()
        for b in started:
            await b.close()
