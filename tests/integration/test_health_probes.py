"""Active check probes against real loopback servers (asyncio and uvloop)."""

from __future__ import annotations

import asyncio

from pylb.config.model import Address, Health
from pylb.health.probes import http_probe, make_probe, tcp_probe
from pylb.health.types import CheckStatus
from tests.integration.health_helpers import TinyHttp, blackhole, closed_port
from tests.integration.health_helpers import run_fixture as run_fixture  # `run`, both loops


def test_tcp_probe_ok(run) -> None:
    async def main() -> None:
        srv = await TinyHttp().start()
        try:
            r = await tcp_probe(asyncio.get_running_loop(), srv.address, 1.0)
        finally:
            await srv.stop()
        assert r.status is CheckStatus.L4OK and r.passed and r.duration is not None

    run(main())


def test_tcp_probe_refused(run) -> None:
    async def main() -> None:
        r = await tcp_probe(asyncio.get_running_loop(), closed_port(), 1.0)
        assert r.status is CheckStatus.L4CON and not r.passed
        assert r.info == "Connection refused"
        assert r.reason().startswith(
            'reason: Layer4 connection problem, info: "Connection refused"'
        )

    run(main())


def test_tcp_probe_timeout_within_deadline(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with blackhole() as addr:
            start = loop.time()
            r = await tcp_probe(loop, addr, 0.2)
            took = loop.time() - start
        assert r.status is CheckStatus.L4TOUT and not r.passed and r.info == ""
        assert 0.15 < took < 2.0

    run(main())


def test_http_probe_200_ok_and_request_form(run) -> None:
    async def main() -> None:
        srv = await TinyHttp().start()
        try:
            r = await http_probe(
                asyncio.get_running_loop(),
                srv.address,
                1.0,
                method="HEAD",
                path="/v3",
                host="keystone",
            )
        finally:
            await srv.stop()
        assert r.status is CheckStatus.L7OK and r.passed and r.code == 200
        assert r.reason().startswith("reason: Layer7 check passed, code: 200, check duration: ")
        head = srv.requests[0].split(b"\r\n")
        assert head[0] == b"HEAD /v3 HTTP/1.0"
        assert b"Host: keystone" in head
        assert b"Connection: close" in head

    run(main())


def test_http_probe_default_host_is_the_address(run) -> None:
    async def main() -> None:
        srv = await TinyHttp().start()
        try:
            r = await http_probe(asyncio.get_running_loop(), srv.address, 1.0)
        finally:
            await srv.stop()
        assert r.passed
        assert f"Host: 127.0.0.1:{srv.port}".encode() in srv.requests[0].split(b"\r\n")

    run(main())


def test_http_probe_503_is_l7sts(run) -> None:
    async def main() -> None:
        srv = await TinyHttp(status=(503, "Service Unavailable")).start()
        try:
            r = await http_probe(asyncio.get_running_loop(), srv.address, 1.0)
        finally:
            await srv.stop()
        assert r.status is CheckStatus.L7STS and not r.passed and r.code == 503
        assert r.info == "Service Unavailable"
        assert r.reason().startswith(
            'reason: Layer7 wrong status, code: 503, info: "Service Unavailable", check duration: '
        )

    run(main())


def test_http_probe_expect_ranges(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await TinyHttp(status=(401, "Unauthorized")).start()
        try:
            ko = await http_probe(loop, srv.address, 1.0)
            ok = await http_probe(loop, srv.address, 1.0, expect=((200, 299), (401, 401)))
        finally:
            await srv.stop()
        assert ko.status is CheckStatus.L7STS and ok.status is CheckStatus.L7OK and ok.code == 401

    run(main())


def test_http_probe_garbage_is_l7rsp(run) -> None:
    async def main() -> None:
        srv = await TinyHttp(mode="garbage").start()
        try:
            r = await http_probe(asyncio.get_running_loop(), srv.address, 1.0)
        finally:
            await srv.stop()
        assert r.status is CheckStatus.L7RSP and not r.passed
        assert r.info.startswith("Invalid HTTP response")

    run(main())


def test_http_probe_silent_server_times_out_within_deadline(run) -> None:
    """A frozen server completes the handshake and never answers (FACTS.md)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await TinyHttp(mode="silent").start()
        try:
            start = loop.time()
            r = await http_probe(loop, srv.address, 0.2)
            took = loop.time() - start
            # the probe closed its connection: the server sees it go away
            await asyncio.wait_for(_until(lambda: not srv.conns), 2.0)
        finally:
            await srv.stop()
        assert r.status is CheckStatus.L7TOUT and not r.passed
        assert 0.15 < took < 1.5

    run(main())


def test_http_probe_refused_and_blackholed(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        r = await http_probe(loop, closed_port(), 1.0)
        assert r.status is CheckStatus.L4CON and r.info == "Connection refused"
        with blackhole() as addr:
            r = await http_probe(loop, addr, 0.2)
        assert r.status is CheckStatus.L4TOUT

    run(main())


def test_make_probe_by_type(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await TinyHttp(status=(503, "Service Unavailable")).start()
        try:
            http = await make_probe(Health(type="http", path="/x"))(loop, srv.address, 1.0)
            tcp = await make_probe(Health(type="tcp"))(loop, srv.address, 1.0)
            other = await make_probe(Health(type="amqp"))(loop, srv.address, 1.0)
        finally:
            await srv.stop()
        # the HTTP check takes a 503 server out while TCP still connects
        assert http.status is CheckStatus.L7STS and tcp.status is CheckStatus.L4OK
        assert other.status is CheckStatus.L4OK  # no AMQP probe yet: TCP connect
        assert srv.requests == [srv.requests[0]] and srv.requests[0].startswith(b"GET /x ")

    run(main())


def test_name_address_resolves(run) -> None:
    async def main() -> None:
        srv = await TinyHttp().start()
        try:
            r = await tcp_probe(asyncio.get_running_loop(), Address("localhost", srv.port), 1.0)
        finally:
            await srv.stop()
        # localhost may resolve to ::1 first, with nothing there: any address that works wins
        assert r.status is CheckStatus.L4OK

    run(main())


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.005)
