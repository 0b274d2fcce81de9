"""writer-pin on a real 3-node MariaDB Galera cluster (issue 5): one writer, fast failover,
no lost acknowledged write, no two nodes taking pylb's connections at once.

pylb runs in-process, in its own thread and event loop (uvloop), built as the worker
builds it: Backend + HealthChecker (native galera check, inter 250 ms) + `create_server(
TcpFrontend)`. The clients are blocking PyMySQL connections in threads, as an application.

Printed figures (run with -s): time from the writer's SIGKILL to the first new connection +
SELECT through pylb, and to the first acknowledged INSERT (bounded by Galera's own eviction
of the dead node, about 5 s: FACTS.md); time from SIGSTOP to the first answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest
import uvloop

from pylb.config.model import Address, CheckParams, Health, Listen, ServerConf, Timeouts
from pylb.galera.peers import PeerSync
from pylb.galera.writer import WriterController, set_writer
from pylb.health.scheduler import HealthChecker
from pylb.proxy.accesslog import AccessLog
from pylb.proxy.backend import Backend
from pylb.proxy.state import ListenContext, WorkerState
from pylb.proxy.tcp import TcpFrontend
from tests.system.galera_cluster import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    CHECK_PASSWORD,
    CHECK_USER,
    NODES,
    TEST_DB,
    TEST_TABLE,
    GaleraCluster,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

APP_USER = "pylbapp"  # only ever connects through pylb: what the sampler counts
APP_PASSWORD = "pylb-app-pw"
PEER_KEY = b"pylb-test-peers-key"
# A sample of PROCESSLIST taken this long after the writer change was reported may still
# show the old writer's threads: mysqld notices the closed connection when it next reads.
CLOSING_INSTANT = 0.3


# -- pylb in a thread ----------------------------------------------------------------------


def writer_listen(cluster: GaleraCluster, *, failback: bool = False) -> Listen:
    return Listen(
        name="mysql",
        binds=(Address("127.0.0.1", 0),),
        servers=tuple(
            ServerConf(
                name=cluster.node_name(i), address=Address("127.0.0.1", cluster.node_port(i))
            )
            for i in range(NODES)
        ),
        mode="tcp",
        balance="writer-pin",
        failback=failback,
        retries=3,
        redispatch=True,
        # A short connect timeout: a frozen host is given up quickly.
        timeout=Timeouts(connect=0.5, client=60.0, server=60.0, tunnel=60.0),
        health=Health(
            type="galera",
            user=CHECK_USER,
            password=CHECK_PASSWORD,
            params=CheckParams(
                inter=0.25, fastinter=0.25, downinter=0.5, rise=2, fall=2, timeout=0.5
            ),
        ),
    )


class Pylb:
    """One pylb node (one writer-pin listener) running in its own thread and loop."""

    def __init__(self, conf: Listen, name: str = "pylb") -> None:
        self.conf = conf
        self.name = name
        self.port = 0
        self.backend: Backend | None = None
        self.peers: PeerSync | None = None
        self.peer_port = 0
        # (monotonic time, old, new, reason) of every writer change, appended in the loop.
        self.changes: list[tuple[float, str | None, str | None, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._peer_addresses: list[Address] | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)

    def start(self, peer_addresses: list[Address] | None = None) -> Pylb:
        self._peer_addresses = peer_addresses
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"{self.name} did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        loop = self._loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # reported by start() / stop()
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        worker = WorkerState(loop=loop, access_log=AccessLog())
        self.backend = backend = Backend(self.conf)
        ctl: WriterController = backend.writer
        ctl.hooks.append(self._record)
        ctx = ListenContext(conf=self.conf, backend=backend, worker=worker)
        server = await loop.create_server(lambda: TcpFrontend(ctx), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        checker = HealthChecker(backend)
        checker.start(loop)
        if self._peer_addresses is not None:
            self.peers = PeerSync(
                {backend.name: ctl},
                node=self.name,
                bind=Address("127.0.0.1", 0),
                peers=self._peer_addresses,
                key=PEER_KEY,
                interval=0.2,
            )
            await self.peers.start(loop)
            self.peer_port = self.peers.address.port
            await self.peers.wait_synced(1.0)  # as a worker would, before serving
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            if self.peers is not None:
                self.peers.stop()
            checker.stop()
            await checker.wait_stopped()
            server.close()
            for conn in list(worker.connections):
                conn.abort()
            await server.wait_closed()

    def _record(self, ctl: Any, old: Any, new: Any, reason: str) -> None:
        self.changes.append((time.monotonic(), old and old.name, new and new.name, reason))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the loop thread (pylb state is loop-thread only) and return its result."""
        assert self._loop is not None

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    @property
    def writer(self) -> str | None:
        def get() -> str | None:
            w = self.backend.writer.writer
            return w.name if w is not None else None

        return self.call(get)

    def up(self, name: str) -> bool:
        return self.call(lambda: self.backend.server(name).oper_up)

    def checked(self) -> bool:
        """Every server has had its first check, and all passed."""
        return self.call(
            lambda: all(
                s.check_status is not None and s.check_status.passed for s in self.backend.servers
            )
        )

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def running(*nodes: Pylb) -> Iterator[None]:
    try:
        yield
    finally:
        for p in nodes:
            p.stop()


def wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `cond` until true (a condition with a deadline); returns the seconds waited."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def start_pylb(cluster: GaleraCluster, **kw: Any) -> Pylb:
    name = kw.pop("name", "pylb")
    peers = kw.pop("peers", None)
    p = Pylb(writer_listen(cluster, **kw), name=name).start(peers)
    try:
        wait(p.checked, 10, "first galera checks pass")
    except BaseException:
        p.stop()
        raise
    return p


# -- clients -----------------------------------------------------------------------------


def app_connect(port: int, timeout: float = 2.0, read_timeout: float = 15.0) -> Any:
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=APP_USER,
        password=APP_PASSWORD,
        database=TEST_DB,
        connect_timeout=timeout,
        read_timeout=read_timeout,
        write_timeout=read_timeout,
        autocommit=True,
        ssl_disabled=True,
    )


def admin_connect(cluster: GaleraCluster, i: int, timeout: float = 2.0) -> Any:
    return pymysql.connect(
        host="127.0.0.1",
        port=cluster.node_port(i),
        user=ADMIN_USER,
        password=ADMIN_PASSWORD,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        autocommit=True,
        ssl_disabled=True,
    )


@pytest.fixture(scope="module")
def app_user(galera_cluster: GaleraCluster) -> str:
    """An application user (created once; DDL replicates to every node)."""
    for stmt in (
        f"CREATE USER IF NOT EXISTS '{APP_USER}'@'127.0.0.1' IDENTIFIED BY '{APP_PASSWORD}'",
        f"GRANT ALL PRIVILEGES ON {TEST_DB}.* TO '{APP_USER}'@'127.0.0.1'",
    ):
        galera_cluster.sql(0, stmt)
    return APP_USER


class Workers:
    """`n` threads doing autocommit INSERTs with unique ids through pylb, reconnecting on
    any error. `acked` holds (id, monotonic time) of every INSERT the server acknowledged."""

    def __init__(self, port: int, n: int = 3) -> None:
        self.port = port
        self.base = (int(time.time() * 1000) % 10**9) * 10**6
        self.acked: list[tuple[int, float]] = []
        self.errors: list[tuple[float, str]] = []
        self.stop_ev = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(k,), daemon=True) for k in range(n)
        ]

    def __enter__(self) -> Workers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_ev.set()
        for t in self.threads:
            t.join(20)

    def _loop(self, k: int) -> None:
        conn = None
        n = 0
        while not self.stop_ev.is_set() and n < 10**5:
            row_id = self.base + k * 10**5 + n
            n += 1
            try:
                if conn is None:
                    conn = app_connect(self.port)
                with conn.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO {TEST_TABLE} (id, node) VALUES (%s, @@wsrep_node_name)",
                        (row_id,),
                    )
                self.acked.append((row_id, time.monotonic()))
            except (pymysql.err.MySQLError, OSError) as e:
                self.errors.append((time.monotonic(), f"{type(e).__name__}: {e}"))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                self.stop_ev.wait(0.02)  # pace reconnects while nothing answers
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class Prober:
    """A thread opening a NEW connection through pylb and running a SELECT, over and over:
    (start, end, node or None) per attempt."""

    def __init__(self, port: int, read_timeout: float = 1.0) -> None:
        self.port = port
        self.read_timeout = read_timeout
        self.results: list[tuple[float, float, str | None]] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_ev.set()
        self.thread.join(10)

    def _loop(self) -> None:
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            node = None
            try:
                conn = app_connect(self.port, timeout=2.0, read_timeout=self.read_timeout)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT @@wsrep_node_name")
                        node = cur.fetchone()[0]
                finally:
                    conn.close()
            except (pymysql.err.MySQLError, OSError):
                pass
            self.results.append((t0, time.monotonic(), node))
            self.stop_ev.wait(0.02)

    def first_success_after(self, t: float) -> tuple[float, str] | None:
        for t0, t1, node in self.results:
            if t0 >= t and node is not None:
                return t1, node
        return None


