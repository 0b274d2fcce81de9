"""Issue 3: passive observation, replay of idempotent requests, no replay of POST, and a
black-holed server raced away from long before `timeout.connect`."""

from __future__ import annotations

import asyncio

from pylb.config.model import CheckParams, Health, Timeouts
from pylb.health.types import CheckStatus, InitState
from pylb.proxy.exchange import SLOW_CONNECT_MIN
from tests.integration.health_helpers import blackhole, closed_port
from tests.integration.http_helpers import Client, run_fixture  # noqa: F401  # `run`
from tests.integration.resilience_helpers import Api, conf_for, resilient_proxy

# Active checks that cannot interfere within a test: the second server's first check is
# due after inter/2 = 15 s, and observed errors bring it forward only to fastinter = 30 s.
SLOW_CHECKS = Health(
    type="tcp", params=CheckParams(inter=30.0, fastinter=30.0, downinter=30.0, rise=2, fall=2)
)


def test_get_reset_before_response_is_replayed_on_another_server(run) -> None:
    async def main() -> None:
        bad, good = Api("bad", reset_on=("/x",)), Api("good")
        await bad.start()
        await good.start()
        try:
            conf = conf_for([("bad", bad.address), ("good", good.address)])
            async with resilient_proxy(conf) as px:
                c = await Client.connect(px.port)
                for method in ("GET", "HEAD", "DELETE", "OPTIONS"):
                    r = await c.request(method, "/x")
                    assert r.status == 200, method
                    if method != "HEAD":
                        assert bytes(r.body) == b"good"
                # PUT with a small body: kept, so replayed whole.
                r = await c.request("PUT", "/x/put", body=b"p" * 1000)
                assert r.status == 200 and bytes(r.body) == b"good"
                c.close()
                seen_bad = [m for m, p, _ in bad.traffic()]
                assert seen_bad.count("GET") == 1  # roundrobin sent the first one to `bad`
                put = [b for m, p, b in good.traffic() if m == "PUT"]
                assert put == [b"p" * 1000]
                replayed = [r for r in px.log.records if r.redispatched]
                assert replayed and all(r.status == 200 and r.retries >= 1 for r in replayed)
                assert px.backend.server("bad").resp_errors == 0
        finally:
            await bad.stop()
            await good.stop()

    run(main())


def test_post_is_never_replayed(run) -> None:
    async def main() -> None:
        bad, good = Api("bad", reset_on=("POST", "PATCH")), Api("good")
        await bad.start()
        await good.start()
        try:
            conf = conf_for([("bad", bad.address), ("good", good.address)])
            async with resilient_proxy(conf) as px:
                statuses = []
                for method in ("POST", "PATCH"):
                    for _ in range(2):  # roundrobin: one of the two goes to `bad`
                        c = await Client.connect(px.port)
                        r = await c.request(method, "/create", body=b"{}")
                        statuses.append(r.status)
                        c.close()
                assert sorted(statuses) == [200, 200, 502, 502]
                assert [m for m, _, _ in bad.traffic()] == ["POST", "PATCH"]  # once each
                assert [m for m, _, _ in good.traffic()] == ["POST", "PATCH"]
                failed = [r for r in px.log.records if r.status == 502]
                assert all(r.term == "SH--" and not r.redispatched for r in failed)
        finally:
            await bad.stop()
            await good.stop()

    run(main())


def test_big_put_body_is_not_replayed(run) -> None:
    async def main() -> None:
        bad, good = Api("bad", reset_on=("PUT",)), Api("good")
        await bad.start()
        await good.start()
        try:
            conf = conf_for([("bad", bad.address), ("good", good.address)])
            async with resilient_proxy(conf) as px:
                c = await Client.connect(px.port)
                r = await c.request("PUT", "/big", body=b"x" * (200 * 1024))
                assert r.status == 502  # above REPLAY_MAX: not kept, so not replayed
                assert good.traffic() == []
        finally:
            await bad.stop()
            await good.stop()

    run(main())


