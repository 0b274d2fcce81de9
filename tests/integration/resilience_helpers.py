"""Helpers for the resilience tests (issue 3): backends that die, hold, reset or fail their
health endpoint; a backend in its own process (so SIGKILL is real); a bounded load of
several keep-alive clients; the HTTP proxy with its HealthChecker. Loopback only.

- `Api`: an in-process HTTP/1.1 keep-alive backend (asyncio Protocol). `GET /health`
  answers `health` (switchable); `/hold` answers only when `release()` is called; any
  request matching `reset_on` (method or path prefix) is answered with a TCP RST and no
  byte; everything else answers 200 with the backend's name. It records every request.
- `ProcBackend`: the same minimal server in a child process (`python -m
  tests.integration.resilience_helpers PORT NAME`), printing its port; `kill()` sends
  SIGKILL, `start()` again reuses the port.
- `Load`: N clients sending keep-alive GETs until stopped (bounded in time and count),
  counting answers per backend name and every failure with its cause.
- `resilient_proxy()`: `proxy()` from http_helpers plus a started `HealthChecker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from pylb.config.model import Address, CheckParams, Health, Listen, ServerConf, Timeouts
from pylb.health.scheduler import HealthChecker
from tests.integration.http_helpers import Client, Proxy, proxy

TEST_DEADLINE = 30.0


@pytest.fixture(name="run_uv")
def run_uv_fixture() -> Iterator[Callable[[Coroutine], Any]]:
    """`run_uv(coro)`: the data plane's loop only (uvloop), for the longer load tests."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:

        def _run(coro: Coroutine) -> Any:
            async def bounded() -> Any:
                async with asyncio.timeout(TEST_DEADLINE):
                    return await coro

            return runner.run(bounded())

        yield _run


async def until(cond: Callable[[], bool], timeout: float, what: str = "") -> float:
    """Poll in-process state until `cond()`; the time it took, or AssertionError."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        if loop.time() - t0 > timeout:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.005)
    return loop.time() - t0


def rst(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0): a crash as the peer sees it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- in-process backend ----------------------------------------------------------------------


class _ApiConn(asyncio.Protocol):
    def __init__(self, api: Api) -> None:
        self.api = api
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.api.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.api.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                n, _, v = line.partition(":")
                if n.strip().lower() == "content-length":
                    length = int(v.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.api.requests.append((method, path, body))
            self._answer(method, path)

    def _answer(self, method: str, path: str) -> None:
        api = self.api
        t = self.transport
        assert t is not None
        if path == "/health":
            code = api.health
            t.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % code)
            return
        if any(method == r or path.startswith(r) for r in api.reset_on):
            rst(t)
            self.transport = None
            return
        if path.startswith("/hold"):
            self.busy = True
            api.held.append(self)
            return
        self.reply()

    def reply(self) -> None:
        self.busy = False
        t = self.transport
        if t is None or t.is_closing():
            return
        body = self.api.name.encode()
        t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        if self.buf:
            self.data_received(b"")


class Api:
    """In-process keep-alive HTTP backend (see module docstring)."""

    def __init__(self, name: str, *, health: int = 200, reset_on: tuple[str, ...] = ()) -> None:
        self.name = name
        self.health = health
        self.reset_on = reset_on
        self.requests: list[tuple[str, str, bytes]] = []
        self.conns: set[_ApiConn] = set()
        self.held: list[_ApiConn] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    def traffic(self) -> list[tuple[str, str, bytes]]:
        return [r for r in self.requests if r[1] != "/health"]

    async def start(self) -> Api:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ApiConn(self), "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def release(self) -> int:
        held, self.held = self.held, []
        for c in held:
            c.reply()
        return len(held)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for c in list(self.conns):
                if c.transport is not None:
                    c.transport.abort()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None


# -- a backend in its own process ----------------------------------------------------------------


class ProcBackend:
    """The minimal HTTP server of `_proc_main` in a child process (SIGKILL is real)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    async def start(self) -> ProcBackend:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.resilience_helpers",
                str(self.port),
                self.name,
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            cwd=root,
        )
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError(f"backend {self.name} did not start")
        self.port = int(line.decode().strip())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            self.kill()
            for f in (self.proc.stdout, self.proc.stdin):
                if f is not None:
                    f.close()
            self.proc = None


