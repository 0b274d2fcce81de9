"""pylb VRRP speakers as processes inside lab namespaces, for the speaker system tests.

`SpeakerProc(node, workdir, instances=[...])` writes a pylb YAML config with a `vrrp:`
section, `start()` runs ``python -m pylb.vrrp.speaker -c CONF --control SOCK`` inside
the node's namespace (own process group, log file), `term()` sends SIGTERM and waits
for the exit code, `kill()` SIGKILLs it and removes the VIPs it leaves (a crashed
machine's addresses go with it, FACTS.md). `snapshot()` reads `show vrrp json` over the
control socket (a unix socket in the file system: reachable from any namespace).

The `speakers` fixture is a factory whose products are all stopped afterwards.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylb.vrrp.control import query_json
from tests.system.netns import Node, has_address, ip, wait_until

ROOT = Path(__file__).resolve().parents[2]


def instance(
    name: str = "VI_1",
    *,
    vrid: int = 51,
    priority: int = 100,
    vips: Sequence[str] = ("192.0.2.100/24",),
    version: int = 3,
    advert: str = "1s",
    interface: str = "eth0",
    **extra: Any,
) -> dict[str, Any]:
    """One `vrrp.instances` entry as the YAML has it (fast GARP defaults for tests)."""
    d: dict[str, Any] = {
        "name": name,
        "interface": interface,
        "vrid": vrid,
        "priority": priority,
        "version": version,
        "advert_interval": advert,
        "virtual_ipaddresses": list(vips),
        "garp_master_repeat": 1,
        "garp_master_delay": "0s",
    }
    d.update(extra)
    return d


class SpeakerProc:
    def __init__(
        self,
        node: Node,
        workdir: Path,
        instances: Sequence[dict[str, Any]],
        *,
        tag: str = "",
        sync_groups: Any = None,
        vrrp_extra: dict[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.node = node
        self.instances = list(instances)
        stem = f"speaker-{node.ns}{tag}"
        self.conf = workdir / f"{stem}.yaml"
        self.control = str(workdir / f"{stem}.sock")
        self.logfile = workdir / f"{stem}.log"
        self.sync_groups = sync_groups
        self.vrrp_extra = dict(vrrp_extra or {})
        self.extra_args = list(extra_args)
        self.pass_fds = tuple(pass_fds)
        self.proc: subprocess.Popen[bytes] | None = None
        self.vips = [
            ipaddress.ip_interface(v)
            for inst in self.instances
            for v in inst["virtual_ipaddresses"]
        ]

    def config(self) -> dict[str, Any]:
        vrrp: dict[str, Any] = {"instances": self.instances}
        if self.sync_groups is not None:
            vrrp["sync_groups"] = self.sync_groups
        vrrp.update(self.vrrp_extra)
        return {"vrrp": vrrp}

    def start(self) -> SpeakerProc:
        self.conf.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        with contextlib.suppress(FileNotFoundError):  # a SIGKILLed run's socket file
            os.unlink(self.control)
        argv = [
            "ip", "netns", "exec", self.node.ns,
            sys.executable, "-m", "pylb.vrrp.speaker", "-c", str(self.conf),
            "--control", self.control, "-l", "debug", *self.extra_args,
        ]  # fmt: skip
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
                pass_fds=self.pass_fds,
            )
        return self

    # ---- observation
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def holds(self, vip: str | None = None) -> bool:
        vips = [ipaddress.ip_interface(vip)] if vip else self.vips
        return all(has_address(self.node.ns, str(v.ip), self.node.ifname) for v in vips)

    def holds_none(self) -> bool:
        return not any(has_address(self.node.ns, str(v.ip), self.node.ifname) for v in self.vips)

    def ready(self) -> bool:
        if not os.path.exists(self.control):
            return False
        try:
            self.snapshot()
        except OSError:
            return False
        return True

    def wait_ready(self, timeout: float = 10.0) -> None:
        def ok() -> bool:
            if not self.running():
                pytest.fail(f"speaker on {self.node.ns} exited:\n{self.log_tail()}", pytrace=False)
            return self.ready()

        wait_until(ok, timeout, f"speaker on {self.node.ns} to start")

    def snapshot(self) -> dict[str, Any]:
        return query_json(self.control)

    def inst(self, name: str = "VI_1") -> dict[str, Any]:
        return next(i for i in self.snapshot()["instances"] if i["name"] == name)

    def state(self, name: str = "VI_1") -> str:
        return str(self.inst(name)["state"])

    def wait_state(self, state: str, timeout: float, name: str = "VI_1") -> float:
        t0 = time.monotonic()
        wait_until(lambda: self.state(name) == state, timeout, f"{self.node.ns} {name} {state}")
        return time.monotonic() - t0

    def wait_master(self, timeout: float = 6.0) -> float:
        t0 = time.monotonic()

        def ok() -> bool:
            if not self.running():
                pytest.fail(f"speaker on {self.node.ns} exited:\n{self.log_tail()}", pytrace=False)
            return self.holds()

        wait_until(ok, timeout, f"speaker on {self.node.ns} to hold its VIPs")
        return time.monotonic() - t0

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ---- ending
    def term(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the clean stop sequence); returns the exit status."""
        if self.proc is None:
            return None
        # The speaker only, as the master does (the pid is python's: `ip netns exec`
        # execs it): a group-wide SIGTERM would also hit a notify script in the moment
        # between its fork and its setsid().
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.proc = None
        return rc

    def kill(self) -> None:
        """Crash: SIGKILL, then remove the addresses a dead machine would not keep."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None
        for v in self.vips:
            ip(self.node.ns, "addr", "del", v.with_prefixlen, "dev", self.node.ifname, check=False)


@pytest.fixture
def speakers(tmp_path: Path) -> Iterator[Any]:
    """Factory: `speakers(node, [instance(...)], ...)` -> started SpeakerProc; all are
    stopped (SIGKILL, VIPs removed) afterwards."""
    made: list[SpeakerProc] = []

    def make(node: Node, instances: Sequence[dict[str, Any]], **kw: Any) -> SpeakerProc:
        sp = SpeakerProc(node, tmp_path, instances, **kw)
        made.append(sp)
        return sp.start()

    try:
        yield make
    finally:
        for sp in made:
            with contextlib.suppress(Exception):
                sp.kill()
