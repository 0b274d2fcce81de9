"""HTTP proxy basics: keep-alive both sides, pooling, balancing, framing, XFF, hop-by-hop."""

from __future__ import annotations

import asyncio

from tests.integration.http_helpers import (
    Client,
    HttpBackend,
    listen_conf,
    proxy,
    run_fixture,  # noqa: F401  # provides the loop-parametrised `run` fixture
    wait_for,
)


def test_get_and_keepalive_pool(run) -> None:
    async def main() -> None:
        b1 = await HttpBackend("s1").start()
        b2 = await HttpBackend("s2").start()
        try:
            async with proxy(listen_conf([b1.address, b2.address])) as px:
                c = await Client.connect(px.port)
                seen = []
                for _ in range(400):
                    r = await c.request("GET", "/echo")
                    assert r.status == 200
                    seen.append(r.json()["server"])
                assert seen.count("s1") == 200 and seen.count("s2") == 200
                assert b1.requests == 200 and b2.requests == 200
                # far fewer backend connections than requests: the pool reuses them
                assert b1.connections <= 2 and b2.connections <= 2
                c.close()
                assert len(px.log.records) == 400
                rec = px.log.records[-1]
                assert rec.status == 200 and rec.term == "----"
        finally:
            await b1.stop()
            await b2.stop()

    run(main())


def test_weighted_roundrobin_spread(run) -> None:
    async def main() -> None:
        bs = [await HttpBackend(f"s{i}").start() for i in (1, 2, 3)]
        try:
            conf = listen_conf([b.address for b in bs], weights=[2, 1, 1])
            async with proxy(conf) as px:
                c = await Client.connect(px.port)
                seen = [(await c.request("GET", "/echo")).json()["server"] for _ in range(400)]
                assert seen.count("s1") == 200
                assert seen.count("s2") == 100 and seen.count("s3") == 100
                assert seen[:4] in (["s1", "s2", "s1", "s3"], ["s1", "s3", "s1", "s2"])
                assert sum(b.connections for b in bs) <= 6
                c.close()
        finally:
            for b in bs:
                await b.stop()

    run(main())


def test_x_forwarded_for_and_proto(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address], forwardfor=True)) as px:
                c = await Client.connect(px.port)
                r = await c.request("GET", "/echo", {"X-Forwarded-Proto": "https"})
                hdrs = r.json()["headers"]
                assert ["X-Forwarded-For", "127.0.0.1"] in hdrs
                assert ["X-Forwarded-Proto", "http"] in hdrs
                assert ["X-Forwarded-Proto", "https"] not in hdrs
                r = await c.request("GET", "/echo", {"X-Forwarded-For": "10.0.0.1"})
                xff = [v for n, v in r.json()["headers"] if n.lower() == "x-forwarded-for"]
                assert xff == ["10.0.0.1, 127.0.0.1"]
                c.close()
            async with proxy(listen_conf([b.address])) as px:  # forwardfor off: untouched
                c = await Client.connect(px.port)
                r = await c.request("GET", "/echo", {"X-Forwarded-For": "10.0.0.1"})
                names = [n.lower() for n, _ in r.json()["headers"]]
                assert "x-forwarded-proto" not in names
                assert ["X-Forwarded-For", "10.0.0.1"] in r.json()["headers"]
                c.close()
        finally:
            await b.stop()

    run(main())