class Sampler:
    """Every ~50 ms, on every node, through a separate admin connection: how many
    connections of the application user are there. (start time, {node: count or None})."""

    def __init__(self, cluster: GaleraCluster, user: str) -> None:
        self.cluster = cluster
        self.user = user
        self.samples: list[tuple[float, dict[int, int | None]]] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.conns: dict[int, Any] = {}

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_ev.set()
        self.thread.join(10)
        for c in self.conns.values():
            with contextlib.suppress(Exception):
                c.close()

    def _count(self, i: int) -> int | None:
        try:
            conn = self.conns.get(i)
            if conn is None:
                conn = self.conns[i] = admin_connect(self.cluster, i, timeout=1.0)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER=%s",
                    (self.user,),
                )
                return int(cur.fetchone()[0])
        except (pymysql.err.MySQLError, OSError):
            c = self.conns.pop(i, None)
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()
            return None

    def _loop(self) -> None:
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            counts = {i: self._count(i) for i in range(NODES) if i in self.cluster.running()}
            self.samples.append((t0, counts))
            self.stop_ev.wait(0.05)

    def check_one_node_after(self, t_switch: float, new_writer: int) -> int:
        """No sample taken after the switch (+ the closing instant) shows application
        connections on two nodes; returns how many samples saw the new writer in use."""
        seen_new = 0
        for t0, counts in self.samples:
            if t0 < t_switch + CLOSING_INSTANT:
                continue
            busy = sorted(i for i, c in counts.items() if c)
            assert len(busy) <= 1, f"connections on nodes {busy} at +{t0 - t_switch:.3f}s"
            if busy == [new_writer]:
                seen_new += 1
        return seen_new


def rows_present(cluster: GaleraCluster, i: int, lo: int, hi: int) -> dict[int, str]:
    """{id: node} of rows with lo <= id < hi on node i, after it applied everything
    committed before (wsrep_sync_wait)."""
    conn = admin_connect(cluster, i, timeout=10.0)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait=1")
            cur.execute(
                f"SELECT id, node FROM {TEST_DB}.{TEST_TABLE} WHERE id >= %s AND id < %s",
                (lo, hi),
            )
            return {int(r[0]): str(r[1]) for r in cur.fetchall()}
    finally:
        conn.close()


def assert_closed(conn: Any) -> None:
    """The session was closed by pylb: the next statement fails."""
    with pytest.raises((pymysql.err.OperationalError, pymysql.err.InterfaceError)):  # noqa: SIM117
        with conn.cursor() as cur:
            cur.execute("SELECT 1")


# -- tests -------------------------------------------------------------------------------


def test_sixty_connections_land_on_one_node(galera: GaleraCluster, app_user: str) -> None:
    p = start_pylb(galera)
    with running(p):
        assert p.writer == "node0"
        conns = [app_connect(p.port) for _ in range(60)]
        try:
            names = set()
            for c in conns:
                with c.cursor() as cur:
                    cur.execute("SELECT @@wsrep_node_name")
                    names.add(cur.fetchone()[0])
            assert names == {"node0"}
            assert p.call(lambda: len(p.backend.server("node0").sessions)) == 60
        finally:
            for c in conns:
                c.close()


