"""System-test fixtures: a real 3-node MariaDB Galera cluster on loopback.

`galera_cluster` (session scope) starts the cluster once for the whole run; it skips with the
reason when the machine cannot run one (not root, mariadb-server / galera-4 / rsync missing)
and always tears down: every mariadbd it started is killed and its directory removed, on
success, failure, Ctrl-C (the atexit hook covers an interrupted session) alike.

`galera` (function scope) hands the same cluster to a test with all three nodes running,
thawed and Synced, and resets what tests change (read_only, wsrep_desync) afterwards, so
tests stay independent of each other's order.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.system.galera_cluster import (
    NODES,
    ClusterError,
    GaleraCluster,
    find_free_port_block,
    missing_requirements,
)


@pytest.fixture(scope="session")
def galera_cluster() -> Iterator[GaleraCluster]:
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(f"Galera cluster: {reason}")
    # Under /tmp, not tmp_path: user mysql must be able to enter every parent directory,
    # and pytest's /tmp/pytest-of-root is 0700.
    basedir = tempfile.mkdtemp(prefix="pylb-galera-", dir="/tmp")
    cluster: GaleraCluster | None = None
    try:
        cluster = GaleraCluster(basedir, find_free_port_block())
        atexit.register(cluster.cleanup)
        try:
            cluster.start()
        except ClusterError as e:
            pytest.fail(f"Galera cluster did not start:\n{e}", pytrace=False)
        t = cluster.timings
        print(
            f"\nGalera cluster up in {t['start']:.1f}s (install {t['install_db']:.1f}s, "
            f"node0 {t['node0']:.1f}s, node1 {t['node1']:.1f}s, node2 {t['node2']:.1f}s) "
            f"ports {cluster.base_port}..{cluster.base_port + 11}",
            file=sys.stderr,
        )
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
            atexit.unregister(cluster.cleanup)
        if os.environ.get("PYLB_GALERA_KEEP"):
            print(f"\nGalera cluster files kept in {basedir}", file=sys.stderr)
        else:
            shutil.rmtree(basedir, ignore_errors=True)


def _reset_globals(cluster: GaleraCluster) -> None:
    """Undo what tests change, only where changed: on a Galera node even a no-op
    `SET GLOBAL read_only=OFF` takes a global read lock, which desyncs the node and passes
    it through Joined for a moment (seen here), so blind resets would disturb the next test."""
    for i in cluster.running():
        with contextlib.suppress(Exception):
            (ro, desync), *_ = cluster.sql(i, "SELECT @@read_only, @@wsrep_desync", timeout=5)
            if ro:
                cluster.sql(i, "SET GLOBAL read_only=OFF", timeout=5)
            if desync:
                cluster.sql(i, "SET GLOBAL wsrep_desync=OFF", timeout=5)


def ensure_all_synced(cluster: GaleraCluster, timeout: float = 60.0) -> None:
    """Bring every node back: thaw frozen ones, restart dead ones, wait until Synced."""
    deadline = time.monotonic() + timeout
    for i in range(NODES):
        if cluster.is_frozen(i):
            cluster.thaw(i)
    for i in range(NODES):
        if cluster.pid(i) is None:
            cluster.restart(i, timeout=max(1.0, deadline - time.monotonic()))
    for i in range(NODES):
        cluster.wait_synced(i, timeout=max(1.0, deadline - time.monotonic()))


@pytest.fixture
def galera(galera_cluster: GaleraCluster) -> Iterator[GaleraCluster]:
    try:
        ensure_all_synced(galera_cluster)
    except ClusterError as e:
        pytest.fail(f"Galera cluster not healthy before the test:\n{e}", pytrace=False)
    try:
        yield galera_cluster
    finally:
        for i in range(NODES):
            if galera_cluster.is_frozen(i):
                galera_cluster.thaw(i)
        _reset_globals(galera_cluster)
        # The next test's setup waits until every node is Synced again.
