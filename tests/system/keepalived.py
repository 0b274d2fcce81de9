"""A real keepalived (Debian 2.2.7) inside a lab namespace, for interop tests.

`Keepalived(node, workdir, vrid=..., priority=..., vips=[...], version=2|3, ...)` writes a
config, `start()` runs `keepalived -n -l -D --vrrp -f CONF -p PID -r VRRP_PID` in the
node's namespace (foreground, own pid files, own process group), `stop()` sends SIGTERM
(keepalived then sends priority 0 and removes its VIPs), `kill()` SIGKILLs the process
group and removes the VIPs itself: a SIGKILLed keepalived leaves them on the interface
(FACTS.md), whereas a crashed machine's addresses go with it. State is read from the
interface (does it hold the VIP?), the only thing a peer can observe too.

The `keepalived` fixture factory starts as many as a test asks for and always stops them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.system.netns import Node, has_address, ip, wait_until


def keepalived_missing() -> str | None:
    if shutil.which("keepalived") is None:
        return "keepalived is not installed (apt-get install keepalived)"
    return None


class Keepalived:
    def __init__(
        self,
        node: Node,
        workdir: Path,
        *,
        vrid: int,
        priority: int,
        vips: Sequence[str],
        version: int = 2,
        advert_int: float = 1.0,
        auth_pass: str | None = None,
        unicast_src: str | None = None,
        unicast_peers: Sequence[str] = (),
        state: str = "BACKUP",
        preempt: bool = True,
        name: str = "VI_1",
    ) -> None:
        self.node = node
        self.dir = workdir
        self.vrid = vrid
        self.priority = priority
        self.vips = [ipaddress.ip_interface(v) for v in vips]
        self.version = version
        self.advert_int = advert_int
        self.auth_pass = auth_pass
        self.unicast_src = unicast_src
        self.unicast_peers = list(unicast_peers)
        self.state = state
        self.preempt = preempt
        self.name = name
        self.conf = workdir / f"keepalived-{node.ns}-{vrid}.conf"
        self.pidfile = workdir / f"keepalived-{node.ns}-{vrid}.pid"
        self.vrrp_pidfile = workdir / f"keepalived-{node.ns}-{vrid}.vrrp.pid"
        self.logfile = workdir / f"keepalived-{node.ns}-{vrid}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        lines = ["global_defs {", f"    router_id pylbt_{self.node.index}"]
        if self.version == 3:
            lines.append("    vrrp_version 3")
        lines += ["}", f"vrrp_instance {self.name} {{"]
        lines += [
            f"    state {self.state}",
            f"    interface {self.node.ifname}",
            f"    virtual_router_id {self.vrid}",
            f"    priority {self.priority}",
            f"    advert_int {self.advert_int:g}",
        ]
        if not self.preempt:
            lines.append("    nopreempt")
        if self.auth_pass is not None:
            lines += [
                "    authentication {",
                "        auth_type PASS",
                f"        auth_pass {self.auth_pass}",
                "    }",
            ]
        if self.unicast_src:
            lines.append(f"    unicast_src_ip {self.unicast_src}")
        if self.unicast_peers:
            lines.append("    unicast_peer {")
            lines += [f"        {p}" for p in self.unicast_peers]
            lines.append("    }")
        lines.append("    virtual_ipaddress {")
        lines += [f"        {v.with_prefixlen}" for v in self.vips]
        lines += ["    }", "}"]
        return "\n".join(lines) + "\n"

    def start(self) -> Keepalived:
        self.conf.write_text(self.config_text())
        argv = [
            "ip", "netns", "exec", self.node.ns,
            "keepalived", "-n", "-l", "-D", "--vrrp",
            "-f", str(self.conf), "-p", str(self.pidfile), "-r", str(self.vrrp_pidfile),
        ]  # fmt: skip
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    # ---- observation
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def holds_vips(self) -> bool:
        return all(has_address(self.node.ns, str(v.ip), self.node.ifname) for v in self.vips)

    def holds_none(self) -> bool:
        return not any(has_address(self.node.ns, str(v.ip), self.node.ifname) for v in self.vips)

    def wait_master(self, timeout: float = 6.0) -> float:
        """Seconds until every VIP is on the interface (fails with the log on timeout)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not self.holds_vips():
            if not self.running():
                pytest.fail(f"keepalived exited:\n{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"keepalived not master in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.01)  # poll interval of a deadline-bounded condition check
        return time.monotonic() - t0

    def wait_released(self, timeout: float = 6.0) -> float:
        t0 = time.monotonic()
        wait_until(self.holds_none, timeout, f"keepalived on {self.node.ns} to drop its VIPs")
        return time.monotonic() - t0

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ---- ending
    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait: keepalived sends priority 0 and removes its VIPs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._reap_group()
        self.proc = None

    def kill(self) -> None:
        """Crash it: SIGKILL the whole group, then remove the VIPs it leaves behind."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None
        for v in self.vips:
            ip(self.node.ns, "addr", "del", v.with_prefixlen, "dev", self.node.ifname, check=False)

    def _reap_group(self) -> None:
        # The VRRP child may outlive the parent by a moment; never leave it running.
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def keepalived(tmp_path: Path) -> Iterator[type[Keepalived]]:
    """Factory: `keepalived(node, tmp, ...)`-style constructor whose products are all
    stopped afterwards. Usage: `k = keepalived(node, vrid=.., ...).start()`."""
    reason = keepalived_missing()
    if reason is not None:
        pytest.skip(reason)
    started: list[Keepalived] = []

    class _Tracked(Keepalived):
        def __init__(self, node: Node, **kw: object) -> None:
            super().__init__(node, tmp_path, **kw)  # type: ignore[arg-type]
            started.append(self)

    try:
        yield _Tracked
    finally:
        for k in started:
            with contextlib.suppress(Exception):
                k.stop(timeout=3.0)
            if k.proc is not None:
                k.kill()
