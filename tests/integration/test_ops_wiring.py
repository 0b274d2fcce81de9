"""Issue 6 wired into `pylb run`: stats endpoints and the runtime API through the real
processes (`workers: 2`: slot 0 relays commands and sums counters), server state carried
across a reload, systemd's notify protocol and watchdog against a fake NOTIFY_SOCKET,
event logs to a syslog unix socket."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.conftest_process import (
    REPO,
    Proc,
    free_port,
    http_backend,
    http_get,
    pylb,
    pylb_env,
    session_pids,
    try_http_get,
    wait_for,
)


def write(
    path: Path,
    port: int,
    servers: dict[str, int],
    *,
    workers: int = 2,
    extra_global: str = "",
    health: str = "",
) -> None:
    """One http listener `web` on `port`. `extra_global` / `health`: YAML lines already
    indented for `global:` / the listen block."""
    lines = [
        "global:",
        f"  workers: {workers}",
        "  hard_stop_after: 5s",
        "  log: {target: stdout, level: info}",
        *([extra_global] if extra_global else []),
        "defaults: {timeout: {connect: 2s, client: 10s, server: 10s}}",
        "listen:",
        "  web:",
        f'    bind: ["127.0.0.1:{port}"]',
        "    mode: http",
        "    balance: roundrobin",
        *([health] if health else []),
        "    servers:",
        *(f'      - {{name: {n}, address: "127.0.0.1:{p}"}}' for n, p in servers.items()),
    ]
    path.write_text("\n".join(lines) + "\n")


def ctl(sock: Path, *words: str) -> tuple[int, str]:
    """`pylb ctl -s SOCK WORDS` as a real process."""
    r = subprocess.run(
        [sys.executable, "-m", "pylb", "ctl", "-s", str(sock), *words],
        cwd=REPO,
        env=pylb_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stdout + r.stderr


def stat_rows(text: str) -> dict[str, dict[str, str]]:
    """`show stat` CSV -> {svname: row} (one listener)."""
    lines = text.strip().splitlines()
    assert lines[0].startswith("# pxname,svname,"), lines[0]
    header = lines[0][2:].split(",")
    rows = csv.DictReader(io.StringIO("\n".join(lines[1:])), fieldnames=header)
    return {r["svname"]: r for r in rows}


def server_of(port: int) -> str:
    status, body = http_get(port)
    assert status == 200, status
    return json.loads(body)["server"]


def test_stats_and_runtime_api_through_the_real_processes(tmp_path):
    path, port, sport = tmp_path / "pylb.yaml", free_port(), free_port()
    sock = tmp_path / "run" / "admin.sock"
    extra = f'  admin_socket: "{sock}"\n  stats: {{bind: "127.0.0.1:{sport}"}}'
    with http_backend("web1") as b1, http_backend("web2") as b2:
        write(path, port, {"web1": b1, "web2": b2}, extra_global=extra)
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            assert oct(sock.stat().st_mode & 0o777) == "0o600"
            sent = 0
            seen: set[str] = set()
            for _ in range(30):
                seen.add(server_of(port))
                sent += 1
            assert seen == {"web1", "web2"}

            status, body = http_get(sport, "/stats.csv")
            assert status == 200
            assert body.decode().startswith("# pxname,svname,qcur,qmax,scur,")
            rows = stat_rows(body.decode())
            assert {"FRONTEND", "web1", "web2", "BACKEND"} <= set(rows)
            assert int(rows["FRONTEND"]["stot"]) == sent  # both workers' sessions
            status, body = http_get(sport, "/metrics")
            assert status == 200
            assert b'pylb_server_up{proxy="web",server="web1"} 1.0' in body
            # both workers' sessions
            assert f'pylb_frontend_sessions_total{{proxy="web"}} {sent}.0'.encode() in body

            # `show stat` over the socket sums both workers' counters
            rc, out = ctl(sock, "show", "stat")
            assert rc == 0, out
            rows = stat_rows(out)
            assert int(rows["FRONTEND"]["stot"]) == sent
            assert int(rows["web1"]["stot"]) + int(rows["web2"]["stot"]) == sent

            rc, out = ctl(sock, "disable", "server", "web/web2")
            assert rc == 0, out
            # every worker applied it (slot 0 relayed it): no request reaches web2
            assert {server_of(port) for _ in range(30)} == {"web1"}
            rc, out = ctl(sock, "show", "stat")
            assert stat_rows(out)["web2"]["status"] == "MAINT"
            status, body = http_get(sport, "/stats.csv")
            assert stat_rows(body.decode())["web2"]["status"] == "MAINT"
            p.wait_output("Server web/web2 is going DOWN for maintenance")

            rc, out = ctl(sock, "enable", "server", "web/web2")
            assert rc == 0, out
            assert "web2" in {server_of(port) for _ in range(30)}
            rc, out = ctl(sock, "disable", "server", "web/nope")
            assert (rc, out.strip()) == (1, "No such server.")

            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0
            assert "Proxy web started." in p.stdout
            assert "Stopping proxy web in 5000 ms." in p.stdout
            assert "Proxy web stopped (cumulated conns: FE: " in p.stdout
            assert not sock.exists()
            assert session_pids(p.pid) == []


def test_server_state_survives_a_reload(tmp_path):
    """A server disabled at run time stays disabled, and a server its checks found DOWN
    stays DOWN, in the next generation (HAProxy's load-server-state-from-file)."""
    path, port = tmp_path / "pylb.yaml", free_port()
    sock = tmp_path / "admin.sock"
    dead = free_port()  # nothing listens there
    # dead is checked second: its first check in a fresh worker comes half an `inter`
    # (2 s) after the start, so a new generation that did not inherit its state would
    # show it UP (init-state up) right after the reload.
    health = "    health: {type: tcp, inter: 4s, rise: 2, fall: 1}"
    with http_backend("web1") as b1, http_backend("web2") as b2:
        servers = {"web1": b1, "dead": dead, "web2": b2}
        write(
            path, port, servers, workers=1, extra_global=f'  admin_socket: "{sock}"', health=health
        )
        with pylb("run", "-c", str(path)) as p:
            p.wait_output("Loading success")
            rc, out = ctl(sock, "disable", "server", "web/web2")
            assert rc == 0, out
            p.wait_output("Server web/dead is DOWN")
            p.signal(signal.SIGHUP)
            p.wait_output("Reload done: generation 1")
            p.wait_output("Server state of 3 server(s) taken over from g0-w0.sock")
            rows = stat_rows(ctl(sock, "show", "stat")[1])
            assert rows["web2"]["status"] == "MAINT"
            assert rows["dead"]["status"].startswith("DOWN")
            assert {server_of(port) for _ in range(10)} == {"web1"}
            p.signal(signal.SIGTERM)
            assert p.wait(20) == 0


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a unix datagram socket in tmp_path."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(10.0)  # a missing message fails the test, it does not hang
        self.watchdogs = 0

    def recv(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def expect(self, key: str) -> dict[str, str]:
        """The next message carrying `key`, counting the WATCHDOG=1 pings before it."""
        while True:
            msg = self.recv()
            if key in msg:
                return msg
            if msg.get("WATCHDOG") == "1":
                self.watchdogs += 1
                continue
            raise AssertionError(f"expected {key}, got {msg}")

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(10.0)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def notified_pylb(config: Path, notify: Path, watchdog_usec: int) -> Iterator[Proc]:
    env = pylb_env()
    env["NOTIFY_SOCKET"] = str(notify)
    env["WATCHDOG_USEC"] = str(watchdog_usec)
    p = Proc([sys.executable, "-m", "pylb", "run", "-c", str(config)], env=env)
    try:
        yield p
    finally:
        p.kill_all()


def test_notify_protocol_and_watchdog(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    systemd = FakeSystemd(tmp_path / "notify.sock")
    try:
        with http_backend("web1") as b1:
            write(path, port, {"web1": b1})
            with notified_pylb(path, tmp_path / "notify.sock", 200_000) as p:
                ready = systemd.expect("READY")
                assert ready["READY"] == "1" and ready["MAINPID"] == str(p.pid)
                assert try_http_get(port) is not None  # READY=1 means it serves
                # WATCHDOG_USEC=0.2 s: pinged every 0.1 s
                for _ in range(3):
                    assert systemd.expect("WATCHDOG")["WATCHDOG"] == "1"
                p.signal(signal.SIGHUP)
                reloading = systemd.expect("RELOADING")
                assert int(reloading["MONOTONIC_USEC"]) > 0
                assert systemd.expect("READY")["READY"] == "1"
                p.wait_output("Reload done: generation 1")
                p.signal(signal.SIGTERM)
                assert systemd.expect("STOPPING")["STOPPING"] == "1"
                assert p.wait(20) == 0
    finally:
        systemd.close()


def test_watchdog_pauses_while_a_worker_is_down(tmp_path):
    """A worker killed 4 times in a row is restarted after 1.6 s: meanwhile the master
    sends no WATCHDOG=1 (systemd would restart a master whose workers keep dying)."""
    path, port = tmp_path / "pylb.yaml", free_port()
    systemd = FakeSystemd(tmp_path / "notify.sock")
    try:
        with http_backend("web1") as b1:
            write(path, port, {"web1": b1}, workers=1)
            with notified_pylb(path, tmp_path / "notify.sock", 100_000) as p:
                systemd.expect("READY")
                victim = 0
                for delay in ("0.1", "0.2", "0.4", "0.8", "1.6"):
                    victim = wait_for(
                        lambda v=victim: next((c for c in p.children() if c != v), None),
                        10,
                        "a (restarted) worker",
                    )
                    os.kill(victim, signal.SIGKILL)
                    p.wait_output(
                        f"Worker {victim} was killed by signal 9 (SIGKILL), restarting in {delay} s"
                    )
                systemd.drain()  # pings sent before the last kill
                systemd.sock.settimeout(1.0)
                try:
                    msg = systemd.recv()
                except TimeoutError:
                    msg = None
                assert msg is None, f"pinged while the worker was down: {msg}"
                systemd.sock.settimeout(10.0)
                systemd.watchdogs = 0
                assert systemd.expect("WATCHDOG")  # back once the worker is restarted
                p.signal(signal.SIGTERM)
                assert p.wait(20) == 0
    finally:
        systemd.close()


def test_event_log_to_a_syslog_unix_socket(tmp_path):
    path, port = tmp_path / "pylb.yaml", free_port()
    logsock = tmp_path / "log.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(logsock))
    rx.settimeout(10)
    try:
        with http_backend("web1") as b1:
            write(path, port, {"web1": b1}, workers=1)
            path.write_text(
                path.read_text().replace(
                    "log: {target: stdout, level: info}",
                    f'log: {{target: "syslog:{logsock}", level: notice, format: rfc5424}}',
                )
            )
            with pylb("run", "-c", str(path)) as p:
                got: list[str] = []
                while not any("Loading success." in m for m in got):
                    got.append(rx.recv(65536).decode())
                assert any(m.startswith("<29>1 ") and " pylb " in m for m in got), got
                assert any("Proxy web started." in m for m in got), got
                p.signal(signal.SIGTERM)
                assert p.wait(20) == 0
    finally:
        rx.close()


CHILD = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *a: print("USR1", flush=True))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("ready", flush=True)
for _ in range(600):
    time.sleep(0.05)
"""


def test_stop_with_a_vrrp_speaker_soft_stops_until_the_vips_are_released():
    """ARCHITECTURE.md "Stopping a node": with a speaker, SIGTERM first makes the workers
    soft-stop (SIGUSR1: keep accepting, Connection: close) and tells the speaker to go
    (SIGTERM: priority 0, VIPs removed); the workers drain only once the speaker is gone.
    Real child processes stand in for the worker and the speaker."""
    from pylb.config.load import config_from_dict
    from pylb.supervisor import Master, Slot

    config = config_from_dict(
        {
            "listen": {
                "web": {"bind": "127.0.0.1:1", "servers": [{"name": "a", "address": "127.0.0.1:2"}]}
            }
        }
    )
    worker = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    speaker = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "ready\n"
        assert speaker.stdout.readline() == "ready\n"
        master = Master(config)
        master.slots = [Slot("worker", 0, pid=worker.pid, ready=True)]
        master.vrrp = Slot("vrrp", 0, pid=speaker.pid, ready=True)
        master.stop("SIGTERM")
        assert worker.stdout.readline() == "USR1\n"  # soft stop, still serving
        assert speaker.wait(10) == 0  # the speaker was told to release the VIPs
        assert worker.poll() is None
        assert not master._vips_released(time.monotonic())  # its exit is not reaped yet
        master.vrrp.pid = 0  # what _reap() does
        assert master._vips_released(time.monotonic())
        master._stop_workers()
        assert worker.wait(10) == 0  # now the workers drain
    finally:
        for proc in (worker, speaker):
            proc.kill()
            proc.wait()
            proc.stdout.close()
