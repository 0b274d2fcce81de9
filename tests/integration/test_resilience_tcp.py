"""Issue 3, TCP mode: server maxconn queues sessions (served when a slot frees, closed at
`timeout.queue`), and listener maxconn parks connections instead of refusing them."""

from __future__ import annotations

from pylb.config.model import Address, Listen, ServerConf, Timeouts
from tests.integration.tcp_helpers import (
    BackendServer,
    Echo,
    TcpProxy,
    connect_client,
    run_fixture,  # noqa: F401  # `run`
    until,
    wait_for,
)


def _conf(address: Address, *, server_maxconn: int | None, queue: float, **kw) -> Listen:
    return Listen(
        name="tcpq",
        binds=(Address("127.0.0.1", 0),),
        servers=(ServerConf(name="s1", address=address, maxconn=server_maxconn),),
        mode="tcp",
        timeout=Timeouts(connect=2.0, client=10.0, server=10.0, tunnel=10.0, queue=queue),
        **kw,
    )


def test_tcp_server_maxconn_queues_then_serves_or_times_out(run) -> None:
    async def main() -> None:
        echo = await BackendServer(Echo).start()
        proxy = await TcpProxy(_conf(echo.address, server_maxconn=1, queue=5.0)).start()
        try:
            q = proxy.ctx.backend.queue
            a = await connect_client(proxy.address)
            await wait_for(lambda: len(echo.conns) == 1, what="a connected")
            b = await connect_client(proxy.address)
            await wait_for(lambda: q.count == 1, what="b queued")
            b.transport.write(b"ping")  # held while queued
            assert len(echo.conns) == 1
            a.transport.close()  # a's slot frees: b is connected and its bytes go through
            await wait_for(lambda: bytes(b.data) == b"ping", what="b served")
            assert q.count == 0 and q.max == 1
            b.transport.close()
            await wait_for(proxy.idle, what="sessions end")
            assert [r.term for r in proxy.records] == ["--", "--"]
            assert all(r.t_queue >= 0 for r in proxy.records)
        finally:
            await proxy.close()
            await echo.close()

    run(main())


def test_tcp_queue_timeout_closes_the_session(run) -> None:
    async def main() -> None:
        echo = await BackendServer(Echo).start()
        proxy = await TcpProxy(_conf(echo.address, server_maxconn=1, queue=0.2)).start()
        try:
            a = await connect_client(proxy.address)
            await wait_for(lambda: len(echo.conns) == 1, what="a connected")
            b = await connect_client(proxy.address)
            await until(b.eof)
            assert proxy.records[-1].term == "sQ"
            a.transport.close()
            await wait_for(proxy.idle, what="sessions end")
        finally:
            await proxy.close()
            await echo.close()

    run(main())


def test_tcp_listener_maxconn_parks_instead_of_refusing(run) -> None:
    async def main() -> None:
        echo = await BackendServer(Echo).start()
        proxy = TcpProxy(_conf(echo.address, server_maxconn=None, queue=5.0, maxconn=1))
        await proxy.start()
        try:
            ctx = proxy.ctx
            a = await connect_client(proxy.address)
            await wait_for(lambda: ctx.feconn == 1, what="a admitted")
            b = await connect_client(proxy.address)
            await wait_for(lambda: ctx.parked is not None and ctx.parked.count == 1)
            b.transport.write(b"hello")
            assert ctx.denied_conns == 0 and len(echo.conns) == 1
            a.transport.close()
            await wait_for(lambda: bytes(b.data) == b"hello", what="b admitted and served")
            b.transport.close()
            await wait_for(proxy.idle, what="sessions end")
        finally:
            await proxy.close()
            await echo.close()

    run(main())
