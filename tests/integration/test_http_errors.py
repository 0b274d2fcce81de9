"""HTTP proxy errors answered like HAProxy: 503 / 502 / 504 / 400 / 408, retries, timeouts."""

from __future__ import annotations

import asyncio

from pylb.config.model import Address, Timeouts
from tests.integration.http_helpers import (
    Client,
    HttpBackend,
    RawBackend,
    free_port,
    listen_conf,
    proxy,
    read_head,
    run_fixture,  # noqa: F401  # provides the loop-parametrised `run` fixture
    wait_for,
)

SHORT = Timeouts(connect=1.0, client=2.0, server=0.4, http_request=0.4, http_keep_alive=0.4)


def test_503_when_all_servers_refuse(run) -> None:
    async def main() -> None:
        addrs = [Address("127.0.0.1", free_port()), Address("127.0.0.1", free_port())]
        async with proxy(listen_conf(addrs, retries=2)) as px:
            c = await Client.connect(px.port)
            r = await c.request("GET", "/")
            assert r.status == 503
            assert b"No server is available to handle this request." in r.body
            assert r.header("connection") == "close"
            assert await c.closed()
            srvs = px.backend.servers
            assert sum(s.failed_conns for s in srvs) == 3  # first try + 2 retries
            assert sum(s.cur_conns for s in srvs) == 0
            rec = px.log.records[-1]
            assert rec.status == 503 and rec.term == "SC--" and rec.retries == 2
            assert rec.redispatched

    run(main())


def test_503_when_no_server_usable(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                srv = px.backend.servers[0]
                srv.oper_up = False
                px.backend.server_changed(srv)
                c = await Client.connect(px.port)
                r = await c.request("HEAD", "/")
                assert r.status == 503
                assert await c.closed()
                assert px.log.records[-1].server == "<NOSRV>"
        finally:
            await b.stop()

    run(main())


def test_connect_failure_redispatched_to_another_server(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            dead = Address("127.0.0.1", free_port())
            async with proxy(listen_conf([dead, b.address], retries=1)) as px:
                c = await Client.connect(px.port)
                for _ in range(4):
                    r = await c.request("GET", "/echo")
                    assert r.status == 200
                assert px.backend.servers[0].failed_conns >= 1
                c.close()
        finally:
            await b.stop()

    run(main())


async def _garbage(r, w) -> None:
    await read_head(r)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
    await w.drain()
    await r.read()


async def _close_early(r, w) -> None:
    await read_head(r)


async def _close_mid_body(r, w) -> None:
    await read_head(r)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    await w.drain()


async def _hang(r, w) -> None:
    await read_head(r)
    await r.read()


def test_502_on_garbage_and_early_close(run) -> None:
    async def main() -> None:
        for script in (_garbage, _close_early):
            b = await RawBackend(script).start()
            try:
                async with proxy(listen_conf([b.address])) as px:
                    c = await Client.connect(px.port)
                    r = await c.request("GET", "/")
                    assert r.status == 502
                    assert b"invalid or incomplete response" in r.body
                    assert await c.closed()
                    assert px.backend.servers[0].resp_errors == 1
                    assert px.log.records[-1].term == "SH--"
                    assert px.backend.servers[0].cur_conns == 0
            finally:
                await b.stop()

    run(main())


def test_server_close_mid_body_cuts_client(run) -> None:
    async def main() -> None:
        b = await RawBackend(_close_mid_body).start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                try:
                    await c.read_response()
                    raise AssertionError("a truncated response must not complete")
                except ConnectionError:
                    pass
                assert px.log.records[-1].term == "SD--"
        finally:
            await b.stop()

    run(main())


def test_504_on_server_timeout(run) -> None:
    async def main() -> None:
        b = await RawBackend(_hang).start()
        try:
            async with proxy(listen_conf([b.address], timeout=SHORT)) as px:
                c = await Client.connect(px.port)
                r = await c.request("GET", "/")
                assert r.status == 504
                assert await c.closed()
                assert px.log.records[-1].term == "sH--"
                await wait_for(lambda: not b.writers, what="server connection closed")
        finally:
            await b.stop()

    run(main())


def test_400_malformed_requests_close(run) -> None:
    bad = [
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(150))
            + b"\r\n",
            431,
        ),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    ]

    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                for data, status in bad:
                    c = await Client.connect(px.port)
                    c.send(data)
                    r = await c.read_response()
                    assert r.status == status, data[:60]
                    assert r.header("connection") == "close"
                    assert await c.closed()
                assert b.requests == 0
        finally:
            await b.stop()

    run(main())


