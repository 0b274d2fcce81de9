"""Issue 3: server maxconn queues (503 at `timeout.queue`, served when a slot frees, Tw
logged, qcur/qmax counted) and listener maxconn parks connections instead of refusing."""

from __future__ import annotations

import asyncio

from pylb.config.model import Timeouts
from tests.integration.http_helpers import Client, run_fixture  # noqa: F401  # `run`
from tests.integration.resilience_helpers import Api, conf_for, resilient_proxy, rst, until


def _timeouts(queue: float) -> Timeouts:
    return Timeouts(connect=2.0, client=5.0, server=5.0, queue=queue)


def test_server_at_maxconn_queues_then_503_at_timeout_queue(run) -> None:
    async def main() -> None:
        api = await Api("a").start()
        try:
            conf = conf_for([("a", api.address)], maxconns={"a": 1}, timeout=_timeouts(0.3))
            async with resilient_proxy(conf) as px:
                q = px.backend.queue
                holder = await Client.connect(px.port)
                holder.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
                await until(lambda: len(api.held) == 1, 2, "slot held")
                loop = asyncio.get_running_loop()
                waiter = await Client.connect(px.port)
                t0 = loop.time()
                waiting = asyncio.ensure_future(waiter.request("GET", "/w"))
                await until(lambda: q.count == 1, 2, "queued")
                r = await waiting
                took = loop.time() - t0
                # libuv timers have 1 ms resolution and may fire a hair before the float
                # deadline: allow that much, not a whole early expiry.
                assert r.status == 503 and took >= 0.3 - 0.005
                rec = px.log.records[-1]
                assert rec.term == "sQ--" and rec.status == 503
                assert 295 <= rec.t_queue < 2000  # Tw: the time spent queued (ms)
                assert q.count == 0 and q.max == 1 and q.timeouts == 1
                assert len(api.traffic()) == 1  # only the held request reached the server
                api.release()
                r = await holder.read_response()
                assert r.status == 200
                holder.close()
                waiter.close()
        finally:
            await api.stop()

    run(main())


def test_queued_requests_are_served_in_order_when_slots_free(run) -> None:
    async def main() -> None:
        a, b = Api("a"), Api("b")
        await a.start()
        await b.start()
        try:
            conf = conf_for(
                [("a", a.address), ("b", b.address)],
                maxconns={"a": 1, "b": 1},
                timeout=_timeouts(5.0),
            )
            async with resilient_proxy(conf) as px:
                be = px.backend
                holders = []
                for _ in range(2):  # one held request on each server: both at maxconn
                    h = await Client.connect(px.port)
                    h.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
                    holders.append(h)
                await until(lambda: len(a.held) + len(b.held) == 2, 2, "both slots held")
                clients = [await Client.connect(px.port) for _ in range(4)]
                results = []
                for i, c in enumerate(clients):
                    results.append(asyncio.ensure_future(c.request("GET", f"/q{i}")))
                    await until(lambda i=i: be.queue.count == i + 1, 2, "queued in order")
                assert be.queue.max == 4
                assert all(s.cur_conns == 1 for s in be.servers)  # maxconn respected
                a.release()  # `a` frees its slot: the head of the queue takes it, ...
                r0 = await results[0]
                assert r0.status == 200 and bytes(r0.body) == b"a"
                # ... and every later response frees it again for the next one, in order.
                rs = [await f for f in results[1:]]
                assert [r.status for r in rs] == [200, 200, 200]
                assert be.queue.count == 0
                paths = [p for _, p, _ in a.traffic()]
                assert paths == ["/hold", "/q0", "/q1", "/q2", "/q3"]
                queued = [r for r in px.log.records if r.request_line.startswith("GET /q")]
                assert [r.backend_queue for r in queued] == [0, 1, 2, 3]
                assert all(r.t_queue >= 0 for r in queued)
                assert max(s.max_conns for s in be.servers) == 1
                b.release()
                for h in holders:
                    assert (await h.read_response()).status == 200
                    h.close()
                for c in clients:
                    c.close()
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_queued_client_leaving_frees_its_place(run) -> None:
    async def main() -> None:
        api = await Api("a").start()
        try:
            conf = conf_for([("a", api.address)], maxconns={"a": 1}, timeout=_timeouts(5.0))
            async with resilient_proxy(conf) as px:
                q = px.backend.queue
                holder = await Client.connect(px.port)
                holder.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
                await until(lambda: len(api.held) == 1, 2, "slot held")
                gone = await Client.connect(px.port)
                gone.send(b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
                await until(lambda: q.count == 1, 2, "queued")
                # A client that resets leaves the queue at once. (A plain FIN is a half-close
                # for the proxy: the request stays queued and is answered, as HAProxy does
                # without `option abortonclose`.)
                rst(gone.writer.transport)
                await until(lambda: q.count == 0, 2, "left the queue")
                stays = await Client.connect(px.port)
                fut = asyncio.ensure_future(stays.request("GET", "/stays"))
                await until(lambda: q.count == 1, 2, "queued")
                api.release()
                assert (await fut).status == 200
                assert (await holder.read_response()).status == 200
                assert [p for _, p, _ in api.traffic()] == ["/hold", "/stays"]
                assert px.backend.server("a").cur_conns == 0
                holder.close()
                stays.close()
        finally:
            await api.stop()

    run(main())


def test_listener_maxconn_parks_connections_instead_of_refusing(run) -> None:
    async def main() -> None:
        api = await Api("a").start()
        try:
            conf = conf_for([("a", api.address)], maxconn=1, timeout=_timeouts(5.0))
            async with resilient_proxy(conf) as px:
                ctx = px.ctx
                first = await Client.connect(px.port)
                assert (await first.request("GET", "/1")).status == 200
                second = await Client.connect(px.port)  # accepted by the kernel, parked
                fut = asyncio.ensure_future(second.request("GET", "/2"))
                await until(lambda: ctx.parked is not None and ctx.parked.count == 1, 2, "parked")
                assert ctx.feconn == 1 and ctx.denied_conns == 0
                await asyncio.sleep(0.05)
                assert not fut.done()  # not served while the listener is full
                first.close()  # room: the parked connection is admitted and served
                r = await fut
                assert r.status == 200 and ctx.feconn == 1 and ctx.parked.count == 0
                second.close()
        finally:
            await api.stop()

    run(main())


def test_parked_connection_gets_503_after_timeout_queue(run) -> None:
    async def main() -> None:
        api = await Api("a").start()
        try:
            conf = conf_for([("a", api.address)], maxconn=1, timeout=_timeouts(0.2))
            async with resilient_proxy(conf) as px:
                first = await Client.connect(px.port)
                assert (await first.request("GET", "/1")).status == 200
                second = await Client.connect(px.port)
                r = await second.request("GET", "/2")
                assert r.status == 503
                assert await second.closed()
                assert px.ctx.parked.timeouts == 1
                assert (await first.request("GET", "/3")).status == 200
                first.close()
        finally:
            await api.stop()

    run(main())
