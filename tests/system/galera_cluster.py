"""A real 3-node MariaDB Galera cluster on loopback, for system tests.

Why a real cluster: a Galera-aware check is only as good as its reading of the states a real
node goes through (Joining, Donor/Desynced, non-Primary, frozen, killed), and those states
cannot be faked faithfully. The facts this relies on were measured on the target machines
(see FACTS.md): mariadbd must run as `mysql` with datadirs owned by it (or rsync SST fails
with "Permission denied"), node 1 bootstraps with `--wsrep-new-cluster`, and every node
needs its own client, gmcast, IST and SST ports.

Every wait is bounded by a deadline, every process runs in its own process group (so the
SST helpers die with their node), and `stop()` is safe to call at any point, twice.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"

NODES = 3
PORTS_PER_NODE = 4  # client, gmcast, IST, SST
ADMIN_USER = "pylbadmin"
ADMIN_PASSWORD = "pylb-admin-pw"
CHECK_USER = "clustercheck"
CHECK_PASSWORD = "pylb-check-pw"
TEST_DB = "pylbtest"
TEST_TABLE = "t"

# Outside Linux's default ephemeral range (32768-60999) so a port we probed free is not
# handed to somebody's connect() a moment later.
PORT_RANGE = (21000, 32000)


class ClusterError(RuntimeError):
    """The cluster could not reach the asked state; the message carries the log tail."""


def missing_requirements() -> str | None:
    """Why a real cluster cannot run here, or None. Used by the fixture to skip clearly."""
    if os.geteuid() != 0:
        return "needs root (mariadbd is started as user mysql)"
    for path in (MARIADBD, INSTALL_DB, GALERA_PROVIDER):
        if not os.path.exists(path):
            return f"{path} missing (apt-get install mariadb-server galera-4 rsync)"
    if shutil.which("rsync") is None:
        return "rsync missing (needed for SST)"
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return "no user mysql (installed by mariadb-server)"
    return None


def _port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def find_free_port_block(count: int = NODES * PORTS_PER_NODE, start: int | None = None) -> int:
    """First port of `count` consecutive ports all free on 127.0.0.1.

    The start is spread by pid so two concurrent test runs rarely probe the same block.
    """
    lo, hi = PORT_RANGE
    span = hi - lo - count
    first = start if start is not None else lo + (os.getpid() * 37) % span
    for attempt in range(span // count):
        base = lo + (first - lo + attempt * count) % span
        if all(_port_free(p) for p in range(base, base + count)):
            return base
    raise ClusterError(f"no {count} consecutive free ports in {lo}-{hi}")


def _traversable_by(path: Path, uid: int, gid: int) -> Path | None:
    """The first ancestor of `path` that user uid/gid cannot enter, or None."""
    for p in [*reversed(path.parents), path]:
        st = p.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return p
    return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True, slots=True)
class NodePorts:
    client: int
    gmcast: int
    ist: int
    sst: int


class GaleraCluster:
    """Three mariadbd processes forming one Galera cluster on 127.0.0.1.

    Nodes are numbered 0, 1, 2; node 0 bootstraps. `sql()` connects over TCP as an admin
    user; `CHECK_USER` (USAGE + PROCESS) is what health checks should use.
    """

    def __init__(self, basedir: str | os.PathLike[str], base_port: int) -> None:
        self.basedir = Path(basedir)
        self.base_port = base_port
        self.ports = tuple(
            NodePorts(*range(base_port + PORTS_PER_NODE * i, base_port + PORTS_PER_NODE * (i + 1)))
            for i in range(NODES)
        )
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * NODES
        self._frozen: set[int] = set()
        self._mysql = pwd.getpwnam("mysql")
        self.timings: dict[str, float] = {}
        # False until the admin user exists: then every login goes over TCP.
        self._ready_for_tcp = False

    # -- paths ---------------------------------------------------------------------------

    def node_dir(self, i: int) -> Path:
        return self.basedir / f"n{i}"

    def datadir(self, i: int) -> Path:
        return self.node_dir(i) / "data"

    def cnf(self, i: int) -> Path:
        return self.node_dir(i) / "my.cnf"

    def error_log(self, i: int) -> Path:
        return self.node_dir(i) / "error.log"

    def stderr_log(self, i: int) -> Path:
        return self.node_dir(i) / "stderr.log"

    def socket_path(self, i: int) -> Path:
        return self.node_dir(i) / "mysqld.sock"

    def node_port(self, i: int) -> int:
        return self.ports[i].client

    def node_name(self, i: int) -> str:
        return f"node{i}"

    def is_frozen(self, i: int) -> bool:
        return i in self._frozen

    def pid(self, i: int) -> int | None:
        p = self._procs[i]
        return p.pid if p is not None and p.poll() is None else None

    def diagnostics(self, i: int, lines: int = 40) -> str:
        return (
            f"--- node{i} error log ({self.error_log(i)}) ---\n{_tail(self.error_log(i), lines)}\n"
            f"--- node{i} stderr ---\n{_tail(self.stderr_log(i), lines // 2)}"
        )

    # -- setup ---------------------------------------------------------------------------

    def _write_cnf(self, i: int) -> None:
        gcomm = ",".join(f"127.0.0.1:{p.gmcast}" for p in self.ports)
        p = self.ports[i]
        provider_options = ";".join(
            [
                f"gmcast.listen_addr=tcp://127.0.0.1:{p.gmcast}",
                f"ist.recv_addr=127.0.0.1:{p.ist}",
                "gcache.size=32M",
            ]
        )
        # Tiny buffers: three nodes share a 2-core test VM with the rest of the suite.
        self.cnf(i).write_text(
            f"""[mysqld]
