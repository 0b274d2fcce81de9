"""The writer sync between the workers of ONE pylb node (unix datagram sockets), and
slot 0 passing a peer node's claim on to its siblings at once (docs/galera.md, "Workers").

The interval is long (10 s) on purpose: everything asserted here happens through the
immediate sends (local change, adoption forwarded), not through the periodic re-announce.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pylb.config.model import Address
from pylb.galera.peers import PeerSync
from pylb.galera.writer import set_writer
from pylb.proxy.worker import sync_path
from tests.unit.test_writerpin_peers import KEY, backend, set_up, until, writer

SLOW = 10.0


def make(be, name: str, *, local: str | None, peers, bind: Address | None = None) -> PeerSync:
    return PeerSync(
        {"mysql": be.writer}, node=name, bind=bind, peers=peers, key=KEY, interval=SLOW, local=local
    )


def test_sync_path_is_next_to_the_control_socket() -> None:
    assert sync_path("/run/pylb-x/g3-w1.sock") == "/run/pylb-x/g3-w1.sync"


async def test_sibling_workers_follow_each_other_over_unix_sockets(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    p0, p1 = str(tmp_path / "g0-w0.sync"), str(tmp_path / "g0-w1.sync")
    be0, be1 = backend(), backend()
    w0 = make(be0, "lb/g0-w0", local=p0, peers=[p1])
    w1 = make(be1, "lb/g0-w1", local=p1, peers=[p0])
    await w0.start(loop)
    await w1.start(loop)
    try:
        assert writer(be0) == writer(be1) == "db1"
        # worker 1 alone sees db1 fail (a refused connect): worker 0 follows at once,
        # though db1 is still up in its own view
        set_up(be1, "db1", False)
        await until(lambda: writer(be0) == "db2", 2.0)
        assert be0.server("db1").oper_up
        # a manual switch in worker 0 reaches worker 1
        set_writer(be0, "db3")
        await until(lambda: writer(be1) == "db3", 2.0)
    finally:
        w0.stop()
        w1.stop()
    assert not Path(p0).exists() and not Path(p1).exists()


async def test_slot0_passes_a_peer_nodes_claim_to_its_siblings_at_once(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    p0, p1 = str(tmp_path / "g0-w0.sync"), str(tmp_path / "g0-w1.sync")
    other_be, be0, be1 = backend(), backend(), backend()
    other = make(other_be, "lb02", local=None, peers=[], bind=Address("127.0.0.1", 0))
    await other.start(loop)
    w0 = make(be0, "lb01/g0-w0", local=p0, peers=[other.address, p1], bind=Address("127.0.0.1", 0))
    w1 = make(be1, "lb01/g0-w1", local=p1, peers=[p0])
    await w0.start(loop)
    await w1.start(loop)
    other.add_peer(w0.address)
    try:
        set_writer(other_be, "db2")  # announced to slot 0 only
        await until(lambda: writer(be0) == "db2", 2.0)
        await until(lambda: writer(be1) == "db2", 2.0)  # forwarded, not after 10 s
        assert be1.writer.balancer.reason == "peer"
        # slot 0 drains (reload): it leaves the node mesh but keeps following siblings
        w0.close_external()
        assert w0.peers == [p1]
        set_writer(be1, "db3")
        await until(lambda: writer(be0) == "db3", 2.0)
    finally:
        for s in (w0, w1, other):
            s.stop()
