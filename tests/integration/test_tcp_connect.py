"""pylb.proxy.connect.open_connection on real loopback sockets, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pylb.config.model import Address
from pylb.proxy.connect import ConnectError, open_connection
from tests.integration.tcp_helpers import (
    BackendServer,
    Echo,
    blackhole,
    closed_port,
    open_fds,
    run_fixture,  # noqa: F401  # provides the loop-parametrised `run` fixture
    until,
)


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.got = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if not self.got.done():
            self.got.set_result(None)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_connect_success_nodelay_and_data(run) -> None:
    async def main() -> None:
        srv = await BackendServer(Echo).start()
        try:
            loop = asyncio.get_running_loop()
            tr, proto = await open_connection(loop, srv.address, Recorder, 2.0)
            sock = tr.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            tr.write(b"ping")
            await until(proto.got)
            assert bytes(proto.data) == b"ping"
            tr.close()
        finally:
            await srv.close()

    run(main())


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_connect_ipv6_literal(run) -> None:
    async def main() -> None:
        srv = await BackendServer(Echo).start(host="::1")
        try:
            assert srv.address.host == "::1"
            loop = asyncio.get_running_loop()
            tr, proto = await open_connection(loop, Address("::1", srv.address.port), Recorder, 2.0)
            tr.write(b"v6")
            await until(proto.got)
            assert bytes(proto.data) == b"v6"
            tr.close()
        finally:
            await srv.close()

    run(main())


def test_connect_hostname(run) -> None:
    async def main() -> None:
        srv = await BackendServer(Echo).start()
        try:
            loop = asyncio.get_running_loop()
            addr = Address("localhost", srv.address.port)
            # localhost may resolve to ::1 first, where nothing listens: the next address
            # of the name is tried within the same deadline.
            tr, proto = await open_connection(loop, addr, Recorder, 2.0)
            tr.write(b"name")
            await until(proto.got)
            tr.close()
        finally:
            await srv.close()

    run(main())


@pytest.mark.parametrize("name", ["no such host", "a..b"])
def test_connect_unresolvable_name_is_error(run, name: str) -> None:
    """Names the resolver rejects locally (no DNS query is sent: tests stay offline)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectError) as ei:
            await open_connection(loop, Address(name, 80), Recorder, 2.0)
        assert ei.value.kind == "error"
        assert ei.value.info.startswith("Name resolution failed")

    run(main())


def test_connect_refused(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ConnectError) as ei:
            await open_connection(loop, closed_port(), Recorder, 5.0)
        assert ei.value.kind == "refused"
        assert ei.value.info == "Connection refused"
        assert loop.time() - t0 < 4.0  # refused at once, not after the timeout

    run(main())


def test_connect_timeout(run) -> None:
    async def main(addr: Address) -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectError) as ei:
            await open_connection(loop, addr, Recorder, 0.05)
        assert ei.value.kind == "timeout"
        assert ei.value.info == "Connection timed out"

    with blackhole() as addr:
        run(main(addr))


def test_connect_timeouts_and_refusals_leak_no_fd(run) -> None:
    async def main(addr: Address) -> None:
        loop = asyncio.get_running_loop()
        refused = closed_port()

        async def once(a: Address, t: float) -> str:
            try:
                tr, _ = await open_connection(loop, a, Recorder, t)
            except ConnectError as e:
                return e.kind
            tr.close()
            return "ok"

        # warm up whatever the loop allocates lazily (self-pipe, epoll, executor)
        await once(refused, 1.0)
        await once(addr, 0.001)
        before = open_fds()
        kinds = await asyncio.gather(
            *(once(addr, 0.01 + (i % 5) * 0.002) for i in range(200)),
            *(once(refused, 1.0) for _ in range(100)),
        )
        assert kinds.count("timeout") == 200
        assert kinds.count("refused") == 100
        assert open_fds() == before

    with blackhole() as addr:
        run(main(addr))


def test_connect_cancelled_by_caller_leaks_no_fd(run) -> None:
    """A session aborted while its server connect is pending cancels the task: the socket
    must still be closed, exactly once."""

    async def main(addr: Address) -> None:
        loop = asyncio.get_running_loop()
        warm = loop.create_task(open_connection(loop, addr, Recorder, 10.0))
        await asyncio.sleep(0)
        warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
        before = open_fds()
        tasks = [loop.create_task(open_connection(loop, addr, Recorder, 10.0)) for _ in range(100)]
        for _ in range(3):
            await asyncio.sleep(0)  # let them reach the pending connect
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert open_fds() == before

    with blackhole() as addr:
        run(main(addr))
