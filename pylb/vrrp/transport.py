"""Raw IP-protocol-112 sockets for VRRP adverts (multicast or unicast), bytes only.

The codec (`packet.py`) turns adverts into bytes and back; this module moves the bytes.
One `VrrpSocket` per (interface, address family), non-blocking, for `loop.add_reader`.

Choices, and why:

- TTL / hop limit 255 on send, both multicast and unicast (RFC 5798 §5.1.1.3,
  §5.1.2.3): a receiver drops anything else as "came through a router".
- The received TTL is reported with every datagram: an IPv4 raw socket returns the IP
  header, so it is read from there; IPv6 raw sockets strip the header, so the hop limit
  (IPV6_RECVHOPLIMIT) and the destination (IPV6_RECVPKTINFO) come as ancillary data.
  The destination matters: the VRRPv3 checksum covers it (pseudo-header).
- The source address is set per packet with IP_PKTINFO / IPV6_PKTINFO. It must be known
  to the encoder (VRRPv3 checksum again), and a raw socket *bound* to an address would
  only receive packets addressed to it: the multicast adverts would be lost. keepalived
  uses a second socket for sending instead; one socket is enough here.
  IPv6 multicast adverts are sourced from the interface's link-local address (RFC 5798
  §5.1.2.1), IPv4 from the interface's primary address, unicast from `unicast.src`.
- Joined on the configured interface only (ip_mreqn by ifindex, ipv6_mreq), socket
  bound to the device (SO_BINDTODEVICE), IP_MULTICAST_ALL off (otherwise an IPv4 raw
  socket also gets 224.0.0.18 traffic joined by *other* sockets on other interfaces),
  multicast loop off: our own adverts never come back to us.
- No IPV6_CHECKSUM (keepalived sets offset 6, so the kernel fills and *verifies* the
  checksum): with it the kernel silently drops a bad checksum, and issue 4 wants bad
  checksums counted by `packet.validate`. `packet.encode` already writes the RFC 5798
  checksum for the source and destination used here. `kernel_checksum=True` restores
  keepalived's behaviour.
- Unicast mode: adverts go to each peer (one `send` per peer: the v3 checksum differs
  per destination), and datagrams from anyone but a configured peer are dropped here,
  counted in `dropped_foreign`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pylb.vrrp.types import (
    IPPROTO_VRRP,
    MCAST_GROUP_V4,
    MCAST_GROUP_V6,
    VRRP_TTL,
    Family,
    IPAddress,
)
from pylb.vrrp.vip import Rtnl

log = logging.getLogger("pylb.vrrp.transport")

# Linux <linux/in.h> values Python's socket module does not export.
IP_PKTINFO = 8
IP_MULTICAST_ALL = 49
RECV_SIZE = 4096  # an advert is at most 8 + 255*16 bytes + headers; more is not VRRP
RCVBUF = 256 * 1024
_CMSG_SPACE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4)


class Datagram:
    """One received VRRP message: unpacks as `(payload, src, ttl, dst)`.

    `raw` is what the kernel handed over: the whole IPv4 packet (header included), or
    the bare payload for IPv6. `decode_args()` gives what `packet.decode` expects.
    """

    __slots__ = ("dst", "payload", "raw", "src", "ttl")

    def __init__(
        self, payload: bytes, src: IPAddress, ttl: int, dst: IPAddress, raw: bytes
    ) -> None:
        self.payload = payload
        self.src = src
        self.ttl = ttl
        self.dst = dst
        self.raw = raw

    def __iter__(self) -> Iterator[Any]:
        return iter((self.payload, self.src, self.ttl, self.dst))

    def __repr__(self) -> str:
        return f"Datagram({len(self.payload)}B from {self.src} to {self.dst} ttl={self.ttl})"

    @property
    def family(self) -> Family:
        return Family(self.src.version)

    def decode_args(self) -> tuple[bytes, Family, dict[str, Any]]:
        """`packet.decode(data, family, **kwargs)` arguments for this datagram."""
        if self.src.version == 4:
            return self.raw, Family.V4, {}
        return self.payload, Family.V6, {"src": self.src, "dst": self.dst, "hop_limit": self.ttl}


def _pick_src(rtnl: Rtnl, index: int, family: Family, exclude: set[IPAddress]) -> IPAddress:
    """The interface's primary IPv4 address, or its IPv6 link-local address."""
    for iface in rtnl.addresses(index):
        ip = iface.ip
        if ip.version != family or ip in exclude:
            continue
        if family is Family.V6 and not ip.is_link_local:
            continue
        return ip
    kind = "IPv4" if family is Family.V4 else "IPv6 link-local"
    raise OSError(errno.EADDRNOTAVAIL, f"no {kind} address on interface #{index}")


