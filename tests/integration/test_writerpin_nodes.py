"""Two pylb nodes (two `pylb run` processes on loopback) agree on the writer through
`global.peers` (docs/galera.md, "One writer across proxy nodes"): a manual switch on
node A is followed by node B within about two intervals, and a node started after A
failed over adopts A's writer instead of the first server by order.

Fake TCP backends and tcp checks: writer-pin does not need galera checks, and this
keeps the test at a few seconds.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.integration.conftest_process import free_port, pylb, wait_for
from tests.integration.writerpin_helpers import (
    ctl,
    free_udp_port,
    named_backends,
    server_of,
    writer_config,
    writer_of,
)

INTERVAL = 0.25


def peers(node: str, bind: int, other: str, other_port: int, key: Path) -> str:
    return (
        f'{{node: {node}, bind: "127.0.0.1:{bind}", nodes: {{{other}: "127.0.0.1:{other_port}"}}, '
        f"key_file: {key}, interval: {int(INTERVAL * 1000)}ms}}"
    )


def test_two_nodes_follow_a_manual_switch_and_a_fresh_node_adopts_the_writer(tmp_path):
    key = tmp_path / "peers.key"
    key.write_text("a shared secret for the test\n")
    key.chmod(0o600)
    pa, pb = free_udp_port(), free_udp_port()
    port_a, port_b = free_port(), free_port()
    cfg_a, cfg_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"
    with named_backends("s1", "s2", "s3") as (s1, s2, s3):
        servers = [("s1", s1.port), ("s2", s2.port), ("s3", s3.port)]
        writer_config(
            cfg_a,
            port=port_a,
            servers=servers,
            admin=sock_a,
            inter="200ms",
            peers=peers("lb-a", pa, "lb-b", pb, key),
        )
        writer_config(
            cfg_b,
            port=port_b,
            servers=servers,
            admin=sock_b,
            inter="200ms",
            peers=peers("lb-b", pb, "lb-a", pa, key),
        )
        with pylb("run", "-c", str(cfg_a)) as a:
            a.wait_output("Loading success")
            assert writer_of(sock_a) == "s1"
            # A fails over: s1's port dies, the next connect moves A's writer to s2
            s1.stop_listening()
            assert server_of(port_a) == "s2"
            # s1 comes back and is up again in A's checks: A keeps s2 (no failback)
            s1.start()
            wait_for(
                lambda: ctl(sock_a, "show", "writer", "mysql").splitlines()[1].split()[2] == "UP",
                5,
                "s1 up again on A",
            )
            assert writer_of(sock_a) == "s2"

            # a fresh node B would choose s1 by order; it adopts A's s2 before serving,
            # so its very first session goes to s2
            with pylb("run", "-c", str(cfg_b)) as b:
                b.wait_output("Loading success")
                assert server_of(port_b) == "s2"
                assert writer_of(sock_b) == "s2"
                assert "adopts writer s2 from lb-a" in b.stdout

                # manual switch on A: B follows within about two intervals
                ctl(sock_a, "set", "writer", "mysql", "s3")
                t0 = time.monotonic()
                wait_for(lambda: writer_of(sock_b) == "s3", 2 * INTERVAL + 1, "B follows A")
                took = time.monotonic() - t0
                print(f"\nnode B followed A's manual switch in {took:.3f} s")
                assert server_of(port_b) == "s3"
                assert writer_of(sock_a) == "s3"


def test_peers_port_taken_the_node_serves_and_decides_alone(tmp_path):
    key = tmp_path / "peers.key"
    key.write_text("k\n")
    cfg, sock, port = tmp_path / "a.yaml", tmp_path / "a.sock", free_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken,
        named_backends("s1", "s2") as (s1, s2),
    ):
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        writer_config(
            cfg,
            port=port,
            servers=[("s1", s1.port), ("s2", s2.port)],
            admin=sock,
            peers=peers("lb-a", busy, "lb-b", free_udp_port(), key),
        )
        with pylb("run", "-c", str(cfg)) as a:
            a.wait_output("Loading success")
            a.wait_output("this node decides alone")
            assert server_of(port) == "s1"
            ctl(sock, "set", "writer", "mysql", "s2")
            assert server_of(port) == "s2"
