"""Galera/MySQL probes against small loopback servers (asyncio and uvloop): the failure
shapes a real cluster makes hard to produce on demand (error greetings, silent acceptors,
blackholed connects). The real cluster is in tests/system/test_galera_check.py."""

from __future__ import annotations

import asyncio
import time

from pylb.config.model import Address, Health
from pylb.health.galera import (
    _EXECUTOR_WORKERS,
    _Attempt,
    check_clustercheck,
    check_galera,
    check_mysql_handshake,
)
from pylb.health.probes import make_probe
from pylb.health.types import CheckStatus
from tests.integration.health_helpers import TinyHttp, blackhole, closed_port
from tests.integration.health_helpers import run_fixture as run_fixture  # `run`, both loops

GREETING = (
    b"\x0a5.5.5-10.11.19-MariaDB-log\x00" + b"\x07\x00\x00\x00" + b"abcdefgh\x00" + b"\0" * 20
)
TOO_MANY = b"\xff" + (1040).to_bytes(2, "little") + b"#08004Too many connections"


def packet(payload: bytes, seq: int = 0) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


class FakeMysql(asyncio.Protocol):
    """Sends `first` (in two writes, to exercise reassembly) or nothing ("silent"), or
    closes at once (first=b"")."""

    def __init__(self, first: bytes | None) -> None:
        self.first = first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.first is None:
            return  # frozen server: kernel accepted, nobody speaks
        if not self.first:
            transport.close()
            return
        transport.write(self.first[:3])
        transport.write(self.first[3:])


async def fake_server(first: bytes | None) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: FakeMysql(first), "127.0.0.1", 0)


def address_of(srv: asyncio.base_events.Server) -> Address:
    return Address("127.0.0.1", srv.sockets[0].getsockname()[1])


def test_handshake_ok(run) -> None:
    async def main() -> None:
        srv = await fake_server(packet(GREETING))
        async with srv:
            r = await check_mysql_handshake(address_of(srv), 1.0)
        assert r.status is CheckStatus.L6OK and r.passed
        assert r.info == "10.11.19-MariaDB-log"

    run(main())


def test_handshake_error_packet(run) -> None:
    async def main() -> None:
        srv = await fake_server(packet(TOO_MANY))
        async with srv:
            r = await check_mysql_handshake(address_of(srv), 1.0)
        assert r.status is CheckStatus.L7STS and not r.passed
        assert r.info.startswith("1040 ") and "Too many connections" in r.info

    run(main())


def test_handshake_silent_server_times_out(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await fake_server(None)
        async with srv:
            start = loop.time()
            r = await check_mysql_handshake(address_of(srv), 0.3)
            took = loop.time() - start
        assert r.status is CheckStatus.L6TOUT and not r.passed
        assert 0.25 < took < 2.0

    run(main())


def test_handshake_closed_and_refused(run) -> None:
    async def main() -> None:
        srv = await fake_server(b"")
        async with srv:
            r = await check_mysql_handshake(address_of(srv), 1.0)
        assert r.status is CheckStatus.SOCKERR and not r.passed
        r = await check_mysql_handshake(closed_port(), 1.0)
        assert r.status is CheckStatus.L4CON and r.info == "Connection refused"

    run(main())


def test_galera_refused_and_blackholed(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        r = await check_galera(closed_port(), user="u", password="p", timeout=1.0)
        assert r.status is CheckStatus.L4CON and r.info == "Connection refused"
        assert r.node is None
        with blackhole() as addr:
            start = loop.time()
            r = await check_galera(addr, user="u", password="p", timeout=0.3)
            took = loop.time() - start
        assert r.status is CheckStatus.L4TOUT and not r.passed
        assert 0.25 < took < 2.0

    run(main())


def test_galera_silent_server_times_out_and_frees_threads(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        silent = await fake_server(None)
        greeting_then_error = await fake_server(packet(TOO_MANY))
        async with silent, greeting_then_error:
            # 1 s: long enough for a thread to connect even on a loaded machine (else it is
            # rightly an L4 timeout), short enough to tell one shared deadline from rounds.
            timeout, n = 1.0, 20
            start = loop.time()
            results = await asyncio.gather(
                *(
                    check_galera(address_of(silent), user="u", password="p", timeout=timeout)
                    for _ in range(n)  # more than the pool's threads
                )
            )
            took = loop.time() - start
            shapes = {(r.status, r.info) for r in results}
            # Those that got a thread in time reached the server (L7); the rest got none, or
            # one freed at another check's deadline with too little time left, and say so
            # rather than blaming the server's TCP stack.
            assert (CheckStatus.L7TOUT, "") in shapes
            assert shapes <= {
                (CheckStatus.L7TOUT, ""),
                (CheckStatus.L4TOUT, "no check thread free before the deadline"),
            }, shapes
            assert n > 2 * _EXECUTOR_WORKERS  # so that rounds would take >= 3 timeouts
            # One shared deadline: about one timeout (slack: one more), not
            # ceil(n / threads) rounds of it.
            assert took < 2 * timeout
            # The abandoned threads were woken at the deadline: a new check gets a thread.
            r = await check_galera(
                address_of(greeting_then_error), user="u", password="p", timeout=2.0
            )
        assert r.status is CheckStatus.L7STS and r.info.startswith("1040 ")

    run(main())


def test_connect_timeout_blames_the_queue_when_it_used_most_of_the_budget() -> None:
    """The race behind a misleading L4TOUT: a thread freed at one check's deadline picks
    up a queued check with almost nothing left; its connect cannot finish, and that is our
    congestion, not the node's. Pure decision on the attempt's times."""
    deadline = time.monotonic() + 10.0
    a = _Attempt(1.0)
    assert a.queued_past_half(deadline)  # never started
    a.start()
    a.started_at = deadline - 0.01
    assert a.queued_past_half(deadline)  # started with 1 % of the budget left
    a.started_at = deadline - 0.9
    assert not a.queued_past_half(deadline)  # the connect had 90 % of it: the node's fault


def test_clustercheck_and_registered_probes(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await TinyHttp().start()
        try:
            r = await check_clustercheck(srv.address, 1.0)
            assert r.status is CheckStatus.L7OK and r.code == 200
            srv.status = (503, "Service Unavailable")
            r = await check_clustercheck(srv.address, 1.0)
            assert r.status is CheckStatus.L7STS and r.code == 503 and not r.passed
        finally:
            await srv.stop()
        hs = await fake_server(packet(GREETING))
        async with hs:
            probe = make_probe(Health(type="mysql"))
            assert (await probe(loop, address_of(hs), 1.0)).status is CheckStatus.L6OK
        probe = make_probe(Health(type="galera", user="u", password="p"))
        r = await probe(loop, closed_port(), 1.0)
        assert r.status is CheckStatus.L4CON

    run(main())


def test_galera_cancelled_check_frees_its_thread(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        silent = await fake_server(None)
        answering = await fake_server(packet(TOO_MANY))
        async with silent, answering:
            tasks = [
                asyncio.ensure_future(
                    check_galera(address_of(silent), user="u", password="p", timeout=30.0)
                )
                for _ in range(12)  # more than the pool's threads, each blocked for 30 s
            ]
            # Give them time to connect and block on the greeting (the outcome does not
            # depend on it: a check cancelled while queued never starts).
            await asyncio.sleep(0.2)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            start = loop.time()
            r = await check_galera(address_of(answering), user="u", password="p", timeout=5.0)
            took = loop.time() - start
        assert r.status is CheckStatus.L7STS
        assert took < 2.0  # not stuck behind 30 s reads: cancelling woke the threads

    run(main())
