"""writer-pin in the TCP relay, on loopback: sessions follow the one writer, a writer
change closes the old writer's sessions at once, a refused connect to the writer moves the
writer and redispatches the same client attempt, a connecting session is moved."""

from __future__ import annotations

import dataclasses

from pylb.config.model import CheckParams, Health, Timeouts
from pylb.galera.writer import set_writer
from pylb.health.scheduler import HealthChecker
from pylb.health.types import CheckStatus
from tests.integration.tcp_helpers import (
    BackendServer,
    Echo,
    TcpProxy,
    blackhole,
    connect_client,
    listen_conf,
    run_fixture,  # noqa: F401  # provides the loop-parametrised `run` fixture
    until,
    wait_for,
)


def writer_conf(addresses, **kw):
    conf = listen_conf(addresses, balance="writer-pin", **kw)
    return conf


async def roundtrip(proxy: TcpProxy, payload: bytes) -> tuple[bytes, object]:
    c = await connect_client(proxy.address)
    c.transport.write(payload)
    await wait_for(lambda: len(c.data) >= len(payload), what="echo")
    return bytes(c.data), c


def test_sessions_follow_the_writer_and_a_switch_closes_the_old_ones(run) -> None:
    async def main() -> None:
        e1, e2, e3 = [await BackendServer(Echo).start() for _ in range(3)]
        proxy = await TcpProxy(writer_conf([e1.address, e2.address, e3.address])).start()
        try:
            clients = []
            for i in range(6):
                data, c = await roundtrip(proxy, b"x%d" % i)
                assert data == b"x%d" % i
                clients.append(c)
            assert len(e1.conns) == 6 and not e2.conns and not e3.conns
            s1 = proxy.ctx.backend.servers[0]
            assert len(s1.sessions) == 6
            answer = set_writer(proxy.ctx.backend, "s2")
            assert answer == "tcp_test: writer is now s2 (was s1); 6 sessions closed.\n"
            # Closed at once, both sides: the clients see their connection end...
            for c in clients:
                await until(c.eof)
            # ... and the old writer's side too.
            for p in e1.conns:
                await until(p.saw_eof)
            assert not s1.sessions and s1.cur_conns == 0
            data, c = await roundtrip(proxy, b"after")
            assert data == b"after" and len(e2.conns) == 1
            assert {r.term for r in proxy.records} == {"KD"}
            c.transport.close()
        finally:
            await proxy.close()
            for e in (e1, e2, e3):
                await e.close()

    run(main())


def test_refused_writer_moves_at_once_and_the_attempt_is_redispatched(run) -> None:
    async def main() -> None:
        e1, e2 = [await BackendServer(Echo).start() for _ in range(2)]
        health = Health(type="tcp", params=CheckParams(inter=30.0, fall=3, rise=2))
        conf = dataclasses.replace(writer_conf([e1.address, e2.address], retries=3), health=health)
        proxy = await TcpProxy(conf).start()
        backend = proxy.ctx.backend
        checker = HealthChecker(backend)
        checker.start(proxy.ctx.worker.loop)
        try:
            s1, s2 = backend.servers
            await wait_for(lambda: s1.check_status is not None, what="first check of s1")
            data, c1 = await roundtrip(proxy, b"one")
            assert data == b"one"
            await e1.close()  # the writer dies: connects are refused from now on
            await until(c1.eof)
            data, c2 = await roundtrip(proxy, b"two")  # the same attempt goes to s2
            assert data == b"two"
            assert not s1.oper_up and backend.writer.writer is s2
            assert s1.check_status is CheckStatus.HANA
            assert s1.failed_conns == 1  # one refusal was enough; no retry on s1
            c2.transport.close()
            await wait_for(proxy.idle, what="sessions end")
            rec = next(r for r in proxy.records if r.server == "s2")
            assert rec.redispatched and rec.retries == 1 and rec.term in ("--", "CD")
        finally:
            checker.stop()
            await checker.wait_stopped()
            await proxy.close()
            await e2.close()

    run(main())


def test_connecting_session_is_moved_to_the_new_writer(run) -> None:
    async def main() -> None:
        e2 = await BackendServer(Echo).start()
        with blackhole() as hole:
            timeouts = Timeouts(connect=10.0, client=10.0, server=10.0, tunnel=10.0)
            proxy = await TcpProxy(writer_conf([hole, e2.address], timeout=timeouts)).start()
            try:
                s1, s2 = proxy.ctx.backend.servers
                c = await connect_client(proxy.address)
                c.transport.write(b"held")
                await wait_for(lambda: len(s1.sessions) == 1, what="session connecting")
                set_writer(proxy.ctx.backend, "s2")
                await wait_for(lambda: bytes(c.data) == b"held", what="echo via s2")
                assert not s1.sessions and s1.cur_conns == 0 and s2.cur_conns == 1
                c.transport.close()
                await wait_for(proxy.idle, what="session end")
                (rec,) = proxy.records
                assert rec.server == "s2" and rec.redispatched and rec.term in ("--", "CD")
            finally:
                await proxy.close()
                await e2.close()

    run(main())
