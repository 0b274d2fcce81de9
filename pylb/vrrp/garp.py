"""Gratuitous ARP (IPv4 VIPs) and unsolicited neighbour advertisements (IPv6 VIPs).

After taking a VIP over, the new master must tell the LAN that the VIP now lives at its
MAC address, or hosts and switches keep sending to the old one until their caches time
out. keepalived's habits are kept (`vrrp_arp.c`, `vrrp_ndisc.c`, STYLE.md 5.6):

- frames are built once (scapy) per VIP when the instance is configured, and sent as
  preallocated bytes on one AF_PACKET socket per interface (protocol 0: send only,
  the socket never queues received frames);
- ARP: broadcast request with sender IP = target IP = VIP, sender MAC = ours, target
  MAC ff:ff:ff:ff:ff:ff; NA: from the VIP to ff02::1 (33:33:00:00:00:01), hop limit
  255, Override flag, target link-layer address option = our MAC (RFC 4861 §4.4, §7.2.6);
- pacing: `garp_master_repeat` frames per VIP at once, the same again after
  `garp_master_delay` (0 = no second burst), then every `garp_master_refresh` seconds
  (0 = never) `garp_master_refresh_repeat` frames; `interval` spaces single frames
  (keepalived's `garp_interval`/`gna_interval`, default 0 = back to back).

`GarpPacer` runs that schedule on the event loop with a single timer handle, whatever
the number of frames (no task or handle per frame), and `stop()` ends it when the node
leaves MASTER.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from pylb.vrrp.types import IPAddress, IPInterface

log = logging.getLogger("pylb.vrrp.garp")

BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES_MAC = "33:33:00:00:00:01"  # RFC 2464 §7 mapping of ff02::1
ALL_NODES = "ff02::1"
ND_HOP_LIMIT = 255  # RFC 4861 §7.1.2: receivers drop NDs with any other hop limit


def _mac_str(mac: bytes | str) -> str:
    if isinstance(mac, bytes):
        return ":".join(f"{b:02x}" for b in mac)
    return mac.lower()


def gratuitous_arp(vip: IPAddress, mac: bytes | str) -> bytes:
    """One gratuitous ARP frame announcing `vip` at `mac` (keepalived's layout)."""
    m = _mac_str(mac)
    frame = Ether(dst=BROADCAST, src=m) / ARP(
        op=1, hwsrc=m, psrc=str(vip), hwdst=BROADCAST, pdst=str(vip)
    )
    return bytes(frame)


def unsolicited_na(vip: IPAddress, mac: bytes | str) -> bytes:
    """One unsolicited neighbour advertisement announcing `vip` at `mac`."""
    m = _mac_str(mac)
    frame = (
        Ether(dst=ALL_NODES_MAC, src=m)
        / IPv6(src=str(vip), dst=ALL_NODES, hlim=ND_HOP_LIMIT)
        / ICMPv6ND_NA(R=0, S=0, O=1, tgt=str(vip))
        / ICMPv6NDOptDstLLAddr(lladdr=m)
    )
    return bytes(frame)


def frames_for(vips: Sequence[IPInterface | IPAddress], mac: bytes | str) -> list[bytes]:
    """The announcement frame of each VIP, in configured order."""
    out = []
    for v in vips:
        ip = getattr(v, "ip", v)
        out.append(gratuitous_arp(ip, mac) if ip.version == 4 else unsolicited_na(ip, mac))
    return out


class GarpSocket:
    """A send-only AF_PACKET socket on one interface; shared by its instances."""

    __slots__ = ("errors", "ifname", "sent", "sock")

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.sent = 0
        self.errors = 0
        # Protocol 0: bound to the device for sending, receives nothing (no queue to
        # drain, no copy of every frame on the wire).
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            self.sock.setblocking(False)
            self.sock.bind((ifname, 0))
        except OSError:
            self.sock.close()
            raise

    def send(self, frame: bytes) -> bool:
        """Send one frame; False (and counted) when the link is down or the queue full."""
        try:
            self.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            self.errors += 1
            return False
        except OSError as exc:
            if exc.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENOBUFS, errno.ENODEV):
                self.errors += 1
                return False
            raise
        self.sent += 1
        return True

    def close(self) -> None:
        self.sock.close()


class GarpPacer:
    """keepalived's GARP schedule for one instance, on one loop timer (see module doc).

    `start()` on becoming master (after the VIPs are added), `stop()` on leaving it.
    Restarting while running begins a fresh schedule. `clock` defaults to `loop.time`.
    """

    __slots__ = (
        "_clock",
        "_handle",
        "_loop",
        "_pending",
        "_refresh_at",
        "_second_at",
        "delay",
        "frames",
        "interval",
        "on_send",
        "refresh",
        "refresh_repeat",
        "repeat",
        "sock",
    )

    def __init__(
        self,
        loop: Any,
        sock: GarpSocket,
        frames: Sequence[bytes],
        *,
        repeat: int = 5,
        delay: float = 5.0,
        refresh: float = 0.0,
        refresh_repeat: int = 1,
        interval: float = 0.0,
        on_send: Callable[[int], None] | None = None,
    ) -> None:
        if repeat < 0 or refresh_repeat < 0 or delay < 0 or refresh < 0 or interval < 0:
            raise ValueError("GARP repeat counts and delays must not be negative")
        self._loop = loop
        self._clock: Callable[[], float] = loop.time
        self.sock = sock
        self.frames = tuple(frames)
        self.repeat = repeat
        self.delay = delay
        self.refresh = refresh
        self.refresh_repeat = refresh_repeat
        self.interval = interval
        self.on_send = on_send  # called with the number of frames sent by each wakeup
        self._pending: collections.deque[bytes] = collections.deque()
        self._handle: Any = None
        self._second_at: float | None = None
        self._refresh_at: float | None = None

    @property
    def active(self) -> bool:
        return self._handle is not None or bool(self._pending)

    def start(self) -> None:
        self.stop()
        now = self._clock()
        self._second_at = now + self.delay if self.delay > 0 and self.repeat else None
        self._refresh_at = now + self.refresh if self.refresh > 0 else None
        self._enqueue(self.repeat)
        self._wake()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._pending.clear()
        self._second_at = self._refresh_at = None

    def _enqueue(self, rounds: int) -> None:
        for _ in range(rounds):
            self._pending.extend(self.frames)

    def _wake(self) -> None:
        self._handle = None
        now = self._clock()
        if self._second_at is not None and now >= self._second_at:
            self._second_at = None
            self._enqueue(self.repeat)
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = now + self.refresh
            self._enqueue(self.refresh_repeat)
        sent = 0
        if self.interval > 0:
            if self._pending:
                sent += self.sock.send(self._pending.popleft())
        else:
            while self._pending:
                sent += self.sock.send(self._pending.popleft())
        if sent and self.on_send is not None:
            self.on_send(sent)
        nexts = [t for t in (self._second_at, self._refresh_at) if t is not None]
        if self._pending:
            nexts.append(now + self.interval)
        if nexts:
            self._handle = self._loop.call_at(min(nexts), self._wake)
