"""Virtual IP addresses and link state over rtnetlink (pyroute2 messages).

What the VRRP shell needs from the kernel: put the VIPs on the interface when becoming
master, take them off when leaving it (and at start, when a crashed predecessor left them
behind), and know when the interface goes down (FAULT).

Why not `pyroute2.IPRoute`: in pyroute2 0.9 the synchronous `IPRoute` drives a private
asyncio loop with `run_until_complete`, which raises "This event loop is already running"
when called from the speaker's loop thread, and `AsyncIPRoute` cannot run on uvloop
("cannot open a UDP handle, invalid family 16"; both checked with 0.9.7). So this module
keeps pyroute2 for what it does well (encoding and parsing rtnetlink messages:
`ifaddrmsg`, `ifinfmsg`, `MarshalRtnl`) and talks to the kernel over a plain netlink
socket. An address add/remove is one request and one ack, answered by the kernel in
microseconds, so the requests block (as keepalived's netlink calls do) and work from any
thread or loop. Link events come from a second, non-blocking socket subscribed to
RTMGRP_LINK, read with `loop.add_reader`.

Sockets belong to the network namespace current when they are created (tests create them
inside a namespace); everything afterwards goes through them, never through the thread's
namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_RUNNING, IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from pylb.vrrp.types import IPInterface

log = logging.getLogger("pylb.vrrp.vip")

NETLINK_ROUTE = 0
RECV_SIZE = 65536  # one netlink datagram; a dump comes as several
SOCK_BUF = 1 << 20  # link-event bursts (many interfaces flapping) must not overflow
RT_SCOPE_UNIVERSE = 0


class NetlinkRequestError(OSError):
    """The kernel refused a request; `errno` is the kernel's code."""


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One interface as the kernel reports it."""

    index: int
    name: str
    flags: int
    operstate: str
    mac: bytes

    @property
    def up(self) -> bool:
        """Usable for VRRP: administratively up and carrier present (keepalived's test)."""
        return bool(self.flags & IFF_UP) and bool(self.flags & IFF_RUNNING)


@dataclass(frozen=True, slots=True)
class LinkChange:
    """An interface we watch went up or down (only transitions are reported)."""

    name: str
    up: bool


def _open(groups: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def _link_info(msg: Any) -> LinkInfo:
    mac = msg.get_attr("IFLA_ADDRESS") or ""
    return LinkInfo(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        flags=msg["flags"],
        operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
        mac=bytes.fromhex(mac.replace(":", "")),
    )


class Rtnl:
    """A blocking rtnetlink request/response channel (one socket, one caller at a time)."""

    __slots__ = ("_marshal", "_seq", "sock")

    def __init__(self) -> None:
        self.sock = _open()
        self._marshal = MarshalRtnl()
        self._seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: Any, msg_type: int, flags: int) -> list[Any]:
        """Send `msg`, collect the answer; raise NetlinkRequestError on a kernel error."""
        seq = next(self._seq)
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        self.sock.send(msg.data)
        dump = bool(flags & NLM_F_DUMP)
        out: list[Any] = []
        while True:
            data = self.sock.recv(RECV_SIZE)
            for reply in self._marshal.parse(data):
                if reply["header"]["sequence_number"] != seq:
                    continue  # a late answer to an earlier, abandoned request
                rtype = reply["header"]["type"]
                err = reply["header"].get("error")
                if err is not None:
                    code = getattr(err, "code", errno.EIO)
                    raise NetlinkRequestError(code, f"{_strerror(code)} (rtnetlink)")
                if rtype == NLMSG_ERROR or (rtype == NLMSG_DONE and dump):
                    return out  # an ack (error 0) or the end of a dump
                out.append(reply)
                multi = reply["header"]["flags"] & NLM_F_MULTI
                if not dump and not multi and not flags & NLM_F_ACK:
                    return out  # a single answer to a plain GET

    # ---- queries
    def link(self, name: str) -> LinkInfo:
        """The interface called `name` (ENODEV when there is none)."""
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        replies = self.request(msg, RTM_GETLINK, 0)
        if not replies:
            raise NetlinkRequestError(errno.ENODEV, f"no interface {name!r}")
        return _link_info(replies[0])

    def links(self) -> list[LinkInfo]:
        return [_link_info(m) for m in self.request(ifinfmsg(), RTM_GETLINK, NLM_F_DUMP)]

    def addresses(self, index: int) -> list[IPInterface]:
        """Every address on interface `index` (both families), as ip_interface objects."""
        found: list[IPInterface] = []
        for m in self.request(ifaddrmsg(), RTM_GETADDR, NLM_F_DUMP):
            if m["index"] != index:
                continue
            addr = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
            if addr:
                found.append(ipaddress.ip_interface(f"{addr}/{m['prefixlen']}"))
        return found

    # ---- changes
    def add_address(self, index: int, iface: IPInterface) -> bool:
        """Add `iface` to interface `index`; False when it was already there (idempotent).

        IPv6 addresses get IFA_F_NODAD: a VIP taken over from a dead master must answer
        at once, not after ~1 s of duplicate detection (which the old master's stale
        neighbour entries could even fail).
        """
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        msg["prefixlen"] = iface.network.prefixlen
        msg["scope"] = RT_SCOPE_UNIVERSE
        msg["index"] = index
        attrs: list[tuple[str, Any]] = [
            ("IFA_LOCAL", str(iface.ip)),
            ("IFA_ADDRESS", str(iface.ip)),
        ]
        if iface.version == 6:
            msg["flags"] = IFA_F_NODAD
            attrs.append(("IFA_FLAGS", IFA_F_NODAD))
        msg["attrs"] = attrs
        try:
            self.request(msg, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        except NetlinkRequestError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        return True

    def remove_address(self, index: int, iface: IPInterface) -> bool:
        """Remove `iface` from interface `index`; False when it was not there (idempotent)."""
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        msg["prefixlen"] = iface.network.prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
        try:
            self.request(msg, RTM_DELADDR, NLM_F_ACK)
        except NetlinkRequestError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return False
            raise
        return True


def _strerror(code: int) -> str:
    try:
        return os.strerror(code)
    except ValueError:
        return f"errno {code}"


class VipManager:
    """The VIPs of one VRRP instance on one interface.

    Idempotent by design: the FSM may say "add" twice (re-entering MASTER) and a stop may
    find the addresses already gone (an operator removed them); neither is an error.
    VIPs are matched by address, not prefix, so a leftover with another prefix length
    still counts as ours and is removed.
    """

    __slots__ = ("_own_rtnl", "ifname", "rtnl", "vips")

    def __init__(self, ifname: str, vips: Sequence[IPInterface], rtnl: Rtnl | None = None) -> None:
        self.ifname = ifname
        self.vips = tuple(vips)
        self._own_rtnl = rtnl is None
        self.rtnl = rtnl if rtnl is not None else Rtnl()

    def close(self) -> None:
        if self._own_rtnl:
            self.rtnl.close()

    def __enter__(self) -> VipManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def index(self) -> int:
        """Looked up on every use: an interface re-created gets a new index."""
        return self.rtnl.link(self.ifname).index

    def link(self) -> LinkInfo:
        return self.rtnl.link(self.ifname)

    def list(self) -> list[IPInterface]:
        """All addresses on the interface (ours and the node's own)."""
        return self.rtnl.addresses(self.index)

    def held(self) -> list[IPInterface]:
        """Our VIPs currently on the interface, with the prefix found there."""
        want = {v.ip for v in self.vips}
        return [a for a in self.list() if a.ip in want]

    def add(self) -> list[IPInterface]:
        """Add every VIP; returns those that were missing (and are now present)."""
        index = self.index
        return [v for v in self.vips if self.rtnl.add_address(index, v)]

    def remove(self) -> list[IPInterface]:
        """Remove every VIP present (whatever its prefix); returns those removed."""
        index = self.index
        return [a for a in self.held() if self.rtnl.remove_address(index, a)]

    def remove_stale(self) -> list[IPInterface]:
        """At start: drop VIPs a crashed predecessor left behind (keepalived does too).

        Only addresses equal to one of our configured VIPs are touched; the node's own
        addresses stay.
        """
        removed = self.remove()
        if removed:
            log.warning("removed stale VIPs %s from %s", ", ".join(map(str, removed)), self.ifname)
        return removed


class LinkWatcher:
    """Up/down transitions of chosen interfaces, from RTM_NEWLINK/RTM_DELLINK events.

    A non-blocking netlink socket subscribed to RTMGRP_LINK: `fileno()` goes to
    `loop.add_reader`, `poll()` drains it and returns only transitions of the watched
    names. A receive-buffer overrun (ENOBUFS: events were lost) is answered by asking
    the kernel for the current state, so a missed "down" cannot hide a fault.
    """

    __slots__ = ("_loop", "_marshal", "_own_query", "_query", "sock", "state")

    def __init__(self, names: Iterable[str], rtnl: Rtnl | None = None) -> None:
        # Subscribe before reading the initial state: a change in between is then seen
        # twice (harmless) rather than never.
        self.sock = _open(RTMGRP_LINK)
        self.sock.setblocking(False)
        self._marshal = MarshalRtnl()
        self._own_query = rtnl is None
        self._query = rtnl if rtnl is not None else Rtnl()
        self._loop: Any = None
        self.state: dict[str, bool] = dict.fromkeys(names, False)
        self._resync()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.stop()
        self.sock.close()
        if self._own_query:
            self._query.close()

    def _resync(self) -> list[LinkChange]:
        current = {li.name: li.up for li in self._query.links()}
        return self._apply({name: current.get(name, False) for name in self.state})

    def _apply(self, seen: dict[str, bool]) -> list[LinkChange]:
        changes = []
        for name, up in seen.items():
            if name in self.state and self.state[name] != up:
                self.state[name] = up
                changes.append(LinkChange(name, up))
        return changes

    def poll(self) -> list[LinkChange]:
        """Read every pending event; return the transitions, oldest first."""
        changes: list[LinkChange] = []
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return changes
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                log.warning("link events lost (netlink overrun): re-reading link state")
                changes.extend(self._resync())
                continue
            for msg in self._marshal.parse(data):
                mtype = msg["header"]["type"]
                if mtype not in (RTM_NEWLINK, RTM_DELLINK):
                    continue
                info = _link_info(msg)
                changes.extend(self._apply({info.name: mtype == RTM_NEWLINK and info.up}))

    def start(self, loop: Any, callback: Callable[[LinkChange], None]) -> None:
        """Call `callback` for each transition, from `loop`'s reader (no task)."""

        def _readable() -> None:
            for change in self.poll():
                callback(change)

        self._loop = loop
        loop.add_reader(self.sock.fileno(), _readable)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
