"""Issue 6's reload target: 20 SIGHUPs during a load run cost 0 requests.

Several clients send bounded HTTP traffic through `pylb run` (`workers: 2`): two reuse
keep-alive connections, two open a new connection per request. Meanwhile the master gets
20 SIGHUPs about 0.3 s apart; the 10th rewrites the file with a third server first. The
test counts every request that failed (refused, reset, cut, non-200) and requires none,
and requires traffic on the added server after its reload.

Also here: a TCP session open across a reload finishes on the old worker, bounded by
`hard_stop_after`; and a response whose head left
keep-alive before the drain must leave its connection usable.

A client that reuses a keep-alive connection does what HTTP clients do (RFC 9112 9.3.1):
when the connection turns out closed before any byte of the answer came back, the
(idempotent) request is sent again on a new connection. Those retries are counted apart;
pylb's drain makes them rare (an old worker first answers keep-alive requests with
`Connection: close` for a second before it closes idle connections).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.conftest_process import (
    _HttpServer,
    _NameHandler,
    echo_backend,
    free_port,
    pylb,
    session_pids,
    tcp_echo,
    try_http_get,
    wait_for,
)

RELOADS = 20
ADD_AT = 10
SPACING = 0.3
MAX_SECONDS = 30.0  # every client loop stops by then, whatever happens
MAX_REQUESTS = 50000  # per client


class _OneWriteHandler(_NameHandler):
    """Head and body in one send(), as most servers write a small response (the stdlib
    default sends the head, then the body, and each small response then waits for the
    client's delayed ACK: 40 ms, and a load of a few requests per second)."""

    wbufsize = 65536


@contextlib.contextmanager
def http_backend(name: str) -> Iterator[int]:
    srv = _HttpServer(("127.0.0.1", 0), _OneWriteHandler)
    srv.name = name  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def write(path: Path, port: int, backends: list[int]) -> None:
    servers = "\n".join(
        f'          - {{name: web{i + 1}, address: "127.0.0.1:{p}"}}'
        for i, p in enumerate(backends)
    )
    path.write_text(
        textwrap.dedent(
            f"""\
            global: {{workers: 2, hard_stop_after: 5s, log: {{target: stdout, level: notice}}}}
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


class Client(threading.Thread):
    """One load client; `keepalive` reuses its connection, else one per request."""

    def __init__(self, port: int, keepalive: bool, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.keepalive, self.stop = port, keepalive, stop
        self.ok = 0
        self.retried = 0
        self.retry_why: list[str] = []
        self.failed: list[str] = []
        self.servers: dict[str, int] = {}

    def _once(self, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"status {resp.status}")
        name = json.loads(body)["server"]
        self.servers[name] = self.servers.get(name, 0) + 1
        if not self.keepalive or resp.will_close:
            conn.close()

    def run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            while not self.stop.is_set() and self.ok < MAX_REQUESTS and time.monotonic() < deadline:
                reused = conn.sock is not None
                try:
                    self._once(conn)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                    conn.close()
                    if not reused:
                        self.failed.append(repr(e))
                        continue
                    self.retried += 1  # stale keep-alive connection: retry once, fresh
                    self.retry_why.append(repr(e))
                    try:
                        self._once(conn)
                    except (OSError, http.client.HTTPException) as e2:
                        conn.close()
                        self.failed.append(f"retry: {e2!r}")
                        continue
                except (OSError, http.client.HTTPException, ValueError) as e:
                    conn.close()
                    self.failed.append(repr(e))
                    continue
                self.ok += 1
        finally:
            conn.close()


def test_twenty_reloads_under_load_lose_no_request(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    with http_backend("web1") as b1, http_backend("web2") as b2, http_backend("web3") as b3:
        write(path, port, [b1, b2])
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            wait_for(lambda: try_http_get(port), 10, "first answer")
            stop = threading.Event()
            clients = [Client(port, keepalive=i < 2, stop=stop) for i in range(4)]
            for c in clients:
                c.start()
            try:
                for n in range(1, RELOADS + 1):
                    if n == ADD_AT:
                        write(path, port, [b1, b2, b3])
                    t0 = time.monotonic()
                    p.signal(signal.SIGHUP)
                    while time.monotonic() - t0 < SPACING:
                        time.sleep(0.05)  # the pace of the signals, not a wait for a condition
                p.wait_output(f"Reload done: generation {RELOADS},", timeout=20)
                total = sum(c.ok for c in clients)
                wait_for(
                    lambda: sum(c.ok for c in clients) > total + 50, 10, "traffic after reloads"
                )
            finally:
                stop.set()
                for c in clients:
                    c.join(MAX_SECONDS + 10)
            failed = [f for c in clients for f in c.failed]
            ok = sum(c.ok for c in clients)
            retried = sum(c.retried for c in clients)
            web3 = sum(c.servers.get("web3", 0) for c in clients)
            why = [w for c in clients for w in c.retry_why]
            print(f"ok={ok} retried={retried} {why[:5]} web3={web3} failed={failed[:5]}")
            assert failed == []
            assert ok > 200
            assert web3 > 0
            assert all(c.ok > 20 for c in clients)  # every client kept being served
            p.signal(signal.SIGTERM)
            assert p.wait(30) == 0
            assert session_pids(p.pid) == []


class _SlowBodyHandler(_NameHandler):
    """Sends the head, then the body once the test sets `server.release`."""

    def do_GET(self) -> None:
        body = b'{"server": "slow"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        self.server.release.wait(10)  # type: ignore[attr-defined]
        self.wfile.write(body)


def test_response_framed_keepalive_before_the_drain_keeps_its_connection(tmp_path):
    """A response whose head left before the reload said keep-alive: the connection must
    then stay usable for the next request (which gets `Connection: close`), or a client
    reusing it sees it closed without an answer."""
    path, port = tmp_path / "pylb.yaml", free_port()
    srv = _HttpServer(("127.0.0.1", 0), _SlowBodyHandler)
    srv.release = threading.Event()  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        write(path, port, [srv.server_address[1]])
        path.write_text(path.read_text().replace("workers: 2", "workers: 1"))
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()  # the head is here, the body is held
                assert not resp.will_close
                p.signal(signal.SIGHUP)
                p.wait_output("Reload done: generation 1")
                srv.release.set()  # type: ignore[attr-defined]
                assert resp.read() == b'{"server": "slow"}'
                conn.request("GET", "/")
                second = conn.getresponse()
                assert second.status == 200 and second.will_close
                second.read()
            finally:
                conn.close()
                srv.release.set()  # type: ignore[attr-defined]
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_tcp_session_finishes_on_the_old_generation_bounded_by_hard_stop_after(tmp_path):
    """A TCP session open across a reload keeps working on the old worker (no request
    boundary to stop at), until the old config's hard_stop_after aborts it."""
    path, port = tmp_path / "pylb.yaml", free_port()
    with echo_backend() as e:
        path.write_text(
            "global: {workers: 1, hard_stop_after: 2s, log: {target: stdout}}\n"
            "defaults: {timeout: {connect: 2s, client: 30s, server: 30s, tunnel: 30s}}\n"
            "listen:\n"
            "  echo:\n"
            f'    bind: ["127.0.0.1:{port}"]\n'
            "    mode: tcp\n"
            f'    servers: [{{name: e1, address: "127.0.0.1:{e}"}}]\n'
        )
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"before")
                assert s.recv(100) == b"before"
                p.signal(signal.SIGHUP)
                p.wait_output("Reload done: generation 1")
                s.sendall(b"after")  # still the old worker: the session goes on
                assert s.recv(100) == b"after"
                assert tcp_echo(port, b"new") == b"new"  # new sessions: the new worker
                p.wait_output("hard-stop-after reached: aborting 1 connection(s)", timeout=15)
                s.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(100) == b""
            p.wait_output("(generation 0) exited with code 0", timeout=15)
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
