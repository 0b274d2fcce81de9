"""TCP mode relay (pylb.proxy.tcp.TcpFrontend) on real loopback sockets, asyncio and uvloop:
data both ways, half-close both ways, back-pressure, big transfers, counters, log records."""

from __future__ import annotations

import asyncio
import hashlib

from pylb.proxy.flow import HIGH_WATER
from tests.integration.tcp_helpers import (
    BackendServer,
    Client,
    Echo,
    GreetThenHalfClose,
    RequestThenReply,
    Source,
    connect_client,
    proxy_with,
    run_fixture,  # noqa: F401  # provides the loop-parametrised `run` fixture
    until,
    wait_for,
)

# The most one read can add to a write buffer after it crossed the high-water mark:
# asyncio reads up to 256 KiB per recv(), uvloop 64 KiB.
MAX_READ = 256 * 1024


def test_echo_and_counters(run) -> None:
    async def main() -> None:
        echo = BackendServer(Echo)
        async with proxy_with([echo]) as proxy:
            c = await connect_client(proxy.address)
            await wait_for(lambda: len(echo.conns) == 1, what="server connection")
            assert proxy.ctx.worker.actconn == 1
            assert proxy.ctx.feconn == 1
            assert proxy.ctx.backend.cur_conns == 1
            assert proxy.ctx.backend.servers[0].cur_conns == 1
            for i in range(20):
                c.transport.write(b"x" * 1000 + str(i).encode())
            total = sum(1000 + len(str(i)) for i in range(20))
            await wait_for(lambda: c.count == total, what="echo")
            c.transport.write_eof()
            assert await until(c.eof) is True  # echo server half-closed back
            c.transport.close()
            await wait_for(proxy.idle, what="session end")
            srv = proxy.ctx.backend.servers[0]
            assert srv.bytes_in == srv.bytes_out == total
            assert proxy.ctx.backend.bytes_in == proxy.ctx.backend.bytes_out == total
            assert srv.total_conns == 1
            (rec,) = proxy.records
            assert rec.term == "--"
            assert rec.server == "s1"
            assert rec.bytes_read == total
            assert rec.t_connect >= 0 and rec.t_total >= rec.t_connect
            assert rec.retries == 0 and not rec.redispatched
            assert rec.client_ip == "127.0.0.1"

    run(main())


def test_client_half_close_response_still_arrives(run) -> None:
    """The client shuts down writing after its request; the server sees EOF and only then
    answers; the whole answer reaches the client (HTTP/1.0-style and many TCP protocols)."""

    async def main() -> None:
        be = BackendServer(RequestThenReply)
        async with proxy_with([be]) as proxy:
            c = await connect_client(proxy.address)
            request = bytes(range(256)) * 400  # 100 KiB
            c.transport.write(request)
            c.transport.write_eof()
            assert await until(c.eof) is True
            want = hashlib.sha256(request).hexdigest().encode() + b"\n" + RequestThenReply.reply
            assert bytes(c.data) == want
            (srv_proto,) = be.conns
            assert srv_proto.saw_eof
            assert bytes(srv_proto.request) == request
            c.transport.close()
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[0].term == "--"
            assert proxy.records[0].bytes_read == len(want)

    run(main())


def test_half_close_before_server_connected(run) -> None:
    """Data and EOF sent by the client while the connect is pending are held and delivered."""

    async def main() -> None:
        be = BackendServer(RequestThenReply)
        async with proxy_with([be]) as proxy:
            loop = asyncio.get_running_loop()
            # write in the same loop iteration as the connect: the server is not connected
            _, c = await loop.create_connection(Client, *proxy.address_tuple())
            c.transport.write(b"early request")
            c.transport.write_eof()
            assert await until(c.eof) is True
            want = hashlib.sha256(b"early request").hexdigest().encode() + b"\n"
            assert bytes(c.data[: len(want)]) == want
            c.transport.close()
            await wait_for(proxy.idle, what="session end")

    run(main())


