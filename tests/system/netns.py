"""Network-namespace labs for the VRRP system tests.

A `Lab` is N node namespaces, each with an `eth0` plugged into one bridge that lives in
a namespace of its own, so nothing touches the host's network. Names are `pylbt-` plus a
random tag (parallel runs and leftovers of a crashed run never collide); addresses come
from the documentation ranges only: node i has 192.0.2.(10+i)/24 and 2001:db8::(10+i)/64.

Cleanup is unconditional: the `lab` fixture tears down in `finally`, and an atexit hook
removes whatever an interrupted session left (processes still inside one of our
namespaces are SIGKILLed first: a namespace is only freed once nothing holds it).

Helpers: `run(ns, *argv)` (a command inside a namespace, via `ip netns exec`),
`inside(ns)` (a context manager that moves the *calling thread* into the namespace, so
sockets created in the block belong to it: a socket keeps its namespace for life),
`call_in(ns, fn, ...)`, `set_link(ns, ifname, up)`, `addresses(ns, ifname)` and
`wait_until(cond, timeout, what)` (poll a condition with a deadline; tests never sleep).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

PREFIX = "pylbt-"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
IFNAME = "eth0"
NET4 = ipaddress.IPv4Network("192.0.2.0/24")  # RFC 5737 TEST-NET-1
NET6 = ipaddress.IPv6Network("2001:db8::/64")  # RFC 3849 documentation prefix

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_live_labs: set[Lab] = set()


def skip_reason() -> str | None:
    """Why this machine cannot run namespace tests, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets)"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "iproute2 (`ip`) is not installed"
    return None


def require_netns() -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)


def run(
    ns: str | None, *argv: str, check: bool = True, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside namespace `ns` (the host's when None); output captured."""
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip -n ns ...` (cheaper than `ip netns exec ns ip ...`: no mount namespace)."""
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block with the calling thread in namespace `ns`, then come back.

    setns(2) with CLONE_NEWNET moves only the calling thread, and sockets (raw, netlink)
    stay in the namespace they were created in, so a test can build its sockets here and
    use them from the event loop afterwards. Interface names and indexes resolved in the
    block are the namespace's.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def call_in(ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn` with the calling thread inside `ns` (see `inside`)."""
    with inside(ns):
        return fn(*args, **kwargs)


def set_link(ns: str, ifname: str, up: bool) -> None:
    ip(ns, "link", "set", ifname, "up" if up else "down")


def addresses(ns: str, ifname: str = IFNAME) -> list[str]:
    """Addresses on `ifname` as 'addr/prefix' strings (`ip -j addr show`)."""
    out = ip(ns, "-j", "addr", "show", "dev", ifname).stdout
    found = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", ()):
            found.append(f"{a['local']}/{a['prefixlen']}")
    return found


def has_address(ns: str, addr: str, ifname: str = IFNAME) -> bool:
    want = ipaddress.ip_address(addr.split("/")[0])
    return any(ipaddress.ip_address(a.split("/")[0]) == want for a in addresses(ns, ifname))


def ns_pids(ns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]  # our own listing: digits


def wait_until(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    """Poll `cond` until it returns a true value or `timeout` passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        # A poll interval, not a wait for a condition: the condition is re-checked.
        time.sleep(step)


@dataclass(frozen=True, slots=True)
class Node:
    ns: str
    index: int
    ifname: str
    mac: str
    ip4: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    ll6: ipaddress.IPv6Address  # link-local: the source of VRRPv3 IPv6 adverts

    @property
    def ifindex(self) -> int:
        return call_in(self.ns, socket.if_nametoindex, self.ifname)


class Lab:
    """N node namespaces on one bridge (the bridge in its own namespace)."""

    def __init__(self, nodes: int = 2) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge_ns = f"{PREFIX}{self.tag}-br"
        self.names = [f"{PREFIX}{self.tag}-n{i}" for i in range(nodes)]
        self.nodes: list[Node] = []
        self._created: list[str] = []

    # ---- lifecycle
    def setup(self) -> Lab:
        _live_labs.add(self)
        for ns in (self.bridge_ns, *self.names):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._created.append(ns)
            ip(ns, "link", "set", "lo", "up")
        ip(self.bridge_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip(self.bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            # No DAD in the lab: addresses (and the link-local VRRPv3 source) are usable
            # at once, so tests need not wait ~1 s per interface.
            run(
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            )
            mac = f"02:00:5e:{int(self.tag[:2], 16):02x}:{int(self.tag[2:4], 16):02x}:{i + 1:02x}"
            ip(
                ns,
                "link",
                "add",
                IFNAME,
                "address",
                mac,
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
                "netns",
                self.bridge_ns,
            )
            ip(self.bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            ip4 = NET4[10 + i]
            ip6 = NET6[10 + i]
            ip(ns, "addr", "add", f"{ip4}/24", "dev", IFNAME)
            ip(ns, "addr", "add", f"{ip6}/64", "dev", IFNAME, "nodad")
            ip(ns, "link", "set", IFNAME, "up")
            ll6 = _link_local(mac)
            self.nodes.append(Node(ns, i, IFNAME, mac, ip4, ip6, ll6))
        for node in self.nodes:
            wait_until(lambda n=node: _ll_ready(n), 5.0, f"link-local address on {node.ns}")
        return self

    def cleanup(self) -> None:
        """Idempotent: kill what runs inside our namespaces, then delete them."""
        for ns in reversed(self._created):
            for pid in ns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created.clear()
        _live_labs.discard(self)

    def __enter__(self) -> Lab:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ---- conveniences
    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]


def _link_local(mac: str) -> ipaddress.IPv6Address:
    """EUI-64 link-local address the kernel derives from `mac` (RFC 4291 App. A)."""
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui)


def _ll_ready(node: Node) -> bool:
    return has_address(node.ns, str(node.ll6), node.ifname)


def _cleanup_all() -> None:
    for lab in list(_live_labs):
        lab.cleanup()


def sweep() -> list[str]:
    """Remove every `pylbt-*` namespace (and what runs inside): leftovers of a run that
    was SIGKILLed before its atexit hook. Only when no test run is active:
    `python -m tests.system.netns`."""
    removed = []
    for ns in sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else ():
        if ns.startswith(PREFIX):
            for pid in ns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            removed.append(ns)
    return removed


atexit.register(_cleanup_all)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Two nodes on a bridge; removed afterwards whatever happened."""
    require_netns()
    lab = Lab(2)
    try:
        lab.setup()
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def lab3() -> Iterator[Lab]:
    """Three nodes on a bridge."""
    require_netns()
    lab = Lab(3)
    try:
        lab.setup()
        yield lab
    finally:
        lab.cleanup()


if __name__ == "__main__":
    print("\n".join(sweep()) or "no pylbt-* namespaces")