def test_408_on_slow_head_and_keepalive_close(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address], timeout=SHORT)) as px:
                c = await Client.connect(px.port)
                c.send(b"GET / HTTP/1.1\r\nHost:")
                r = await c.read_response()
                assert r.status == 408
                assert await c.closed()
                assert px.log.records[-1].term == "cR--"
                # idle between requests: closed silently after http_keep_alive
                c = await Client.connect(px.port)
                r = await c.request("GET", "/echo")
                assert r.status == 200
                assert await c.closed(timeout=3.0)
                # an idle connection that never sent anything closes too
                c = await Client.connect(px.port)
                assert await c.closed(timeout=3.0)
                await wait_for(lambda: px.ctx.feconn == 0, what="frontend counters back to 0")
        finally:
            await b.stop()

    run(main())


def test_stale_pooled_connection_is_replayed(run) -> None:
    """The server closes a kept-alive connection as the 2nd request arrives on it: an
    idempotent request is sent again on a fresh connection, the client sees no error."""

    async def one_then_close(r, w) -> None:
        head = await read_head(r)
        assert head is not None
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await read_head(r)  # the reused connection's request: dropped unanswered

    async def main() -> None:
        b = await RawBackend(one_then_close).start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                for _ in range(3):
                    r = await c.request("GET", "/")
                    assert r.status == 200 and bytes(r.body) == b"ok"
                assert px.backend.servers[0].resp_errors == 0
                c.close()
        finally:
            await b.stop()

    run(main())


def test_client_abort_releases_everything(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                c.send(b"GET /bytes/50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
                await c.reader.read(1000)
                c.writer.transport.abort()
                await wait_for(lambda: px.ctx.feconn == 0, what="client gone")
                srv = px.backend.servers[0]
                await wait_for(lambda: srv.cur_conns == 0 and not b.writers, what="server freed")
                assert px.log.records[-1].term == "CD--"
        finally:
            await b.stop()

    run(main())


def test_shutdown_closes_idle_and_finishes_busy(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                idle = await Client.connect(px.port)
                assert (await idle.request("GET", "/echo")).status == 200
                busy = await Client.connect(px.port)
                busy.send(b"GET /bytes/3000000 HTTP/1.1\r\nHost: t\r\n\r\n")
                await wait_for(lambda: b.requests == 2, what="busy request at the server")
                for conn in list(px.ctx.worker.connections):
                    conn.shutdown()
                assert await idle.closed()
                r = await busy.read_response(keep_body=False)
                assert r.body_len == 3000000
                assert await busy.closed()
        finally:
            await b.stop()

    run(main())


def test_client_timeout_during_body(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        conf = listen_conf(
            [b.address], timeout=Timeouts(client=0.3, http_request=5.0, http_keep_alive=5.0)
        )
        try:
            async with proxy(conf) as px:
                c = await Client.connect(px.port)
                c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-part")
                r = await c.read_response()
                assert r.status == 408
                assert await c.closed()
                assert px.log.records[-1].term == "cD--"
                await wait_for(lambda: not b.writers, what="server side closed")
        finally:
            await b.stop()

    run(main())


def test_tunnel_timeout(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        conf = listen_conf([b.address], timeout=Timeouts(tunnel=0.3))
        try:
            async with proxy(conf) as px:
                c = await Client.connect(px.port)
                c.send(
                    b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                assert (await c.read_response()).status == 101
                assert await c.closed()  # idle tunnel: both sides closed
                await wait_for(lambda: px.ctx.feconn == 0 and not b.writers, what="closed")
        finally:
            await b.stop()

    run(main())


def test_slow_reader_is_not_a_server_timeout(run) -> None:
    """While the proxy stops reading the server because the client reads slowly, the
    server's silence is not a server timeout (nor the client's a client timeout)."""

    async def main() -> None:
        b = await HttpBackend().start()
        conf = listen_conf([b.address], timeout=Timeouts(server=0.3, client=5.0))
        try:
            async with proxy(conf) as px:
                c = await Client.connect(px.port)
                c.writer.transport.pause_reading()
                c.send(b"GET /bytes/20000000 HTTP/1.1\r\nHost: t\r\n\r\n")
                fe = next(iter(px.ctx.worker.connections))
                await wait_for(lambda: fe.write_paused, what="proxy paused by the slow client")
                # the stimulus: a client that reads nothing for twice the server timeout
                await asyncio.sleep(0.7)
                c.writer.transport.resume_reading()
                r = await c.read_response(keep_body=False)
                assert r.status == 200 and r.body_len == 20000000
                assert px.log.records[-1].term == "----"
        finally:
            await b.stop()

    run(main())
