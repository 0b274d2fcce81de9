"""VRRP I/O layer against the kernel and a real keepalived, in network namespaces.

Covers pylb/vrrp/vip.py (VIPs, link watcher), garp.py (GARP / unsolicited NA seen by a
peer) and transport.py (multicast and unicast raw sockets, TTL 255, no loopback), and
proves interoperability: adverts of a real keepalived (v2 PASS, v3, IPv4 and IPv6,
multicast and unicast) arrive through `VrrpSocket` and decode with scapy's VRRP /
VRRPv3 layers, and an advert built with scapy and sent through `VrrpSocket` with a
higher priority makes keepalived give up its VIP.

Root only (namespaces, raw sockets); documentation addresses only; every namespace and
process is removed afterwards (tests/system/netns.py, tests/system/keepalived.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import select
import socket
import struct
import sys
import time

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vrrp import VRRP, VRRPv3

from pylb.vrrp import packet
from pylb.vrrp.garp import GarpPacer, GarpSocket, frames_for
from pylb.vrrp.transport import Datagram, VrrpSocket
from pylb.vrrp.types import AuthConf, InstanceConfig, UnicastConf
from pylb.vrrp.vip import LinkWatcher, VipManager
from tests.system import keepalived as _keepalived
from tests.system import netns as _netns
from tests.system.keepalived import Keepalived
from tests.system.netns import Lab, Node, addresses, has_address, inside, ip, set_link

# Fixtures shared by the VRRP system tests (tests/system/conftest.py belongs to others).
lab = _netns.lab
lab3 = _netns.lab3
keepalived = _keepalived.keepalived

pytestmark = [pytest.mark.root, pytest.mark.slow]

VIP4 = ipaddress.ip_interface("192.0.2.100/24")
VIP4B = ipaddress.ip_interface("192.0.2.101/32")
VIP6 = ipaddress.ip_interface("2001:db8::100/64")
ETH_P_ALL = 0x0003
# Linux <asm-generic/socket.h>; the socket module does not export them.
SO_TIMESTAMPNS = SCM_TIMESTAMPNS = 35


def report(msg: str) -> None:
    """Measurements go to stderr (shown with -s), never into assertions on speed."""
    print(f"\n[vrrp-io] {msg}", file=sys.stderr)


def recv_one(sock: VrrpSocket, timeout: float = 3.0) -> Datagram:
    deadline = time.monotonic() + timeout
    while True:
        dg = sock.recv()
        if dg is not None:
            return dg
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no VRRP datagram on {sock.ifname} within {timeout}s", pytrace=False)
        select.select([sock], [], [], left)


def scapy_layer(dg: Datagram) -> VRRP | VRRPv3:
    """Decode with scapy alone (independent of pylb's codec)."""
    if dg.src.version == 4:
        pkt = IP(dg.raw)
        return pkt[VRRPv3] if VRRPv3 in pkt else pkt[VRRP]
    under = IPv6(src=str(dg.src), dst=str(dg.dst), nh=112, hlim=dg.ttl)
    return VRRPv3(dg.payload, _underlayer=under)


# ----------------------------------------------------------------------------- VIPs


def test_vips_add_list_remove_idempotent(lab: Lab) -> None:
    node = lab[0]
    with inside(node.ns):
        vm = VipManager(node.ifname, [VIP4, VIP4B, VIP6])
    try:
        assert vm.held() == []
        assert set(vm.add()) == {VIP4, VIP4B, VIP6}
        assert vm.add() == []  # already there: no error, nothing new
        listed = set(vm.list())
        assert {VIP4, VIP4B, VIP6} <= listed
        assert ipaddress.ip_interface(f"{node.ip4}/24") in listed  # the node's own stay listed
        assert {str(VIP4), str(VIP4B), str(VIP6)} <= set(addresses(node.ns))
        # IFA_F_NODAD: the IPv6 VIP is usable at once, never "tentative".
        out = ip(node.ns, "-6", "addr", "show", "dev", node.ifname).stdout
        vip_line = next(line for line in out.splitlines() if str(VIP6.ip) in line)
        assert "tentative" not in vip_line and "nodad" in vip_line
        assert set(vm.remove()) == {VIP4, VIP4B, VIP6}
        assert vm.remove() == []  # already gone: no error
        assert vm.held() == []
        assert has_address(node.ns, str(node.ip4)) and has_address(node.ns, str(node.ip6))
    finally:
        vm.close()


def test_stale_vips_removed_at_start(lab: Lab) -> None:
    node = lab[0]
    # A crashed predecessor left our VIPs (one with another prefix length) plus an
    # address that is not ours.
    ip(node.ns, "addr", "add", "192.0.2.100/32", "dev", node.ifname)
    ip(node.ns, "addr", "add", "2001:db8::100/128", "dev", node.ifname, "nodad")
    ip(node.ns, "addr", "add", "192.0.2.200/32", "dev", node.ifname)
    with inside(node.ns):
        vm = VipManager(node.ifname, [VIP4, VIP6])
    try:
        removed = vm.remove_stale()
        assert {str(r.ip) for r in removed} == {"192.0.2.100", "2001:db8::100"}
        assert not has_address(node.ns, "192.0.2.100")
        assert not has_address(node.ns, "2001:db8::100")
        assert has_address(node.ns, "192.0.2.200")  # not ours: untouched
        assert vm.remove_stale() == []
    finally:
        vm.close()


async def test_link_watcher_reports_down_and_up(lab: Lab) -> None:
    node = lab[0]
    with inside(node.ns):
        watcher = LinkWatcher([node.ifname])
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, bool]] = []
    changed = asyncio.Event()

    def on_change(ch) -> None:
        seen.append((ch.name, ch.up))
        changed.set()

    async def next_change() -> tuple[str, bool]:
        await asyncio.wait_for(changed.wait(), 3.0)
        changed.clear()
        return seen[-1]

    try:
        assert watcher.state == {node.ifname: True}
        watcher.start(loop, on_change)
        # Carrier loss (the cable: the bridge-side end goes down) is a fault too.
        set_link(lab.bridge_ns, f"p{node.index}", False)
        assert await next_change() == (node.ifname, False)
        set_link(lab.bridge_ns, f"p{node.index}", True)
        assert await next_change() == (node.ifname, True)
        t0 = time.monotonic()
        set_link(node.ns, node.ifname, False)  # administratively down
        assert await next_change() == (node.ifname, False)
        report(f"link down seen by the watcher {1000 * (time.monotonic() - t0):.1f} ms after `ip`")
        set_link(node.ns, node.ifname, True)
        assert await next_change() == (node.ifname, True)
        assert watcher.state == {node.ifname: True}
    finally:
        watcher.close()


