"""writer-pin as an operator runs it: the real `pylb run` process (master + 2 workers) in
front of the real 3-node Galera cluster, a galera check reading its password from a
`password_file`, the admin socket through `pylb ctl`, and a SIGHUP reload.

Printed (run with -s): time from the writer's SIGKILL to the first new connection +
`SELECT 1` through pylb.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import textwrap
import time
from pathlib import Path

import pymysql
import pytest

from tests.integration.conftest_process import free_port, pylb, wait_for
from tests.integration.writerpin_helpers import ctl, writer_of
from tests.system.galera_cluster import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    CHECK_PASSWORD,
    CHECK_USER,
    NODES,
    GaleraCluster,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONNECTIONS = 30
FAILOVER_TARGET = 1.0  # issue 5: a new connection answered within 1 s of the writer's death


def connect(port: int, timeout: float = 2.0) -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=ADMIN_USER,
        password=ADMIN_PASSWORD,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        autocommit=True,
        ssl_disabled=True,
    )


def node_of(conn: pymysql.connections.Connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT @@wsrep_node_name")
        return cur.fetchone()[0]


def node_via(port: int) -> str:
    conn = connect(port)
    try:
        return node_of(conn)
    finally:
        conn.close()


def write_config(path: Path, *, port: int, admin: Path, pw: Path, cluster: GaleraCluster) -> None:
    servers = "\n".join(
        f'      - {{name: {cluster.node_name(i)}, address: "127.0.0.1:{cluster.node_port(i)}"}}'
        for i in range(NODES)
    )
    path.write_text(
        textwrap.dedent(
            f"""\
            global:
              workers: 2
              hard_stop_after: 3s
              admin_socket: {admin}
              log: {{target: stdout, level: info}}
            listen:
              mysql:
                bind: ["127.0.0.1:{port}"]
                mode: tcp
                balance: writer-pin
                retries: 3
                timeout: {{connect: 500ms, client: 60s, server: 60s}}
                health:
                  type: galera
                  user: {CHECK_USER}
                  password_file: {pw}
                  inter: 250ms
                  fastinter: 250ms
                  downinter: 1s
                  rise: 2
                  fall: 2
                  timeout: 250ms
                servers:
            """
        )
        + servers
        + "\n"
    )


def test_writer_pin_through_pylb_run(galera: GaleraCluster, tmp_path: Path) -> None:
    cfg, admin, pw, port = (
        tmp_path / "pylb.yaml",
        tmp_path / "admin.sock",
        tmp_path / "pw",
        free_port(),
    )
    pw.write_text(CHECK_PASSWORD + "\n")
    pw.chmod(0o600)
    write_config(cfg, port=port, admin=admin, pw=pw, cluster=galera)
    first, second, third = (galera.node_name(i) for i in range(NODES))
    with pylb("run", "-c", str(cfg)) as p, contextlib.ExitStack() as stack:
        p.wait_output("Loading success")
        # every server passed its galera checks (the password file was read)
        wait_for(
            lambda: ctl(admin, "show", "writer", "mysql").count(" UP ") == NODES,
            10,
            "all nodes up by the galera check",
        )

        # 30 connections through pylb: all on one node, the first by order
        conns = []
        for _ in range(CONNECTIONS):
            c = connect(port)
            stack.callback(c.close)
            conns.append(c)
        assert {node_of(c) for c in conns} == {first}
        assert writer_of(admin) == first

        # SIGKILL the writer: a new connection through pylb answers SELECT 1 within 1 s
        galera.kill(0)
        t0 = time.monotonic()
        answered = None
        while time.monotonic() - t0 < 10:
            try:
                c = connect(port, timeout=1.0)
            except pymysql.MySQLError:
                continue  # bounded by the deadline above; pylb redispatches at once
            stack.callback(c.close)
            with c.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
            answered = time.monotonic() - t0
            new_node = node_of(c)
            break
        assert answered is not None, "no connection through pylb answered after the kill"
        print(
            f"\nwriter SIGKILLed: first new connection + SELECT 1 through pylb run after "
            f"{answered:.3f} s (on {new_node})",
            file=sys.stderr,
        )
        assert answered < FAILOVER_TARGET
        assert new_node == second
        assert writer_of(admin) == second
        # the old writer's sessions were closed by pylb (they cannot reach a live node)
        for c in conns:
            with pytest.raises(pymysql.MySQLError):
                node_of(c)

        # manual switch through the admin socket, as an operator does
        out = ctl(admin, "set", "writer", "mysql", third)
        assert f"writer is now {third}" in out
        assert {node_via(port) for _ in range(5)} == {third}
        shown = ctl(admin, "show", "writer", "mysql")
        assert shown.startswith(f"writer {third} ") and "reason manual" in shown

        # the first node rejoins; then a reload: the writer stays (no switch back)
        galera.restart(0)
        wait_for(
            lambda: ctl(admin, "show", "writer", "mysql").splitlines()[1].split()[2] == "UP",
            15,
            "the rejoined node up by the galera check",
        )
        assert writer_of(admin) == third
        p.signal(signal.SIGHUP)
        p.wait_output("Reload done")
        assert writer_of(admin) == third
        assert {node_via(port) for _ in range(10)} == {third}
        assert "Writer of mysql restored: " + third in p.stdout