def test_writer_sigkill_during_inserts_loses_nothing(galera: GaleraCluster, app_user: str) -> None:
    p = start_pylb(galera)
    with running(p), Sampler(galera, app_user) as sampler:
        with Workers(p.port) as w, Prober(p.port) as probe:
            wait(lambda: len(w.acked) >= 30, 10, "inserts flowing")
            t_kill = time.monotonic()
            galera.kill(0)
            wait(lambda: any(t > t_kill + 0.5 for _, t in w.acked), 20, "inserts after the kill")
            wait(lambda: probe.first_success_after(t_kill) is not None, 5, "a new connection")
        acked = dict(w.acked)
        rows = rows_present(galera, 1, w.base, w.base + 10**6)
        lost = sorted(set(acked) - set(rows))
        assert not lost, f"{len(lost)} acknowledged INSERTs lost: {lost[:10]}"
        first_insert = min(t for i, t in acked.items() if t > t_kill and rows[i] != "node0")
        t_select, node = probe.first_success_after(t_kill)
        (t_change, old, new, reason) = next(c for c in p.changes if c[0] > t_kill)
        assert (old, new) == ("node0", "node1")
        print(
            f"\nwriter SIGKILL: writer moved after {t_change - t_kill:.3f}s ({reason}); "
            f"first new connection + SELECT after {t_select - t_kill:.3f}s (on {node}); "
            f"first INSERT acknowledged after {first_insert - t_kill:.3f}s; "
            f"{len(acked)} INSERTs acknowledged, 0 lost, {len(w.errors)} client errors",
            file=sys.stderr,
        )
        assert node == "node1"
        assert t_select - t_kill < 1.0  # the proxy's part (issue 5 point 3)
        # Writes wait for Galera to evict the dead node, not for pylb: usually
        # evs.suspect_timeout (5 s; 6 s seen), at worst evs.inactive_timeout (15 s by
        # default; 11 s seen once on a loaded run). The bound is Galera's, with slack.
        assert first_insert - t_kill < 20.0
        assert sampler.check_one_node_after(t_change, 1) > 0


@pytest.mark.parametrize("setting", ["wsrep_desync", "read_only"])
def test_desynced_or_read_only_writer_is_replaced_and_its_sessions_closed(
    galera: GaleraCluster, app_user: str, setting: str
) -> None:
    p = start_pylb(galera)
    with running(p), Sampler(galera, app_user) as sampler:
        with Workers(p.port, n=2) as w:
            wait(lambda: len(w.acked) >= 20, 10, "inserts flowing")
            idle = app_connect(p.port)  # an idle session on the writer: must be closed too
            t0 = time.monotonic()
            galera.sql(0, f"SET GLOBAL {setting}=ON")
            wait(lambda: p.writer == "node1", 10, f"writer moves off node0 ({setting})")
            t_change = next(c[0] for c in p.changes if c[0] > t0)
            wait(lambda: any(t > t_change + 1.0 for _, t in w.acked), 10, "inserts on node1")
            print(
                f"\n{setting}=ON: writer moved after {t_change - t0:.3f}s",
                file=sys.stderr,
            )
        assert_closed(idle)
        idle.close()
        assert sampler.check_one_node_after(t_change, 1) > 0
        rows = rows_present(galera, 1, w.base, w.base + 10**6)
        assert not set(dict(w.acked)) - set(rows)
        # Back in rotation (after `rise` checks), but no failback: the writer stays.
        galera.sql(0, f"SET GLOBAL {setting}=OFF")
        galera.wait_synced(0, timeout=15)
        wait(lambda: p.up("node0"), 10, "node0 back up in pylb")
        assert p.writer == "node1"
        assert p.call(lambda: p.backend.pick().name) == "node1"


def test_manual_switch_under_load(galera: GaleraCluster, app_user: str) -> None:
    """`set writer` with INSERTs running: the old writer, alive and well, keeps no
    application connection once the switch is reported."""
    p = start_pylb(galera)
    with running(p), Sampler(galera, app_user) as sampler:
        with Workers(p.port, n=3) as w:
            wait(lambda: len(w.acked) >= 20, 10, "inserts flowing")
            answer = p.call(lambda: set_writer(p.backend, "node2"))
            t_switch = time.monotonic()
            assert answer.startswith("mysql: writer is now node2 (was node0); ")
            wait(lambda: any(t > t_switch + 1.0 for _, t in w.acked), 10, "inserts on node2")
        assert sampler.check_one_node_after(t_switch, 2) > 0
        rows = rows_present(galera, 2, w.base, w.base + 10**6)
        assert not set(dict(w.acked)) - set(rows)
        after = {rows[i] for i, t in w.acked if t > t_switch + CLOSING_INSTANT}
        assert after == {"node2"}


