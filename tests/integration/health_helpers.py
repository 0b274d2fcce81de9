"""Helpers for the health-check tests: loop runner, tiny loopback HTTP backends.

Tests are sync functions taking the `run` fixture (import it into the test module): it
runs a coroutine on a fresh loop of each kind (asyncio and uvloop) under a hard deadline,
so a hung test fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest

from pylb.config.model import Address

# `run`: one fresh loop per test, asyncio and uvloop, bounded in time (shared with TCP tests)
from tests.integration.tcp_helpers import LOOP_FACTORIES as LOOP_FACTORIES
from tests.integration.tcp_helpers import run_fixture as run_fixture


async def wait_until(cond: Callable[[], bool], timeout: float, what: str = "") -> float:
    """Poll in-process state until `cond()` or fail after `timeout`; returns the time taken."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not cond():
        if loop.time() - start > timeout:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.005)
    return loop.time() - start


class _Conn(asyncio.Protocol):
    def __init__(self, backend: TinyHttp) -> None:
        self.backend = backend
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.conns.add(self)
        if self.backend.mode == "silent":
            return  # a frozen server: accepts, reads, never answers

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf or self.transport is None:
            return
        head = self.buf.split(b"\r\n\r\n", 1)[0]
        self.backend.requests.append(head)
        mode = self.backend.mode
        if mode == "silent":
            return
        if mode == "garbage":
            self.transport.write(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n")
        else:
            code, reason = self.backend.status
            body = b"ok\n"
            self.transport.write(
                f"HTTP/1.1 {code} {reason}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.conns.discard(self)


class TinyHttp:
    """A loopback HTTP backend whose behaviour the test switches: `mode` = "http" (answer
    `status`), "garbage" (not HTTP), "silent" (never answer). `stop()` closes the listener
    and resets live connections (a killed process); `start()` again reopens the same port."""

    def __init__(self, status: tuple[int, str] = (200, "OK"), mode: str = "http") -> None:
        self.status = status
        self.mode = mode
        self.requests: list[bytes] = []
        self.conns: set[_Conn] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    async def start(self) -> TinyHttp:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Conn(self), "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
        await self.server.wait_closed()
        self.server = None


def closed_port() -> Address:
    """A loopback port with nothing listening (connects are refused at once)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return Address("127.0.0.1", port)


@contextlib.contextmanager
def blackhole() -> Iterator[Address]:
    """A loopback address whose connects hang: a never-accepting listener with backlog 0
    whose accept queue we fill, after which Linux drops further SYNs (no RST)."""
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
            pytest.skip("could not fill a listen backlog on loopback")
        yield Address(addr[0], addr[1])
    finally:
        for c in fillers:
            c.close()
        ls.close()
