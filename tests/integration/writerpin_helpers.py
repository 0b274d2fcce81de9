"""Helpers for writer-pin through `pylb run`: fake database servers whose port can be
"killed" and revived, clients that learn which server they reached, configs, and a look
at which worker process holds which upstream session (/proc).

A `NamedBackend` greets every connection with its name and a newline (as a MySQL server
greets first) and keeps it open until the client closes: the test then knows where each
session landed, and a session that pylb closes shows as EOF/reset on the client side.
Killing its *port* (`stop_listening`) refuses new connections but keeps the established
ones open, so only pylb's writer change can end them: exactly what the tests look at.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.integration.conftest_process import REPO, pylb_env


class NamedBackend:
    """A TCP server on 127.0.0.1 that writes `name\\n` to every connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self._lsock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> NamedBackend:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(256)
        self.port = s.getsockname()[1]
        self._lsock = s
        t = threading.Thread(target=self._accept, args=(s,), daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self, lsock: socket.socket) -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.sendall(self.name.encode() + b"\n")
            while conn.recv(4096):
                pass
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop_listening(self) -> None:
        """The port dies: new connections are refused; established ones stay."""
        s, self._lsock = self._lsock, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
            s.close()

    def close(self) -> None:
        self.stop_listening()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)


@contextlib.contextmanager
def named_backends(*names: str) -> Iterator[list[NamedBackend]]:
    backends = [NamedBackend(n) for n in names]
    try:
        for b in backends:
            b.start()
        yield backends
    finally:
        for b in backends:
            b.close()


def open_session(port: int, timeout: float = 5.0) -> tuple[socket.socket, str]:
    """Connect through pylb; returns the socket and the server name that greeted it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                raise ConnectionError(f"closed before the greeting (got {data!r})")
            data += chunk
    except BaseException:
        s.close()
        raise
    return s, data.decode().strip()


def server_of(port: int) -> str:
    s, name = open_session(port)
    s.close()
    return name


def is_closed(s: socket.socket) -> bool:
    """True when pylb closed this session (EOF or reset); never blocks."""
    try:
        data = s.recv(1, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b""


def free_udp_port() -> int:
    """A UDP port free right now on 127.0.0.1 (for peers configs, which need a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def writer_config(
    path: Path,
    *,
    port: int,
    servers: Sequence[tuple[str, int]],
    admin: Path,
    workers: int = 1,
    inter: str = "30s",
    peers: str = "",
    state_dir: Path | None = None,
    hard_stop_after: str = "3s",
) -> None:
    """A `pylb run` config with one writer-pin listener `mysql` over `servers` and tcp
    checks every `inter` (rise/fall 1). `peers`: a YAML flow mapping for global.peers."""
    rows = "\n".join(f'      - {{name: {n}, address: "127.0.0.1:{p}"}}' for n, p in servers)
    extra = f"  peers: {peers}\n" if peers else ""
    if state_dir is not None:
        extra += f"  state_dir: {state_dir}\n"
    path.write_text(
        textwrap.dedent(
            f"""\
            global:
              workers: {workers}
              hard_stop_after: {hard_stop_after}
              admin_socket: {admin}
              log: {{target: stdout, level: info}}
            """
        )
        + extra
        + textwrap.dedent(
            f"""\
            listen:
              mysql:
                bind: ["127.0.0.1:{port}"]
                mode: tcp
                balance: writer-pin
                timeout: {{connect: 1s, client: 60s, server: 60s}}
                health: {{type: tcp, inter: {inter}, fastinter: 100ms, downinter: 200ms,
                         rise: 1, fall: 1}}
                servers:
            """
        )
        + rows
        + "\n"
    )


def ctl(sock: Path, *words: str) -> str:
    """`pylb ctl -s SOCK WORDS` as an operator runs it; returns stdout (asserts rc 0)."""
    r = subprocess.run(
        [sys.executable, "-m", "pylb", "ctl", "-s", str(sock), *words],
        cwd=REPO,
        env=pylb_env(),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode == 0, f"pylb ctl {' '.join(words)}: rc {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def writer_of(sock: Path, listen: str = "mysql") -> str:
    """The writer named on the first line of `show writer`."""
    first = ctl(sock, "show", "writer", listen).splitlines()[0]
    return first.split()[1]


def upstream_sessions(pid: int, port: int) -> int:
    """How many established TCP connections process `pid` has to 127.0.0.1:`port`."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    want = f"0100007F:{port:04X}"
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            # fields: sl local rem st ... inode(9)
            if fields[2] == want and fields[3] == "01" and fields[9] in inodes:
                n += 1
    return n