# ------------------------------------------------------------------------------ GARP


def _capture_socket(node: Node) -> socket.socket:
    with inside(node.ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((node.ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def _stamp_arrivals(s: socket.socket) -> None:
    """Ask the kernel to stamp each frame when it reaches the peer's interface: a spacing
    measured there is the wire's, not the spacing of our event loop's reader callbacks
    (which run whenever the loop gets to them and, under CPU load, bunch up)."""
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def _recv_stamped(s: socket.socket) -> tuple[bytes, float]:
    """One frame and its kernel arrival time (CLOCK_REALTIME seconds: for differences)."""
    frame, anc, _flags, _addr = s.recvmsg(2048, socket.CMSG_SPACE(16))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
            sec, nsec = struct.unpack("@qq", data[:16])
            return frame, sec + nsec / 1e9
    raise AssertionError("no arrival timestamp on a captured frame")


def _announcement(frame: bytes) -> tuple[str, str, str] | None:
    """(kind, announced ip, announced mac) for a GARP / unsolicited NA frame."""
    pkt = Ether(frame)
    if ARP in pkt and pkt[ARP].psrc == pkt[ARP].pdst:
        return ("arp", pkt[ARP].psrc, pkt[ARP].hwsrc)
    if ICMPv6ND_NA in pkt and ICMPv6NDOptDstLLAddr in pkt and pkt[ICMPv6ND_NA].S == 0:
        assert pkt[IPv6].hlim == 255 and pkt[ICMPv6ND_NA].O == 1
        return ("na", pkt[ICMPv6ND_NA].tgt, pkt[ICMPv6NDOptDstLLAddr].lladdr)
    return None


async def test_garp_bursts_seen_by_peer(lab: Lab) -> None:
    sender, peer = lab[0], lab[1]
    cap = _capture_socket(peer)
    with inside(sender.ns):
        vm = VipManager(sender.ifname, [VIP4, VIP6])
        gsock = GarpSocket(sender.ifname)
    loop = asyncio.get_running_loop()
    got: list[tuple[float, tuple[str, str, str]]] = []
    enough = asyncio.Event()
    repeat, delay = 3, 0.3
    want = 2 * repeat * 2  # two bursts of `repeat` frames for each of 2 VIPs

    def on_frame() -> None:
        while True:
            try:
                frame = cap.recv(2048)
            except BlockingIOError:
                return
            ann = _announcement(frame)
            if ann is not None:
                got.append((time.monotonic(), ann))
                if len(got) >= want:
                    enough.set()

    loop.add_reader(cap.fileno(), on_frame)
    pacer = GarpPacer(loop, gsock, frames_for(vm.vips, vm.link().mac), repeat=repeat, delay=delay)
    try:
        vm.add()
        t0 = time.monotonic()
        pacer.start()
        await asyncio.wait_for(enough.wait(), 3.0)
        pacer.stop()
        mac = sender.mac
        assert sorted({a for _, a in got}) == [
            ("arp", str(VIP4.ip), mac),
            ("na", str(VIP6.ip), mac),
        ]
        first = [t for t, _ in got[: 2 * repeat]]
        second = [t for t, _ in got[2 * repeat :]]
        assert len(got) == want
        assert min(second) - t0 >= delay  # the repeat came after garp_master_delay
        assert max(first) < min(second)
        assert gsock.sent == want and gsock.errors == 0
        report(
            f"GARP/NA: first burst of {len(first)} within {1000 * (max(first) - t0):.1f} ms, "
            f"second at +{min(second) - t0:.3f}s (delay {delay}s)"
        )
    finally:
        pacer.stop()
        loop.remove_reader(cap.fileno())
        cap.close()
        gsock.close()
        vm.close()


# ------------------------------------------------------------------------- transport


def _v3_payload(src, dst, vrid: int, prio: int, vips, adv_cs: int = 100) -> bytes:
    """A VRRPv3 advert built with scapy alone; the IP layer only feeds the checksum."""
    if src.version == 4:
        under = IP(src=str(src), dst=str(dst), ttl=255, proto=112)
        hdr = 20
    else:
        under = IPv6(src=str(src), dst=str(dst), hlim=255, nh=112)
        hdr = 40
    layer = VRRPv3(vrid=vrid, priority=prio, adv=adv_cs, addrlist=[str(v) for v in vips])
    return bytes(under / layer)[hdr:]


def _v2_payload(vrid: int, prio: int, vips, password: str | None, adv: int = 1) -> bytes:
    auth = (password or "").encode().ljust(8, b"\0")
    layer = VRRP(
        vrid=vrid,
        priority=prio,
        adv=adv,
        authtype=1 if password else 0,
        addrlist=[str(v) for v in vips],
        auth1=int.from_bytes(auth[:4], "big"),
        auth2=int.from_bytes(auth[4:], "big"),
    )
    return bytes(IP(src="192.0.2.1", dst="224.0.0.18", proto=112) / layer)[20:]


@pytest.mark.parametrize("family", [4, 6])
def test_multicast_ttl_255_and_no_loopback(lab: Lab, family: int) -> None:
    a, b = lab[0], lab[1]
    with inside(a.ns):
        sa = VrrpSocket(a.ifname, family)
    with inside(b.ns):
        sb = VrrpSocket(b.ifname, family)
    try:
        vip = VIP4.ip if family == 4 else VIP6.ip
        assert sa.src == (a.ip4 if family == 4 else a.ll6)  # v6: link-local (RFC 5798)
        payload = _v3_payload(sa.src, sa.group, 7, 150, [vip])
        assert sa.send(payload)
        dg = recv_one(sb)
        payload_rx, src, ttl, dst = dg  # the documented 4-tuple
        assert (payload_rx, src, ttl, dst) == (payload, sa.src, 255, sa.group)
        layer = scapy_layer(dg)
        assert (layer.vrid, layer.priority, layer.addrlist) == (7, 150, [str(vip)])
        # Our own advert did not come back (multicast loop off); B got it, so A's copy
        # would already be queued if there were one.
        assert sa.recv() is None
    finally:
        sa.close()
        sb.close()


@pytest.mark.parametrize("family", [4, 6])
def test_unicast_to_configured_peer_only(lab3: Lab, family: int) -> None:
    a, b, c = lab3[0], lab3[1], lab3[2]

    def addr(n: Node):
        return n.ip4 if family == 4 else n.ip6

    with inside(a.ns):
        sa = VrrpSocket(a.ifname, family, src=addr(a), peers=[addr(b)])
    with inside(b.ns):
        sb = VrrpSocket(b.ifname, family, src=addr(b), peers=[addr(a)])
    with inside(c.ns):
        sc = VrrpSocket(c.ifname, family, src=addr(c), peers=[addr(b)])
    try:
        vip = VIP4.ip if family == 4 else VIP6.ip
        # A stranger (C, not among B's peers) first: dropped and counted by B.
        assert sc.send(_v3_payload(addr(c), addr(b), 9, 120, [vip]), addr(b))
        payload = _v3_payload(addr(a), addr(b), 9, 130, [vip])
        assert sa.destinations == (addr(b),)
        for dst in sa.destinations:
            assert sa.send(payload, dst)
        dg = recv_one(sb)
        assert (dg.payload, dg.src, dg.ttl, dg.dst) == (payload, addr(a), 255, addr(b))
        assert sb.dropped_foreign == 1
        assert scapy_layer(dg).priority == 130
        assert sa.recv() is None and sc.recv() is None  # nobody else got it
    finally:
        sa.close()
        sb.close()
        sc.close()


# ------------------------------------------------------------ keepalived interop

KA_CASES = {
    # id: (family, version, password, unicast)
    "v2-pass": (4, 2, "s3cret", False),
    "v3-ipv4": (4, 3, None, False),
    "v3-ipv6": (6, 3, None, False),
    "v2-unicast": (4, 2, None, True),
}


@pytest.mark.parametrize("case", list(KA_CASES))
def test_keepalived_adverts_received_and_keepalived_yields(
    lab: Lab, keepalived: type[Keepalived], case: str
) -> None:
    family, version, password, unicast = KA_CASES[case]
    ours, theirs = lab[0], lab[1]
    vid, kprio, vips = 42, 100, ([VIP4, VIP4B] if family == 4 else [VIP6])

    def addr(n: Node):
        return n.ip4 if family == 4 else n.ip6

    ka = keepalived(
        theirs,
        vrid=vid,
        priority=kprio,
        vips=[str(v) for v in vips],
        version=version,
        auth_pass=password,
        unicast_src=str(addr(theirs)) if unicast else None,
        unicast_peers=[str(addr(ours))] if unicast else (),
    ).start()
    with inside(ours.ns):
        if unicast:
            sock = VrrpSocket(ours.ifname, family, src=addr(ours), peers=[addr(theirs)])
        else:
            sock = VrrpSocket(ours.ifname, family)
    try:
        t_master = ka.wait_master(8.0)
        # 1. keepalived's adverts reach us and decode with scapy.
        dg = recv_one(sock, 3.0)
        layer = scapy_layer(dg)
        assert dg.ttl == 255
        assert dg.src == (addr(theirs) if family == 4 else theirs.ll6)
        assert dg.dst == (addr(ours) if unicast else sock.group)
        assert (layer.version, layer.vrid, layer.priority) == (version, vid, kprio)
        assert {ipaddress.ip_address(a) for a in layer.addrlist} == {v.ip for v in vips}
        if version == 2:
            assert layer.adv == 1
            if password:
                auth = layer.auth1.to_bytes(4, "big") + layer.auth2.to_bytes(4, "big")
                assert (layer.authtype, auth) == (1, password.encode().ljust(8, b"\0"))
        else:
            assert layer.adv == 100  # centiseconds
            # scapy recomputes the checksum the RFC way and agrees with keepalived's.
            fresh = _v3_payload(dg.src, dg.dst, vid, kprio, layer.addrlist)
            assert fresh[6:8] == dg.payload[6:8]
        # ... and pylb's codec accepts them for an instance configured like keepalived.
        cfg = InstanceConfig(
            name="VI_1",
            interface=ours.ifname,
            vrid=vid,
            virtual_ipaddresses=tuple(vips),
            priority=90,
            version=version,
            auth=AuthConf(password) if password else None,
            unicast=UnicastConf(addr(ours), (addr(theirs),)) if unicast else None,
        )
        data, fam, kwargs = dg.decode_args()
        verdict, advert = packet.receive(data, fam, cfg, own=sock.own, **kwargs)
        assert verdict is packet.Verdict.OK, verdict
        assert advert is not None and advert.priority == kprio

        # 2. A higher-priority advert of ours (scapy-built) makes keepalived yield.
        dst = addr(theirs) if unicast else sock.group
        if version == 2:
            payload = _v2_payload(vid, 200, [v.ip for v in vips], password)
        else:
            payload = _v3_payload(sock.src, dst, vid, 200, [v.ip for v in vips])
        t_sent = time.monotonic()
        assert sock.send(payload, dst)
        yielded = ka.wait_released(2.0)
        report(
            f"keepalived {case}: master {t_master:.2f}s after start; "
            f"dropped its VIPs {1000 * yielded:.1f} ms after our priority-200 advert"
        )
        assert ka.running()
        if case == "v3-ipv4":
            # 3. We fall silent: keepalived takes the VIPs back after Master_Down_Interval
            # (3 x 1 s + skew (256 - 100)/256 s = 3.61 s, RFC 5798 §6.1), i.e. it treated
            # us as a real master. Then a crash: kill() must leave no VIP behind.
            ka.wait_master(6.0)
            reclaim = time.monotonic() - t_sent
            report(f"keepalived took the VIPs back {reclaim:.2f}s after our last advert")
            assert reclaim >= 3.0  # not before three adverts were missed (a protocol bound)
            ka.kill()
            assert not ka.running() and ka.holds_none()
    finally:
        sock.close()


async def test_garp_interval_and_refresh(lab: Lab) -> None:
    """Frames spaced by `interval`, no second burst (delay 0), then periodic refresh."""
    sender, peer = lab[0], lab[1]
    cap = _capture_socket(peer)
    _stamp_arrivals(cap)
    with inside(sender.ns):
        vm = VipManager(sender.ifname, [VIP4, VIP6])
        gsock = GarpSocket(sender.ifname)
    loop = asyncio.get_running_loop()
    got: list[float] = []  # when our reader saw each frame (monotonic, >= its send time)
    wire: list[float] = []  # when each frame reached the peer's interface (kernel stamp)
    enough = asyncio.Event()
    repeat, interval, refresh = 2, 0.02, 0.25
    want = repeat * 2 + 2 * 2  # the burst, then two refreshes of one frame per VIP

    def on_frame() -> None:
        while True:
            try:
                frame, stamp = _recv_stamped(cap)
            except BlockingIOError:
                return
            if _announcement(frame) is not None:
                got.append(time.monotonic())
                wire.append(stamp)
                if len(got) >= want:
                    enough.set()

    loop.add_reader(cap.fileno(), on_frame)
    frames = frames_for(vm.vips, vm.link().mac)
    pacer = GarpPacer(
        loop, gsock, frames, repeat=repeat, delay=0, refresh=refresh, interval=interval
    )
    try:
        vm.add()
        t0 = time.monotonic()
        pacer.start()
        await asyncio.wait_for(enough.wait(), 3.0)
        pacer.stop()
        assert not pacer.active
        burst, refreshes = wire[: repeat * 2], got[repeat * 2 :]
        gaps = [b - a for a, b in itertools.pairwise(burst)]
        # Spacing on the wire. The pacer times each frame from its wakeup, so a sender
        # preempted between that wakeup and the send shortens the following gap by the
        # preemption: allow a few ms of scheduler granularity per gap (a pacer sending the
        # burst at once would show gaps of microseconds), and hold the whole burst to
        # `interval` per gap within one such allowance.
        slack = 0.005
        assert min(gaps) >= interval - slack, gaps
        assert burst[-1] - burst[0] >= (len(burst) - 1) * interval - slack, gaps
        # Receive times are never before the send; the pacer runs on the loop's clock,
        # which may be a cached or ms-rounded reading (uvloop), hence the 1 %.
        assert refreshes[0] - t0 >= refresh * 0.99
        assert refreshes[2] - t0 >= 2 * refresh * 0.99
        report(
            f"GARP paced: burst gaps {', '.join(f'{1000 * g:.1f}' for g in gaps)} ms, "
            f"refreshes at +{refreshes[0] - t0:.3f}s and +{refreshes[2] - t0:.3f}s"
        )
    finally:
        pacer.stop()
        loop.remove_reader(cap.fileno())
        cap.close()
        gsock.close()
        vm.close()


def test_send_on_a_down_link_returns_false(lab: Lab) -> None:
    node = lab[0]
    with inside(node.ns):
        sock = VrrpSocket(node.ifname, 4)
        gsock = GarpSocket(node.ifname)
    try:
        payload = _v3_payload(sock.src, sock.group, 1, 100, [VIP4.ip])
        assert sock.send(payload)
        set_link(node.ns, node.ifname, False)
        assert sock.send(payload) is False and sock.send_errors == 1
        frame = frames_for([VIP4], node.mac)[0]
        assert gsock.send(frame) is False and gsock.errors == 1
        set_link(node.ns, node.ifname, True)
        assert sock.send(payload)
    finally:
        sock.close()
        gsock.close()
