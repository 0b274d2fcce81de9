"""Adverts keep their interval while the proxy worker is at 100% CPU (issue 4, point 8).

A real ``pylb run`` (master, one worker, the VRRP speaker as the master's child) runs in
lab node 0 as the VRRP master (priority 255: master at once) with a TCP listener on the
node's loopback in front of a backend that streams data as fast as it can; a client
process in the same namespace reads as fast as it can on a few connections, for a
bounded time; both generators run at nice 19. Every byte passes through the worker (two
copies and the asyncio protocol callbacks per chunk), so the worker is the bottleneck:
it wants 100% of a core. That is asserted, not assumed: over the window the worker's
main thread was on a CPU or queued for one (/proc/PID/schedstat) at least 90% of the
time, i.e. it never waited for I/O. The CPU it actually got (/proc/PID/stat utime +
stime) is printed: less than a whole core when other processes compete for the cores
(which only makes the speaker's job harder).

Meanwhile node 1 listens on a raw VRRP socket (`VrrpSocket`, the wire a peer sees) and
timestamps node 0's adverts: every interval must stay within 20 ms of 1 s. This is what
the speaker's own process buys (docs/vrrp.md "Running under `pylb run`"): a saturated
data plane cannot delay it. The figures are printed (-s).

Root only; documentation addresses; every namespace and process is removed afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylb.vrrp.transport import VrrpSocket
from tests.system import netns as _netns
from tests.system.conftest_vrrp import instance
from tests.system.netns import Lab, has_address, inside, ip, wait_until

lab = _netns.lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VIP = "192.0.2.100"
PORT = 18080  # inside the node's own namespace: nothing else listens there
LOAD_SECONDS = 9.0  # the client's bound; the adverts are measured inside it
CONNECTIONS = 16
ADVERTS = 7  # 6 intervals
JITTER = 0.020
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The backend: streams a 256 KiB buffer to every connection until it goes away or
# its time is up (the port is printed for the test to read back).
STREAMER = f"""
import socket, sys, threading, time
end = time.monotonic() + {LOAD_SECONDS + 20.0}
buf = b"x" * (256 * 1024)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
def serve(c):
    with c:
        try:
            while time.monotonic() < end:
                c.sendall(buf)
        except OSError:
            pass
srv.settimeout(1.0)
while time.monotonic() < end:
    try:
        c, _ = srv.accept()
    except TimeoutError:
        continue
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# The client: CONNECTIONS readers through the proxy, as fast as recv_into allows, for
# a bounded time; prints the bytes read.
SINK = f"""
import socket, threading, time
end = time.monotonic() + {LOAD_SECONDS}
total = [0] * {CONNECTIONS}
def read(i):
    s = socket.create_connection(("127.0.0.1", {PORT}), timeout=5)
    buf = bytearray(1 << 20)
    with s:
        while time.monotonic() < end:
            n = s.recv_into(buf)
            if not n:
                break
            total[i] += n
ts = [threading.Thread(target=read, args=(i,)) for i in range({CONNECTIONS})]
for t in ts: t.start()
while time.monotonic() < end and not all(total):
    time.sleep(0.005)  # until data flows on every connection
print("ready", flush=True)
for t in ts: t.join()
print(sum(total), flush=True)
"""


