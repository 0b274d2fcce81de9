"""VRRP advertisements on the wire: build, parse and judge them, without sockets.

scapy's `VRRP` (RFC 3768) and `VRRPv3` (RFC 5798) layers do the field work; this module
is the only place scapy is used (STYLE.md 1.3). Around it:

- `encode(advert, src=..., dst=...)` returns the IP *payload* (the raw socket adds the IP
  header). VRRPv3's checksum covers a pseudo-header with the source and destination
  addresses, so they are arguments: a unicast advert has one checksum per peer.
- `decode(data, family, ...)` takes a whole IPv4 packet (what an IPv4 raw socket
  returns) or, for IPv6, either a whole packet or (when `src`, `dst` and `hop_limit`
  from recvmsg are given) the bare payload an IPv6 raw socket returns. It
  raises only `PacketError`, whose `verdict` is MALFORMED (or VERSION for a version
  this code does not speak), so arbitrary bytes from the wire cannot crash the speaker.
- `validate(advert, cfg, own=...)` returns a `Verdict`, in keepalived's
  `vrrp_check_packet` order. `receive(...)` does both and never raises.

Checksums (RFC 1071 one's complement):
- v2: over the VRRP message (header, addresses, 8 auth bytes), no pseudo-header.
- v3 over IPv6: IPv6 pseudo-header (RFC 8200 §8.1) + message.
- v3 over IPv4: IPv4 pseudo-header (src, dst, 0, 112, length) + message, as RFC 5798
  §5.2.8 (with its errata) and keepalived up to 2.2.7 compute it. We compute it
  ourselves as well and overwrite scapy's value should they ever differ.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRP, VRRPv3

from pylb.vrrp.types import (
    IPPROTO_VRRP,
    MAX_ADVER_INT_V2_S,
    MAX_ADVER_INT_V3_CS,
    MCAST_GROUP_V4,
    MCAST_GROUP_V6,
    PASS_MAX,
    VRRP_TTL,
    AdvertReceived,
    Family,
    InstanceConfig,
    IPAddress,
)

ADVERTISEMENT = 1  # the only VRRP packet type (RFC 5798 §5.2.2)
AUTH_NONE = 0
AUTH_PASS = 1  # RFC 2338 "Simple Text Password"; keepalived's auth_type PASS
HEADER_LEN = 8
AUTH_LEN = 8  # VRRPv2 always carries 8 auth-data bytes (RFC 3768 §5.3.10)


class Verdict(enum.Enum):
    """Why an advert is (not) obeyed. Every value but OK has its own drop counter."""

    OK = "ok"
    TTL = "ttl"  # TTL / hop limit != 255: it crossed a router (RFC 5798 §7.1)
    CHECKSUM = "checksum"
    VERSION = "version"
    VRID_UNKNOWN = "vrid_unknown"
    AUTH = "auth"  # v2: auth type or password differs
    INTERVAL = "interval"  # v2: advert interval differs from ours (keepalived drops)
    OWN = "own"  # our own advert looped back
    ADDR_MISMATCH = "addr_mismatch"  # VIP list differs: obeyed (RFC: "log"), but logged
    MALFORMED = "malformed"

    @property
    def accepted(self) -> bool:
        """Whether the FSM should see the advert.

        ADDR_MISMATCH is obeyed: RFC 5798 §7.1 says only to log it, and ignoring a peer's
        adverts over a configuration typo makes two masters. keepalived drops it instead
        (FACTS.md), so the log line matters: configure the same list on both sides.
        """
        return self is Verdict.OK or self is Verdict.ADDR_MISMATCH


class PacketError(ValueError):
    """The bytes are not a VRRP advert this code can read."""

    def __init__(self, verdict: Verdict, detail: str) -> None:
        super().__init__(detail)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class Advert:
    """One advertisement. Fields after `auth_data` are filled in by `decode`."""

    version: int
    vrid: int
    priority: int
    max_adver_int: float  # seconds (wire: whole seconds in v2, centiseconds in v3)
    addresses: tuple[IPAddress, ...]
    auth_type: int = AUTH_NONE
    auth_data: bytes = b""  # v2: the 8 auth bytes (password NUL padded)
    src: IPAddress | None = None
    dst: IPAddress | None = None
    ttl: int | None = None
    checksum_ok: bool = True

    @property
    def family(self) -> Family:
        if self.src is not None:
            return Family(self.src.version)
        return Family(self.addresses[0].version) if self.addresses else Family.V4

    def event(self) -> AdvertReceived:
        """The FSM's view of a received, accepted advert."""
        assert self.src is not None, "only decoded adverts carry a source"
        return AdvertReceived(self.priority, self.src, self.max_adver_int)