class VrrpSocket:
    """A raw VRRP socket on one interface; non-blocking; see the module docstring.

    `peers` empty means multicast (224.0.0.18 / ff02::12); otherwise unicast to those
    peers only. `src` defaults to the interface address VRRP uses (primary IPv4, or the
    IPv6 link-local); `exclude` lists addresses never to pick as source (the VIPs).
    Create it in the network namespace it is for.
    """

    __slots__ = (
        "_loop",
        "dropped_foreign",
        "dropped_own",
        "family",
        "group",
        "ifindex",
        "ifname",
        "own",
        "peers",
        "send_errors",
        "sock",
        "src",
    )

    def __init__(
        self,
        ifname: str,
        family: Family | int,
        *,
        src: IPAddress | None = None,
        peers: Sequence[IPAddress] = (),
        exclude: Sequence[IPAddress] = (),
        kernel_checksum: bool = False,
        rtnl: Rtnl | None = None,
    ) -> None:
        self.family = Family(family)
        self.ifname = ifname
        self.peers = tuple(peers)
        if any(p.version != self.family for p in self.peers):
            raise ValueError("unicast peers must be of the socket's address family")
        self.group: IPAddress = MCAST_GROUP_V4 if self.family is Family.V4 else MCAST_GROUP_V6
        self.dropped_foreign = 0
        self.dropped_own = 0
        self.send_errors = 0
        self._loop: Any = None
        own_rtnl = rtnl is None
        q = rtnl if rtnl is not None else Rtnl()
        try:
            link = q.link(ifname)
            self.ifindex = link.index
            if src is None:
                src = _pick_src(q, self.ifindex, self.family, set(exclude))
            elif src.version != self.family:
                raise ValueError(f"source {src} is not IPv{int(self.family)}")
            self.src: IPAddress = src
            self.own = frozenset(a.ip for a in q.addresses(self.ifindex)) | {src}
        finally:
            if own_rtnl:
                q.close()
        af = socket.AF_INET if self.family is Family.V4 else socket.AF_INET6
        self.sock = socket.socket(af, socket.SOCK_RAW | socket.SOCK_CLOEXEC, IPPROTO_VRRP)
        try:
            self._configure(kernel_checksum)
        except OSError:
            self.sock.close()
            raise

    @property
    def unicast(self) -> bool:
        return bool(self.peers)

    @property
    def destinations(self) -> tuple[IPAddress, ...]:
        """Where one advert goes: the group, or every unicast peer."""
        return self.peers if self.peers else (self.group,)

    def _configure(self, kernel_checksum: bool) -> None:
        s = self.sock
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        if self.family is Family.V4:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, VRRP_TTL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, VRRP_TTL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            mreqn = struct.pack("=4s4si", self.group.packed, self.src.packed, self.ifindex)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            if not self.unicast:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, VRRP_TTL)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, VRRP_TTL)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            if kernel_checksum:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 6)
            if not self.unicast:
                mreq = struct.pack("=16sI", self.group.packed, self.ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.stop()
        self.sock.close()

    def __enter__(self) -> VrrpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ send
    def send(self, payload: bytes, dst: IPAddress | None = None) -> bool:
        """Send one VRRP message (IP payload) to `dst` (default: the group).

        Returns False when the kernel had no room (EAGAIN/ENOBUFS) or the link is down
        (ENETDOWN/ENETUNREACH/ENXIO): adverts are periodic, the next one follows, and the
        link-down case is the FAULT tracking's to report. Other errors raise.
        """
        if dst is None:
            dst = self.group
        if self.family is Family.V4:
            cmsg = struct.pack("=i4s4s", self.ifindex, self.src.packed, b"\0\0\0\0")
            anc = [(socket.IPPROTO_IP, IP_PKTINFO, cmsg)]
            addr: Any = (str(dst), 0)
        else:
            cmsg = struct.pack("=16sI", self.src.packed, self.ifindex)
            anc = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, cmsg)]
            scope = self.ifindex if (dst.is_link_local or dst.is_multicast) else 0
            addr = (str(dst), 0, 0, scope)
        try:
            self.sock.sendmsg([payload], anc, 0, addr)
        except (BlockingIOError, InterruptedError):
            self.send_errors += 1
            return False
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.ENETDOWN, errno.ENETUNREACH, errno.ENXIO):
                self.send_errors += 1
                return False
            raise
        return True

    # --------------------------------------------------------------- receive
    def recv(self) -> Datagram | None:
        """The next acceptable datagram, or None when nothing is pending.

        Never blocks. Our own packets and (unicast mode) packets from strangers are
        skipped and counted; truncated garbage is passed on for `packet.decode` to judge.
        """
        while True:
            try:
                dg = self._recv4() if self.family is Family.V4 else self._recv6()
            except (BlockingIOError, InterruptedError):
                return None
            if dg is None:
                continue
            if dg.src in self.own:
                self.dropped_own += 1
                continue
            if self.peers and dg.src not in self.peers:
                self.dropped_foreign += 1
                continue
            return dg

    def _recv4(self) -> Datagram | None:
        data = self.sock.recv(RECV_SIZE)
        if len(data) < 20:
            return None  # the kernel does not deliver these; be safe anyway
        ihl = (data[0] & 0x0F) * 4
        total = int.from_bytes(data[2:4], "big")
        end = total if ihl <= total <= len(data) else len(data)
        return Datagram(
            payload=data[ihl:end],
            src=ipaddress.IPv4Address(data[12:16]),
            ttl=data[8],
            dst=ipaddress.IPv4Address(data[16:20]),
            raw=data,
        )

    def _recv6(self) -> Datagram | None:
        data, ancdata, _flags, addr = self.sock.recvmsg(RECV_SIZE, _CMSG_SPACE)
        hop: int | None = None
        dst: ipaddress.IPv6Address | None = None
        for level, ctype, cdata in ancdata:
            if level != socket.IPPROTO_IPV6:
                continue
            if ctype == socket.IPV6_HOPLIMIT and len(cdata) >= 4:
                hop = struct.unpack("=i", cdata[:4])[0]
            elif ctype == socket.IPV6_PKTINFO and len(cdata) >= 16:
                dst = ipaddress.IPv6Address(cdata[:16])
        if hop is None or dst is None:
            return None  # both options are set on this socket: cannot happen
        src = ipaddress.IPv6Address(addr[0].split("%", 1)[0])
        return Datagram(payload=data, src=src, ttl=hop, dst=dst, raw=data)

    # ------------------------------------------------------------ event loop
    def start(self, loop: Any, callback: Callable[[Datagram], None]) -> None:
        """Call `callback(datagram)` for every datagram, from `loop`'s reader."""

        def _readable() -> None:
            while (dg := self.recv()) is not None:
                callback(dg)

        self._loop = loop
        loop.add_reader(self.sock.fileno(), _readable)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
