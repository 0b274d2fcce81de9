"""`pylb run -c FILE` as a real process tree: master + worker(s), restarts, signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest_process import (
    alive,
    echo_backend,
    free_port,
    http_backend,
    http_get,
    pylb,
    session_pids,
    tcp_echo,
    try_http_get,
    wait_for,
)


def write_config(tmp_path: Path, *, http_ports, tcp_port, workers=1, hard_stop="2s"):
    http_port, tcp_listen = free_port(), free_port()
    servers = "\n".join(
        f'      - {{name: web{i + 1}, address: "127.0.0.1:{p}"}}' for i, p in enumerate(http_ports)
    )
    text = textwrap.dedent(
        f"""\
        global:
          workers: {workers}
          hard_stop_after: {hard_stop}
          log: {{target: stdout, level: info}}
        defaults:
          timeout: {{connect: 2s, client: 10s, server: 10s}}
        listen:
          web:
            bind: ["127.0.0.1:{http_port}"]
            mode: http
            balance: roundrobin
            servers:
        {{servers}}
          echo:
            bind: ["127.0.0.1:{tcp_listen}"]
            mode: tcp
            servers:
              - {{name: e1, address: "127.0.0.1:{tcp_port}"}}
        """
    ).replace("{servers}", servers)
    path = tmp_path / "pylb.yaml"
    path.write_text(text)
    return path, http_port, tcp_listen


def answered_by(port: int) -> str | None:
    got = try_http_get(port)
    if got is None or got[0] != 200:
        return None
    return json.loads(got[1])["server"]


def served_by(port: int) -> str:
    status, body = http_get(port, timeout=10.0)
    assert status == 200, (status, body)
    return json.loads(body)["server"]


@pytest.fixture
def backends():
    with http_backend("web1") as h1, http_backend("web2") as h2, echo_backend() as e:
        yield [h1, h2], e


def worker_pids(proc, n=1, timeout=10.0) -> list[int]:
    return wait_for(
        lambda: (lambda c: c if len(c) == n else None)(proc.children()),
        timeout,
        f"{n} worker(s)",
    )


def test_run_serves_http_and_tcp_then_sigterm_exits_0(tmp_path, backends):
    (h1, h2), e = backends
    path, http_port, tcp_port = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e)
    with pylb("run", "-c", str(path)) as p:
        p.wait_output("Loading success")
        (worker,) = worker_pids(p)
        wait_for(lambda: answered_by(http_port), 10, "HTTP answer through pylb")
        # Each request must succeed (no retry: a refused or failed one is a bug), but the
        # client waits as long as a loaded machine may need, not try_http_get's 2 s.
        seen = {served_by(http_port) for _ in range(6)}
        assert seen == {"web1", "web2"}
        assert tcp_echo(tcp_port, b"hello pylb") == b"hello pylb"

        p.signal(signal.SIGTERM)
        assert p.wait(20) == 0
        assert not alive(worker)
        assert session_pids(p.pid) == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
        assert "Proxy web started." in p.stdout


def test_killed_worker_is_restarted(tmp_path, backends):
    (h1, h2), e = backends
    path, http_port, _ = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e)
    with pylb("run", "-c", str(path)) as p:
        p.wait_output("Loading success")
        (worker,) = worker_pids(p)
        wait_for(lambda: answered_by(http_port), 10, "first answer")

        os.kill(worker, signal.SIGKILL)
        line = p.wait_output(f"Worker {worker} was killed by signal 9", 10)
        assert "restarting" in line
        new = wait_for(lambda: [c for c in p.children() if c != worker] or None, 10, "a new worker")
        assert len(new) == 1 and alive(new[0])
        wait_for(lambda: answered_by(http_port), 10, "answer after the restart")

        p.signal(signal.SIGTERM)
        assert p.wait(20) == 0
        assert session_pids(p.pid) == []


def test_sigint_stops_two_workers(tmp_path, backends):
    (h1, h2), e = backends
    path, http_port, tcp_port = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e, workers=2)
    with pylb("run", "-c", str(path)) as p:
        p.wait_output("Loading success")
        workers = worker_pids(p, 2)
        wait_for(lambda: answered_by(http_port), 10, "answer")
        assert tcp_echo(tcp_port, b"x" * 1000) == b"x" * 1000
        p.signal(signal.SIGINT)
        assert p.wait(20) == 0
        assert not any(alive(w) for w in workers)
        assert session_pids(p.pid) == []


def test_sighup_reloads_and_keeps_serving(tmp_path, backends):
    (h1, h2), e = backends
    path, http_port, tcp_port = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e)
    with pylb("run", "-c", str(path)) as p:
        p.wait_output("Loading success")
        (worker,) = worker_pids(p)
        p.signal(signal.SIGHUP)
        p.wait_output("Reload done")
        wait_for(lambda: not alive(worker), 10, "the old worker to exit")
        (new,) = worker_pids(p)
        assert new != worker
        wait_for(lambda: answered_by(http_port), 10, "answer after SIGHUP")
        assert tcp_echo(tcp_port, b"after reload") == b"after reload"
        p.signal(signal.SIGTERM)
        assert p.wait(20) == 0


def test_tcp_session_in_flight_at_sigterm_is_bounded_by_hard_stop_after(tmp_path, backends):
    """SIGTERM while a TCP session is open: the listener closes at once, the session keeps
    working until it ends or hard_stop_after (2 s) aborts it; the master exits 0."""
    (h1, h2), e = backends
    path, _, tcp_port = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e, hard_stop="2s")
    with pylb("run", "-c", str(path)) as p:
        p.wait_output("Loading success")
        worker_pids(p)
        wait_for(lambda: tcp_echo(tcp_port, b"ping") == b"ping", 10, "tcp echo")
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as s:
            s.sendall(b"before")
            assert s.recv(100) == b"before"
            p.signal(signal.SIGTERM)
            p.wait_output("Stopping proxy echo")
            s.sendall(b"during")
            assert s.recv(100) == b"during"
            assert p.wait(20) == 0
            # hard_stop_after aborted the session: the client sees it closed
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
        assert session_pids(p.pid) == []


def test_bad_config_exits_1_with_position(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            listen:
              web:
                bind: ["127.0.0.1:8080"]
                balnce: roundrobin
                servers:
                  - {name: a, address: "127.0.0.1:8081"}
            """
        )
    )
    with pylb("run", "-c", str(path)) as p:
        assert p.wait(20) == 1
        assert f"{path}:4:5: error:" in p.stderr
        assert "balance" in p.stderr
        assert p.children() == []