def test_server_half_close(run) -> None:
    """The server sends and half-closes; the client gets the data and EOF, and can still
    send: the server receives it, then the client's EOF."""

    async def main() -> None:
        be = BackendServer(GreetThenHalfClose)
        async with proxy_with([be]) as proxy:
            c = await connect_client(proxy.address)
            assert await until(c.eof) is True
            assert bytes(c.data) == GreetThenHalfClose.greeting
            c.transport.write(b"still talking")
            c.transport.write_eof()
            await wait_for(lambda: len(be.conns) == 1)
            after = await until(be.conns[0].client_eof)
            assert after == b"still talking"
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[0].term == "--"
            c.transport.close()

    run(main())


def test_back_pressure_bounds_proxy_buffers(run) -> None:
    """A fast source behind a client that does not read: the proxy stops reading the
    server (the source itself ends up paused by its kernel buffers) and its own buffers
    stay near the high-water mark; then everything arrives intact."""

    class Source64(Source):
        total = 64 * 1024 * 1024

    async def main() -> None:
        be = BackendServer(Source64)
        async with proxy_with([be]) as proxy:
            loop = asyncio.get_running_loop()
            c = Client()
            c.keep = False
            await loop.create_connection(lambda: c, *proxy.address_tuple())
            c.transport.pause_reading()  # the slow reader: reads nothing for now
            await wait_for(lambda: len(proxy.sessions) == 1, what="session")
            (session,) = proxy.sessions
            await wait_for(lambda: session._server_flow.reading_paused, what="server paused")
            await wait_for(lambda: len(be.conns) == 1 and be.conns[0].paused, what="source paused")
            src = be.conns[0]
            for _ in range(200):  # let the loop run: nothing may move any more
                await asyncio.sleep(0)
            assert session._server_flow.reading_paused
            # back-pressure reached the source: it is blocked with most of 64 MB unsent
            # (what it did send sits in the kernel's socket buffers and ours)
            assert src.sent < Source64.total // 2
            assert session.client.get_write_buffer_size() <= HIGH_WATER + MAX_READ
            assert session.server_transport.get_write_buffer_size() == 0
            peak = 0

            def sample() -> None:
                nonlocal peak
                tr = session.client
                if tr is not None:
                    peak = max(peak, tr.get_write_buffer_size())
                # read slowly: pause after every chunk and resume on the next loop turn
                c.transport.pause_reading()
                loop.call_soon(c.transport.resume_reading)

            c.on_data = sample
            c.transport.resume_reading()
            digest = await until(src.done, 20)
            await until(c.eof, 20)
            assert c.count == Source64.total
            assert c.digest.hexdigest() == digest
            assert peak <= HIGH_WATER + MAX_READ, peak
            c.transport.close()
            await wait_for(proxy.idle, what="session end")

    run(main())


def test_large_transfer_intact(run) -> None:
    """256 MB server -> client and 32 MB client -> server through the relay at once,
    checksummed, within the test deadline."""

    class Source256(Source):
        total = 256 * 1024 * 1024

    async def main() -> None:
        be = BackendServer(Source256)
        async with proxy_with([be]) as proxy:
            loop = asyncio.get_running_loop()
            c = Client()
            c.keep = False
            await loop.create_connection(lambda: c, *proxy.address_tuple())
            await wait_for(lambda: len(be.conns) == 1, what="server connection")
            digest = await until(be.conns[0].done, 25)
            await until(c.eof, 25)
            assert c.count == Source256.total
            assert c.digest.hexdigest() == digest
            c.transport.close()
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[0].bytes_read == Source256.total
            assert proxy.ctx.backend.servers[0].bytes_out == Source256.total

    run(main())


def test_upload_intact(run) -> None:
    """32 MB client -> server with back-pressure on the server side, checksummed."""

    total = 32 * 1024 * 1024

    async def main() -> None:
        be = BackendServer(RequestThenReply)
        async with proxy_with([be]) as proxy:
            c = await connect_client(proxy.address)
            block = bytes(range(256)) * 1024
            h = hashlib.sha256()
            sent = 0
            while sent < total:
                c.transport.write(block)
                h.update(block)
                sent += len(block)
                if c.transport.get_write_buffer_size() > 4 * 1024 * 1024:
                    await wait_for(lambda: c.transport.get_write_buffer_size() < 1024 * 1024)
            c.transport.write_eof()
            assert await until(c.eof, 20) is True
            assert bytes(c.data[:64]) == h.hexdigest().encode()
            c.transport.close()
            await wait_for(proxy.idle, what="session end")
            assert proxy.ctx.backend.servers[0].bytes_in == total

    run(main())
