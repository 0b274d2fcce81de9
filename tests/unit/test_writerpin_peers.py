"""One writer across pylb nodes: the peers merge rule (pure), the datagram format, and two
or three nodes' controllers syncing over loopback UDP in one process."""

from __future__ import annotations

import asyncio

import pytest

from pylb.config.model import Address, Listen, ServerConf
from pylb.galera.peers import Claim, DecodeError, PeerSync, decode, encode, merge
from pylb.galera.writer import set_writer
from pylb.proxy.backend import Backend

KEY = b"k" * 32


def claim(writer, epoch, since=100.0, origin="A", listen="mysql") -> Claim:
    return Claim(listen, writer, epoch, since, origin)


def everyone(_: str) -> bool:
    return True


def test_claim_order_epoch_then_oldest_then_origin() -> None:
    assert claim("db1", 2).beats(claim("db2", 1))
    assert claim("db1", 1, since=50.0).beats(claim("db2", 1, since=60.0))
    assert claim("db1", 1, origin="B").beats(claim("db1", 1, origin="A"))


def test_merge_rules() -> None:
    mine = claim("db1", 1, origin="A")
    # A better claim with an eligible writer: adopt it and switch.
    m = merge(mine, claim("db2", 2, origin="B"), everyone)
    assert m.claim.writer == "db2" and m.switch_to == "db2" and not m.answer
    # ... with the same writer: adopt the claim only.
    m = merge(mine, claim("db1", 2, origin="B"), everyone)
    assert m.claim.epoch == 2 and m.switch_to is None
    # ... whose writer is not usable here: keep ours, and stay quiet (no ping-pong).
    m = merge(mine, claim("db2", 2, origin="B"), lambda s: s != "db2")
    assert m == type(m)(mine, None, False)
    # A worse claim: answer with ours.
    m = merge(mine, claim("db3", 0, since=1.0, origin="B"), everyone)
    assert m.claim is mine and m.switch_to is None and m.answer
    # The same claim: nothing.
    assert not merge(mine, mine, everyone).answer


def test_datagram_roundtrip_and_authentication() -> None:
    claims = [claim("db1", 3), claim(None, 0, listen="other")]
    data = encode(KEY, "A", claims)
    assert decode(KEY, data) == ("A", claims)
    with pytest.raises(DecodeError, match="MAC"):
        decode(b"other key", data)
    forged = data[:40] + bytes([data[40] ^ 1]) + data[41:]
    with pytest.raises(DecodeError, match="MAC"):
        decode(KEY, forged)
    with pytest.raises(DecodeError):
        decode(KEY, b"x" * 10)


def test_decode_rejects_bad_fields() -> None:
    import hashlib
    import hmac

    for body in (
        b'{"v":1,"node":"A","claims":[["mysql","db1",-1,1.0,"A"]]}',
        b'{"v":1,"node":"A","claims":[["mysql","db1",true,1.0,"A"]]}',
        b'{"v":1,"node":"A","claims":[["mysql","db1",1,"1","A"]]}',
        b'{"v":2,"node":"A","claims":[]}',
        b"[1]",
    ):
        data = hmac.new(KEY, body, hashlib.sha256).digest() + body
        with pytest.raises(DecodeError):
            decode(KEY, data)


# -- controllers syncing over loopback ---------------------------------------------------


def backend(failback: bool = False) -> Backend:
    conf = Listen(
        name="mysql",
        binds=(Address("127.0.0.1", 0),),
        servers=tuple(
            ServerConf(name=f"db{i}", address=Address("127.0.0.1", 33060 + i)) for i in (1, 2, 3)
        ),
        mode="tcp",
        balance="writer-pin",
        failback=failback,
    )
    return Backend(conf)


def set_up(be: Backend, name: str, up: bool) -> None:
    s = be.server(name)
    s.oper_up = up
    be.server_changed(s)


def writer(be: Backend) -> str | None:
    w = be.writer.writer
    return w.name if w else None