def test_busy_port_exits_1(tmp_path, backends):
    (h1, h2), e = backends
    path, http_port, _ = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", http_port))  # no SO_REUSEPORT: pylb cannot join it
    blocker.listen(1)
    try:
        with pylb("run", "-c", str(path)) as p:
            assert p.wait(20) == 1
            assert f"127.0.0.1:{http_port}" in p.stderr
    finally:
        blocker.close()


def test_sigkilled_master_leaves_no_worker(tmp_path, backends):
    """A master that dies without cleanup (SIGKILL, OOM) takes its workers with it
    (PR_SET_PDEATHSIG), so nothing keeps holding the listening ports."""
    (h1, h2), e = backends
    path, _, _ = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e)
    with pylb("run", "-c", str(path)) as p:
        p.wait_output("Loading success")
        (worker,) = worker_pids(p)
        p.signal(signal.SIGKILL)
        p.wait(10)
        wait_for(lambda: not alive(worker), 10, "the orphaned worker to exit")


def test_sigterm_to_the_whole_group_exits_0(tmp_path, backends):
    """systemd's default KillMode=control-group sends SIGTERM to every process at once:
    workers drain by themselves, the master still sees a single stop and exits 0."""
    (h1, h2), e = backends
    path, http_port, _ = write_config(tmp_path, http_ports=[h1, h2], tcp_port=e, workers=2)
    with pylb("run", "-c", str(path)) as p:
        p.wait_output("Loading success")
        worker_pids(p, 2)
        wait_for(lambda: answered_by(http_port), 10, "answer")
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(20) == 0
        assert "killing the children now" not in p.stdout
        assert session_pids(p.pid) == []
