"""SIGHUP reload of `pylb run`: a new generation of workers on the same listening sockets,
the old one drains; a broken file is rejected while the running config keeps serving."""

from __future__ import annotations

import json
import signal
import textwrap
import threading
import time
from pathlib import Path

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


def write(path: Path, port: int, backends: list[int], workers: int = 1) -> None:
    servers = "\n".join(
        f'          - {{name: web{i + 1}, address: "127.0.0.1:{p}"}}'
        for i, p in enumerate(backends)
    )
    path.write_text(
        textwrap.dedent(
            f"""\
            global: {{workers: {workers}, hard_stop_after: 5s, log: {{target: stdout}}}}
            defaults: {{timeout: {{connect: 2s, client: 10s, server: 10s}}}}
            listen:
              web:
                bind: ["127.0.0.1:{port}"]
                mode: http
                servers:
            """
        )
        + servers
        + "\n"
    )


def server_of(port: int) -> str | None:
    got = try_http_get(port)
    return json.loads(got[1])["server"] if got and got[0] == 200 else None


def only_worker(p) -> int:
    return wait_for(lambda: (lambda c: c[0] if len(c) == 1 else None)(p.children()), 10, "worker")


def test_reload_adds_a_server_and_retires_the_old_worker(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    with http_backend("web1") as b1, http_backend("web2") as b2:
        write(path, port, [b1])
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            old = only_worker(p)
            wait_for(lambda: server_of(port) == "web1", 10, "web1")
            write(path, port, [b1, b2])
            p.signal(signal.SIGHUP)
            p.wait_output("Reload done: generation 1")
            p.wait_output(f"Old worker {old} (generation 0) exited with code 0")
            assert not alive(old)
            seen = {server_of(port) for _ in range(6)}
            assert seen == {"web1", "web2"}
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
            assert session_pids(p.pid) == []


def test_broken_reload_is_rejected_and_the_old_config_keeps_serving(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    with http_backend("web1") as b1:
        write(path, port, [b1])
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            worker = only_worker(p)
            path.write_text(path.read_text().replace("mode: http", "mode: htp"))
            p.signal(signal.SIGHUP)
            line = p.wait_output("Reload rejected")
            assert "keeping the running configuration" in line
            p.wait_output(f"{path}:6:")  # the FILE:LINE:COL diagnostic is logged
            assert p.children() == [worker]
            assert server_of(port) == "web1"
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0


def write_tcp(path: Path, port: int, backend: int, workers: int) -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            global: {{workers: {workers}, hard_stop_after: 5s, log: {{target: stdout}}}}
            defaults: {{timeout: {{connect: 2s, client: 10s, server: 10s}}}}
            listen:
              echo:
                bind: ["127.0.0.1:{port}"]
                mode: tcp
                servers:
                  - {{name: e1, address: "127.0.0.1:{backend}"}}
            """
        )
    )


def one_http(port: int) -> None:
    status, _ = http_get(port, timeout=5)
    if status != 200:
        raise OSError(f"status {status}")


def one_tcp(port: int) -> None:
    if tcp_echo(port, b"r" * 100) != b"r" * 100:
        raise OSError("short echo")


def reload_under_load(p, port: int, request, reloads: int = 5) -> dict:
    """Two clients send bounded traffic (new connection per request) while the master
    reloads `reloads` times; returns the counts."""
    stop = threading.Event()
    results: dict = {"ok": 0, "failed": []}

    def client() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and results["ok"] < 5000 and time.monotonic() < deadline:
            try:
                request(port)
                results["ok"] += 1
            except OSError as e:
                results["failed"].append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, reloads + 1):
            p.signal(signal.SIGHUP)
            p.wait_output(f"Reload done: generation {gen}")
            n = results["ok"]
            wait_for(lambda n=n: results["ok"] > n + 20, 10, "traffic after a reload")
    finally:
        stop.set()
        for t in threads:
            t.join(40)
    return results


def test_reloads_during_tcp_load_lose_nothing(tmp_path):
    """Listeners stay open in the master across generations, and an old worker lets its
    sessions (also those accepted while it stopped) finish: nothing is refused or cut."""
    path, port = tmp_path / "pylb.yaml", free_port()
    with echo_backend() as e:
        write_tcp(path, port, e, workers=2)
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            wait_for(lambda: tcp_echo(port, b"x") == b"x", 10, "first echo")
            results = reload_under_load(p, port, one_tcp)
            assert results["failed"] == []
            assert results["ok"] > 100
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
            assert session_pids(p.pid) == []


def test_reloads_during_http_load_lose_nothing(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    with http_backend("web1") as b1:
        write(path, port, [b1], workers=2)
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            wait_for(lambda: server_of(port), 10, "first answer")
            results = reload_under_load(p, port, one_http)
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
            assert results["failed"] == []
            assert results["ok"] > 100


def test_new_generation_that_cannot_start_leaves_the_old_one_serving(tmp_path):
    """The new workers crash at start (their access log file cannot be opened): the old
    generation is only retired once the new one serves, so it keeps serving; SIGTERM
    still stops everything with exit code 0."""
    path, port = tmp_path / "pylb.yaml", free_port()
    with http_backend("web1") as b1:
        write(path, port, [b1])
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            old = only_worker(p)
            bad_log = tmp_path / "missing-dir" / "pylb.log"
            path.write_text(
                path.read_text().replace(
                    "log: {target: stdout}", f'log: {{target: "file:{bad_log}"}}'
                )
            )
            p.signal(signal.SIGHUP)
            p.wait_output("restarting in")  # a new worker died before it served
            assert "Reload done" not in p.stdout
            assert alive(old)
            assert server_of(port) == "web1"
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
            assert session_pids(p.pid) == []


def test_sigusr1_is_a_graceful_stop(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    with http_backend("web1") as b1:
        write(path, port, [b1])
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            assert server_of(port) == "web1"
            p.signal(signal.SIGUSR1)
            assert p.wait(20) == 0
            assert session_pids(p.pid) == []


def test_reload_changes_the_number_of_workers(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    with http_backend("web1") as b1:
        write(path, port, [b1], workers=1)
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success. 1 worker(s)")
            write(path, port, [b1], workers=2)
            p.signal(signal.SIGHUP)
            p.wait_output("Reload done: generation 1, 2 worker(s) serving")
            wait_for(lambda: len(p.children()) == 2, 10, "two workers")
            assert {server_of(port) for _ in range(8)} == {"web1"}
            write(path, port, [b1], workers=1)
            p.signal(signal.SIGHUP)
            p.wait_output("Reload done: generation 2, 1 worker(s) serving")
            wait_for(lambda: len(p.children()) == 1, 10, "one worker")
            assert {server_of(port) for _ in range(8)} == {"web1"}
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
