"""TCP mode session handling: server choice, retries and redispatch, timeouts, limits,
termination states; real loopback sockets on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pylb.config.model import Listen, ServerConf, Timeouts
from pylb.proxy.tcp import CONNECTING, ESTABLISHED, client_key, idle_deadline
from tests.integration.tcp_helpers import (
    BackendServer,
    Echo,
    ResetOnData,
    Silent,
    Source,
    Stalled,
    TcpProxy,
    blackhole,
    closed_port,
    connect_client,
    listen_conf,
    open_fds,
    proxy_with,
    reset,
    run_fixture,  # noqa: F401  # provides the loop-parametrised `run` fixture
    until,
    wait_for,
)


async def echo_roundtrip(proxy: TcpProxy, payload: bytes = b"ping") -> bytes:
    c = await connect_client(proxy.address)
    c.transport.write(payload)
    await wait_for(lambda: c.count >= len(payload), what="echo through the proxy")
    c.transport.close()
    return bytes(c.data)


# -- server choice ------------------------------------------------------------------------


def test_roundrobin_spreads_connections_over_three_servers(run) -> None:
    async def main() -> None:
        servers = [BackendServer(Echo) for _ in range(3)]
        async with proxy_with(servers) as proxy:
            for _ in range(30):
                assert await echo_roundtrip(proxy) == b"ping"
            await wait_for(proxy.idle, what="sessions end")
            assert [len(s.conns) for s in servers] == [10, 10, 10]
            assert [s.total_conns for s in proxy.ctx.backend.servers] == [10, 10, 10]

    run(main())


def test_no_server_closes_client(run) -> None:
    async def main() -> None:
        echo = await BackendServer(Echo).start()
        conf = listen_conf([echo.address])
        conf = dataclasses.replace(
            conf, servers=(dataclasses.replace(conf.servers[0], disabled=True),)
        )
        proxy = await TcpProxy(conf).start()
        try:
            c = await connect_client(proxy.address)
            await until(c.eof)
            assert c.count == 0
            assert echo.conns == []
            await wait_for(proxy.idle, what="session end")
            (rec,) = proxy.records
            assert rec.term == "SC"
            assert rec.server == "<NOSRV>"
            assert rec.t_connect == -1
        finally:
            await proxy.close()
            await echo.close()

    run(main())


# -- connect failures -------------------------------------------------------------------


def test_refused_retries_then_redispatches_to_second_server(run) -> None:
    async def main() -> None:
        echo = await BackendServer(Echo).start()
        # `first` always picks s1 (the dead one) first: a deterministic retry sequence.
        conf = listen_conf([closed_port(), echo.address], retries=2, balance="first")
        proxy = await TcpProxy(conf).start()
        try:
            assert await echo_roundtrip(proxy, b"hello") == b"hello"
            await wait_for(proxy.idle, what="session end")
            dead, live = proxy.ctx.backend.servers
            assert dead.failed_conns == 2  # first attempt + one retry; the last went to s2
            assert dead.retries == 2
            assert dead.redispatches == 1
            assert live.total_conns == 1 and live.failed_conns == 0
            assert dead.cur_conns == live.cur_conns == 0
            (rec,) = proxy.records
            assert rec.server == "s2"
            assert rec.retries == 2 and rec.redispatched
            assert rec.term in ("--", "CD")  # client closed after its echo
        finally:
            await proxy.close()
            await echo.close()

    run(main())


def test_refused_without_redispatch_gives_sc(run) -> None:
    async def main() -> None:
        echo = await BackendServer(Echo).start()
        conf = listen_conf(
            [closed_port(), echo.address], retries=1, redispatch=False, balance="first"
        )
        proxy = await TcpProxy(conf).start()
        try:
            c = await connect_client(proxy.address)
            c.transport.write(b"lost")
            await until(c.eof)
            assert c.count == 0
            await wait_for(proxy.idle, what="session end")
            dead = proxy.ctx.backend.servers[0]
            assert dead.failed_conns == 2 and dead.retries == 1 and dead.redispatches == 0
            (rec,) = proxy.records
            assert rec.term == "SC" and rec.server == "s1" and rec.t_connect == -1
            assert echo.conns == []
        finally:
            await proxy.close()
            await echo.close()

    run(main())


def test_connect_timeout_gives_sc_lowercase(run) -> None:
    async def main(hole) -> None:
        conf = listen_conf([hole], retries=0, timeout=Timeouts(connect=0.1))
        proxy = await TcpProxy(conf).start()
        try:
            c = await connect_client(proxy.address)
            await until(c.eof)
            await wait_for(proxy.idle, what="session end")
            (rec,) = proxy.records
            assert rec.term == "sC"
            assert proxy.ctx.backend.servers[0].failed_conns == 1
        finally:
            await proxy.close()

    with blackhole() as hole:
        run(main(hole))


def test_client_leaving_during_connect_closes_everything(run) -> None:
    async def main(hole) -> None:
        conf = listen_conf([hole], timeout=Timeouts(connect=10.0))
        proxy = await TcpProxy(conf).start()
        try:
            c = await connect_client(proxy.address)  # warm-up session
            await wait_for(lambda: len(proxy.sessions) == 1)
            reset(c.transport)
            await wait_for(proxy.idle, what="warm-up end")
            for _ in range(10):
                await asyncio.sleep(0)  # the cancelled connect task closes its socket
            before = open_fds()
            clients = [await connect_client(proxy.address) for _ in range(20)]
            await wait_for(lambda: len(proxy.sessions) == 20, what="20 sessions connecting")
            for c in clients:
                reset(c.transport)
            await wait_for(proxy.idle, what="sessions end")
            for _ in range(10):
                await asyncio.sleep(0)  # let cancelled connect tasks finish their cleanup
            assert open_fds() == before
            assert {r.term for r in proxy.records} == {"CC"}
        finally:
            await proxy.close()

    with blackhole() as hole:
        run(main(hole))


# -- limits ---------------------------------------------------------------------------


def test_listen_maxconn_parks_extra_connections(run) -> None:
    async def main() -> None:
        echo = BackendServer(Echo)
        async with proxy_with([echo], maxconn=2) as proxy:
            a = await connect_client(proxy.address)
            b = await connect_client(proxy.address)
            await wait_for(lambda: proxy.ctx.feconn == 2)
            c = await connect_client(proxy.address)  # parked (HAProxy: left in the backlog)
            await wait_for(lambda: proxy.ctx.parked is not None and proxy.ctx.parked.count == 1)
            assert proxy.ctx.denied_conns == 0
            assert proxy.ctx.feconn == 2 and proxy.ctx.worker.actconn == 2
            a.transport.close()  # room: c is admitted
            await wait_for(lambda: proxy.ctx.parked.count == 0 and proxy.ctx.feconn == 2)
            b.transport.close()
            c.transport.close()
            await wait_for(proxy.idle, what="sessions end")
            assert await echo_roundtrip(proxy) == b"ping"

    run(main())


def test_worker_maxconn_refuses(run) -> None:
    async def main() -> None:
        echo = await BackendServer(Echo).start()
        proxy = await TcpProxy(listen_conf([echo.address])).start(worker_maxconn=1)
        try:
            a = await connect_client(proxy.address)
            await wait_for(lambda: proxy.ctx.worker.actconn == 1)
            c = await connect_client(proxy.address)
            await until(c.eof)
            assert proxy.ctx.denied_conns == 1
            a.transport.close()
        finally:
            await proxy.close()
            await echo.close()

    run(main())


# -- idle timeouts ----------------------------------------------------------------------


def test_tunnel_timeout_closes_idle_session(run) -> None:
    async def main() -> None:
        silent = BackendServer(Silent)
        t = Timeouts(connect=2.0, client=30.0, server=30.0, tunnel=0.2)
        async with proxy_with([silent], timeout=t) as proxy:
            c = await connect_client(proxy.address)
            await wait_for(lambda: len(silent.conns) == 1)
            # activity keeps it open past one tunnel period
            for _ in range(3):
                c.transport.write(b"k")
                await wait_for(lambda: len(proxy.sessions) == 1)
            await until(c.eof, 5)
            await until(silent.conns[0].lost, 5)
            await wait_for(proxy.idle, what="session end")
            (rec,) = proxy.records
            assert rec.term == "cD"
            assert rec.t_total >= 195  # one tunnel period (1 ms timer resolution aside)

    run(main())


def test_client_timeout_without_tunnel(run) -> None:
    async def main() -> None:
        silent = BackendServer(Silent)
        t = Timeouts(connect=2.0, client=0.2, server=30.0, tunnel=0)
        async with proxy_with([silent], timeout=t) as proxy:
            c = await connect_client(proxy.address)
            await until(c.eof, 5)
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[0].term == "cD"

    run(main())


def test_server_timeout_without_tunnel(run) -> None:
    async def main() -> None:
        silent = BackendServer(Silent)
        t = Timeouts(connect=2.0, client=30.0, server=0.2, tunnel=0)
        async with proxy_with([silent], timeout=t) as proxy:
            c = await connect_client(proxy.address)
            await until(c.eof, 5)
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[0].term == "sD"

    run(main())


def test_slow_reader_is_blamed_not_the_source(run) -> None:
    """Per-side timeouts: a client that stops reading a fast source times out as "cD";
    the server side, paused by back-pressure, is not blamed."""

    async def main() -> None:
        src = BackendServer(Source)
        t = Timeouts(connect=2.0, client=0.3, server=0.2, tunnel=0)
        async with proxy_with([src], timeout=t) as proxy:
            c = await connect_client(proxy.address)
            c.transport.pause_reading()  # a paused client would not see our RST either
            await wait_for(proxy.idle, timeout=5, what="session end")
            assert proxy.records[0].term == "cD"
            assert src.conns[0].sent < Source.total
            c.transport.abort()

    run(main())


def test_stalled_server_is_blamed(run) -> None:
    async def main() -> None:
        be = BackendServer(Stalled)
        # client < server: the client's shorter clock must stop while the proxy does not
        # read it, else the client would be blamed. Both well above a scheduling hiccup.
        t = Timeouts(connect=2.0, client=0.4, server=0.6, tunnel=0)
        async with proxy_with([be], timeout=t) as proxy:
            c = await connect_client(proxy.address)
            await wait_for(lambda: len(proxy.sessions) == 1)
            (session,) = proxy.sessions
            block = b"u" * 65536
            backlog = 1024 * 1024
            # Keep >= `backlog` queued in the client until the session ends, not just until
            # the proxy first pauses: the kernel on the server side may take a little more
            # later (ACKs processed late under load), the proxy then resumes reading the
            # client, and a client with nothing left to send would rightly be the idle side.
            # Bounded: at most 64 MB written.
            for _ in range(1024):
                if proxy.idle():
                    break
                if c.transport.get_write_buffer_size() < backlog:
                    c.transport.write(block)
                    continue
                await wait_for(
                    lambda: proxy.idle() or c.transport.get_write_buffer_size() < backlog,
                    timeout=5,
                    what="session end or client drained",
                )
            await wait_for(proxy.idle, timeout=5, what="session end")
            assert session._client_flow.reading_paused  # the proxy stopped reading the client
            assert proxy.records[0].term == "sD"
            c.transport.abort()

    run(main())


def test_server_reset_gives_sd(run) -> None:
    async def main() -> None:
        be = BackendServer(ResetOnData)
        async with proxy_with([be]) as proxy:
            c = await connect_client(proxy.address)
            c.transport.write(b"boom")
            await until(c.eof)
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[0].term == "SD"

    run(main())


def test_client_reset_gives_cd_and_closes_server(run) -> None:
    async def main() -> None:
        be = BackendServer(Silent)
        async with proxy_with([be]) as proxy:
            c = await connect_client(proxy.address)
            c.transport.write(b"hi")
            await wait_for(lambda: len(be.conns) == 1 and proxy.ctx.backend.bytes_in == 2)
            reset(c.transport)
            await until(be.conns[0].lost)
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[0].term == "CD"

    run(main())


# -- stop -----------------------------------------------------------------------------


def test_abort_and_shutdown(run) -> None:
    async def main() -> None:
        echo = BackendServer(Echo)
        async with proxy_with([echo]) as proxy:
            c = await connect_client(proxy.address)
            assert await echo_roundtrip(proxy) == b"ping"
            await wait_for(lambda: len(proxy.sessions) == 1)
            (session,) = proxy.sessions
            session.shutdown()  # graceful: a TCP session goes on
            c.transport.write(b"still")
            await wait_for(lambda: c.count == 5)
            session.abort()
            await until(c.eof)
            await wait_for(proxy.idle, what="session end")
            assert proxy.records[-1].term == "KD"

    run(main())


def test_disabled_access_log_builds_no_record(run) -> None:
    async def main() -> None:
        from tests.integration.tcp_helpers import DisabledLog

        echo = await BackendServer(Echo).start()
        log = DisabledLog()
        log.tcp = None  # type: ignore[assignment]  # calling it would raise
        proxy = await TcpProxy(listen_conf([echo.address]), log=log).start()
        try:
            assert await echo_roundtrip(proxy) == b"ping"
            await wait_for(proxy.idle, what="session end")
        finally:
            await proxy.close()
            await echo.close()

    run(main())


# -- pure decisions -------------------------------------------------------------------


T = Timeouts


@pytest.mark.parametrize(
    ("t", "phase", "client_paused", "server_paused", "want"),
    [
        (T(client=5, server=7, tunnel=100), CONNECTING, True, False, (6.0, "c")),
        (T(client=5, server=7, tunnel=100), ESTABLISHED, False, False, (101.0, "c")),
        (T(client=5, server=7, tunnel=0), ESTABLISHED, False, False, (6.0, "c")),
        (T(client=5, server=2, tunnel=0), ESTABLISHED, False, False, (3.0, "s")),
        # the client does not read: the server's reading is paused, its clock stopped
        (T(client=5, server=2, tunnel=0), ESTABLISHED, False, True, (6.0, "c")),
        # the server does not read: the client's reading is paused
        (T(client=2, server=5, tunnel=0), ESTABLISHED, True, False, (6.0, "s")),
        (T(client=2, server=5, tunnel=9), ESTABLISHED, True, False, (10.0, "s")),
        # both stalled: the shorter timeout
        (T(client=2, server=5, tunnel=0), ESTABLISHED, True, True, (3.0, "c")),
    ],
)
def test_idle_deadline(t, phase, client_paused, server_paused, want) -> None:
    assert idle_deadline(t, phase, 1.0, client_paused, server_paused) == want


def test_client_key() -> None:
    assert client_key(("127.0.0.1", 5)) == bytes([127, 0, 0, 1])
    assert client_key(("::ffff:10.0.0.1", 5, 0, 0)) == bytes([10, 0, 0, 1])
    assert client_key(("::1", 5, 0, 0)) == bytes(15) + b"\x01"
    assert client_key(None) is None
    assert client_key(("not-an-ip", 1)) is None


def test_listen_conf_helper_is_tcp() -> None:
    conf = listen_conf([closed_port()])
    assert isinstance(conf, Listen) and conf.mode == "tcp"
    assert isinstance(conf.servers[0], ServerConf)
