"""Helpers for the process-level tests (`pylb run`, `pylb demo`, `pylb check` as real
processes): test backends in threads, a running-pylb handle that collects its output, and
waits that poll a condition with a deadline (never a bare sleep).

Every process is started in its own session, so cleanup can kill exactly the process
group the test created, also when the test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_env() -> dict[str, str]:
    """The environment for running `make` from a test that may itself run under `make
    test`: without the outer make's jobserver and level variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pylb_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll `cond` until it returns a truthy value; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # polling interval of a deadline-bounded wait, not a fixed sleep
        delay = min(delay * 2, 0.1)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for config files, which cannot say port 0).

    Taken at random BELOW the kernel's ephemeral range, not from bind(("", 0)): a port the
    kernel handed out once is handed out again, as the local port of any process's
    outgoing connection or bind(0), in the window before pylb binds it (and again after
    it closes, while a test checks that nothing listens there any more). Outside that
    range only another process picking the same port by hand can collide; random choice
    makes that unlikely even with several suites on one machine."""
    rng = random.SystemRandom()
    high = _ephemeral_low() - 1
    for _ in range(64):
        port = rng.randint(20000, high) if high > 21000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise AssertionError("no free port found below the ephemeral range")


# -- backends --------------------------------------------------------------------------------


class _NameHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "testbackend"

    def do_GET(self) -> None:
        body = json.dumps({"server": self.server.name, "path": self.path}).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def http_backend(name: str) -> Iterator[int]:
    """A threaded HTTP backend on 127.0.0.1 answering {"server": name, "path": ...}."""
    srv = _HttpServer(("127.0.0.1", 0), _NameHandler)
    srv.name = name  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@contextlib.contextmanager
def echo_backend() -> Iterator[int]:
    """A threaded TCP echo server on 127.0.0.1."""
    srv = _TcpServer(("127.0.0.1", 0), _EchoHandler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


# -- clients ---------------------------------------------------------------------------------


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def try_http_get(port: int, path: str = "/") -> tuple[int, bytes] | None:
    try:
        return http_get(port, path, timeout=2.0)
    except (OSError, http.client.HTTPException):
        return None


def tcp_echo(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


# -- processes -------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` from /proc (no psutil)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            continue
    return out


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Proc:
    """A pylb process started in its own session, its stdout/stderr collected by threads."""

    def __init__(
        self, args: list[str], cwd: Path | str = REPO, env: dict[str, str] | None = None
    ) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=pylb_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                sink.append(raw.decode(errors="replace"))
        stream.close()

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self.out)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self.err)

    def wait_output(self, needle: str, timeout: float = 15.0) -> str:
        """Wait until `needle` appears in stdout or stderr; returns the line."""

        def find() -> str | None:
            with self._lock:
                for line in self.out + self.err:
                    if needle in line:
                        return line
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.popen.returncode}) before printing {needle!r}:\n"
                    f"{''.join(self.out)}{''.join(self.err)}"
                )
            return None

        return wait_for(find, timeout, f"{needle!r} in output")  # type: ignore[return-value]

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        rc = self.popen.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def children(self) -> list[int]:
        return children_of(self.pid)

    def kill_all(self) -> None:
        """Cleanup: SIGKILL the whole session this test started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        for t in self._threads:
            t.join(5)


@contextlib.contextmanager
def pylb(*args: str, cwd: Path | str = REPO) -> Iterator[Proc]:
    """`python -m pylb ARGS` for the duration of the block; always cleaned up."""
    p = Proc([sys.executable, "-m", "pylb", *args], cwd=cwd)
    try:
        yield p
    finally:
        p.kill_all()


def session_pids(sid: int) -> list[int]:
    """Every live process of session `sid` (what a test started), from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] = state, [1] = ppid, [2] = pgrp, [3] = session
        if fields[0] != "Z" and fields[3] == str(sid):
            out.append(int(name))
    return out