def test_hop_by_hop_headers_removed_both_ways(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                r = await c.request(
                    "GET",
                    "/echo",
                    {
                        "Connection": "keep-alive, X-Private",
                        "X-Private": "secret",
                        "Keep-Alive": "timeout=5",
                        "Proxy-Connection": "keep-alive",
                        "TE": "trailers",
                        "Trailer": "X-T",
                        "Upgrade": "foo",
                        "X-Kept": "yes",
                    },
                )
                names = {n.lower() for n, _ in r.json()["headers"]}
                for hop in (
                    "connection",
                    "x-private",
                    "keep-alive",
                    "proxy-connection",
                    "te",
                    "trailer",
                    "upgrade",
                ):
                    assert hop not in names, hop
                assert "x-kept" in names and "host" in names
                r = await c.request("GET", "/hop")
                got = {n.decode().lower() for n, _ in r.headers}
                assert "x-public" in got
                for hop in ("x-secret", "keep-alive", "proxy-connection", "trailer", "connection"):
                    assert hop not in got, hop
                assert bytes(r.body) == b"hop"
                c.close()
        finally:
            await b.stop()

    run(main())


def test_chunked_and_eof_framing(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                # chunked request body: rebuilt as chunked toward the server
                body = b"x" * 100_000
                head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                c.send(
                    head
                    + b"10\r\n"
                    + body[:16]
                    + b"\r\n"
                    + b"%x\r\n" % (len(body) - 16)
                    + body[16:]
                    + b"\r\n0\r\n\r\n"
                )
                r = await c.read_response()
                doc = r.json()
                assert doc["body_len"] == len(body)
                assert ["Transfer-Encoding", "chunked"] in doc["headers"]
                # chunked response
                r = await c.request("GET", "/chunked/300000")
                assert r.status == 200 and r.body_len == 300000
                assert r.header("transfer-encoding") == "chunked"
                # a close-delimited response becomes chunked for an HTTP/1.1 client ...
                r = await c.request("GET", "/eof/5000")
                assert r.body_len == 5000 and r.header("transfer-encoding") == "chunked"
                r = await c.request("GET", "/echo")  # ... and the client connection lives on
                assert r.status == 200
                c.close()
                # an HTTP/1.0 client gets it close-delimited
                c = await Client.connect(px.port)
                r = await c.request("GET", "/eof/5000", version="1.0")
                assert r.body_len == 5000 and r.header("transfer-encoding") is None
                assert await c.closed()
        finally:
            await b.stop()

    run(main())


def test_http10_keepalive(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                r = await c.request("GET", "/echo", {"Connection": "keep-alive"}, version="1.0")
                assert r.header("connection") == "keep-alive"
                r = await c.request("GET", "/echo", version="1.0")
                assert r.status == 200 and r.header("connection") is None
                assert await c.closed()
        finally:
            await b.stop()

    run(main())


def test_head_204_304_have_no_body(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                r = await c.request("HEAD", "/bytes/10")
                assert r.status == 200 and r.header("content-length") == "10"
                r = await c.request("GET", "/status/204")
                assert r.status == 204 and r.body_len == 0
                assert r.header("content-length") is None
                r = await c.request("GET", "/status/304")
                assert r.status == 304 and r.body_len == 0
                # the connection is still in sync: a normal request after them works
                r = await c.request("GET", "/bytes/7")
                assert r.status == 200 and r.body_len == 7
                assert b.connections == 1
                c.close()
        finally:
            await b.stop()

    run(main())


def test_pipelined_requests_answered_in_order(run) -> None:
    async def main() -> None:
        b1 = await HttpBackend("s1").start()
        b2 = await HttpBackend("s2").start()
        try:
            async with proxy(listen_conf([b1.address, b2.address])) as px:
                c = await Client.connect(px.port)
                c.send(
                    b"GET /echo?n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"HEAD /echo?n=2 HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"POST /echo?n=3 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                    b"GET /chunked/1000 HTTP/1.1\r\nHost: t\r\n\r\n"
                )
                r1 = await c.read_response()
                r2 = await c.read_response(head_only=True)
                r3 = await c.read_response()
                r4 = await c.read_response()
                assert r1.json()["path"] == "/echo?n=1"
                assert r2.status == 200
                assert r3.json()["path"] == "/echo?n=3" and r3.json()["body_len"] == 3
                assert r4.body_len == 1000
                c.close()
        finally:
            await b1.stop()
            await b2.stop()

    run(main())


def test_half_closed_client_gets_all_answers(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                c.send(
                    b"GET /bytes/100000 HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET /echo?2 HTTP/1.1\r\nHost: t\r\n\r\n"
                )
                c.writer.write_eof()
                r1 = await c.read_response()
                r2 = await c.read_response()
                assert r1.body_len == 100000 and r2.json()["path"] == "/echo?2"
                assert await c.closed()
                await wait_for(lambda: px.ctx.feconn == 0, what="closed after the answers")
        finally:
            await b.stop()

    run(main())


def test_connection_close_and_large_token_header(run) -> None:
    async def main() -> None:
        b = await HttpBackend().start()
        try:
            async with proxy(listen_conf([b.address])) as px:
                c = await Client.connect(px.port)
                token = "t" * 20000  # PKI-era keystone tokens: well under the 32 KiB head limit
                r = await c.request("GET", "/echo", {"X-Auth-Token": token})
                assert ["X-Auth-Token", token] in r.json()["headers"]
                r = await c.request("GET", "/echo", {"Connection": "close"})
                assert r.status == 200 and r.header("connection") == "close"
                assert await c.closed()
                assert px.backend.servers[0].cur_conns == 0
                assert px.backend.servers[0].bytes_in > 20000
                assert px.backend.bytes_out == px.backend.servers[0].bytes_out > 0
        finally:
            await b.stop()

    run(main())


def test_concurrent_clients_share_the_pool(run) -> None:
    async def main() -> None:
        b1 = await HttpBackend("s1").start()
        b2 = await HttpBackend("s2").start()
        try:
            async with proxy(listen_conf([b1.address, b2.address], balance="leastconn")) as px:

                async def one_client(i: int) -> int:
                    c = await Client.connect(px.port)
                    ok = 0
                    for j in range(20):
                        if j % 3 == 0:
                            r = await c.request("POST", f"/echo?{i}-{j}", body=b"z" * 1000)
                            ok += r.json()["body_len"] == 1000
                        else:
                            r = await c.request("GET", "/chunked/20000")
                            ok += r.body_len == 20000
                    c.close()
                    return ok

                results = await asyncio.gather(*(one_client(i) for i in range(40)))
                assert results == [20] * 40
                assert b1.requests + b2.requests == 800
                assert b1.connections + b2.connections <= 80
                srvs = px.backend.servers
                await wait_for(lambda: all(s.cur_conns == 0 for s in srvs), what="sessions end")
                assert all(len(s.idle) <= 40 for s in srvs)
        finally:
            await b1.stop()
            await b2.stop()

    run(main())
