"""Issue 3 under load: a SIGKILLed backend costs no failed GET, leaves within fall x inter,
comes back after rise; a 503 health endpoint takes a server out; backups only serve while
every active server is down."""

from __future__ import annotations

import asyncio

from pylb.health.types import CheckStatus
from tests.integration.http_helpers import run_fixture  # noqa: F401  # `run` (both loops)
from tests.integration.resilience_helpers import (
    Api,
    Load,
    ProcBackend,
    conf_for,
    http_health,
    resilient_proxy,
    run_uv_fixture,  # noqa: F401  # `run_uv` (uvloop only)
    until,
)

INTER, RISE, FALL = 0.15, 2, 3
SLACK = 0.5  # scheduling slack and one check's own duration


def test_sigkill_under_load_no_failed_get_down_then_back(run_uv) -> None:
    async def main() -> None:
        procs = [ProcBackend(f"p{i}") for i in (1, 2, 3)]
        try:
            for p in procs:
                await p.start()
            conf = conf_for(
                [(p.name, p.address) for p in procs],
                health=http_health(INTER, RISE, FALL, path="/"),
            )
            async with resilient_proxy(conf) as px:
                victim = px.backend.server("p2")
                load = Load(px.port, clients=8).start()
                await until(lambda: load.served_by("p2") > 20, 5, "p2 serves")
                loop = asyncio.get_running_loop()

                # SIGKILL: in-flight requests are reset, connects refused.
                t_kill = loop.time()
                procs[1].kill()
                down_after = await until(
                    lambda: not victim.oper_up, FALL * INTER + SLACK, "p2 marked down"
                )
                before = load.served_by("p2")
                await asyncio.sleep(0.3)  # load keeps running meanwhile
                assert load.served_by("p2") == before  # no traffic to a dead server

                # Restarted on the same port: back after `rise` passed checks.
                await procs[1].start()
                new_pid = str(procs[1].pid)
                t_up = loop.time()
                up_after = await until(
                    lambda: victim.oper_up, RISE * INTER + SLACK, "p2 marked up again"
                )
                await until(lambda: load.by_body.get(f"p2 {new_pid}", 0) > 20, 5, "new p2 serves")
                await load.stop()
                print(
                    f"\nSIGKILL: down after {down_after * 1000:.0f} ms "
                    f"(fall x inter = {FALL * INTER * 1000:.0f} ms), up after restart "
                    f"{up_after * 1000:.0f} ms, {load.ok} GETs ok, "
                    f"{victim.redispatches} redispatched from p2, "
                    f"{loop.time() - t_kill:.1f}s since kill, {loop.time() - t_up:.1f}s since up"
                )
                assert load.failures == [], load.failures[:5]
                assert load.ok > 100
                assert victim.check_status in (CheckStatus.L7OK, CheckStatus.L7OKC)
        finally:
            for p in procs:
                p.stop()

    run_uv(main())


def test_http_check_503_takes_server_out_while_tcp_connects(run) -> None:
    async def main() -> None:
        a, b = Api("a"), Api("b")
        await a.start()
        await b.start()
        try:
            conf = conf_for([("a", a.address), ("b", b.address)], health=http_health(INTER))
            async with resilient_proxy(conf) as px:
                sa = px.backend.server("a")
                await until(lambda: sa.check_status is CheckStatus.L7OK, 2, "first check")
                a.health = 503
                t = await until(lambda: not sa.oper_up, FALL * INTER + SLACK, "a down on 503")
                assert sa.check_status is CheckStatus.L7STS and sa.check_code == 503
                # The server still accepts connections: only the L7 answer took it out.
                _r, w = await asyncio.open_connection("127.0.0.1", a.port)
                w.close()
                load = Load(px.port, clients=4, max_requests=10).start()
                await load.join()
                assert load.failures == [] and load.served_by("a") == 0
                assert load.served_by("b") == 40
                print(f"\n503 check: down after {t * 1000:.0f} ms")
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_backup_serves_only_while_every_active_is_down(run) -> None:
    async def main() -> None:
        a1, a2, bk = Api("a1"), Api("a2"), Api("bk")
        for x in (a1, a2, bk):
            await x.start()
        try:
            conf = conf_for(
                [("a1", a1.address), ("a2", a2.address), ("bk", bk.address, True)],
                health=http_health(INTER),
            )
            async with resilient_proxy(conf) as px:
                be = px.backend

                async def burst() -> Load:
                    load = Load(px.port, clients=4, max_requests=10).start()
                    await load.join()
                    assert load.failures == []
                    return load

                load = await burst()
                assert load.served_by("bk") == 0 and load.served_by("a1") > 0

                a1.health = 503  # one active down: the other carries everything
                await until(lambda: not be.server("a1").oper_up, 2, "a1 down")
                load = await burst()
                assert load.served_by("a2") == 40

                a2.health = 503  # every active down: the backup takes over
                await until(lambda: not be.server("a2").oper_up, 2, "a2 down")
                load = await burst()
                assert load.served_by("bk") == 40

                a1.health = 200  # one active back: the backup stops serving
                await until(lambda: be.server("a1").oper_up, 2, "a1 up")
                load = await burst()
                assert load.served_by("a1") == 40 and load.served_by("bk") == 0
        finally:
            for x in (a1, a2, bk):
                await x.stop()

    run(main())
