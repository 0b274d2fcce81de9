"""The idle pool and the upstream connection states, on real socket pairs."""

from __future__ import annotations

import asyncio
import socket

from pylb.config.model import Address, Listen, ServerConf, Timeouts
from pylb.proxy import pool
from pylb.proxy.backend import Backend
from pylb.proxy.upstream import UpState, UpstreamConn


def _server() -> Backend:
    conf = Listen(
        name="p",
        binds=(Address("127.0.0.1", 0),),
        servers=(ServerConf(name="s1", address=Address("127.0.0.1", 1)),),
        timeout=Timeouts(http_keep_alive=30.0),
    )
    return Backend(conf)


async def _conn(srv) -> tuple[UpstreamConn, socket.socket]:
    a, b = socket.socketpair()
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: UpstreamConn(srv, loop), sock=a)
    conn.activate(object())
    return conn, b


async def test_release_acquire_lifo_and_expiry() -> None:
    be = _server()
    srv = be.servers[0]
    loop = asyncio.get_running_loop()
    c1, p1 = await _conn(srv)
    c2, p2 = await _conn(srv)
    now = loop.time()
    pool.release(srv, c1, now, 10.0)
    pool.release(srv, c2, now, 10.0)
    assert c1.is_idle() and srv.idle == [c1, c2]
    assert pool.acquire(srv, now) is c2  # most recently used first
    assert pool.acquire(srv, now + 11.0) is None  # c1 expired: closed on the way
    assert c1.is_closed() and srv.idle == []
    assert pool.idle_expiry(be.conf) == pool.UPSTREAM_IDLE_MAX
    for c in (c2,):
        c.close()
    p1.close()
    p2.close()


async def test_reap_is_pure_split() -> None:
    be = _server()
    srv = be.servers[0]
    loop = asyncio.get_running_loop()
    conns = [await _conn(srv) for _ in range(3)]
    now = loop.time()
    pool.release(srv, conns[0][0], now, 1.0)
    pool.release(srv, conns[1][0], now, 5.0)
    conns[2][0].close()
    keep, dead = pool.reap([c for c, _ in conns], now + 2.0)
    assert keep == [conns[1][0]] and dead == [conns[0][0], conns[2][0]]
    assert conns[0][0].is_idle()  # reap decides, it does not close
    assert pool.close_idle(srv) == 2
    for _, p in conns:
        p.close()


async def test_idle_connection_dies_on_eof_or_data() -> None:
    be = _server()
    srv = be.servers[0]
    loop = asyncio.get_running_loop()
    for kind in ("eof", "data"):
        c, peer = await _conn(srv)
        pool.release(srv, c, loop.time(), 10.0)
        if kind == "eof":
            peer.shutdown(socket.SHUT_WR)
        else:
            peer.send(b"HTTP/1.1 200 OK\r\n")
        peer.setblocking(False)
        while await asyncio.wait_for(loop.sock_recv(peer, 100), 5):  # until the proxy closes
            pass
        assert c.state is UpState.CLOSED and srv.idle == []
        peer.close()


async def test_idle_timer_closes_expired_connection() -> None:
    be = _server()
    srv = be.servers[0]
    loop = asyncio.get_running_loop()
    c, peer = await _conn(srv)
    pool.release(srv, c, loop.time(), 0.05)
    peer.setblocking(False)
    data = await asyncio.wait_for(loop.sock_recv(peer, 10), 5)  # EOF when the proxy closes
    assert data == b"" and c.is_closed() and srv.idle == []
    peer.close()


async def test_pool_size_is_bounded() -> None:
    be = _server()
    srv = be.servers[0]
    loop = asyncio.get_running_loop()
    made = [await _conn(srv) for _ in range(pool.MAX_IDLE_PER_SERVER + 1)]
    now = loop.time()
    for c, _ in made:
        pool.release(srv, c, now, 10.0)
    assert len(srv.idle) == pool.MAX_IDLE_PER_SERVER
    assert made[-1][0].is_closed()
    pool.close_idle(srv)
    for _, p in made:
        p.close()