async def until(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


class Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.be = backend()
        self.sync: PeerSync | None = None

    async def start(self, peers: list[Address]) -> Node:
        self.sync = PeerSync(
            {"mysql": self.be.writer},
            node=self.name,
            bind=Address("127.0.0.1", 0),
            peers=peers,
            key=KEY,
            interval=0.05,
        )
        await self.sync.start(asyncio.get_running_loop())
        return self


async def test_same_health_view_same_writer_without_messages() -> None:
    """The deterministic half: identical inputs give identical writers, no sync needed."""
    a, b = backend(), backend()
    for be in (a, b):
        set_up(be, "db1", False)
    assert writer(a) == writer(b) == "db2"


async def test_fresh_node_adopts_the_writer_in_use() -> None:
    a = await Node("A").start([])
    b: Node | None = None
    try:
        set_up(a.be, "db1", False)  # failover on A: db2
        set_up(a.be, "db1", True)  # db1 back: no failback, A keeps db2
        assert writer(a.be) == "db2"
        # B starts fresh with the same (all up) health view: by order alone, db1.
        b = Node("B")
        assert writer(b.be) == "db1"
        await b.start([a.sync.address])
        assert await b.sync.wait_synced(2.0)  # what a worker awaits before serving
        assert writer(b.be) == "db2"
        assert writer(a.be) == "db2"
        assert b.be.writer.balancer.reason == "peer"
    finally:
        for n in (a, b):
            if n is not None and n.sync is not None:
                n.sync.stop()


async def test_changes_propagate_and_differing_views_do_not_flap() -> None:
    a = await Node("A").start([])
    b = await Node("B").start([a.sync.address])
    try:
        a.sync.add_peer(b.sync.address)
        await until(lambda: a.sync.claims["mysql"] == b.sync.claims["mysql"])
        set_writer(a.be, "db3")  # manual switch on A
        await until(lambda: writer(b.be) == "db3")
        # B sees db3 down: B moves (its own view), A follows if db2 is fine for A.
        set_up(b.be, "db3", False)
        assert writer(b.be) == "db1"
        await until(lambda: writer(a.be) == "db1")
        # A sees db1 down but B does not: each keeps what its own view allows.
        set_up(a.be, "db1", False)
        assert writer(a.be) == "db2"
        # db2 is eligible for B too: B adopts A's claim (waited for, not assumed to have
        # happened within a fixed time, which a loaded machine may not give)...
        await until(
            lambda: writer(b.be) == "db2" and a.sync.claims["mysql"] == b.sync.claims["mysql"]
        )
        # ...and then nothing flaps: the epochs stay put over several sync intervals (a
        # window in which a change would show; a slow machine only makes it shorter).
        epochs = (a.sync.claims["mysql"].epoch, b.sync.claims["mysql"].epoch)
        await asyncio.sleep(0.3)  # 6 sync intervals
        assert (a.sync.claims["mysql"].epoch, b.sync.claims["mysql"].epoch) == epochs
        assert writer(b.be) == "db2"
        assert writer(a.be) == "db2"
    finally:
        a.sync.stop()
        b.sync.stop()


async def test_alone_wait_synced_returns_false() -> None:
    a = await Node("A").start([Address("127.0.0.1", 9)])  # nobody answers there
    try:
        assert not await a.sync.wait_synced(0.1)
        assert writer(a.be) == "db1"
    finally:
        a.sync.stop()


async def test_forged_datagrams_are_dropped() -> None:
    a = await Node("A").start([])
    try:
        loop = asyncio.get_running_loop()
        tr, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(a.sync.address.host, a.sync.address.port)
        )
        try:
            tr.sendto(encode(b"wrong key", "X", [claim("db3", 99, origin="X")]))
            await until(lambda: a.sync.dropped == 1)
            assert writer(a.be) == "db1"
        finally:
            tr.close()
    finally:
        a.sync.stop()