user=mysql
datadir={self.datadir(i)}
socket={self.socket_path(i)}
pid-file={self.node_dir(i)}/mysqld.pid
log-error={self.error_log(i)}
port={p.client}
bind-address=127.0.0.1
skip-name-resolve
performance_schema=OFF
innodb_buffer_pool_size=32M
innodb_log_file_size=16M
innodb_log_buffer_size=4M
innodb_flush_log_at_trx_commit=2
key_buffer_size=1M
max_connections=200
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider={GALERA_PROVIDER}
wsrep_cluster_name=pylb-test-{self.base_port}
wsrep_cluster_address=gcomm://{gcomm}
wsrep_node_name={self.node_name(i)}
wsrep_node_address=127.0.0.1:{p.gmcast}
wsrep_provider_options="{provider_options}"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:{p.sst}
wsrep_slave_threads=1

[mariadb-install-db]
"""
        )

    def _chown_tree(self, root: Path) -> None:
        uid, gid = self._mysql.pw_uid, self._mysql.pw_gid
        os.chown(root, uid, gid)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, gid)

    def _prepare(self) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.basedir, 0o755)
        blocked = _traversable_by(self.basedir, self._mysql.pw_uid, self._mysql.pw_gid)
        if blocked is not None:
            raise ClusterError(
                f"user mysql cannot enter {blocked}: put the cluster under /tmp "
                f"(tempfile.mkdtemp) or chmod o+x {blocked}"
            )
        for i in range(NODES):
            self.node_dir(i).mkdir(exist_ok=True)
            self._write_cnf(i)
        self._chown_tree(self.basedir)
        # One install, copied: the joiners' data is replaced by SST anyway, and
        # mariadb-install-db costs about a second each.
        t0 = time.monotonic()
        res = subprocess.run(
            [
                INSTALL_DB,
                f"--defaults-file={self.cnf(0)}",
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise ClusterError(
                f"mariadb-install-db failed ({res.returncode}):\n"
                f"{res.stdout.decode(errors='replace')[-2000:]}\n"
                f"{res.stderr.decode(errors='replace')[-2000:]}"
            )
        for i in range(1, NODES):
            shutil.copytree(self.datadir(0), self.datadir(i), symlinks=True)
        self._chown_tree(self.basedir)
        self.timings["install_db"] = time.monotonic() - t0

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, i: int, *, bootstrap: bool = False) -> None:
        if self.pid(i) is not None:
            raise ClusterError(f"node{i} is already running (pid {self.pid(i)})")
        args = [MARIADBD, f"--defaults-file={self.cnf(i)}"]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        with open(self.stderr_log(i), "ab") as err:
            # Own session: kill() takes the node's SST helpers (rsync, the sst script)
            # with it, as a crash of the machine would.
            self._procs[i] = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        self._frozen.discard(i)

    def _status(self, conn: pymysql.connections.Connection) -> dict[str, str]:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_%'")
            return {str(k): str(v) for k, v in cur.fetchall()}

    def wait_synced(self, i: int, timeout: float = 60.0) -> float:
        """Wait until node i is Synced (wsrep_local_state 4, wsrep_ready ON) and accepts
        TCP logins; returns the seconds waited. Fails early, with the log tail, if the
        process dies."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = "no answer yet"
        while True:
            proc = self._procs[i]
            if proc is None or proc.poll() is not None:
                rc = None if proc is None else proc.returncode
                raise ClusterError(f"node{i} is not running (exit {rc})\n{self.diagnostics(i)}")
            try:
                conn = self._connect(i, timeout=2.0, via_socket=not self._ready_for_tcp)
                try:
                    st = self._status(conn)
                finally:
                    conn.close()
                last = (
                    f"wsrep_local_state={st.get('wsrep_local_state')} "
                    f"({st.get('wsrep_local_state_comment')}), ready={st.get('wsrep_ready')}, "
                    f"status={st.get('wsrep_cluster_status')}"
                )
                if (
                    st.get("wsrep_local_state") == "4"
                    and st.get("wsrep_ready") == "ON"
                    and st.get("wsrep_cluster_status") == "Primary"
                ):
                    return time.monotonic() - t0
            except pymysql.err.MySQLError as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"node{i} not Synced after {timeout:.0f}s (last: {last})\n{self.diagnostics(i)}"
                )
            time.sleep(0.1)  # polling a condition with a deadline

    def _connect(
        self, i: int, *, timeout: float = 5.0, via_socket: bool = False, **kw: Any
    ) -> pymysql.connections.Connection:
        if via_socket:
            # Before the admin user exists: root over the unix socket (unix_socket auth).
            return pymysql.connect(
                unix_socket=str(self.socket_path(i)),
                user="root",
                connect_timeout=timeout,
                read_timeout=timeout,
                write_timeout=timeout,
                autocommit=True,
                ssl_disabled=True,  # no per-connect SSL context (~45 ms of CPU)
                **kw,
            )
        return pymysql.connect(
            host="127.0.0.1",
            port=self.node_port(i),
            user=ADMIN_USER,
            password=ADMIN_PASSWORD,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
            ssl_disabled=True,
            **kw,
        )

    def _bootstrap_sql(self) -> None:
        admin, check = f"'{ADMIN_USER}'@'127.0.0.1'", f"'{CHECK_USER}'@'127.0.0.1'"
        stmts = [
            f"CREATE USER IF NOT EXISTS {admin} IDENTIFIED BY '{ADMIN_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON *.* TO {admin} WITH GRANT OPTION",
            f"CREATE USER IF NOT EXISTS {check} IDENTIFIED BY '{CHECK_PASSWORD}'",
            # USAGE is enough for SHOW STATUS and SHOW VARIABLES; PROCESS as clustercheck asks.
            f"GRANT PROCESS ON *.* TO {check}",
            f"CREATE DATABASE IF NOT EXISTS {TEST_DB}",
            f"CREATE TABLE IF NOT EXISTS {TEST_DB}.{TEST_TABLE} ("
            "id BIGINT PRIMARY KEY, node VARCHAR(64) NOT NULL, "
            "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
        ]
        conn = self._connect(0, via_socket=True)
        try:
            with conn.cursor() as cur:
                for s in stmts:
                    cur.execute(s)
        finally:
            conn.close()
        self._ready_for_tcp = True

    def start(self, timeout: float = 90.0) -> None:
        """Initialise the datadirs, bootstrap node 0, join nodes 1 and 2 one by one."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            self._prepare()
            self._spawn(0, bootstrap=True)
            self.wait_synced(0, timeout=max(1.0, deadline - time.monotonic()))
            self._bootstrap_sql()
            self.timings["node0"] = time.monotonic() - t0
            # One joiner at a time: node 0 is the only possible rsync donor at first, and a
            # donor serves one SST at a time.
            for i in range(1, NODES):
                self._spawn(i)
                self.wait_synced(i, timeout=max(1.0, deadline - time.monotonic()))
                self.timings[f"node{i}"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0

    def _signal(self, i: int, sig: int) -> None:
        proc = self._procs[i]
        if proc is None or proc.poll() is not None:
            raise ClusterError(f"node{i} is not running")
        # The node's own process group: mariadbd and its SST helpers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def kill(self, i: int, timeout: float = 10.0) -> None:
        """SIGKILL node i (a crash) and reap it."""
        proc = self._procs[i]
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            # mariadbd gone but helpers of its group may remain.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
        self._frozen.discard(i)

    def freeze(self, i: int) -> None:
        """SIGSTOP node i: its kernel still accepts TCP connections, nothing answers."""
        self._signal(i, signal.SIGSTOP)
        self._frozen.add(i)

    def thaw(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)
        self._frozen.discard(i)

    def running(self) -> list[int]:
        """Nodes whose process is alive and not frozen."""
        return [i for i in range(NODES) if self.pid(i) is not None and i not in self._frozen]

    def wait_cluster_size(self, size: int, timeout: float = 30.0) -> float:
        """Wait until every running node reports wsrep_cluster_size == size; returns the
        seconds waited. After a crash the survivors keep counting the dead node until
        `evs.suspect_timeout` (5 s by default) evicts it."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        sizes: dict[int, str] = {}
        while True:
            for j in self.running():
                try:
                    sizes[j] = self.status(j, timeout=2.0).get("wsrep_cluster_size", "?")
                except pymysql.err.MySQLError as e:
                    sizes[j] = f"{type(e).__name__}"
            if sizes and all(v == str(size) for j, v in sizes.items() if j in self.running()):
                return time.monotonic() - t0
            if time.monotonic() >= deadline:
                raise ClusterError(f"cluster size not {size} after {timeout:.0f}s: {sizes}")
            time.sleep(0.1)  # polling a condition with a deadline

    def restart(self, i: int, timeout: float = 60.0) -> float:
        """Kill node i if running, start it again (joining the cluster, never bootstrapping),
        wait until Synced. Returns the seconds from the call until Synced.

        The new incarnation listens on the old gmcast address: if it starts before the group
        has evicted the old one, it is refused until the old one is gone, and the join takes
        15-20 s instead of about 5. So wait for the eviction first.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.kill(i)
        self.wait_cluster_size(len(self.running()), timeout=max(1.0, deadline - time.monotonic()))
        # A crashed node's grastate says seqno -1: it rejoins through IST or SST.
        self._spawn(i)
        self.wait_synced(i, timeout=max(1.0, deadline - time.monotonic()))
        return time.monotonic() - t0

    def stop(self) -> None:
        """Kill every node and every process still running from our basedir; idempotent.

        No graceful shutdown: the data is thrown away, and SIGKILL cannot hang.
        """
        for i, proc in enumerate(self._procs):
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            self._frozen.discard(i)
        # Helpers that left our process groups (rsync daemons double-fork) but still name
        # our basedir on their command line.
        for pid in self._stray_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _stray_pids(self) -> Iterator[int]:
        marker = str(self.basedir).encode()
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                yield int(entry)

    def cleanup(self) -> None:
        """stop() and remove the basedir."""
        self.stop()
        shutil.rmtree(self.basedir, ignore_errors=True)

    # -- SQL -----------------------------------------------------------------------------

    def sql(
        self, i: int, query: str, args: Sequence[Any] | None = None, timeout: float = 10.0
    ) -> list[tuple[Any, ...]]:
        """Run one statement on node i over TCP as the admin user (autocommit); rows."""
        conn = self._connect(i, timeout=timeout)
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def status(self, i: int, timeout: float = 10.0) -> dict[str, str]:
        """All wsrep_% status variables of node i."""
        rows = self.sql(i, "SHOW GLOBAL STATUS LIKE 'wsrep_%'", timeout=timeout)
        return {str(k): str(v) for k, v in rows}

    def __enter__(self) -> GaleraCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
