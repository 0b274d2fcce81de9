"""The native Galera check against a real 3-node MariaDB Galera cluster on loopback.

Each test gets the session's cluster with all nodes Synced (fixture `galera`) and leaves
read_only / wsrep_desync reset and every node thawed. The bounds asserted on check latency
are the check's own timeout plus a generous margin: the point is "does not hang", which is
what a frozen node (SIGSTOP: the kernel completes the TCP handshake, nobody answers) breaks.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from pylb.config.model import Address
from pylb.health.galera import check_galera, check_mysql_handshake
from pylb.health.types import CheckStatus
from tests.system.galera_cluster import CHECK_PASSWORD, CHECK_USER, NODES, GaleraCluster

pytestmark = [pytest.mark.root, pytest.mark.slow]

CHECK_TIMEOUT = 1.0
# Margin over the check's timeout for "returned in time": thread hand-off and a busy 2-core VM.
SLACK = 1.0


def addr(cluster: GaleraCluster, i: int) -> Address:
    return Address("127.0.0.1", cluster.node_port(i))


async def galera_check(cluster: GaleraCluster, i: int, **kw: object):
    kw.setdefault("timeout", CHECK_TIMEOUT)
    return await check_galera(addr(cluster, i), user=CHECK_USER, password=CHECK_PASSWORD, **kw)


def wait_local_state(cluster: GaleraCluster, i: int, state: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = cluster.status(i, timeout=2.0)
        if st.get("wsrep_local_state") == str(state):
            return
        assert time.monotonic() < deadline, f"node{i} never reached state {state}: {st}"
        time.sleep(0.05)  # polling a condition with a deadline


async def test_all_nodes_synced_and_identified(galera: GaleraCluster) -> None:
    results = await asyncio.gather(*(galera_check(galera, i) for i in range(NODES)))
    for i, r in enumerate(results):
        assert r.passed, r.reason()
        assert r.status is CheckStatus.L7OK
        assert "Synced" in r.info and "wsrep_local_state=4" in r.info
        assert r.node is not None
        assert r.node.node_name == galera.node_name(i)
        assert r.node.cluster_status == "Primary"
        assert r.node.last_committed is not None and r.node.last_committed > 0
    # What a deterministic writer choice across proxy nodes can build on.
    assert len({r.node.cluster_state_uuid for r in results}) == 1
    assert sorted(r.node.local_index for r in results) == list(range(NODES))
    print(
        f"\ncheck latency: {', '.join(f'{r.duration * 1000:.1f}ms' for r in results)}",
        file=sys.stderr,
    )


async def test_desynced_node_is_out(galera: GaleraCluster) -> None:
    galera.sql(1, "SET GLOBAL wsrep_desync=ON")
    wait_local_state(galera, 1, 2)
    r = await galera_check(galera, 1)
    assert not r.passed
    assert r.status is CheckStatus.L7STS
    assert r.info == "wsrep_local_state=2 Donor/Desynced"
    # A node an operator desynced stays out even where SST donors are allowed.
    r = await galera_check(galera, 1, available_when_donor=True)
    assert not r.passed
    assert "wsrep_desync=ON" in r.info and "Donor/Desynced" in r.info
    # The others are untouched.
    assert (await galera_check(galera, 0)).passed
    galera.sql(1, "SET GLOBAL wsrep_desync=OFF")
    wait_local_state(galera, 1, 4)
    assert (await galera_check(galera, 1)).passed


async def test_read_only_node_is_out_unless_allowed(galera: GaleraCluster) -> None:
    galera.sql(2, "SET GLOBAL read_only=ON")
    # Setting read_only takes a global read lock: the node goes Donor/Desynced -> Joined ->
    # Synced for a moment. Judge the settled node.
    galera.wait_synced(2, timeout=10)
    r = await galera_check(galera, 2)
    assert not r.passed
    assert r.status is CheckStatus.L7STS
    assert r.info == "read_only=ON"
    r = await galera_check(galera, 2, available_when_readonly=True)
    assert r.passed
    assert r.status is CheckStatus.L7OKC
    assert "read_only=ON" in r.info
    galera.sql(2, "SET GLOBAL read_only=OFF")
    galera.wait_synced(2, timeout=10)
    assert (await galera_check(galera, 2)).status is CheckStatus.L7OK


async def test_reject_queries_is_out(galera: GaleraCluster) -> None:
    galera.sql(0, "SET GLOBAL wsrep_reject_queries=ALL")
    try:
        r = await galera_check(galera, 0)
    finally:
        galera.sql(0, "SET GLOBAL wsrep_reject_queries=NONE")
    assert not r.passed
    assert "wsrep_reject_queries=ALL" in r.info or "1047" in r.info, r.reason()


async def test_wrong_password_is_a_layer7_failure(galera: GaleraCluster) -> None:
    r = await check_galera(addr(galera, 0), user=CHECK_USER, password="wrong", timeout=2.0)
    assert not r.passed
    assert r.status is CheckStatus.L7STS
    assert r.info.startswith("1045 ")
    assert r.node is None


async def test_mysql_handshake(galera: GaleraCluster) -> None:
    r = await check_mysql_handshake(addr(galera, 0), timeout=CHECK_TIMEOUT)
    assert r.passed, r.reason()
    assert r.status is CheckStatus.L6OK
    assert "MariaDB" in r.info
    # Handshake-only checks drop the connection before login; many of them must not get
    # the checker's address blocked (max_connect_errors, 100 by default).
    for _ in range(120):
        r = await check_mysql_handshake(addr(galera, 0), timeout=CHECK_TIMEOUT)
        assert r.passed, r.reason()
    assert (await galera_check(galera, 0)).passed


async def test_frozen_node_fails_within_timeout(galera: GaleraCluster) -> None:
    galera.freeze(2)
    t0 = time.monotonic()
    r = await galera_check(galera, 2)
    elapsed = time.monotonic() - t0
    assert not r.passed
    assert r.status is CheckStatus.L7TOUT  # the kernel accepted; the server never spoke
    assert elapsed < CHECK_TIMEOUT + SLACK
    h = await check_mysql_handshake(addr(galera, 2), timeout=CHECK_TIMEOUT)
    assert h.status is CheckStatus.L6TOUT
    # More frozen checks than the pool has threads, all at once: the pool is released at
    # each deadline, so a check of a live node right after is not stuck behind them.
    frozen = await asyncio.gather(*(galera_check(galera, 2, timeout=0.5) for _ in range(12)))
    assert not any(f.passed for f in frozen)
    live = await galera_check(galera, 0)
    assert live.passed, live.reason()
    print(
        f"\nSIGSTOP detected in {elapsed * 1000:.0f}ms (timeout {CHECK_TIMEOUT}s)", file=sys.stderr
    )
    galera.thaw(2)
    galera.wait_synced(2, timeout=30)
    assert (await galera_check(galera, 2)).passed


async def test_killed_node_fails_fast_and_rejoins(galera: GaleraCluster) -> None:
    galera.kill(2)
    t0 = time.monotonic()
    r = await galera_check(galera, 2)
    elapsed = time.monotonic() - t0
    assert not r.passed
    assert r.status is CheckStatus.L4CON
    assert "refused" in r.info.lower()
    assert elapsed < CHECK_TIMEOUT
    # Survivors stay Primary and Synced (FACTS.md: they count 3 members for a while).
    for i in (0, 1):
        s = await galera_check(galera, i)
        assert s.passed, s.reason()
    took = galera.restart(2, timeout=60)
    r = await galera_check(galera, 2)
    assert r.passed, r.reason()
    assert r.node is not None and r.node.node_name == galera.node_name(2)
    print(
        f"\nSIGKILL detected in {elapsed * 1000:.1f}ms; node rejoined and Synced "
        f"{took:.1f}s after the restart call (eviction wait included)",
        file=sys.stderr,
    )