def report(msg: str) -> None:
    print(f"\n[vrrp-busy-worker] {msg}", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # kernel's own decimal fields


def sched_seconds(pid: int) -> tuple[float, float]:
    """(on a CPU, runnable but waiting for one) of `pid`'s main thread, in seconds
    (/proc/PID/schedstat, nanoseconds). Their sum over a window equal to the window
    means the worker never went to sleep waiting for I/O: it wanted 100% of a core."""
    with open(f"/proc/{pid}/schedstat") as f:
        run_ns, wait_ns, _ = f.read().split()
    return int(run_ns) / 1e9, int(wait_ns) / 1e9  # kernel's own decimal fields


def spawn(ns: str, code: str) -> subprocess.Popen[str]:
    """A load generator at nice 19: with three busy processes on two cores the fair
    share would give the worker 2/3 of a core; niced generators yield the CPU to it
    (and still keep up: the worker, with two copies and its callbacks per chunk, is
    the slower side)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "nice", "-n", "19", sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


@pytest.fixture
def busy_node(lab: Lab, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`pylb run` on node 0 (VRRP master) with the streaming backend behind its
    listener; yields the worker's pid and the processes."""
    node = lab[0]
    streamer = spawn(node.ns, STREAMER)
    pylb: subprocess.Popen[bytes] | None = None
    logfile = tmp_path / "pylb.log"
    try:
        assert streamer.stdout is not None
        line = streamer.stdout.readline().strip()
        assert line.isdigit(), (
            f"backend did not start: {streamer.stderr.read() if streamer.stderr else ''}"
        )
        backend_port = int(line)  # printed by our own backend: digits checked above
        conf = tmp_path / "pylb.yaml"
        config = {
            "global": {"workers": 1, "log": {"target": "stdout", "level": "info"}},
            "listen": {
                "stream": {
                    "mode": "tcp",
                    "bind": f"127.0.0.1:{PORT}",
                    "servers": [{"name": "s1", "address": f"127.0.0.1:{backend_port}"}],
                }
            },
            "vrrp": {"instances": [instance(priority=255, advert="1s", vips=[f"{VIP}/24"])]},
        }
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        with open(logfile, "ab") as log:
            pylb = subprocess.Popen(
                ["ip", "netns", "exec", node.ns, sys.executable, "-m", "pylb", "run",
                 "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )  # fmt: skip

        def worker_pid() -> int | None:
            if pylb.poll() is not None:
                pytest.fail(f"pylb exited:\n{logfile.read_text()}", pytrace=False)
            m = re.search(r"Started worker (\d+) \(slot 0\)", logfile.read_text(errors="replace"))
            return int(m.group(1)) if m else None  # our regex matched digits only

        pid = wait_until(worker_pid, 15.0, "the worker to start")
        wait_until(lambda: has_address(node.ns, VIP, node.ifname), 10.0, "node 0 holding the VIP")

        def accepting() -> bool:
            with inside(node.ns):
                probe = socket.socket()
            try:
                probe.settimeout(1.0)
                return probe.connect_ex(("127.0.0.1", PORT)) == 0
            finally:
                probe.close()

        wait_until(accepting, 10.0, "the listener to accept", step=0.05)
        yield {"node": node, "worker": pid, "pylb": pylb, "log": logfile}
    finally:
        if pylb is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pylb.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                pylb.wait(5)
        stop(streamer)
        ip(node.ns, "addr", "del", f"{VIP}/24", "dev", node.ifname, check=False)


def test_adverts_keep_their_interval_while_the_worker_is_saturated(lab: Lab, busy_node) -> None:
    node, peer = busy_node["node"], lab[1]
    worker = busy_node["worker"]
    with inside(peer.ns):
        sock = VrrpSocket(peer.ifname, 4)
    client = None
    try:
        client = spawn(node.ns, SINK)
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready", "the client never got data"
        t_start = time.monotonic()
        arrivals: list[float] = []
        cpu0, (run0, wait0) = cpu_seconds(worker), sched_seconds(worker)
        t_cpu0 = time.monotonic()
        deadline = t_start + LOAD_SECONDS - 0.3
        while len(arrivals) < ADVERTS and time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], 1.5)
            if r and (dg := sock.recv()) is not None and dg.src == node.ip4:
                arrivals.append(time.monotonic())
        cpu1, (run1, wait1) = cpu_seconds(worker), sched_seconds(worker)
        t_cpu1 = time.monotonic()
        out, err = client.communicate(timeout=LOAD_SECONDS + 10)
        assert client.returncode == 0, err
        assert t_cpu1 < t_start + LOAD_SECONDS - 0.3  # measured while the load ran
        moved = int(out.strip()) if out.strip().isdigit() else 0  # our sink's own output
        window = t_cpu1 - t_cpu0
        share = (cpu1 - cpu0) / window
        busy = (run1 - run0 + wait1 - wait0) / window
        assert len(arrivals) == ADVERTS, f"adverts missing: {len(arrivals)}"
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        jitter = max(abs(g - 1.0) for g in gaps)
        report(
            f"worker {worker} over {window:.1f}s: {100 * share:.0f}% of a core used, runnable "
            f"{100 * busy:.0f}% of the time (proxied {moved / (1 << 20) / LOAD_SECONDS:.0f} "
            f"MiB/s); advert gaps {', '.join(f'{1000 * g:.1f}' for g in gaps)} ms; "
            f"jitter {1000 * jitter:.1f} ms"
        )
        # Saturated: the worker never waited for I/O (on a CPU or queued for one). How
        # much CPU it actually got depends on what else this machine runs; printed.
        assert busy >= 0.9, f"the worker was not saturated (runnable {100 * busy:.0f}%)"
        assert jitter < JITTER
        assert busy_node["pylb"].poll() is None
        assert has_address(node.ns, VIP, node.ifname)
    finally:
        sock.close()
        stop(client)