def test_killed_writer_rejoins_failback_only_when_configured_and_peers_agree(
    galera: GaleraCluster, app_user: str
) -> None:
    """Three pylb nodes on one cluster: A and B (failback false) sync their writer as
    peers, F has failback true. After the writer's crash all move; after its rejoin only F
    moves back; a fresh pylb C started then (same config, same health view) adopts the
    writer A and B use instead of the first server in order."""
    a = start_pylb(galera, name="A", peers=[])
    b = start_pylb(galera, name="B", peers=[Address("127.0.0.1", a.peer_port)])
    f = start_pylb(galera, failback=True, name="F")
    c: Pylb | None = None
    try:
        a.call(lambda: a.peers.add_peer(Address("127.0.0.1", b.peer_port)))
        assert a.writer == b.writer == f.writer == "node0"
        t_kill = time.monotonic()
        galera.kill(0)
        for p in (a, b, f):
            wait(lambda p=p: p.writer == "node1", 5, f"{p.name}: writer node1")
        print(f"\nall three moved within {time.monotonic() - t_kill:.3f}s", file=sys.stderr)
        # F holds a session on node1: failback closes it.
        held = app_connect(f.port)
        took = galera.restart(0, timeout=60)
        for p in (a, b, f):
            wait(lambda p=p: p.up("node0"), 10, f"{p.name}: node0 back up")
        wait(lambda: f.writer == "node0", 5, "F fails back to node0")
        # No failback by default. (The rejoin's IST/SST donor is Donor/Desynced for a
        # moment and leaves the rotation too: A and B may have moved to the third node.)
        in_use = a.writer
        assert in_use in ("node1", "node2") and b.writer == in_use
        assert_closed(held)
        held.close()
        print(f"node0 rejoined after {took:.1f}s; F failed back; A, B on {in_use}", file=sys.stderr)
        # A fresh pylb node (e.g. restarted, then taking over the VIP): by order alone it
        # would choose node0; its peer tells it the writer in use.
        c = start_pylb(galera, name="C", peers=[Address("127.0.0.1", a.peer_port)])
        wait(lambda: c.writer == in_use, 3, f"fresh C adopts {in_use} from its peer")
        assert a.writer == b.writer == in_use
        with contextlib.closing(app_connect(c.port)) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@wsrep_node_name")
            assert cur.fetchone()[0] == in_use
        # A manual switch on one node is followed by its peers.
        other = "node2" if in_use == "node1" else "node1"
        a.call(lambda: set_writer(a.backend, other))
        for p in (a, b, c):
            wait(lambda p=p: p.writer == other, 3, f"{p.name} follows the manual switch")
    finally:
        for p in (a, b, f, c):
            if p is not None:
                p.stop()


def test_frozen_writer_is_replaced(galera: GaleraCluster, app_user: str) -> None:
    """SIGSTOP: the kernel still accepts connections and nothing answers; the galera check
    times out (0.5 s) and after `fall` of them the writer moves. Thawed before Galera
    evicts it, the node comes back into rotation but not as the writer."""
    p = start_pylb(galera)
    with running(p), Prober(p.port, read_timeout=1.0) as probe:
        wait(lambda: probe.first_success_after(0) is not None, 5, "probe works")
        t_freeze = time.monotonic()
        galera.freeze(0)
        try:
            wait(lambda: p.writer == "node1", 4, "writer moves off the frozen node")
            t_change = p.changes[-1][0]
            wait(lambda: probe.first_success_after(t_change) is not None, 3, "new connection")
            t_ok, node = probe.first_success_after(t_change)
        finally:
            galera.thaw(0)
        print(
            f"\nwriter SIGSTOP: writer moved after {t_change - t_freeze:.3f}s, first new "
            f"connection + SELECT answered {t_ok - t_freeze:.3f}s after the freeze (on {node})",
            file=sys.stderr,
        )
        assert node == "node1"
        wait(lambda: p.up("node0"), 15, "node0 back up")
        assert p.writer == "node1"


def test_sessions_registry_cleared(galera: GaleraCluster, app_user: str) -> None:
    """Sessions closed by any route leave no trace in the per-server registry."""
    p = start_pylb(galera)
    with running(p):
        for _ in range(5):
            with contextlib.closing(app_connect(p.port)) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        wait(
            lambda: p.call(lambda: all(not s.sessions for s in p.backend.servers)),
            5,
            "registry empty",
        )