def test_refused_connects_mark_the_server_down_before_any_active_check(run) -> None:
    async def main() -> None:
        good = await Api("good").start()
        try:
            dead = closed_port()
            conf = conf_for([("good", good.address), ("dead", dead)], health=SLOW_CHECKS)
            # fully up: only `fall` observed errors can take it down; active checks run
            # every 30 s and cannot be what does it.
            async with resilient_proxy(conf, init=InitState.FULLY_UP) as px:
                sd = px.backend.server("dead")
                c = await Client.connect(px.port)
                for _ in range(6):
                    r = await c.request("GET", "/")
                    assert r.status == 200 and bytes(r.body) == b"good"
                c.close()
                assert not sd.oper_up
                assert sd.check_status is CheckStatus.HANA
                assert "Connection refused" in sd.check_desc
        finally:
            await good.stop()

    run(main())


def test_blackholed_server_is_raced_long_before_timeout_connect(run) -> None:
    async def main() -> None:
        good = await Api("good").start()
        try:
            with blackhole() as hole:
                conf = conf_for(
                    [("good", good.address), ("hole", hole)],
                    health=SLOW_CHECKS,
                    timeout=Timeouts(connect=5.0, client=10.0, server=10.0),
                )
                async with resilient_proxy(conf, init=InitState.FULLY_UP) as px:
                    loop = asyncio.get_running_loop()
                    c = await Client.connect(px.port)
                    r = await c.request("GET", "/")  # roundrobin: `good` (connect time measured)
                    assert bytes(r.body) == b"good"
                    t0 = loop.time()
                    r = await c.request("GET", "/")  # `hole`: raced to `good`
                    took = loop.time() - t0
                    assert r.status == 200 and bytes(r.body) == b"good"
                    rec = px.log.records[-1]
                    print(
                        f"\nblack-holed server: answered after {took * 1000:.0f} ms "
                        f"(timeout.connect 5000 ms, race after >= {SLOW_CONNECT_MIN * 1000:.0f}"
                        f" ms), Tc={rec.t_connect} ms, retries={rec.retries}"
                    )
                    assert took < 2.5  # half of timeout.connect; in practice ~0.2 s
                    assert rec.redispatched and rec.server == "good"
                    sh = px.backend.server("hole")
                    assert sh.check_status is CheckStatus.HANA  # a failed observation
                    assert "connect pending" in sh.check_desc
                    # A POST goes through the same race: nothing was sent while connecting.
                    for body in (b"1", b"2"):
                        r = await c.request("POST", "/p", body=body)
                        assert r.status == 200 and bytes(r.body) == b"good"
                    c.close()
                    assert sh.cur_conns == 0  # the abandoned connects gave their slot back
        finally:
            await good.stop()

    run(main())


def test_connect_failure_retries_then_503(run) -> None:
    async def main() -> None:
        addrs = [("a", closed_port()), ("b", closed_port())]
        conf = conf_for(addrs, retries=2, timeout=Timeouts(connect=0.5, client=5, server=5))
        async with resilient_proxy(conf) as px:
            c = await Client.connect(px.port)
            r = await c.request("GET", "/")
            assert r.status == 503
            rec = px.log.records[-1]
            assert rec.term == "SC--" and rec.retries == 2 and rec.redispatched
            assert sum(s.cur_conns for s in px.backend.servers) == 0

    run(main())


def test_single_server_reset_gives_502_without_replay(run) -> None:
    async def main() -> None:
        bad = await Api("bad", reset_on=("/",)).start()
        try:
            async with resilient_proxy(conf_for([("bad", bad.address)])) as px:
                c = await Client.connect(px.port)
                r = await c.request("GET", "/")
                assert r.status == 502
                assert len(bad.traffic()) == 1
                assert px.backend.server("bad").cur_conns == 0
        finally:
            await bad.stop()

    run(main())