def advert_for(cfg: InstanceConfig, priority: int) -> Advert:
    """The advert `cfg` sends at `priority` (the FSM's `SendAdvert.priority`)."""
    if cfg.auth is not None:
        auth_type, auth_data = AUTH_PASS, cfg.auth.wire
    else:
        auth_type, auth_data = AUTH_NONE, b""
    return Advert(
        version=cfg.version,
        vrid=cfg.vrid,
        priority=priority,
        max_adver_int=cfg.advert_interval,
        addresses=cfg.addresses,
        auth_type=auth_type,
        auth_data=auth_data,
    )


def default_dst(family: Family) -> IPAddress:
    return MCAST_GROUP_V4 if family is Family.V4 else MCAST_GROUP_V6


# ------------------------------------------------------------------------ checksum


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum; 0 when `data` already contains a correct one."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    """The pseudo-header VRRPv3 sums before the message (RFC 5798 §5.2.8)."""
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, IPPROTO_VRRP, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, IPPROTO_VRRP)


def vrrp_checksum(message: bytes, version: int, src: IPAddress, dst: IPAddress) -> int:
    """The checksum a VRRP message must carry; its own checksum field is ignored."""
    body = message[:6] + b"\0\0" + message[8:]
    if version == 2:
        return inet_checksum(body)
    return inet_checksum(pseudo_header(src, dst, len(body)) + body)


def checksum_valid(message: bytes, version: int, src: IPAddress, dst: IPAddress) -> bool:
    """Receiver's check: the sum over everything, checksum included, is zero.

    Summing rather than comparing accepts both one's complement zeros (0x0000 and
    0xFFFF), as keepalived's in_csum check does.
    """
    if version == 2:
        return inet_checksum(message) == 0
    return inet_checksum(pseudo_header(src, dst, len(message)) + message) == 0


# ------------------------------------------------------------------------- encode


def encode(advert: Advert, *, src: IPAddress, dst: IPAddress | None = None) -> bytes:
    """The VRRP message (IP payload) for `advert` sent from `src` to `dst`.

    `dst` defaults to the multicast group; pass the peer for unicast.
    """
    fam = Family(src.version)
    if dst is None:
        dst = default_dst(fam)
    if dst.version != src.version or any(a.version != src.version for a in advert.addresses):
        raise ValueError("advert addresses, src and dst must share one family")
    addrs = [str(a) for a in advert.addresses]
    under: Any
    if fam is Family.V4:
        under = IP(src=str(src), dst=str(dst), ttl=VRRP_TTL, proto=IPPROTO_VRRP)
        hdr_len = 20
    else:
        under = IPv6(src=str(src), dst=str(dst), hlim=VRRP_TTL, nh=IPPROTO_VRRP)
        hdr_len = 40
    if advert.version == 2:
        if fam is not Family.V4:
            raise ValueError("VRRPv2 is IPv4 only")
        adv = round(advert.max_adver_int)
        if adv != advert.max_adver_int or not 1 <= adv <= MAX_ADVER_INT_V2_S:
            raise ValueError(f"VRRPv2 advert interval {advert.max_adver_int}s")
        auth = advert.auth_data.ljust(AUTH_LEN, b"\0") if advert.auth_type else bytes(AUTH_LEN)
        if len(auth) != AUTH_LEN:
            raise ValueError(f"auth data longer than {PASS_MAX} bytes")
        layer = VRRP(
            version=2,
            type=ADVERTISEMENT,
            vrid=advert.vrid,
            priority=advert.priority,
            authtype=advert.auth_type,
            adv=adv,
            addrlist=addrs,
            auth1=int.from_bytes(auth[:4], "big"),
            auth2=int.from_bytes(auth[4:], "big"),
        )
    elif advert.version == 3:
        cs = round(advert.max_adver_int * 100)
        if not 1 <= cs <= MAX_ADVER_INT_V3_CS:
            raise ValueError(f"VRRPv3 advert interval {advert.max_adver_int}s")
        layer = VRRPv3(
            version=3,
            type=ADVERTISEMENT,
            vrid=advert.vrid,
            priority=advert.priority,
            adv=cs,
            addrlist=addrs,
        )
    else:
        raise ValueError(f"VRRP version {advert.version}")
    msg = bytes(under / layer)[hdr_len:]
    want = vrrp_checksum(msg, advert.version, src, dst)
    if int.from_bytes(msg[6:8], "big") != want:  # scapy disagreed with the RFC: ours wins
        msg = msg[:6] + want.to_bytes(2, "big") + msg[8:]
    return msg


# ------------------------------------------------------------------------- decode


def _malformed(detail: str) -> PacketError:
    return PacketError(Verdict.MALFORMED, detail)


def decode(
    data: bytes,
    family: Family | int,
    *,
    src: IPAddress | None = None,
    dst: IPAddress | None = None,
    hop_limit: int | None = None,
) -> Advert:
    """Parse one received packet. Raises only `PacketError` (see module docstring)."""
    data = bytes(data)
    if family == Family.V4:
        if len(data) < 20 or data[0] >> 4 != 4:
            raise _malformed("not an IPv4 header")
        ihl = (data[0] & 0x0F) * 4
        total = int.from_bytes(data[2:4], "big")
        if ihl < 20 or total < ihl or total > len(data):
            raise _malformed("bad IPv4 header or total length")
        if data[9] != IPPROTO_VRRP:
            raise _malformed("IP protocol is not VRRP")
        if int.from_bytes(data[6:8], "big") & 0x3FFF:  # MF flag or a fragment offset
            raise _malformed("fragment")
        header, payload = data[:ihl], data[ihl:total]  # bytes past `total`: link padding
        ttl = data[8]
        psrc = ipaddress.IPv4Address(data[12:16])
        pdst = ipaddress.IPv4Address(data[16:20])
    elif family == Family.V6:
        if src is None and dst is None and hop_limit is None:  # a whole IPv6 packet
            if len(data) < 40 or data[0] >> 4 != 6:
                raise _malformed("not an IPv6 header")
            plen = int.from_bytes(data[4:6], "big")
            if data[6] != IPPROTO_VRRP:
                raise _malformed("IPv6 next header is not VRRP")
            if 40 + plen > len(data):
                raise _malformed("IPv6 payload length beyond the data")
            header, payload = data[:40], data[40 : 40 + plen]
            ttl = data[7]
            psrc = ipaddress.IPv6Address(data[8:24])
            pdst = ipaddress.IPv6Address(data[24:40])
        elif src is not None and dst is not None and hop_limit is not None:
            # What an IPv6 raw socket gives: the payload, the rest from recvmsg.
            psrc, pdst, ttl, payload = src, dst, hop_limit, data
            if psrc.version != 6 or pdst.version != 6 or not 0 <= ttl <= 255:
                raise ValueError("src and dst must be IPv6 addresses, hop_limit 0..255")
            header = struct.pack("!IHBB", 6 << 28, len(payload), IPPROTO_VRRP, ttl)
            header += psrc.packed + pdst.packed
        else:
            raise TypeError("an IPv6 payload needs all of src, dst and hop_limit")
    else:
        raise ValueError(f"address family {family!r}")
    if psrc.version != family or pdst.version != family:
        raise _malformed("addresses of another family")

    if len(payload) < HEADER_LEN:
        raise _malformed(f"VRRP message of {len(payload)} bytes")
    version, ptype = payload[0] >> 4, payload[0] & 0x0F
    if version not in (2, 3) or (version == 2 and family == Family.V6):
        raise PacketError(Verdict.VERSION, f"VRRP version {version}")
    if ptype != ADVERTISEMENT:
        raise _malformed(f"VRRP type {ptype}")
    alen = 4 if family == Family.V4 else 16
    expected = HEADER_LEN + payload[3] * alen + (AUTH_LEN if version == 2 else 0)
    if len(payload) != expected:
        raise _malformed(f"VRRP message of {len(payload)} bytes, count says {expected}")

    try:
        under = IP(header) if family == Family.V4 else IPv6(header)
        layer = (VRRP if version == 2 else VRRPv3)(payload, _underlayer=under)
        want = VRRP if version == 2 else VRRPv3
        if type(layer) is not want or len(layer.addrlist) != payload[3]:
            raise _malformed("scapy read another layer")
        addrs = tuple(ipaddress.ip_address(a) for a in layer.addrlist)
        if version == 2:
            interval = float(layer.adv)
            auth_type = int(layer.authtype)
            auth_data = payload[-AUTH_LEN:]
        else:
            interval = int(layer.adv) / 100
            auth_type, auth_data = AUTH_NONE, b""
        advert = Advert(
            version=version,
            vrid=int(layer.vrid),
            priority=int(layer.priority),
            max_adver_int=interval,
            addresses=addrs,
            auth_type=auth_type,
            auth_data=auth_data,
            src=psrc,
            dst=pdst,
            ttl=ttl,
            checksum_ok=checksum_valid(payload, version, psrc, pdst),
        )
    except PacketError:
        raise
    except Exception as exc:  # scapy's parse errors are not a contract: contain them
        raise _malformed(f"unparsable: {exc!r}") from exc
    if any(a.version != family for a in addrs):
        raise _malformed("addresses of another family")
    return advert


# ----------------------------------------------------------------------- validate


def validate(
    advert: Advert,
    cfg: InstanceConfig,
    *,
    own: frozenset[IPAddress] | set[IPAddress] | tuple[IPAddress, ...] = (),
) -> Verdict:
    """Judge a decoded advert for the instance `cfg` (keepalived's order of checks).

    The TTL is checked only for multicast, as keepalived does: a unicast peer may be
    routed. `own` is the set of this node's addresses on the interface.
    """
    if cfg.unicast is None and advert.ttl is not None and advert.ttl != VRRP_TTL:
        return Verdict.TTL
    if advert.version != cfg.version:
        return Verdict.VERSION
    if not advert.checksum_ok:
        return Verdict.CHECKSUM
    if advert.vrid != cfg.vrid:
        return Verdict.VRID_UNKNOWN
    if advert.src is not None and advert.src in own:
        return Verdict.OWN
    if cfg.version == 2:
        want_type = AUTH_PASS if cfg.auth is not None else AUTH_NONE
        if advert.auth_type != want_type:
            return Verdict.AUTH
        # Constant time, as keepalived's memcmp_constant_time: no timing oracle.
        if cfg.auth is not None and not hmac.compare_digest(advert.auth_data, cfg.auth.wire):
            return Verdict.AUTH
        if advert.max_adver_int != cfg.advert_interval:
            return Verdict.INTERVAL
    elif advert.max_adver_int <= 0:
        return Verdict.INTERVAL  # a zero interval would make Master_Down_Interval zero
    if len(advert.addresses) != len(cfg.virtual_ipaddresses) or set(advert.addresses) != set(
        cfg.addresses
    ):
        return Verdict.ADDR_MISMATCH
    return Verdict.OK


def receive(
    data: bytes,
    family: Family | int,
    cfg: InstanceConfig,
    *,
    own: frozenset[IPAddress] | set[IPAddress] | tuple[IPAddress, ...] = (),
    src: IPAddress | None = None,
    dst: IPAddress | None = None,
    hop_limit: int | None = None,
) -> tuple[Verdict, Advert | None]:
    """decode + validate for the shell's read callback; never raises on wire input."""
    try:
        advert = decode(data, family, src=src, dst=dst, hop_limit=hop_limit)
    except PacketError as exc:
        return exc.verdict, None
    return validate(advert, cfg, own=own), advert
