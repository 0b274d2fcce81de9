"""The proxy worker driven in the test's event loop: start on pre-bound sockets, serve,
drain (stop accepting, let sessions finish, abort at the deadline)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pylb.config.load import config_from_dict
from pylb.proxy.listener import bind_config
from pylb.proxy.worker import Worker


async def echo_server():
    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def tcp_config(backend_port: int, hard_stop: str = "5s"):
    return config_from_dict(
        {
            "global": {"log": {"target": "none"}, "hard_stop_after": hard_stop},
            "listen": {
                "echo": {
                    "bind": ["127.0.0.1:0"],
                    "mode": "tcp",
                    "servers": [{"name": "e1", "address": f"127.0.0.1:{backend_port}"}],
                }
            },
        },
        "<test>",
        allow_port_zero=True,
    )


@pytest.fixture
async def echo():
    server, port = await echo_server()
    yield port
    server.close()


async def start_worker(config):
    socks = bind_config(config)
    port = socks["echo"][0].getsockname()[1]
    worker = Worker(config, socks)
    await worker.start()
    return worker, port


async def roundtrip(reader, writer, data: bytes) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def test_worker_relays_and_drains_idle(echo):
    worker, port = await start_worker(tcp_config(echo))
    serving = asyncio.ensure_future(worker.serve())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await roundtrip(reader, writer, b"hello") == b"hello"
        writer.close()
        await writer.wait_closed()
        assert worker.contexts["echo"].backend.servers[0].total_conns >= 1
    finally:
        worker.request_stop()
        await asyncio.wait_for(serving, 10)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_drain_lets_a_session_finish_then_aborts_at_the_deadline(echo):
    worker, port = await start_worker(tcp_config(echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await roundtrip(reader, writer, b"a") == b"a"
        draining = asyncio.ensure_future(worker.drain(0.5))
        await asyncio.sleep(0)  # drain() has closed the listener and asked for shutdown
        # no new connection is accepted ...
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        # ... while the session in flight keeps working until the deadline
        assert await roundtrip(reader, writer, b"still here") == b"still here"
        await asyncio.wait_for(draining, 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # aborted at hard-stop-after
        assert worker.state.connections == set()
    finally:
        writer.close()


async def test_drain_returns_at_once_when_sessions_end(echo):
    worker, port = await start_worker(tcp_config(echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await roundtrip(reader, writer, b"x") == b"x"
    draining = asyncio.ensure_future(worker.drain(30))
    await asyncio.sleep(0)
    writer.close()  # the client ends its session: drain has nothing left to wait for
    await asyncio.wait_for(draining, 10)  # far less than the 30 s drain timeout
    assert worker.state.connections == set()


def http_config(backend_port: int, hard_stop: str = "10s"):
    return config_from_dict(
        {
            "global": {"log": {"target": "none"}, "hard_stop_after": hard_stop},
            "listen": {
                "web": {
                    "bind": ["127.0.0.1:0"],
                    "mode": "http",
                    "servers": [{"name": "w1", "address": f"127.0.0.1:{backend_port}"}],
                }
            },
        },
        "<test>",
        allow_port_zero=True,
    )


async def gated_backend(release: asyncio.Event, arrived: asyncio.Event):
    """An HTTP backend that holds every response until `release` is set."""

    async def handle(reader, writer):
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                arrived.set()
                await release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_response(reader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return head, body


async def test_drain_finishes_the_http_request_in_flight_with_connection_close():
    release, arrived = asyncio.Event(), asyncio.Event()
    backend, bport = await gated_backend(release, arrived)
    config = http_config(bport)
    socks = bind_config(config)
    port = socks["web"][0].getsockname()[1]
    worker = Worker(config, socks)
    await worker.start()
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
    try:
        # one keep-alive connection that is idle at drain time ...
        release.set()
        idle_w.write(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(idle_r))[1] == b"slow"
        release.clear()
        arrived.clear()
        # ... and one whose request is at the backend when the drain starts
        busy_w.write(b"GET /busy HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(arrived.wait(), 10)
        draining = asyncio.ensure_future(worker.drain(10))
        # the idle connection is closed at once
        assert await asyncio.wait_for(idle_r.read(), 10) == b""
        assert not draining.done()
        release.set()
        head, body = await read_response(busy_r)
        assert body == b"slow"
        assert b"connection: close" in head.lower()
        assert await asyncio.wait_for(busy_r.read(), 10) == b""
        await asyncio.wait_for(draining, 10)  # returns when the last connection is gone
        assert worker.state.connections == set()
    finally:
        idle_w.close()
        busy_w.close()
        backend.close()


async def test_serve_runs_until_the_stop_event(echo):
    from pylb.proxy.worker import serve

    config = tcp_config(echo)
    socks = bind_config(config)
    port = socks["echo"][0].getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(config, socks, stop))
    # the socket listens already (bound by the "master"): the connect succeeds at once and
    # the round trip completes once serve() accepts
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await roundtrip(reader, writer, b"served") == b"served"
    writer.close()
    stop.set()
    worker = await asyncio.wait_for(task, 10)
    assert worker.state.connections == set()


async def test_worker_runs_the_health_checks_of_a_listen(echo):
    """A server whose port is closed goes DOWN through the worker's checker; the live one
    stays UP; drain stops the checks."""
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config = config_from_dict(
        {
            "global": {"log": {"target": "none"}},
            "listen": {
                "echo": {
                    "bind": ["127.0.0.1:0"],
                    "mode": "tcp",
                    "health": {"type": "tcp", "inter": "100ms", "rise": 1, "fall": 1},
                    "servers": [
                        {"name": "live", "address": f"127.0.0.1:{echo}"},
                        {"name": "dead", "address": f"127.0.0.1:{dead}"},
                    ],
                }
            },
        },
        "<test>",
        allow_port_zero=True,
    )
    worker, _ = await start_worker(config)
    backend = worker.contexts["echo"].backend
    try:
        assert len(worker.checkers) == 1
        for _ in range(500):  # bounded: the first check is spread over one inter (100 ms)
            if not backend.server("dead").oper_up:
                break
            await asyncio.sleep(0.01)
        assert not backend.server("dead").oper_up
        assert backend.server("live").oper_up
    finally:
        await worker.drain(1)
    assert worker.checkers == []