async def _proc_main(port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    pid = str(os.getpid()).encode()

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.buf = self.buf[end + 4 :]  # GETs only: no body
                body = name.encode() + b" " + pid
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    server = await loop.create_server(Conn, "127.0.0.1", port, reuse_address=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    done = loop.create_future()

    class Stdin(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

    await loop.connect_read_pipe(Stdin, sys.stdin)
    await done  # the parent closed our stdin (or died)


# -- load ------------------------------------------------------------------------------------------


class Load:
    """`clients` keep-alive clients sending GETs until `stop()` (or `max_seconds`, or
    `max_requests` each). Every non-200 answer or connection error is a failure."""

    def __init__(
        self, port: int, clients: int = 8, max_seconds: float = 15.0, max_requests: int = 100000
    ) -> None:
        self.port = port
        self.clients = clients
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.ok = 0
        self.by_body: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        return self

    async def _client(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.max_seconds
        c: Client | None = None
        n = 0
        try:
            while not self._stop.is_set() and loop.time() < end and n < self.max_requests:
                n += 1
                try:
                    if c is None:
                        c = await Client.connect(self.port)
                    r = await c.request("GET", f"/load/{i}/{n}")
                except (ConnectionError, OSError) as e:
                    self.failures.append(f"client {i} request {n}: {e!r}")
                    if c is not None:
                        c.close()
                    c = None
                    continue
                if r.status != 200:
                    self.failures.append(f"client {i} request {n}: status {r.status}")
                else:
                    self.ok += 1
                    self.by_body[bytes(r.body).decode()] += 1
                if (r.header("connection") or "").lower() == "close":
                    c.close()
                    c = None
        finally:
            if c is not None:
                c.close()

    def served_by(self, prefix: str) -> int:
        return sum(n for body, n in self.by_body.items() if body.startswith(prefix))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def join(self) -> None:
        """Wait until every client has sent its `max_requests` (or `max_seconds` passed)."""
        await asyncio.gather(*self._tasks)


# -- proxy with health checks ----------------------------------------------------------------------


def conf_for(
    servers: list[tuple[str, Address]] | list[tuple[str, Address, bool]],
    *,
    health: Health | None = None,
    timeout: Timeouts | None = None,
    maxconns: dict[str, int] | None = None,
    **kw: Any,
) -> Listen:
    """A `listen` over `servers` = [(name, address[, backup])]."""
    maxconns = maxconns or {}
    confs = tuple(
        ServerConf(
            name=s[0],
            address=s[1],
            backup=bool(s[2]) if len(s) > 2 else False,  # type: ignore[misc]
            maxconn=maxconns.get(s[0]),
        )
        for s in servers
    )
    return Listen(
        name="api",
        binds=(Address("127.0.0.1", 0),),
        servers=confs,
        mode="http",
        timeout=timeout or Timeouts(connect=5.0, client=5.0, server=5.0),
        health=health,
        **kw,
    )


def http_health(inter: float = 0.1, rise: int = 2, fall: int = 3, path: str = "/health") -> Health:
    p = CheckParams(inter=inter, fastinter=inter, downinter=inter, rise=rise, fall=fall)
    return Health(type="http", path=path, params=p)


@contextlib.asynccontextmanager
async def resilient_proxy(conf: Listen, **checker_kw: Any) -> AsyncIterator[Proxy]:
    """The HTTP proxy of http_helpers with the backend's HealthChecker running."""
    async with proxy(conf) as px:
        checker = HealthChecker(px.backend, **checker_kw)
        checker.start(asyncio.get_running_loop())
        try:
            yield px
        finally:
            checker.stop()
            await checker.wait_stopped()
            px.backend.queue.close()


if __name__ == "__main__":
    # python -m tests.integration.resilience_helpers PORT NAME: serve until stdin closes.
    asyncio.run(_proc_main(int(sys.argv[1]), sys.argv[2]))
